"""NNCLR, MoCo v3 and SimMIM in minissl and the same recipes written in PyTorch, probed
identically (the few-label linear probe of ``bench_digits.py``), on the digits and on 16 px
``shapes``.

Both libraries get the same batches, the same augmented views and the same SimMIM masks, made by
``minissl.augment`` / ``simmim.mask_generator`` in NumPy from the same seeded generator
(``bench_digits.batches``); each trains with Adam 1e-3, batch 256. The recipes (scaled to a
few minutes on one core):

* encoder (NNCLR, MoCo v3): MLP in-256-256, Linear-BN-ReLU twice (the digits' quality-bar
  encoder; for MoCo v3 the ``--encoder mlp`` option, the official ResNet recipe's heads), or
  with ``--encoder conv`` the CNN and the views of ``bench_shapes.py`` (the shapes recipe);
* NNCLR: projector 256-256-256-64 (Linear-BN-ReLU x2, Linear-BN), predictor 64-256-64,
  support set 1024, T 0.2 (``NNCLRConfig`` defaults);
* MoCo v3: projector 256-256-64 (bias-free, BN, last BN without affine), predictor 64-256-64,
  T 0.2, momentum 0.99 -> 1 by a cosine (``MoCoV3Config`` defaults);
* SimMIM: ViT of width 64, 2 blocks, 4 heads, 16 patches (2 px on the digits, 4 px on the
  16 px shapes), masks of squares of one patch at ratio 0.6, 1x1 conv + pixel shuffle, L1 on the masked pixels.
  PyTorch's blocks are ``nn.TransformerEncoderLayer(norm_first=True, activation="gelu")``,
  the same pre-LN block; initialisations are each library's defaults.

    python benchmarks/bench_nn_v3_mim.py --method nnclr --data digits --seeds 0 1 2
    python benchmarks/bench_nn_v3_mim.py --method mocov3 --data shapes --encoder conv --epochs 20
"""
import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import argparse
import copy
import os
import sys

import numpy as np

from minissl import augment, data, methods
from minissl.methods import simmim
from minissl.methods.base import build_encoder, cosine_tau
from minissl.methods.masked import sincos_pos_embed_2d

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


def build(method, d, encoder="mlp"):
    if method == "simmim":   # patch 2 on the 8x8 digits, 4 on the 16 px shapes: 16 tokens
        return methods.build("simmim", d, patch_size=d.image_shape[1] // 4, **VIT)
    if encoder == "conv":    # bench_shapes.py's recipe: its CNN and its views
        return bench_shapes.build(method, d)
    return methods.build(method, d, encoder=build_encoder("mlp", d.image_shape)[0])


def minissl_run(d, epochs, method, seed, encoder):
    _, loss, features = bench_digits.minissl_run(
        d, epochs, method, seed, lambda m, d_: build(m, d_, encoder))
    return loss, features


# ----------------------------------------------------------------------------- PyTorch

def torch_run(d, epochs, method, seed, encoder):
    import torch
    torch.manual_seed(seed)
    ours = build(method, d, encoder)   # its augmentation (and SimMIM's patch size): the recipe's
    run = {"nnclr": _torch_nnclr, "mocov3": _torch_mocov3, "simmim": _torch_simmim}[method]
    return run(torch, d, epochs, seed, ours, encoder)


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


def _train(torch, params, d, epochs, seed, step_fn, end_fn=None):
    opt = torch.optim.Adam(params, 1e-3)
    total = epochs * (len(d.train_x) // BATCH)
    for step, rng, x in batches(d, epochs, seed):
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


def _torch_nnclr(torch, d, epochs, seed, ours, encoder):
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
    return (_train(torch, params, d, epochs, seed, step),
            _features(torch, enc, encoder == "mlp"))


def _torch_mocov3(torch, d, epochs, seed, ours, encoder):
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
    return (_train(torch, params, d, epochs, seed, step, end),
            _features(torch, enc, encoder == "mlp"))


def _torch_simmim(torch, d, epochs, seed, ours, encoder):
    # microsoft/SimMIM models/simmim.py with a pre-LN ViT (fixed sin-cos positions, no [CLS]).
    tnn, F = torch.nn, torch.nn.functional
    C, H, _ = d.image_shape
    p = ours.patch_size
    g, dim = H // p, VIT["embed_dim"]

    class ViT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = tnn.Conv2d(C, dim, p, stride=p)
            self.register_buffer("pos", torch.tensor(
                sincos_pos_embed_2d(dim, g), dtype=torch.float32)[None])
            self.mask_token = tnn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.blocks = tnn.ModuleList(tnn.TransformerEncoderLayer(
                dim, VIT["num_heads"], 4 * dim, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True) for _ in range(VIT["depth"]))
            self.norm = tnn.LayerNorm(dim)

        def tokens(self, x, mask=None):
            t = self.patch_embed(x).flatten(2).transpose(1, 2)          # (B, L, D)
            if mask is not None:
                w = mask.flatten(1).unsqueeze(-1).to(t.dtype)
                t = t * (1 - w) + self.mask_token * w
            t = t + self.pos
            for blk in self.blocks:
                t = blk(t)
            return self.norm(t)

        def forward(self, x):
            return self.tokens(x).mean(dim=1)

    vit = ViT()
    decoder = tnn.Sequential(tnn.Conv2d(dim, p * p * C, 1), tnn.PixelShuffle(p))

    def step(x, rng):
        x = torch.from_numpy(ours.transform(x, rng))
        mask = torch.from_numpy(simmim.mask_generator(rng, len(x), H, p, p, 0.6))   # (B, g, g)
        z = vit.tokens(x, mask).transpose(1, 2).reshape(len(x), dim, g, g)
        x_rec = decoder(z)
        m = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).to(x.dtype)
        return (F.l1_loss(x, x_rec, reduction="none") * m).sum() / (m.sum() + 1e-5) / C

    params = list(vit.parameters()) + list(decoder.parameters())
    return _train(torch, params, d, epochs, seed, step), _features(torch, vit, flatten=False)


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=RECIPES, required=True)
    ap.add_argument("--data", choices=("digits", "shapes"), default="digits")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--encoder", choices=("mlp", "conv"), default="mlp",
                    help="NNCLR's and MoCo v3's encoder: the MLP, or bench_shapes.py's CNN "
                         "with its views")
    ap.add_argument("--libraries", nargs="+", default=["minissl", "pytorch"],
                    choices=["minissl", "pytorch"])
    args = ap.parse_args()
    d = load(args.data)
    runs = {"minissl": minissl_run, "pytorch": torch_run}
    print(f"raw pixels {args.data} probe 1/5/10: " + " ".join(
        f"{a:.3f}" for a in probe(lambda x: x.reshape(len(x), -1), d, LABELS)), flush=True)
    accs = {lib: [] for lib in args.libraries}
    for seed in args.seeds:
        for lib in args.libraries:
            loss, features = runs[lib](d, args.epochs, args.method, seed, args.encoder)
            accs[lib].append(probe(features, d, LABELS))
            print(f"{lib:8s} {args.method} {args.data} seed {seed}: final loss {loss:.4f}"
                  f"   probe 1/5/10: " + " ".join(f"{a:.3f}" for a in accs[lib][-1]),
                  flush=True)
    for lib in args.libraries:
        a = np.array(accs[lib])
        print(f"{lib:8s} {args.method} {args.data} over {len(a)} seed(s): probe 1/5/10 "
              + " ".join(f"{m:.3f}+-{s:.3f}" for m, s in zip(a.mean(0), a.std(0))))


if __name__ == "__main__":
    main()
