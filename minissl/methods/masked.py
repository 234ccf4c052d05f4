"""Self-prediction by masking: hide part of the input and predict it from the rest.

* ``MaskedLM`` (BERT): Devlin, Chang, Lee & Toutanova, "BERT: Pre-training of Deep
  Bidirectional Transformers for Language Understanding", NAACL 2019, Sec. 3.1 and App. A.1.
  A bidirectional transformer encoder reads a character sequence in which 15 % of the
  positions were chosen; of those, 80 % became a [MASK] token, 10 % a random token and 10 %
  stayed unchanged. The loss is the cross-entropy of the original token at the chosen
  positions only (``ignore_index=-100`` elsewhere):

      L = -1/|M| sum_{(b,t) in M} log softmax(f(x_tilde)_{b,t})[x_{b,t}]

  Checked against the official ``create_pretraining_data.py`` (google-research/bert,
  ``create_masked_lm_predictions``): exactly ``max(1, round(T * 0.15))`` positions per
  sequence are chosen (a shuffle of the candidates, here an argsort of uniform noise), then
  each independently becomes [MASK] with probability 0.8, stays with 0.1, or is replaced
  by a uniformly drawn token with 0.1 (which may draw the original token). Differences,
  on purpose: random tokens are drawn from the real characters only, never [MASK]; there is
  no ``max_predictions_per_seq`` cap (BERT's 20 of 128 is above 15 % anyway) and no
  [CLS]/[SEP] tokens (no next-sentence task). The blocks are pre-LN with a final LayerNorm
  (BERT is post-LN), the masked-LM head is BERT's (dense - GELU - LayerNorm - decoder) with
  an untied decoder. ``TwoPhaseWindows`` gives BERT's two sequence lengths (App. A.2: 90 %
  of the steps short, then full): at one length of 64 characters the model can stay at the
  unigram loss for hundreds of steps, in PyTorch as here (docs/faithful.md).

* ``MAE`` (masked autoencoder): He, Chen, Xie, Li, Dollar & Girshick, "Masked Autoencoders
  Are Scalable Vision Learners", CVPR 2022. An image is cut into L patches; a random 75 %
  of them are dropped; a ViT encoder sees only the visible 25 % (no mask tokens), a light
  decoder receives the encoded visible patches plus a shared learned mask token at each
  dropped position, and predicts every patch's pixels. The loss (``losses.mae_loss``) is
  the per-patch MSE averaged over the dropped patches only. Checked against the official
  code (facebookresearch/mae, ``models_mae.py``): per-sample masking by argsort of uniform
  noise (``ids_shuffle``; ``ids_restore = argsort(ids_shuffle)``; ``ids_keep`` the first
  ``int(L (1 - ratio))``; ``mask`` 1 = removed, 0 = kept, in the original patch order),
  ``patchify`` as ``nchpwq -> nhwpqc``, fixed 2-D sin-cos position embeddings for encoder
  and decoder (``util/pos_embed.py``), xavier-uniform Linear weights and a N(0, 0.02)
  mask token, decoder LayerNorm before the pixel prediction. Differences, on purpose: no
  [CLS] token; the pretraining augmentation (``mae_augmentation``: RandomResizedCrop with
  scale 0.2 to 1 and a horizontal flip, as ``main_pretrain.py``) resamples bilinearly, not
  bicubically; the features are the mean of the encoder's outputs over all patches of the
  unmasked image (the paper's fine-tuning ``global_pool``), and ``norm_pix`` defaults to
  False (the paper's recommended setting is True; with 2x2 patches a per-patch
  normalisation over 4 values is mostly noise, and pixel targets make the reconstruction
  error directly readable).
"""
import math
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from .. import augment, distributed as dist, losses, nn
from ..autograd import Tensor, no_grad
from ..backend import get_array_module, to_device
from ..ops.shape import cat
from ..random import get_generator
from .autoregressive import _check_ids, text_windows
from .base import SSLMethod

__all__ = ["MaskedLMConfig", "MaskedLM", "MAEConfig", "MAE", "ViTEncoder",
           "sincos_pos_embed_2d", "patchify", "unpatchify", "random_masking", "bert_masking",
           "TwoPhaseWindows",
           "mae_augmentation", "choose_patch_size", "build",
           "build_mlm", "build_mae"]

IGNORE_INDEX = -100  # targets at positions that were not chosen (F.cross_entropy skips them)


# ------------------------------------------------------------------------------------------
# Masked language model (BERT)
# ------------------------------------------------------------------------------------------

@dataclass
class MaskedLMConfig:
    vocab_size: int = 128         # real tokens (characters); [MASK] gets id vocab_size
    block_size: int = 64          # maximum sequence length T (BERT: 512; 128 for 90 % of steps)
    n_layer: int = 4              # encoder blocks (BERT-base: 12)
    n_head: int = 4               # attention heads (BERT-base: 12)
    n_embd: int = 128             # hidden width (BERT-base: 768)
    dropout: float = 0.0          # dropout after the embeddings (BERT: 0.1; small data: 0)
    mask_prob: float = 0.15       # fraction of positions chosen for prediction (BERT: 0.15)
    mask_token_prob: float = 0.8  # chosen positions replaced by [MASK] (BERT: 0.8)
    random_token_prob: float = 0.1  # chosen positions replaced by a random token (BERT: 0.1);
    # the rest of the chosen positions (BERT: 0.1) keep their token


def _normal_init_(module, std=0.02, rng=None):
    """BERT's initialisation (``initializer_range`` 0.02): every weight matrix ~ N(0, std^2),
    biases 0, LayerNorms (1, 0)."""
    rng = get_generator(rng)
    for name, p in module.named_parameters():
        if p.ndim == 1:
            if name.endswith("bias"):
                p.data[...] = 0
            continue
        p.data[...] = rng.normal(0.0, std, size=p.shape).astype(p.dtype)


class MaskedLM(SSLMethod):
    """A bidirectional transformer encoder trained by masked-token prediction (see the
    module docstring for the masking rule).

        x_0 = wte[x_tilde] + wpe[0:T]                    (B, T, C), wte has V + 1 rows
        h = ln_f(Block_n(... Block_1(x_0)))              non-causal blocks
        logits = decoder(LN(gelu(dense(h))))             (B, T, V)
    """

    name = "mlm"
    data_kind = "text"

    def __init__(self, config=None, rng=None, dtype=None):
        super().__init__()
        self.config = c = config or MaskedLMConfig()
        if not 0 < c.mask_prob <= 1:
            raise ValueError(f"MaskedLM: mask_prob must be in (0, 1], got {c.mask_prob}")
        if c.mask_token_prob < 0 or c.random_token_prob < 0 or \
                c.mask_token_prob + c.random_token_prob > 1:
            raise ValueError(f"MaskedLM: need mask_token_prob, random_token_prob >= 0 with a "
                             f"sum <= 1, got {c.mask_token_prob} and {c.random_token_prob}")
        rng = get_generator(rng)
        self.mask_id = c.vocab_size                             # the extra [MASK] token
        self.wte = nn.Embedding(c.vocab_size + 1, c.n_embd, rng=rng, dtype=dtype)
        self.wpe = nn.PositionalEmbedding(c.block_size, c.n_embd, rng=rng, dtype=dtype)
        self.drop = nn.Dropout(c.dropout)
        self.h = nn.ModuleList([nn.TransformerBlock(c.n_embd, c.n_head, causal=False, rng=rng,
                                                    dtype=dtype) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd, dtype=dtype)
        # BERT's masked-LM head: transform (dense - GELU - LayerNorm), then the decoder.
        self.head = nn.Sequential(nn.Linear(c.n_embd, c.n_embd, rng=rng, dtype=dtype),
                                  nn.GELU(), nn.LayerNorm(c.n_embd, dtype=dtype),
                                  nn.Linear(c.n_embd, c.vocab_size, rng=rng, dtype=dtype))
        _normal_init_(self, 0.02, rng)

    def training_data(self, corpus):
        """Non-overlapping windows of ``block_size`` ids of the training split (N, T)."""
        return text_windows(corpus.train_ids, self.config.block_size)

    def mask_tokens(self, ids, rng):
        """BERT's 80/10/10 corruption of int ids (B, T): ``(inputs, targets)``, int64 (B, T)
        host arrays.

        Per row, exactly n = max(1, round(mask_prob T)) positions are chosen uniformly (the
        n smallest of T uniform draws). A chosen position's input is [MASK] (``mask_id``)
        with probability ``mask_token_prob``, a token drawn uniformly from the V real ones
        with ``random_token_prob``, else unchanged; its target is the original token.
        Positions not chosen keep their token and get the target -100 (ignored).
        """
        c = self.config
        ids = to_device(_check_ids("MaskedLM.mask_tokens", ids, c.vocab_size), "cpu")
        rng = get_generator(rng)
        B, T = ids.shape
        # The draws, in this order (a port fed them reproduces the corruption exactly).
        noise, u = rng.random((B, T)), rng.random((B, T))
        random_ids = rng.integers(0, c.vocab_size, size=(B, T))
        return bert_masking(ids, noise, u, random_ids, mask_id=self.mask_id,
                            mask_prob=c.mask_prob, mask_token_prob=c.mask_token_prob,
                            random_token_prob=c.random_token_prob)

    def hidden(self, idx):
        """Final hidden states (B, T, C) of int ids (B, T) (which may contain ``mask_id``)."""
        idx = _check_ids("MaskedLM", idx, self.config.vocab_size + 1, self.config.block_size)
        x = self.drop(self.wpe(self.wte(idx)))                 # (B, T, C)
        for block in self.h:
            x = block(x)                                        # (B, T, C)
        return self.ln_f(x)                                     # (B, T, C)

    def forward(self, idx):
        """Logits (B, T, V) over the real tokens at every position."""
        return self.head(self.hidden(idx))                      # (B, T, V)

    def training_step(self, batch, rng):
        """``batch``: int ids (B, T), T <= block_size. Masks them with ``rng`` and returns the
        masked-LM loss and the accuracy at the chosen positions."""
        inputs, targets = self.mask_tokens(batch, rng)          # (B, T) each
        inputs, targets = dist.shard(inputs, targets)           # this rank's rows
        logits = self(inputs)                                   # (B, T, V)
        B, T, V = logits.shape
        flat_t = get_array_module(logits.data).asarray(targets.reshape(-1))
        loss = F.cross_entropy(logits.reshape(B * T, V), flat_t, ignore_index=IGNORE_INDEX)
        chosen = targets != IGNORE_INDEX
        pred = to_device(logits.data.argmax(axis=-1), "cpu")
        return loss, {"mlm_accuracy": float((pred[chosen] == targets[chosen]).mean())}

    def features(self, x, batch_size=256):
        """Mean over positions of the final hidden states of the uncorrupted ids (N, T):
        float32 (N, n_embd)."""
        was_training = self.training
        self.eval()
        out = []
        with no_grad():
            for i in range(0, len(x), batch_size):
                out.append(self.hidden(x[i:i + batch_size]).mean(dim=1).numpy())
        self.train(was_training)
        return np.concatenate(out).astype(np.float32)


def build_mlm(corpus, **overrides):
    """A ``MaskedLM`` for a ``TextCorpus`` (vocab_size from the corpus; ``overrides`` set other
    fields of ``MaskedLMConfig`` and may include ``rng``)."""
    rng = overrides.pop("rng", None)
    return MaskedLM(MaskedLMConfig(vocab_size=corpus.vocab_size, **overrides), rng=rng)


class TwoPhaseWindows:
    """Training windows per step in BERT's two sequence lengths (App. A.2: length 128 for
    90 % of the steps, then 512 "to learn the positional embeddings"): for the first
    ``round(short_fraction steps)`` steps, ``batch_size block_size // short_block`` windows
    of ``short_block`` ids (the same number of ids per step), then ``batch_size`` windows of
    ``block_size``; each drawn uniformly with replacement from the non-overlapping windows
    of ``ids``. ``short_fraction=0`` is one phase of full windows.

    Why: on characters, a masked position must find its neighbours, and at initialisation
    attention averages over the whole window, so a neighbour's share of the signal is 1/T.
    At T = 64 the masked LM sits at the unigram loss for a number of steps that varies with
    the seed (over 500 for one), in minissl and in PyTorch alike; at T = 16 it leaves it
    within about a hundred (docs/faithful.md has the figures).
    """

    def __init__(self, ids, steps, block_size, batch_size, short_block=16,
                 short_fraction=0.9):
        if not 0 < short_block <= block_size or not 0 <= short_fraction <= 1:
            raise ValueError(f"TwoPhaseWindows: need 0 < short_block <= block_size and "
                             f"short_fraction in [0, 1], got {short_block}, {block_size} and "
                             f"{short_fraction}")
        self.long = text_windows(ids, block_size)               # (N, block_size)
        self.short = text_windows(ids, short_block)             # (N', short_block)
        self.switch = int(round(steps * short_fraction))        # first step of phase 2
        self.batch_size = batch_size
        self.short_batch = max(1, batch_size * block_size // short_block)

    def __call__(self, step, rng):
        """The int64 windows (B, T) of training step ``step``, drawn with ``rng``."""
        windows, n = ((self.short, self.short_batch) if step < self.switch
                      else (self.long, self.batch_size))
        return windows[get_generator(rng).integers(0, len(windows), n)]


def bert_masking(ids, noise, u, random_ids, *, mask_id, mask_prob=0.15, mask_token_prob=0.8,
                 random_token_prob=0.1):
    """BERT's 80/10/10 corruption of int ids (B, T) from explicit random draws: ``noise`` and
    ``u`` uniform [0, 1) floats (B, T), ``random_ids`` ints (B, T) in [0, V). Returns
    ``(inputs, targets)`` int64 (B, T).

    Per row the n = max(1, round(mask_prob T)) positions with the smallest ``noise`` are
    chosen; a chosen position becomes ``mask_id`` where u < mask_token_prob, its
    ``random_ids`` entry where mask_token_prob <= u < mask_token_prob + random_token_prob,
    else stays; targets are the original ids at chosen positions, -100 elsewhere.
    """
    ids = np.asarray(ids)
    B, T = ids.shape
    n = max(1, int(round(T * mask_prob)))                   # BERT's num_to_predict
    order = np.argsort(noise, axis=1)                       # a random permutation per row
    chosen = np.zeros((B, T), dtype=bool)
    np.put_along_axis(chosen, order[:, :n], True, axis=1)   # (B, T), n True per row
    to_mask = chosen & (u < mask_token_prob)
    to_random = chosen & (u >= mask_token_prob) & (u < mask_token_prob + random_token_prob)
    inputs = np.where(to_mask, mask_id, np.where(to_random, random_ids, ids))
    targets = np.where(chosen, ids, IGNORE_INDEX)
    return inputs.astype(np.int64), targets.astype(np.int64)


# ------------------------------------------------------------------------------------------
# Masked autoencoder (MAE)
# ------------------------------------------------------------------------------------------

def patchify(imgs, p):
    """Images (B, C, H, W) -> patches (B, L, p p C), L = (H/p)(W/p) in row-major order; each
    patch lists its pixels row by row with the channels innermost (official ``nhwpqc``).

    Works on NumPy or CuPy arrays (the MAE target is data, not a graph)."""
    if imgs.ndim != 4 or imgs.shape[2] % p or imgs.shape[3] % p:
        raise ValueError(f"patchify: expected images (B, C, H, W) with H and W divisible by "
                         f"the patch size {p}, got shape {tuple(imgs.shape)}")
    B, C, H, W = imgs.shape
    h, w = H // p, W // p
    x = imgs.reshape(B, C, h, p, w, p).transpose(0, 2, 4, 3, 5, 1)   # (B, h, w, p, p, C)
    return x.reshape(B, h * w, p * p * C)


def unpatchify(x, p, channels, grid=None):
    """Inverse of ``patchify``: patches (B, L, p p C) -> images (B, C, h p, w p); ``grid`` is
    (h, w), by default square (h = w = sqrt(L))."""
    B, L, P = x.shape
    if grid is None:
        h = w = int(round(math.sqrt(L)))
    else:
        h, w = grid
    if h * w != L or P != p * p * channels:
        raise ValueError(f"unpatchify: patches of shape {tuple(x.shape)} do not form a "
                         f"{h}x{w} grid of {p}x{p}x{channels} patches")
    x = x.reshape(B, h, w, p, p, channels).transpose(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(B, channels, h * p, w * p)


def sincos_pos_embed_2d(dim, grid_size):
    """Fixed 2-D sine-cosine position embedding (L, dim), L = grid_size^2 (MAE / MoCo v3).

    The first dim/2 columns encode the column index x, the last dim/2 the row index y, each
    as [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k / (dim/4)), k = 0..dim/4 - 1 (the
    official ``get_2d_sincos_pos_embed``, whose meshgrid puts the column index first).
    """
    if dim % 4:
        raise ValueError(f"sincos_pos_embed_2d: dim must be divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))   # (dim/4,)
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")

    def embed(pos):                                            # (L,) -> (L, dim/2)
        out = pos.reshape(-1, 1) * omega                       # (L, dim/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([embed(cols), embed(rows)], axis=1)  # (L, dim)


def random_masking(noise, len_keep):
    """Per-sample random masking by argsort of the noise (B, L) (official ``random_masking``):

        ids_shuffle = argsort(noise)           small noise is kept, large is removed
        ids_restore = argsort(ids_shuffle)     so ids_shuffle[ids_restore] = 0..L-1
        ids_keep    = ids_shuffle[:, :len_keep]
        mask[b, l]  = 0 for the kept patches, 1 for the removed ones (original order)

    The noise is an argument so that a port fed the same draws masks the same patches (the
    official code draws ``torch.rand(N, L)``). Returns host arrays ``ids_keep`` int64 (B, K),
    ``mask`` float64 (B, L) with L - K ones per row, ``ids_restore`` int64 (B, L).
    """
    noise = np.asarray(noise)
    if noise.ndim != 2 or not 0 < len_keep <= noise.shape[1]:
        raise ValueError(f"random_masking: expected noise (B, L) and 0 < len_keep <= L, got "
                         f"shape {noise.shape} and len_keep={len_keep}")
    B, L = noise.shape
    ids_shuffle = np.argsort(noise, axis=1, kind="stable")
    ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
    ids_keep = ids_shuffle[:, :len_keep]                        # (B, K)
    mask = np.ones((B, L))
    mask[:, :len_keep] = 0                                      # in shuffled order ...
    mask = np.take_along_axis(mask, ids_restore, axis=1)        # ... unshuffled (B, L)
    return ids_keep.astype(np.int64), mask, ids_restore.astype(np.int64)


def mae_augmentation(size):
    """The official pretraining augmentation (``main_pretrain.py``): ``RandomResizedCrop(size,
    scale=(0.2, 1.0))`` then ``RandomHorizontalFlip()`` (bilinear here, bicubic there)."""
    return augment.Compose([augment.RandomResizedCrop(size, scale=(0.2, 1.0)),
                            augment.RandomHorizontalFlip()])


def _xavier_uniform_(p, fan_in, fan_out, rng):
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    p.data[...] = rng.uniform(-bound, bound, size=p.shape).astype(p.dtype)


def _init_linears_(module, rng):
    """Official MAE init of Linear layers: xavier-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            _xavier_uniform_(m.weight, m.weight.shape[1], m.weight.shape[0], rng)
            if m.bias is not None:
                m.bias.data[...] = 0


@dataclass
class MAEConfig:
    patch_size: int = 2           # p (paper: 16 on 224 px); build() picks one for the image
    embed_dim: int = 64           # encoder width (ViT-L: 1024)
    depth: int = 4                # encoder blocks (ViT-L: 24)
    num_heads: int = 4            # encoder heads (ViT-L: 16)
    decoder_embed_dim: int = 64   # decoder width (paper: 512)
    decoder_depth: int = 2        # decoder blocks (paper: 8; 1 still works, Table 1a)
    decoder_num_heads: int = 4    # decoder heads (paper: 16)
    mlp_ratio: float = 4.0        # MLP hidden width / block width (as ViT)
    mask_ratio: float = 0.75      # fraction of patches removed (paper: 0.75)
    norm_pix: bool = False        # per-patch normalised targets (paper recommends True; see
    #                               the module docstring for why the default here is False)


class ViTEncoder(nn.Module):
    """MAE's encoder: PatchEmbed + fixed sin-cos positions, transformer blocks on the kept
    patches only, LayerNorm.

    ``forward_tokens(x, ids_keep)`` gives the encoded kept patches (B, K, D) (all L patches
    when ``ids_keep`` is None); ``forward(x)`` the features, the mean over all L patches of
    the unmasked image (B, D).
    """

    def __init__(self, img_size, patch_size, in_chans, dim, depth, num_heads, mlp_ratio=4.0,
                 rng=None, dtype=None):
        super().__init__()
        rng = get_generator(rng)
        self.patch_embed = nn.PatchEmbed(img_size, patch_size, in_chans, dim, rng=rng,
                                         dtype=dtype)
        L = self.patch_embed.num_patches
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, self.patch_embed.grid)
                             .reshape(1, L, dim).astype(self.patch_embed.proj.weight.dtype))
        self.blocks = nn.ModuleList([nn.TransformerBlock(dim, num_heads, mlp_ratio, rng=rng,
                                                         dtype=dtype) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, dtype=dtype)
        self.out_dim = dim
        _init_linears_(self, rng)
        w = self.patch_embed.proj.weight                        # (D, C, p, p): like a Linear
        _xavier_uniform_(w, int(np.prod(w.shape[1:])), w.shape[0], rng)

    def forward_tokens(self, x, ids_keep=None):
        x = self.patch_embed(x) + self.pos_embed                # (B, L, D)
        if ids_keep is not None:
            xp = get_array_module(x.data)
            rows = xp.arange(x.shape[0])[:, None]               # (B, 1)
            x = x[rows, xp.asarray(ids_keep)]                   # (B, K, D), kept patches only
        return self.encode(x)

    def encode(self, x):
        """The blocks and the final LayerNorm over tokens x (B, T, D) (shared with the ViTs
        of MoCo v3 and SimMIM, which build their tokens differently)."""
        for block in self.blocks:
            x = block(x)
        return self.norm(x)                                     # (B, T, D)

    def forward(self, x):
        return self.forward_tokens(x).mean(dim=1)              # (B, D)


class MAE(SSLMethod):
    """Masked autoencoder with a ViT encoder (see the module docstring)."""

    name = "mae"

    def __init__(self, image_shape, config=None, rng=None, dtype=None, transform=None):
        super().__init__()
        self.config = c = config or MAEConfig()
        C, H, W = image_shape
        if H != W:
            raise ValueError(f"MAE: images must be square, got shape {image_shape}")
        if H % c.patch_size:
            raise ValueError(f"MAE: patch_size {c.patch_size} does not divide the image size "
                             f"{H}")
        if not 0 <= c.mask_ratio < 1:
            raise ValueError(f"MAE: mask_ratio must be in [0, 1), got {c.mask_ratio}")
        rng = get_generator(rng)
        self.transform = transform or mae_augmentation(H)       # applied in training_step
        self.image_shape = (C, H, W)
        self.grid = H // c.patch_size
        self.num_patches = L = self.grid ** 2
        self.len_keep = int(L * (1 - c.mask_ratio))             # official: int(L (1 - ratio))
        if self.len_keep < 1:
            raise ValueError(f"MAE: {L} patches at mask_ratio {c.mask_ratio} leave none "
                             "visible; use a smaller patch_size or mask_ratio")
        self.encoder = ViTEncoder(H, c.patch_size, C, c.embed_dim, c.depth, c.num_heads,
                                  c.mlp_ratio, rng=rng, dtype=dtype)
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim, rng=rng, dtype=dtype)
        dt = self.decoder_embed.weight.dtype
        self.mask_token = nn.Parameter(rng.normal(0.0, 0.02, size=(1, 1, c.decoder_embed_dim))
                                       .astype(dt))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(
            c.decoder_embed_dim, self.grid).reshape(1, L, c.decoder_embed_dim).astype(dt))
        self.decoder_blocks = nn.ModuleList([
            nn.TransformerBlock(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio, rng=rng,
                                dtype=dtype) for _ in range(c.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, dtype=dtype)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_size ** 2 * C, rng=rng,
                                      dtype=dtype)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_pred):
            _init_linears_(m, rng)

    # -- patches and masks ---------------------------------------------------------------

    def patchify(self, imgs):
        """(B, C, H, W) -> (B, L, p p C) arrays (see the module-level ``patchify``)."""
        return patchify(imgs, self.config.patch_size)

    def unpatchify(self, x):
        """(B, L, p p C) -> (B, C, H, W) arrays."""
        return unpatchify(x, self.config.patch_size, self.image_shape[0])

    def random_masking(self, batch_size, rng, noise=None):
        """``random_masking(noise, len_keep)`` (module level) with ``noise`` (B, L) uniform
        draws, by default ``rng.random((batch_size, L))``."""
        if noise is None:
            noise = get_generator(rng).random((batch_size, self.num_patches))   # (B, L)
        return random_masking(noise, self.len_keep)

    # -- encoder and decoder -------------------------------------------------------------

    def forward_decoder(self, latent, ids_restore):
        """Encoded kept patches (B, K, D) -> predicted patches (B, L, p p C)."""
        x = self.decoder_embed(latent)                          # (B, K, Dd)
        B, K, Dd = x.shape
        xp = get_array_module(x.data)
        # The shared mask token at the L - K removed places (broadcast; its gradient sums).
        fill = self.mask_token + xp.zeros((B, self.num_patches - K, Dd), dtype=x.dtype)
        x = cat([x, fill], dim=1)                               # (B, L, Dd), shuffled order
        rows = xp.arange(B)[:, None]
        x = x[rows, xp.asarray(ids_restore)]                    # (B, L, Dd), original order
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))          # (B, L, p p C)

    def forward(self, x, rng, noise=None):
        """``(pred, mask)``: predicted patches (B, L, p p C) Tensor and mask (B, L) host array
        for a random masking of images x (B, C, H, W) by ``noise`` (B, L), by default drawn
        from ``rng``."""
        x = self.as_input(x)
        self._check_images(x)
        ids_keep, mask, ids_restore = self.random_masking(x.shape[0], rng, noise)
        latent = self.encoder.forward_tokens(x, ids_keep)      # (B, K, D)
        return self.forward_decoder(latent, ids_restore), mask

    def training_step(self, x, rng):
        """Augments the images x (B, C, H, W) with ``self.transform`` (the official crop and
        flip), then masks them with noise (B, L) drawn from ``rng`` after the augmentation's
        draws. Data-parallel: both are drawn for the global batch; this rank keeps its rows."""
        if isinstance(x, Tensor):
            x = x.data
        self._check_images(x)
        rng = get_generator(rng)
        x = self.transform(x, rng)                              # (B, C, H, W)
        noise = rng.random((len(x), self.num_patches))          # (B, L)
        x, noise = dist.shard(x, noise)                         # this rank's rows
        x = self.as_input(x)
        pred, mask = self(x, rng, noise)                        # (B, L, P), (B, L)
        target = Tensor(self.patchify(x.data))                  # (B, L, P), a constant
        loss = losses.mae_loss(pred, target, mask, norm_pix=self.config.norm_pix)
        return loss, {}

    # -- evaluation ----------------------------------------------------------------------

    def reconstruct(self, x, rng):
        """Reconstruct images x (B, C, H, W) from a random 25 % of their patches.

        Returns host float32 arrays ``(prediction, mask, pasted)``: the decoder's prediction
        of every patch as an image (B, C, H, W) (with ``norm_pix`` it is mapped back to
        pixels with each true patch's mean and std, which the model did not see); the mask
        as an image (B, 1, H, W), 1 where a patch was removed; and ``pasted``, the visible
        patches of x with the prediction in the removed ones.
        """
        was_training = self.training
        self.eval()
        with no_grad():
            xt = self.as_input(x)
            pred, mask = self(xt, rng)
            pred = to_device(pred.data, "cpu").astype(np.float64)   # (B, L, P)
        self.train(was_training)
        imgs = to_device(xt.data, "cpu").astype(np.float64)
        if self.config.norm_pix:
            target = self.patchify(imgs)
            mean = target.mean(axis=-1, keepdims=True)
            var = target.var(axis=-1, ddof=1, keepdims=True)
            pred = pred * np.sqrt(var + 1e-6) + mean
        P = pred.shape[-1]
        prediction = self.unpatchify(pred)
        mask_patches = np.repeat(mask[:, :, None], P // self.image_shape[0], axis=2)
        mask_img = unpatchify(mask_patches, self.config.patch_size, 1)       # (B, 1, H, W)
        pasted = imgs * (1 - mask_img) + prediction * mask_img
        return (prediction.astype(np.float32), mask_img.astype(np.float32),
                pasted.astype(np.float32))

    def reconstruction_mse(self, x, rng=0, *, batch_size=256):
        """Mean squared pixel error over the removed patches of images x (N, C, H, W) (in
        pixel space, also with ``norm_pix``); each image gets a random mask drawn from
        ``rng`` (a seed by default, so repeated calls score the same masks)."""
        rng = get_generator(rng)
        sq, count = 0.0, 0.0
        for i in range(0, len(x), batch_size):
            xb = to_device(x[i:i + batch_size], "cpu").astype(np.float64)
            prediction, mask_img, _ = self.reconstruct(xb, rng)
            sq += float((((prediction - xb) ** 2) * mask_img).sum())
            count += float(mask_img.sum()) * xb.shape[1]
        return sq / count

    def _check_images(self, x):
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"MAE: expected images (B, {', '.join(map(str, self.image_shape))})"
                             f", got shape {tuple(x.shape)}")


def choose_patch_size(image_size, max_grid=8):
    """The smallest patch size p >= 2 that divides ``image_size`` with a grid of at most
    ``max_grid`` patches a side: 2 for 8x8 digits (4x4 patches), 4 for 28 or 32 px (7x7,
    8x8); the whole image (one patch) when no smaller size qualifies."""
    for p in range(2, image_size + 1):
        if image_size % p == 0 and image_size // p <= max_grid:
            return p
    return image_size


def build_mae(data, **overrides):
    """An ``MAE`` for an image ``Dataset``; the patch size is chosen for the image unless
    ``overrides`` (fields of ``MAEConfig``, and ``rng``) set it."""
    rng = overrides.pop("rng", None)
    C, H, W = data.image_shape
    overrides.setdefault("patch_size", choose_patch_size(H))
    return MAE(data.image_shape, MAEConfig(**overrides), rng=rng)


def build(data, **overrides):
    """The masking method for ``data``: ``MaskedLM`` for a ``TextCorpus``, ``MAE`` for an
    image ``Dataset``."""
    from ..data import TextCorpus
    if isinstance(data, TextCorpus):
        return build_mlm(data, **overrides)
    if hasattr(data, "image_shape"):
        return build_mae(data, **overrides)
    raise TypeError(f"masked.build: expected a TextCorpus or an image Dataset, got "
                    f"{type(data).__name__}")
