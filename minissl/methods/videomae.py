"""Masked video modelling with tube masking (VideoMAE).

Tong, Song, Wang & Wang, "VideoMAE: Masked Autoencoders are Data-Efficient Learners for
Self-Supervised Video Pre-Training", NeurIPS 2022; official code MCG-NJU/VideoMAE
(``modeling_pretrain.py``, ``masking_generator.py``, ``run_mae_pretraining.py``,
``modeling_finetune.py``). It is MAE (``masked.py``) on video, with two changes that the paper
argues make the task hard enough to learn motion:

* Tubelet embedding: the clip (B, C, T, H, W) is cut into tubelets of t frames x p x p pixels
  (the paper's t = 2, p = 16), N = (T/t)(H/p)(W/p) tokens, each embedded by one linear map
  (the official ``Conv3d`` with kernel = stride = (t, p, p); weight (D, C, t, p, p) here too).
  Positions: the fixed 1-D sinusoid table over the N tokens (``get_sinusoid_encoding_table``:
  sin on even and cos on odd dimensions of pos / 10000^(2 floor(j/2) / D)), for the encoder
  and the decoder.
* Tube masking at a very high ratio (0.9): one random spatial mask of int(ratio h w) of the
  h w patch places per clip, the same at every time step (``TubeMaskingGenerator``), so a
  hidden patch cannot be copied from the next frame: the model has to infer where the
  figure moved. ``mask_type="random"`` draws int(ratio N) hidden tokens over the whole clip
  (the paper's "random" ablation, Table 1c); with ``tubelet_size=1`` that is per-frame
  random masking, the frame-by-frame MAE this file is compared against.

The encoder (a ViT) sees the visible tokens only; the decoder gets them plus a shared mask
token at every hidden place and predicts every token's pixels; the loss is the mean squared
error over the hidden tokens of the pixels (with ``norm_pix``, of the targets normalised per
tubelet, the official default ``normlize_target``).

Features for downstream (``pool``), from the encoder on the unmasked clip: ``"tokens"`` (the
default) is every token of the encoder's output, N D numbers in (time, row, column) order;
``"mean"`` is the official fine-tuning read-out (``use_mean_pooling``: ``fc_norm``, a LayerNorm
at its initial weight 1 and bias 0, of the mean over the N tokens before the encoder's final
norm). The paper evaluates by fine-tuning the whole network on labels, where the network can
learn to carry the motion into the mean; a frozen linear probe cannot, and the mean over space
and time throws away where and when each token was: the order in time that a direction is
made of (measured on ``moving_shapes``, README: the mean probes no better than an untrained
encoder, the tokens above raw pixels; the default ``pool`` is a difference from the official
code, listed in docs/faithful.md).

Differences, on purpose: ``norm_pix`` defaults to False: most tubelets of the procedural
clips are flat background plus pixel noise, which per-tubelet normalisation blows up to
unit-variance noise that no model can predict (measured: the test loss stayed at the 0.97 of
predicting each tubelet's mean); pixel targets keep the figure the thing to predict. With it,
``norm_pix`` normalises each tubelet over all its t p p C values
(``losses.mae_loss``), the official code per channel over t p p (the same for the
one-channel clips here); the pretraining augmentation (multi-scale crop) is left out, the
clips being tiny and procedural; decoder and encoder are MAE's pre-LN blocks; the decoder
predicts all tokens and the loss keeps the hidden ones (the official decoder returns only the
hidden ones: the same numbers).
"""
import math
from dataclasses import dataclass

import numpy as np

from .. import distributed as dist, functional as F, losses, nn
from ..autograd import Tensor, no_grad
from ..backend import get_array_module, to_device
from ..ops.shape import cat
from ..random import get_generator
from .base import SSLMethod, check_batch
from .masked import _init_linears_

__all__ = ["VideoMAEConfig", "VideoMAE", "TubeletEmbed", "tubelet_embed", "tubelet_patchify",
           "tubelet_unpatchify", "sinusoid_table", "tube_mask", "random_token_mask",
           "mask_indices", "build"]


def tubelet_patchify(videos, t, p):
    """Clips (B, C, T, H, W) -> tokens (B, N, t p p C), N = (T/t)(H/p)(W/p) in (time, row,
    column) order, each token's values in (frame, row, column, channel) order (the official
    ``b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)``). NumPy or CuPy arrays."""
    if videos.ndim != 5 or videos.shape[2] % t or videos.shape[3] % p or videos.shape[4] % p:
        raise ValueError(f"tubelet_patchify: expected clips (B, C, T, H, W) with T divisible "
                         f"by {t} and H, W by {p}, got shape {tuple(videos.shape)}")
    B, C, T, H, W = videos.shape
    x = videos.reshape(B, C, T // t, t, H // p, p, W // p, p)
    x = x.transpose(0, 2, 4, 6, 3, 5, 7, 1)                    # (B, T', h, w, t, p, p, C)
    return x.reshape(B, (T // t) * (H // p) * (W // p), t * p * p * C)


def tubelet_unpatchify(x, t, p, shape):
    """Inverse of ``tubelet_patchify`` for clips of ``shape`` (C, T, H, W)."""
    C, T, H, W = shape
    B = x.shape[0]
    x = x.reshape(B, T // t, H // p, W // p, t, p, p, C).transpose(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, C, T, H, W)


def sinusoid_table(n, dim):
    """The official fixed position table (n, dim): entry (pos, j) is sin(pos / 10000^(2
    floor(j/2) / dim)) for even j, cos of the same for odd j."""
    pos = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000.0, 2 * (j // 2) / dim)       # (n, dim)
    return np.where(j % 2 == 0, np.sin(angle), np.cos(angle))


def tube_mask(noise, time_slices, num_masked):
    """Tube masks from noise (B, hw): per clip the ``num_masked`` places with the largest
    noise are hidden at every one of the ``time_slices`` steps. Returns float64 (B, T' h w),
    1 = hidden, in token order (time, row, column)."""
    noise = np.asarray(noise)
    hidden = np.argsort(np.argsort(noise, axis=1, kind="stable"), axis=1, kind="stable") \
        >= noise.shape[1] - num_masked                          # (B, hw): the largest
    return np.tile(hidden.astype(np.float64), (1, time_slices))


def random_token_mask(noise, num_masked):
    """Random masks from noise (B, N): the ``num_masked`` tokens with the largest noise of
    each clip are hidden (the official ``RandomMaskingGenerator``). float64 (B, N)."""
    return tube_mask(noise, 1, num_masked)


def mask_indices(mask):
    """``(ids_keep, ids_restore)`` of masks (B, N) that hide the same number of tokens in
    every row: the visible tokens in their order, then the hidden ones
    (``ids_shuffle = argsort(mask)``, stable), and the permutation that undoes it."""
    ids_shuffle = np.argsort(mask, axis=1, kind="stable")
    keep = int(mask.shape[1] - mask[0].sum())
    return ids_shuffle[:, :keep].astype(np.int64), \
        np.argsort(ids_shuffle, axis=1, kind="stable").astype(np.int64)


class TubeletEmbed(nn.Module):
    """Clips (B, C, T, H, W) -> tokens (B, N, dim): one linear map per tubelet, the official
    Conv3d(C, dim, kernel_size=stride=(t, p, p)) with its weight layout (dim, C, t, p, p) and
    PyTorch's default init, uniform(+-1/sqrt(C t p p)) for weight and bias."""

    def __init__(self, in_chans, dim, tubelet_size, patch_size, rng=None, dtype=None):
        super().__init__()
        rng = get_generator(rng)
        self.t, self.p, self.in_chans = int(tubelet_size), int(patch_size), int(in_chans)
        shape = (dim, self.in_chans, self.t, self.p, self.p)
        bound = 1 / math.sqrt(math.prod(shape[1:]))
        dt = np.dtype(dtype or np.float32)
        self.weight = nn.Parameter(rng.uniform(-bound, bound, shape).astype(dt))
        self.bias = nn.Parameter(rng.uniform(-bound, bound, (dim,)).astype(dt))

    def forward(self, x):
        return tubelet_embed(x, self.weight, self.bias)


def tubelet_embed(x, weight, bias):
    """Conv3d of clips x (B, C, T, H, W) with kernel = stride = weight's (t, p, p): tokens
    (B, N, dim) in ``tubelet_patchify``'s order; weight (dim, C, t, p, p), bias (dim,).

    The clips are data (no gradient), so the tubelets are cut out as a constant with their
    values in the weight's (C, t, p, p) order and the map is one matrix product."""
    data = x.data if isinstance(x, Tensor) else x
    D, C, t, p, _ = weight.shape
    tokens = tubelet_patchify(data, t, p)                        # (B, N, t p p C)
    B, N, _ = tokens.shape
    tokens = tokens.reshape(B, N, t, p, p, C).transpose(0, 1, 5, 2, 3, 4).reshape(B, N, -1)
    return Tensor(tokens) @ weight.reshape(D, -1).transpose(0, 1) + bias   # (B, N, dim)


@dataclass
class VideoMAEConfig:
    patch_size: int = 4           # p, pixels per patch side (paper: 16 on 224 px)
    tubelet_size: int = 2         # t, frames per tubelet (paper: 2)
    mask_type: str = "tube"       # "tube" (the paper's) or "random" (tokens over the clip)
    mask_ratio: float = 0.9       # fraction hidden (paper: 0.9 with tubes; its UCF101
    #                               script and the README's recipe: 0.75)
    embed_dim: int = 64           # encoder width (ViT-B: 768)
    depth: int = 4                # encoder blocks (ViT-B: 12)
    num_heads: int = 4            # encoder heads (ViT-B: 12)
    decoder_embed_dim: int = 64   # decoder width (paper: 384)
    decoder_depth: int = 2        # decoder blocks (paper: 4)
    decoder_num_heads: int = 4    # decoder heads (paper: 6)
    mlp_ratio: float = 4.0        # MLP width / block width
    norm_pix: bool = False        # targets normalised per tubelet (official default: True;
    #                               see the module docstring for why not here)
    pool: str = "tokens"          # features: "tokens" (all, concatenated) or "mean"
    #                               (official fine-tuning fc_norm; see the module docstring)


class VideoMAE(SSLMethod):
    """VideoMAE (see the module docstring) for clips of ``video_shape`` (C, T, H, W)."""

    name = "videomae"
    data_kind = "video"
    eval_seed = 0   # the masks the test reconstruction error uses

    def __init__(self, video_shape, config=None, rng=None, dtype=None):
        super().__init__()
        self.config = c = config or VideoMAEConfig()
        if not isinstance(c, VideoMAEConfig):
            raise TypeError(f"VideoMAE: config must be a VideoMAEConfig, got "
                            f"{type(c).__name__}")
        self.video_shape = C, T, H, W = tuple(int(s) for s in video_shape)
        if T % c.tubelet_size or H % c.patch_size or W % c.patch_size:
            raise ValueError(f"VideoMAE: tubelet_size {c.tubelet_size} must divide the {T} "
                             f"frames and patch_size {c.patch_size} the frame size {H}x{W}")
        if c.pool not in ("tokens", "mean"):
            raise ValueError(f"VideoMAE: pool must be 'tokens' or 'mean', got {c.pool!r}")
        if c.mask_type not in ("tube", "random") or not 0 < c.mask_ratio < 1:
            raise ValueError(f"VideoMAE: need mask_type 'tube' or 'random' and 0 < mask_ratio "
                             f"< 1, got {c.mask_type!r}, {c.mask_ratio}")
        self.time_slices, self.places = T // c.tubelet_size, (H // c.patch_size) * (W //
                                                                                  c.patch_size)
        self.num_tokens = N = self.time_slices * self.places
        per = self.places if c.mask_type == "tube" else N
        self.num_masked = int(c.mask_ratio * per)                # official: int(ratio * ...)
        if self.num_masked in (0, per):
            raise ValueError(f"VideoMAE: mask_ratio {c.mask_ratio} of {per} "
                             f"{'places' if c.mask_type == 'tube' else 'tokens'} hides none or "
                             f"all; change mask_ratio or patch_size")
        rng = get_generator(rng)
        D, Dd = c.embed_dim, c.decoder_embed_dim
        self.patch_embed = TubeletEmbed(C, D, c.tubelet_size, c.patch_size, rng, dtype)
        dt = self.patch_embed.weight.dtype
        self.register_buffer("pos_embed", sinusoid_table(N, D).reshape(1, N, D).astype(dt))
        self.blocks = nn.ModuleList([nn.TransformerBlock(D, c.num_heads, c.mlp_ratio, rng=rng,
                                                         dtype=dtype) for _ in range(c.depth)])
        self.norm = nn.LayerNorm(D, dtype=dtype)
        self.decoder_embed = nn.Linear(D, Dd, bias=False, rng=rng, dtype=dtype)  # official
        self.mask_token = nn.Parameter(np.zeros((1, 1, Dd), dt))    # official: trunc_normal
        self.mask_token.data[...] = rng.normal(0, 0.02, (1, 1, Dd)).clip(-0.02, 0.02)
        self.register_buffer("decoder_pos_embed",
                             sinusoid_table(N, Dd).reshape(1, N, Dd).astype(dt))
        self.decoder_blocks = nn.ModuleList([
            nn.TransformerBlock(Dd, c.decoder_num_heads, c.mlp_ratio, rng=rng, dtype=dtype)
            for _ in range(c.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(Dd, dtype=dtype)
        self.head = nn.Linear(Dd, c.tubelet_size * c.patch_size ** 2 * C, rng=rng, dtype=dtype)
        for m in (self.blocks, self.decoder_embed, self.decoder_blocks, self.head):
            _init_linears_(m, rng)
        self.feature_dim = N * D if c.pool == "tokens" else D

    def training_data(self, data):
        return data.train_x

    # -- masks ----------------------------------------------------------------------------

    def masks(self, n, rng):
        """(n, N) float64 masks, 1 = hidden, of this config's type, drawn from ``rng``."""
        rng = get_generator(rng)
        if self.config.mask_type == "tube":
            return tube_mask(rng.random((n, self.places)), self.time_slices, self.num_masked)
        return random_token_mask(rng.random((n, self.num_tokens)), self.num_masked)

    # -- networks -------------------------------------------------------------------------

    def _check(self, who, x, min_batch=1):
        check_batch(f"VideoMAE.{who}", x, self.video_shape, "clips", min_batch)

    def encode(self, x, ids_keep=None, final_norm=True):
        """Encoder output (B, K, D) of the tokens ``ids_keep`` (B, K) of clips x (all N
        when None); ``final_norm=False``: before the encoder's last LayerNorm."""
        h = self.patch_embed(x) + self.pos_embed                # (B, N, D)
        if ids_keep is not None:
            xp = get_array_module(h.data)
            h = h[xp.arange(h.shape[0])[:, None], xp.asarray(ids_keep)]   # (B, K, D)
        for block in self.blocks:
            h = block(h)
        return self.norm(h) if final_norm else h

    def decode(self, latent, ids_restore):
        """Encoded visible tokens (B, K, D) -> predictions of all tokens (B, N, t p p C)."""
        x = self.decoder_embed(latent)                          # (B, K, Dd)
        B, K, Dd = x.shape
        xp = get_array_module(x.data)
        fill = self.mask_token + xp.zeros((B, self.num_tokens - K, Dd), dtype=x.dtype)
        x = cat([x, fill], dim=1)[xp.arange(B)[:, None], xp.asarray(ids_restore)]  # (B, N, Dd)
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.head(self.decoder_norm(x))                  # (B, N, t p p C)

    def forward(self, x, mask):
        """Predicted tokens (B, N, t p p C) of clips x under ``mask`` (B, N)."""
        ids_keep, ids_restore = mask_indices(mask)
        return self.decode(self.encode(x, ids_keep), ids_restore)

    def targets(self, x):
        """The clips' tokens (B, N, t p p C): what the decoder predicts."""
        return tubelet_patchify(x, self.config.tubelet_size, self.config.patch_size)

    def training_step(self, x, rng):
        if isinstance(x, Tensor):
            x = x.data
        self._check("training_step", x)
        mask = self.masks(len(x), rng)                          # (B, N), the global batch
        x, mask = dist.shard(x, mask)
        x = self.as_input(x)
        pred = self(x, mask)                                    # (B, N, P)
        loss = losses.mae_loss(pred, Tensor(self.targets(x.data)), mask,
                               norm_pix=self.config.norm_pix)
        return loss, {}

    # -- evaluation -----------------------------------------------------------------------

    def _predict(self, x, mask):
        """Host float64 predictions (B, N, P) of clips x under ``mask``, in eval mode."""
        was = self.training
        self.eval()
        with no_grad():
            pred = to_device(self(self.as_input(x), mask).data, "cpu").astype(np.float64)
        self.train(was)
        return pred

    def _target_space(self, x):
        """The tokens the loss compares with: per-tubelet normalised with ``norm_pix``."""
        t = self.targets(x)
        if self.config.norm_pix:
            t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True)
                                                          + 1e-6)
        return t

    def _eval_masks(self, n, rng):
        return self.masks(n, get_generator(self.eval_seed if rng is None else rng))

    def reconstruct(self, x, rng=None):
        """``(prediction, mask)`` host float32 clips (B, C, T, H, W) for clips x: the decoded
        clip and the mask as a clip (1 where hidden); masks from ``rng`` (default
        ``eval_seed``). With ``norm_pix`` the prediction is mapped back to pixels with each
        true tubelet's mean and std, which the model did not see (as MAE's pictures do):
        for pictures, not for scores."""
        self._check("reconstruct", x)
        x = np.asarray(to_device(x, "cpu"), np.float64)
        mask = self._eval_masks(len(x), rng)
        pred, target = self._predict(x, mask), self.targets(x)
        if self.config.norm_pix:
            pred = pred * np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6) \
                + target.mean(-1, keepdims=True)
        c, shape = self.config, self.video_shape
        mask_tokens = np.repeat(mask[:, :, None], target.shape[-1], axis=2)
        return (tubelet_unpatchify(pred, c.tubelet_size, c.patch_size, shape).astype(np.float32),
                tubelet_unpatchify(mask_tokens, c.tubelet_size, c.patch_size, shape)
                .astype(np.float32))

    def reconstruction_mse(self, x, rng=None, batch_size=256):
        """The pretext loss on clips x (N, C, T, H, W): mean squared error over the hidden
        tokens, in the space of the targets (per-tubelet normalised pixels with
        ``norm_pix``, so that no statistic of a hidden tubelet is lent to the model)."""
        self._check("reconstruction_mse", x)
        mask = self._eval_masks(len(x), rng)                    # (N, tokens), drawn at once
        sq = 0.0
        for i in range(0, len(x), batch_size):
            xb = np.asarray(to_device(x[i:i + batch_size], "cpu"), np.float64)
            mb = mask[i:i + batch_size]
            err = ((self._predict(xb, mb) - self._target_space(xb)) ** 2).mean(-1)   # (B, N)
            sq += float((err * mb).sum())
        return sq / float(mask.sum())

    def baseline_mse(self, x, rng=None):
        """The same error for a trivial prediction on the same masks: with ``norm_pix``, 0
        (each hidden tubelet predicted by its own mean); without, every hidden pixel set to
        the mean of the clip's visible pixels."""
        self._check("baseline_mse", x)
        x = np.asarray(to_device(x, "cpu"), np.float64)
        mask = self._eval_masks(len(x), rng)                    # (N, tokens)
        target = self._target_space(x)                          # (N, tokens, P)
        if self.config.norm_pix:
            pred = np.zeros_like(target)
        else:
            visible = (target * (1 - mask[..., None])).sum((1, 2)) / \
                ((1 - mask).sum(1) * target.shape[-1])          # (N,)
            pred = np.broadcast_to(visible[:, None, None], target.shape)
        return float((((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum())

    def heldout_metrics(self, data, limit=500):
        """What ``minissl pretrain`` logs each epoch: the pretext loss on test clips."""
        return {"test_mse": self.reconstruction_mse(data.test_x[:limit])}

    def feature_batch(self, x):
        """Features of unmasked clips: all N tokens of the encoder's output (B, N D), or with
        ``pool="mean"`` the official ``fc_norm(mean of the tokens)`` (B, D), its LayerNorm at
        the initial weight 1 and bias 0 (the official ViT's eps 1e-6)."""
        x = self.as_input(x)
        if self.config.pool == "tokens":
            return self.encode(x).reshape(x.shape[0], -1)       # (B, N D)
        h = self.encode(x, final_norm=False).mean(dim=1)        # (B, D)
        return F.layer_norm(h, h.shape[-1], eps=1e-6)

    def picture_rows(self, x):
        """Frames of the first clip of x: hidden pixels shown grey, prediction, target."""
        pred, mask = self.reconstruct(x[:1])
        clip, pred, mask = x[0].transpose(1, 0, 2, 3), pred[0].transpose(1, 0, 2, 3), \
            mask[0].transpose(1, 0, 2, 3)                          # (T, C, H, W) each
        return [clip * (1 - mask) + 0.5 * mask, pred, clip], ["visible", "output", "target"]


def build(data, **overrides):
    """A ``VideoMAE`` for a ``VideoDataset``; ``overrides`` set ``VideoMAEConfig`` (and may
    include ``rng``)."""
    rng = overrides.pop("rng", None)
    if not hasattr(data, "video_shape"):
        raise TypeError(f"videomae: expected a VideoDataset (clips (N, C, T, H, W)), got "
                        f"{type(data).__name__}")
    return VideoMAE(data.video_shape, VideoMAEConfig(**overrides), rng=rng)
