"""NNCLR, MoCo v3 and SimMIM in minissl and the same recipes written in PyTorch, probed
identically (the few-label linear probe of ``bench_digits.py``), on the digits and on 16 px
``shapes``.

Both libraries get the same batches, the same augmented views and the same SimMIM masks, made by
``minissl.augment`` / ``simmim.mask_generator`` in NumPy from the same seeded generator
(``bench_digits.batches``); each trains with Adam 1e-3, batch 256 (``--batch-size``: SimMIM
on the digits takes 32, since 120 steps of 256 leave it untrained). The recipes (scaled to a
few minutes on one core):

* encoder (NNCLR, MoCo v3): MLP in-256-256, Linear-BN-ReLU twice (the digits' quality-bar
  encoder; for MoCo v3 the ``--encoder mlp`` option, the official ResNet recipe's heads), or
  with ``--encoder conv`` the CNN and the views of ``bench_shapes.py`` (the shapes recipe);
* NNCLR: projector 256-256-256-64 (Linear-BN-ReLU x2, Linear-BN), predictor 64-256-64,
  support set 1024, T 0.2 (``NNCLRConfig`` defaults);
* MoCo v3: projector 256-256-64 (bias-free, BN, last BN without affine), predictor 64-256-64,
  T 0.2, momentum 0.99 -> 1 by a cosine (``MoCoV3Config`` defaults);
* SimMIM: ViT of width 64, 2 blocks, 4 heads, 16 patches (2 px on the digits, 4 px on the
  16 px shapes), masks of squares of one patch at ratio 0.6, 1x1 conv + pixel shuffle, L1
  on the masked pixels; with ``--encoder conv`` the CNN of ``bench_shapes.py`` instead (the
  mask token after its conv-BN-ReLU stem, the masked pixels zeroed, squares of 4 px, its last
  map -> 1x1 conv -> pixel shuffle 4; SimMIM's own views).
  PyTorch's blocks are ``nn.TransformerEncoderLayer(norm_first=True, activation="gelu")``,
  the same pre-LN block, initialised as minissl's ViT (MAE's xavier-uniform, ``xavier_``);
  the decoder's 1x1 convolution keeps each library's default.

``--diagnose`` adds, after each minissl SimMIM run, why it probes as it does (``diagnose``);
``--same-init`` starts PyTorch from minissl's initial weights; ``--finetune EPOCHS`` adds,
after each minissl run, the protocol SimMIM's paper reports: the encoder fine-tuned with a
new linear head on 1, 5, 10 labels per class (``evaluate.finetune``, mean of 3 draws),
and the same from the untrained encoder of that seed.

    python benchmarks/bench_nn_v3_mim.py --method nnclr --data digits --seeds 0 1 2
    python benchmarks/bench_nn_v3_mim.py --method simmim --batch-size 32 --seeds 0 1 2
    python benchmarks/bench_nn_v3_mim.py --method mocov3 --data shapes --encoder conv --epochs 20
    python benchmarks/bench_nn_v3_mim.py --method simmim --data shapes --encoder conv --seeds 0 1 2
    python benchmarks/bench_nn_v3_mim.py --method simmim --data shapes --encoder conv \
        --norm-target-window 5 --libraries minissl --finetune 100 --seeds 0 1 2
"""
import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import argparse
import copy
import functools
import os
import sys

import numpy as np

from minissl import augment, data, evaluate, methods, nn, random
from minissl.methods.base import build_encoder, cosine_tau
from minissl.methods.masked import sincos_pos_embed_2d
from minissl.methods.simmim import SimMIMEncoder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_digits  # noqa: E402
import bench_shapes  # noqa: E402
from bench_digits import BATCH, batches, probe  # noqa: E402
from bench_shapes import WIDTHS, torch_conv_encoder, torch_features  # noqa: E402

RECIPES = ("nnclr", "mocov3", "simmim")
LABELS = (1, 5, 10)
VIT = {"embed_dim": 64, "depth": 2, "num_heads": 4}


def load(name):
    return data.digits() if name == "digits" else bench_shapes.load()


def build(method, d, encoder="mlp", **simmim):
    """``simmim``: fields of SimMIMConfig for SimMIM (``--norm-target-window``)."""
    if method == "simmim" and encoder == "conv":   # bench_shapes.py's CNN, SimMIM's views
        return methods.build("simmim", d, encoder=bench_shapes.conv_encoder(d.image_shape[0]),
                             **simmim)
    if method == "simmim":   # patch 2 on the 8x8 digits, 4 on the 16 px shapes: 16 tokens
        return methods.build("simmim", d, patch_size=d.image_shape[1] // 4, **VIT, **simmim)
    if encoder == "conv":    # bench_shapes.py's recipe: its CNN and its views
        return bench_shapes.build(method, d)
    return methods.build(method, d, encoder=build_encoder("mlp", d.image_shape)[0])


def minissl_run(d, epochs, method, seed, batch=BATCH, build=build, encoder="mlp"):
    if encoder != "mlp":
        build = functools.partial(build, encoder=encoder)
    _, loss, features = bench_digits.minissl_run(d, epochs, method, seed, build, batch)
    return loss, features


def finetuned(method, d, epochs, draws=3, labels=LABELS):
    """Test accuracy per number of labels per class of ``method``'s encoder fine-tuned with a
    new linear head (``evaluate.finetune``, ``epochs`` epochs), the mean over ``draws`` draws
    of the labelled images, each draw from the same weights; the weights are restored after."""
    start = method.encoder.state_dict()
    out = []
    for k in labels:
        accs = []
        for draw in range(draws):
            method.encoder.load_state_dict(start)
            accs.append(evaluate.finetune(method, d.train_x, d.train_y, d.test_x, d.test_y, k,
                                          epochs=epochs, seed=draw))
        out.append(float(np.mean(accs)))
    method.encoder.load_state_dict(start)
    return out


def untrained(d, method, seed, build=build, encoder="mlp"):
    """The method as ``minissl_run`` builds it for ``seed``, before any training step."""
    random.manual_seed(seed)
    return nn.fuse(build(method, d, encoder=encoder) if encoder != "mlp" else build(method, d))


# ----------------------------------------------------------------------------- PyTorch

def torch_run(d, epochs, method, seed, batch=BATCH, build=build, recipes=None,
              same_init=False, encoder="mlp"):
    """The PyTorch recipe ``recipes[method]`` (by default this file's), given the minissl
    method built for ``d``: its augmentation, masks and sizes are the recipe's. With
    ``same_init`` (SimMIM, MAE) that method is the minissl run's own initialisation (the same
    seed) and PyTorch starts from a copy of its weights: what differs is then only float
    rounding, not the draw of the initial weights. ``encoder`` (NNCLR, MoCo v3): "mlp" or
    bench_shapes.py's "conv"."""
    import torch
    torch.manual_seed(seed)
    random.manual_seed(seed)                 # as bench_digits.minissl_run, before its build
    options = {"same_init": True} if same_init else {}
    if encoder != "mlp":
        options["encoder"] = encoder
    ours = build(method, d, encoder) if encoder != "mlp" else build(method, d)
    run = (recipes or {"nnclr": _torch_nnclr, "mocov3": _torch_mocov3,
                       "simmim": _torch_simmim})[method]
    return run(torch, d, epochs, seed, ours, batch, **options)


def _encoder(tnn, d, kind):
    """The PyTorch twin of ``build``'s encoder: (module, feature width)."""
    if kind == "conv":
        return torch_conv_encoder(), WIDTHS[-1]
    enc = _mlp(tnn, (int(np.prod(d.image_shape)), 256, 256), last_bn="affine")
    enc.append(tnn.ReLU())
    return enc, 256


def _mlp(tnn, dims, bias=True, last_bn=None):
    layers = []
    for i in range(len(dims) - 1):
        layers.append(tnn.Linear(dims[i], dims[i + 1], bias=bias))
        if i < len(dims) - 2:
            layers += [tnn.BatchNorm1d(dims[i + 1]), tnn.ReLU()]
        elif last_bn is not None:
            layers.append(tnn.BatchNorm1d(dims[i + 1], affine=last_bn == "affine"))
    return tnn.Sequential(*layers)


def _train(torch, params, d, epochs, seed, step_fn, end_fn=None, batch=BATCH):
    opt = torch.optim.Adam(params, 1e-3)
    total = epochs * (len(d.train_x) // batch)
    for step, rng, x in batches(d, epochs, seed, batch):
        opt.zero_grad()
        loss = step_fn(x, rng)
        loss.backward()
        opt.step()
        if end_fn is not None:
            end_fn(step, total)
    return loss.item()


def _features(torch, net, flatten=True):
    def features(x):
        return torch_features(torch, net)(x.reshape(len(x), -1) if flatten else x)
    return features


def _views(torch, x, transform, rng, flatten=True):
    return [torch.from_numpy(v.reshape(len(v), -1) if flatten else v)
            for v in augment.two_views(x, transform, rng)]


def _torch_nnclr(torch, d, epochs, seed, ours, batch, encoder="mlp"):
    # solo-learn solo/methods/nnclr.py and solo/losses/nnclr.py, one process.
    tnn, F = torch.nn, torch.nn.functional
    enc, dim = _encoder(tnn, d, encoder)
    proj = _mlp(tnn, (dim, 256, 256, 64), last_bn="affine")
    pred = _mlp(tnn, (64, 256, 64))
    queue = F.normalize(torch.randn(1024, 64), dim=1)
    ptr = [0]

    def loss_of(nn_, p, t=0.2):
        nn_, p = F.normalize(nn_, dim=-1), F.normalize(p, dim=-1)
        return F.cross_entropy(nn_ @ p.T / t, torch.arange(len(p)))

    def step(x, rng):
        v1, v2 = _views(torch, x, ours.transform, rng, encoder == "mlp")
        z1, z2 = proj(enc(v1)), proj(enc(v2))
        p1, p2 = pred(z1), pred(z2)
        z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
        nn1 = queue[(z1 @ queue.T).max(dim=1)[1]]
        nn2 = queue[(z2 @ queue.T).max(dim=1)[1]]
        idx = (ptr[0] + torch.arange(len(z1))) % len(queue)
        queue[idx] = z1.detach()
        ptr[0] = (ptr[0] + len(z1)) % len(queue)
        return loss_of(nn1, p2) / 2 + loss_of(nn2, p1) / 2

    params = [p for net in (enc, proj, pred) for p in net.parameters()]
    return (_train(torch, params, d, epochs, seed, step, batch=batch),
            _features(torch, enc, encoder == "mlp"))


def _torch_mocov3(torch, d, epochs, seed, ours, batch, encoder="mlp"):
    # facebookresearch/moco-v3 moco/builder.py (MoCo_ResNet heads) and main_moco.py.
    tnn, F = torch.nn, torch.nn.functional
    enc, dim = _encoder(tnn, d, encoder)
    proj = _mlp(tnn, (dim, 256, 64), bias=False, last_bn="plain")
    pred = _mlp(tnn, (64, 256, 64), bias=False)
    base = tnn.Sequential(enc, proj)
    momentum = copy.deepcopy(base).requires_grad_(False)
    state = {"m": 0.99}

    def contrastive(q, k, t=0.2):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        return F.cross_entropy(q @ k.T / t, torch.arange(len(q))) * (2 * t)

    def step(x, rng):
        v1, v2 = _views(torch, x, ours.transform, rng, encoder == "mlp")
        q1, q2 = pred(base(v1)), pred(base(v2))
        with torch.no_grad():
            for pm, pb in zip(momentum.parameters(), base.parameters()):
                pm.mul_(state["m"]).add_(pb, alpha=1 - state["m"])
            k1, k2 = momentum(v1), momentum(v2)
        return contrastive(q1, k2) + contrastive(q2, k1)

    def end(step, total):
        state["m"] = cosine_tau(0.99, step + 1, total)

    params = list(base.parameters()) + list(pred.parameters())
    return (_train(torch, params, d, epochs, seed, step, end, batch),
            _features(torch, enc, encoder == "mlp"))


def torch_vit(torch, C, H, p, dim, depth, num_heads, mask_token=True):
    """The PyTorch twin of ``masked.ViTEncoder`` (+ SimMIM's mask token): a pre-LN ViT with
    fixed 2-D sin-cos positions and no [CLS] token, shared by the SimMIM and MAE recipes.
    ``tokens(x, mask, ids_keep)``: SimMIM's mask (B, g, g) swaps patch embeddings for the
    mask token before the positions; MAE's ``ids_keep`` (B, K) keeps those patches only."""
    tnn = torch.nn
    g = H // p

    class ViT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = tnn.Conv2d(C, dim, p, stride=p)
            self.register_buffer("pos", torch.tensor(
                sincos_pos_embed_2d(dim, g), dtype=torch.float32)[None])
            if mask_token:                                              # SimMIM's
                self.mask_token = tnn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.blocks = tnn.ModuleList(tnn.TransformerEncoderLayer(
                dim, num_heads, 4 * dim, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True) for _ in range(depth))
            self.norm = tnn.LayerNorm(dim)

        def tokens(self, x, mask=None, ids_keep=None):
            t = self.patch_embed(x).flatten(2).transpose(1, 2)          # (B, L, D)
            if mask is not None:
                w = mask.flatten(1).unsqueeze(-1).to(t.dtype)
                t = t * (1 - w) + self.mask_token * w
            t = t + self.pos
            if ids_keep is not None:                                    # (B, K, D)
                t = torch.gather(t, 1, ids_keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
            return self.encode(t)

        def encode(self, t):
            for blk in self.blocks:
                t = blk(t)
            return self.norm(t)

        def forward(self, x):
            return self.tokens(x).mean(dim=1)                          # (B, D)

    return ViT()


def xavier_(torch, module):
    """MAE's official ``initialize_weights``, which minissl's ViT (MAE, SimMIM) uses:
    xavier-uniform Linear weights (the attention's
    fused in-projection too, as timm's qkv Linear) with zero biases, and the patch projection
    xavier-uniform as a Linear (its bias keeps Conv2d's default)."""
    for name, w in module.named_parameters():
        if name.startswith("patch_embed"):
            if name.endswith("weight"):
                torch.nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        elif name.endswith("bias"):
            torch.nn.init.zeros_(w)
        elif w.ndim == 2:
            torch.nn.init.xavier_uniform_(w)


def torch_simmim(torch, ours):
    """The PyTorch SimMIM of the minissl ``SimMIM`` ``ours`` (its sizes, augmentation and
    masks): ``(vit, decoder, step)``, ``step(x, rng)`` -> the loss of one batch, drawing from
    ``rng`` as ``SimMIM.training_step``. microsoft/SimMIM ``models/simmim.py`` with a pre-LN
    ViT (fixed sin-cos positions, no [CLS])."""
    tnn, F = torch.nn, torch.nn.functional
    C, H, _ = ours.image_shape
    p, c = ours.patch_size, ours.config
    g, dim = H // p, c.embed_dim
    if not isinstance(ours.encoder, SimMIMEncoder):
        return _torch_simmim_conv(torch, ours)
    vit = torch_vit(torch, C, H, p, dim, c.depth, c.num_heads)
    decoder = tnn.Sequential(tnn.Conv2d(dim, p * p * C, 1), tnn.PixelShuffle(p))
    xavier_(torch, vit)                                  # as minissl's ViT (docs/faithful.md)

    def step(x, rng):
        x = torch.from_numpy(ours.transform(x, rng))
        mask = torch.from_numpy(ours.masks(len(x), rng))                 # (B, g, g)
        z = vit.tokens(x, mask).transpose(1, 2).reshape(len(x), dim, g, g)
        return _simmim_l1(F, x, decoder(z), mask, p, c.norm_target_window)

    return vit, decoder, step


def torch_norm_targets(F, x, window):
    """microsoft/Swin-Transformer ``models/simmim.py``'s ``norm_targets``, written with
    ``avg_pool2d`` as there (minissl's ``losses.simmim_norm_targets`` uses box sums)."""
    pool = dict(kernel_size=window, stride=1, padding=window // 2)
    mean = F.avg_pool2d(x, count_include_pad=False, **pool)
    square_mean = F.avg_pool2d(x ** 2, count_include_pad=False, **pool)
    count = F.avg_pool2d(x.new_ones(x.shape), count_include_pad=True, **pool) * window ** 2
    var = ((square_mean - mean ** 2) * (count / (count - 1))).clamp(min=0)
    return (x - mean) / (var + 1e-6) ** 0.5


def _simmim_l1(F, x, x_rec, mask, p, norm_target_window=0):
    """microsoft/SimMIM ``SimMIM.forward``'s loss: L1 on the pixels of the masked patches
    (the targets normalised first with ``norm_target_window``, as the NORM_TARGET option)."""
    if norm_target_window:
        x = torch_norm_targets(F, x, norm_target_window)
    m = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).to(x.dtype)
    return (F.l1_loss(x, x_rec, reduction="none") * m).sum() / (m.sum() + 1e-5) / x.shape[1]


def _torch_simmim_conv(torch, ours):
    """``torch_simmim`` on bench_shapes.py's CNN (``ours`` built with ``--encoder conv``): the
    masked pixels zeroed, the mask token in place of the stem's (conv-BN-ReLU) output at
    masked positions, the last map -> 1x1 conv -> pixel shuffle. The mask token is a
    parameter of the encoder module, so that its ``parameters()`` list it as the ViT's do."""
    tnn, F = torch.nn, torch.nn.functional
    C, p, s = ours.image_shape[0], ours.patch_size, ours.stride
    enc = torch_conv_encoder(C)
    stem, body = enc[:3], enc[3:-2]                      # conv-BN-ReLU; the rest to the pool
    enc.register_parameter("mask_token", tnn.Parameter(torch.randn(1, WIDTHS[0], 1, 1) * 0.02))
    decoder = tnn.Sequential(tnn.Conv2d(WIDTHS[-1], s * s * C, 1), tnn.PixelShuffle(s))

    def step(x, rng):
        x = torch.from_numpy(ours.transform(x, rng))
        mask = torch.from_numpy(ours.masks(len(x), rng))                 # (B, g, g)
        w = mask.unsqueeze(1).to(x.dtype)                                # (B, 1, g, g)
        pixels = w.repeat_interleave(p, 2).repeat_interleave(p, 3)      # (B, 1, H, W)
        t = stem(x * (1 - pixels))
        t = t * (1 - w) + enc.mask_token * w
        return _simmim_l1(F, x, decoder(body(t)), mask, p, ours.config.norm_target_window)

    return enc, decoder, step


def _torch_simmim(torch, d, epochs, seed, ours, batch, same_init=False, encoder="mlp"):
    # ``encoder`` is already in ``ours`` (the ViT, or the CNN of ``--encoder conv``).
    vit, decoder, step = torch_simmim(torch, ours)
    if same_init:
        copy_weights(torch, ours, simmim_pairs(vit, decoder))
    params = list(vit.parameters()) + list(decoder.parameters())
    return (_train(torch, params, d, epochs, seed, step, batch=batch),
            _features(torch, vit, flatten=False))


# PyTorch parameter names of a ``torch_vit`` block -> minissl's (``nn.TransformerBlock``).
BLOCK = {"norm1.weight": "ln1.weight", "norm1.bias": "ln1.bias",
         "norm2.weight": "ln2.weight", "norm2.bias": "ln2.bias",
         "self_attn.in_proj_weight": "attn.qkv.weight",
         "self_attn.in_proj_bias": "attn.qkv.bias",
         "self_attn.out_proj.weight": "attn.proj.weight",
         "self_attn.out_proj.bias": "attn.proj.bias",
         "linear1.weight": "mlp.0.weight", "linear1.bias": "mlp.0.bias",
         "linear2.weight": "mlp.2.weight", "linear2.bias": "mlp.2.bias"}


def vit_pairs(vit, patch, blocks, norm, mask_token=None):
    """(torch parameter, minissl name) of a ``torch_vit``; ``patch`` None: no patch embed."""
    out = [(vit.norm.weight, f"{norm}.weight"), (vit.norm.bias, f"{norm}.bias")]
    if patch:
        out += [(vit.patch_embed.weight, f"{patch}.weight"),
                (vit.patch_embed.bias, f"{patch}.bias")]
    if mask_token:
        out.append((vit.mask_token, mask_token))
    for i, block in enumerate(vit.blocks):
        params = dict(block.named_parameters())
        out += [(params[t], f"{blocks}.{i}.{m}") for t, m in BLOCK.items()]
    return out


def simmim_pairs(vit, decoder):
    """Every parameter of ``torch_simmim``'s modules with its name in minissl's ``SimMIM``."""
    head = [(decoder[0].weight, "decoder.0.weight"), (decoder[0].bias, "decoder.0.bias")]
    if not hasattr(vit, "blocks"):                       # the CNN: the same layer indices
        return head + [(w, "mask_token" if name == "mask_token" else f"encoder.{name}")
                       for name, w in vit.named_parameters()]
    return vit_pairs(vit, "encoder.patch_embed.proj", "encoder.blocks", "encoder.norm",
                     "encoder.mask_token") + head


def copy_weights(torch, method, pairs):
    """Copies the minissl ``method``'s parameters into the PyTorch ones of ``pairs``, which
    must name each of them once."""
    named = dict(method.named_parameters())
    if sorted(name for _, name in pairs) != sorted(named):
        raise ValueError("copy_weights: the pairs do not name each minissl parameter once")
    with torch.no_grad():
        for tp, name in pairs:
            tp.copy_(torch.from_numpy(np.asarray(named[name].data)))


# ----------------------------------------------------------------------------- diagnosis

def diagnose(m, d, labels=LABELS):
    """Why a trained minissl SimMIM or MAE ``m`` probes as it does: its error on held-out
    masked pixels next to pasting in the mean training image (a fill that needs no model),
    and the probe of the tokens at each depth (mean-pooled) and of the final token map kept
    whole (position by position, L x D features)."""
    x, rng = d.test_x, np.random.default_rng(0)
    mean_image = d.train_x.mean(0, keepdims=True)                       # (1, C, H, W)
    if hasattr(m, "masks"):                                             # SimMIM: L1
        p, mask = m.patch_size, m.masks(len(x), rng)                    # (N, g, g)
        weight = mask.repeat(p, 1).repeat(p, 2)[:, None]                # (N, 1, H, W)
        prediction = m.map_batches(lambda b: m.reconstruct(b, mask[:len(b)]), x, len(x))
        prediction = prediction.reshape(x.shape)
        target = m.targets(x)            # the pixels, or their standardisation
        mean_image = m.targets(d.train_x).mean(0, keepdims=True)

        def error(pred):
            return float((np.abs(pred - target) * weight).sum() / (weight.sum() * x.shape[1]))
    else:                                                               # MAE: MSE
        prediction, weight, _ = m.reconstruct(x, rng)

        def error(pred):
            return float((((pred - x) ** 2) * weight).sum() / (weight.sum() * x.shape[1]))
    kind = "L1" if hasattr(m, "masks") else "MSE"
    print(f"held-out masked pixels, {kind}: model {error(prediction):.4f}, mean training "
          f"image {error(mean_image):.4f}", flush=True)
    enc = m.encoder

    def tokens(b, depth):                                               # (B, L, D)
        t = enc.patch_embed(m.as_input(b)) + enc.pos_embed
        for block in enc.blocks[:depth]:
            t = block(t)
        return t
    rows = [(f"mean of the tokens after {k} block(s)", lambda b, k=k: tokens(b, k).mean(dim=1))
            for k in range(len(enc.blocks) + 1)]
    rows += [("mean of the final normed tokens (features)", lambda b: m.feature_batch(b)),
             ("final normed token map, whole", lambda b: enc.norm(
                 tokens(b, len(enc.blocks))).reshape(len(b), -1))]
    for name, fn in rows:
        accs = probe(lambda a: m.map_batches(fn, a, 1024), d, labels)
        print(f"  {name:44s} probe 1/5/10: " + " ".join(f"{a:.3f}" for a in accs), flush=True)


# ----------------------------------------------------------------------------- main

def main(recipes=RECIPES, build=build, torch_recipes=None, doc=__doc__):
    """Trains each library on the recipe named by ``--method`` over ``--seeds`` and prints
    the probes; another benchmark passes its own ``build`` and PyTorch ``torch_recipes``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--method", choices=recipes, required=len(recipes) > 1, default=recipes[0])
    ap.add_argument("--data", choices=("digits", "shapes"), default="digits")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=BATCH)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--encoder", choices=("mlp", "conv"), default="mlp",
                    help="mlp: each method's own (the MLP of NNCLR and MoCo v3, SimMIM's "
                         "ViT); conv: bench_shapes.py's CNN (NNCLR and MoCo v3 with its views, "
                         "SimMIM with its own)")
    ap.add_argument("--libraries", nargs="+", default=["minissl", "pytorch"],
                    choices=["minissl", "pytorch"])
    ap.add_argument("--same-init", action="store_true",
                    help="SimMIM, MAE: PyTorch starts from minissl's initial weights")
    ap.add_argument("--diagnose", action="store_true",
                    help="after each minissl run, its reconstruction and per-depth probes")
    ap.add_argument("--finetune", type=int, default=0, metavar="EPOCHS",
                    help="minissl runs: also fine-tune the encoder (and the untrained one of "
                         "the same seed) on 1, 5, 10 labels per class, EPOCHS epochs, 3 draws")
    ap.add_argument("--norm-target-window", type=int, default=0, metavar="W",
                    help="SimMIM: targets standardised over W x W squares (odd; the official "
                         "NORM_TARGET option), in both libraries")
    args = ap.parse_args()
    if args.norm_target_window:
        if args.method != "simmim":
            ap.error("--norm-target-window: SimMIM only")
        build = functools.partial(build, norm_target_window=args.norm_target_window)
    d = load(args.data)
    if args.encoder != "mlp" and args.method not in ("nnclr", "mocov3", "simmim"):
        ap.error("--encoder conv: NNCLR, MoCo v3 and SimMIM only")
    if args.diagnose and args.encoder != "mlp":
        ap.error("--diagnose: the ViT recipes only (it probes the tokens at each depth)")
    runs = {"minissl": lambda *a: minissl_run(*a, build=build, encoder=args.encoder),
            "pytorch": lambda *a: torch_run(*a, build=build, recipes=torch_recipes,
                                            same_init=args.same_init, encoder=args.encoder)}
    print(f"raw pixels {args.data} probe 1/5/10: " + " ".join(
        f"{a:.3f}" for a in probe(lambda x: x.reshape(len(x), -1), d, LABELS)), flush=True)
    if args.finetune < 0:
        ap.error("--finetune: EPOCHS must be >= 0")
    accs = {lib: [] for lib in args.libraries}
    tuned = {"trained": [], "untrained": []}
    for seed in args.seeds:
        for lib in args.libraries:
            loss, features = runs[lib](d, args.epochs, args.method, seed, args.batch_size)
            accs[lib].append(probe(features, d, LABELS))
            print(f"{lib:8s} {args.method} {args.data} seed {seed}: final loss {loss:.4f}"
                  f"   probe 1/5/10: " + " ".join(f"{a:.3f}" for a in accs[lib][-1]),
                  flush=True)
            if args.diagnose and lib == "minissl":
                diagnose(features.__self__, d)      # the trained method of ``features``
            if args.finetune and lib == "minissl":
                start = untrained(d, args.method, seed, build, args.encoder)
                for which, m in (("trained", features.__self__), ("untrained", start)):
                    tuned[which].append(finetuned(m, d, args.finetune))
                    print(f"minissl  {args.method} {args.data} seed {seed}: {which} encoder "
                          f"fine-tuned 1/5/10: " + " ".join(f"{a:.3f}" for a in tuned[which][-1]),
                          flush=True)
    for lib in args.libraries:
        print(f"{lib:8s} {args.method} {args.data} over {len(accs[lib])} seed(s): probe "
              "1/5/10 " + bench_digits.seeds_summary(accs[lib]))
    for which, found in tuned.items():
        if found:
            print(f"minissl  {args.method} {args.data} over {len(found)} seed(s): {which} "
                  "encoder fine-tuned 1/5/10 " + bench_digits.seeds_summary(found))


if __name__ == "__main__":
    main()
