"""Masked video (VideoMAE) on ``moving_shapes`` in minissl and the same recipe written with
``torch.nn`` in PyTorch: reconstruction of the hidden pixels of the test clips against the
trivial fill, and a linear probe of the motion direction on the frozen features.

Both libraries get the same clips, the same batches and the same masks (``VideoMAE.masks``
from the same seeded generators, in NumPy); minissl runs its method's own ``training_step``,
PyTorch the same model written with ``torch.nn`` (Conv3d tubelet embedding, fixed sinusoid
positions, ``nn.TransformerEncoderLayer(norm_first=True, activation="gelu")`` blocks, the
MAE init of the Linear layers). Test error and probe are computed the same way for both:
``VideoMAE.eval_seed``'s masks, the squared error on the hidden pixels; features = the
method's (``VideoMAE.features``: all the encoder's tokens on the whole clip; ``--set
pool=mean`` for the official fine-tuning read-out, fc_norm of their mean), probed by
``evaluate.few_label_probe`` (100 labels per class, ``--draws`` draws of them, 2 unless
told; raw pixels are probed on the same draws, the baseline). The recipe is ``BATCH``,
``LR`` and ``VARIANTS`` below: Adam, batch 32, a linear warm-up of one epoch and a cosine
decay over ``--epochs`` (10), one CPU thread. PyTorch draws its own initial weights, or
with ``--torch-init minissl`` starts from minissl's for the seed (then only the library
that trains differs).

    python benchmarks/bench_video.py --variant tube frame --seeds 0 1 2 [--library minissl]
    python benchmarks/bench_video.py --library pytorch --torch-init minissl --seeds 0 1 2
    python benchmarks/bench_video.py --diagnose      # is the data learnable? (PyTorch)
"""
import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import argparse
import functools
import math

import numpy as np

from minissl import data, evaluate, methods, optim, random
from minissl.methods.videomae import VideoMAEConfig, mask_indices, sinusoid_table

BATCH, LR, LABELS = 32, 1e-3, 100
DRAWS = 2    # draws of the labelled clips per probe (``--draws``)
VARIANTS = {                                   # VideoMAEConfig overrides
    "tube": {},                                # the defaults: tube masking, tubelets of 2
    "frame": {"mask_type": "random", "tubelet_size": 1, "mask_ratio": 0.75},
}


def load():
    return data.moving_shapes(seed=0)


def lr_at(step, total, warmup):
    """Linear warm-up then cosine decay to 0 (the CLI's ``--schedule cosine``)."""
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def steps(d, epochs, seed):
    """(step, clips, generator of the step's masks) in the order both runs use."""
    per_epoch = len(d.train_x) // BATCH
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(d.train_x))
        for i in range(per_epoch):
            yield (epoch * per_epoch + i, d.train_x[order[i * BATCH:(i + 1) * BATCH]],
                   np.random.default_rng([seed, epoch, i]))


def scores(ref, d, predict, features):
    """(test error on the hidden pixels, trivial fill's, probe per draw) of a model given
    as ``predict(clips, mask) -> tokens`` and ``features(clips) -> (B, D)``."""
    x = d.test_x.astype(np.float64)
    mask = ref._eval_masks(len(x), None)
    err = ((predict(d.test_x, mask) - ref.targets(x)) ** 2).mean(-1)
    mse = float((err * mask).sum() / mask.sum())
    tr, te = features(d.train_x), features(d.test_x)
    return mse, ref.baseline_mse(d.test_x), probe(tr, te, d)


def probe(train_features, test_features, d):
    """The few-label linear probe of the direction, one accuracy per draw (``DRAWS``); draw k
    is the same labelled clips for every model (``few_label_probe``'s draw k)."""
    return np.array([evaluate.few_label_probe(train_features, d.train_y, test_features,
                                              d.test_y, LABELS, draws=1, seed=k)[0]
                     for k in range(DRAWS)])


def show_probe(accs):
    draws = f" (draws {' '.join(f'{a:.3f}' for a in accs)})" if len(accs) > 1 else ""
    return f"{accs.mean():.3f} +- {accs.std():.3f}{draws}"


def pixels(x):
    return x.reshape(len(x), -1)


def batched(fn, x, n=250):
    return np.concatenate([fn(x[i:i + n]) for i in range(0, len(x), n)])


def minissl_run(d, variant, epochs, seed):
    random.manual_seed(seed)
    m = methods.build("videomae", d, **VARIANTS[variant])
    opt = optim.Adam(m.trainable_parameters(), lr=LR)
    total, warmup = epochs * (len(d.train_x) // BATCH), len(d.train_x) // BATCH
    for step, x, rng in steps(d, epochs, seed):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, warmup)
        opt.zero_grad()
        loss, _ = m.training_step(x, rng)
        loss.backward()
        opt.step()

    def predict(x, mask):
        return np.concatenate([m._predict(x[i:i + 250].astype(np.float64), mask[i:i + 250])
                               for i in range(0, len(x), 250)])
    return scores(m, d, predict, m.features)


def torch_model(torch, ref):
    """The VideoMAE of ``ref`` (a minissl VideoMAE: its config and shapes) in torch.nn."""
    tnn = torch.nn
    c, (C, T, H, W) = ref.config, ref.video_shape
    N, P = ref.num_tokens, c.tubelet_size * c.patch_size ** 2 * C

    def blocks(dim, heads, depth):
        return tnn.ModuleList([tnn.TransformerEncoderLayer(
            dim, heads, int(dim * c.mlp_ratio), dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True) for _ in range(depth)])

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            D, Dd = c.embed_dim, c.decoder_embed_dim
            k = (c.tubelet_size, c.patch_size, c.patch_size)
            self.patch_embed = tnn.Conv3d(C, D, k, stride=k)
            self.register_buffer("pos", torch.tensor(sinusoid_table(N, D), dtype=torch.float32))
            self.blocks, self.norm = blocks(D, c.num_heads, c.depth), tnn.LayerNorm(D)
            self.decoder_embed = tnn.Linear(D, Dd, bias=False)
            self.mask_token = tnn.Parameter(torch.zeros(1, 1, Dd))
            tnn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
            self.register_buffer("dpos",
                                 torch.tensor(sinusoid_table(N, Dd), dtype=torch.float32))
            self.decoder_blocks = blocks(Dd, c.decoder_num_heads, c.decoder_depth)
            self.decoder_norm, self.head = tnn.LayerNorm(Dd), tnn.Linear(Dd, P)
            for mod in self.modules():   # MAE's init of the Linears (qkv: torch's own,
                if isinstance(mod, tnn.Linear):        # the same xavier over (3 D, D))
                    tnn.init.xavier_uniform_(mod.weight)
                    if mod.bias is not None:
                        tnn.init.zeros_(mod.bias)

        def encode(self, x, keep=None, final_norm=True):    # x (B, C, T, H, W)
            h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos       # (B, N, D)
            if keep is not None:
                h = torch.gather(h, 1, keep[..., None].expand(-1, -1, h.shape[-1]))
            for b in self.blocks:
                h = b(h)
            return self.norm(h) if final_norm else h

        def features(self, x):        # VideoMAE.feature_batch: all tokens, or fc_norm(mean)
            if c.pool == "tokens":
                return self.encode(x).flatten(1)                                # (B, N D)
            h = self.encode(x, final_norm=False).mean(1)
            return tnn.functional.layer_norm(h, h.shape[-1:], eps=1e-6)        # (B, D)

        def forward(self, x, keep, restore):
            h = self.decoder_embed(self.encode(x, keep))                        # (B, K, Dd)
            B, K, Dd = h.shape
            h = torch.cat([h, self.mask_token.expand(B, N - K, Dd)], 1)
            h = torch.gather(h, 1, restore[..., None].expand(-1, -1, Dd)) + self.dpos
            for b in self.decoder_blocks:
                h = b(h)
            return self.head(self.decoder_norm(h))                              # (B, N, P)
    return Net()


# minissl's parameter names -> torch_model's (``TransformerEncoderLayer``'s packed
# in-projection is the [Q | K | V] of ``qkv``; the position tables are buffers of (N, D)).
RENAME = {"ln1": "norm1", "ln2": "norm2", "attn.qkv.weight": "self_attn.in_proj_weight",
          "attn.qkv.bias": "self_attn.in_proj_bias", "attn.proj": "self_attn.out_proj",
          "mlp.0": "linear1", "mlp.2": "linear2", "decoder_pos_embed": "dpos",
          "pos_embed": "pos"}


def torch_state(torch, m):
    """The state dict of ``torch_model(torch, m)`` holding minissl VideoMAE m's values."""
    out = {}
    for name, value in m.state_dict().items():
        for a, b in RENAME.items():
            name = name.replace(a, b)
        out[name] = torch.tensor(np.asarray(value).reshape(
            (-1, value.shape[-1]) if name in ("pos", "dpos") else value.shape))
    return out


def torch_run(d, variant, epochs, seed, init="own"):
    """``init="minissl"``: from minissl's initial weights for the seed (``minissl_run``'s),
    so that the two runs differ only in the library that trains them."""
    import torch
    torch.manual_seed(seed)
    random.manual_seed(seed)
    ref = methods.build("videomae", d, **VARIANTS[variant])   # masks, targets, baseline
    net = torch_model(torch, ref)
    if init == "minissl":
        net.load_state_dict(torch_state(torch, ref), strict=True)
    opt = torch.optim.Adam(net.parameters(), LR)
    total, warmup = epochs * (len(d.train_x) // BATCH), len(d.train_x) // BATCH

    def run(x, mask):
        keep, restore = (torch.from_numpy(a) for a in mask_indices(mask))
        return net(torch.from_numpy(np.ascontiguousarray(x, np.float32)), keep, restore)

    for step, x, rng in steps(d, epochs, seed):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, warmup)
        mask = ref.masks(len(x), rng)
        w = torch.from_numpy(mask)
        err = ((run(x, mask) - torch.from_numpy(ref.targets(x))) ** 2).mean(-1)
        loss = (err * w).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    def predict(x, mask):
        with torch.no_grad():
            return np.concatenate([run(x[i:i + 250], mask[i:i + 250]).double().numpy()
                                   for i in range(0, len(x), 250)])

    def features(x):
        with torch.no_grad():
            return net.features(torch.from_numpy(x)).numpy()
    return scores(ref, d, predict, lambda x: batched(features, x))


def diagnose(d):
    """Is the direction in the clips, for a linear probe and for a small supervised network,
    and how much of the figure does a mask leave visible?"""
    import torch
    tnn = torch.nn

    def show(name, f):
        print(f"linear probe on {name}: {show_probe(probe(f(d.train_x), f(d.test_x), d))}",
              flush=True)

    def track(x):   # per frame the centroid of |pixel - clip median| (the figure), its slope
        fig = np.abs(x[:, 0] - np.median(x[:, 0], axis=(1, 2, 3), keepdims=True))  # (B,T,H,W)
        fig = fig * (fig > 0.2)
        w = fig.sum((2, 3)) + 1e-9
        r, c = np.arange(x.shape[3]), np.arange(x.shape[4])
        pos = np.stack([(fig.sum(3) * r).sum(2) / w, (fig.sum(2) * c).sum(2) / w], -1)
        t = np.arange(x.shape[2]) - (x.shape[2] - 1) / 2
        return (pos * t[None, :, None]).sum(1) / (t ** 2).sum()     # (B, 2) px per frame

    show("raw pixels", pixels)
    show("frame differences", lambda x: np.diff(x, axis=2).reshape(len(x), -1))
    show("the figure's velocity (centroid track, 2 numbers)", track)
    torch.manual_seed(0)
    for k in (LABELS, None):
        idx = (np.arange(len(d.train_x)) if k is None else
               data.per_class_subset(d.train_y, k, seed=0))
        net = tnn.Sequential(tnn.Conv3d(1, 16, 3, padding=1), tnn.ReLU(),
                             tnn.Conv3d(16, 32, 3, stride=2, padding=1), tnn.ReLU(),
                             tnn.Conv3d(32, 32, 3, stride=2, padding=1), tnn.ReLU(),
                             tnn.AdaptiveAvgPool3d(1), tnn.Flatten(), tnn.Linear(32, 8))
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        x, y = torch.from_numpy(d.train_x[idx]), torch.from_numpy(d.train_y[idx])
        for epoch in range(40):
            order = torch.randperm(len(x))
            for i in range(0, len(x), BATCH):
                j = order[i:i + BATCH]
                loss = tnn.functional.cross_entropy(net(x[j]), y[j])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            acc = (net(torch.from_numpy(d.test_x)).argmax(1).numpy() == d.test_y).mean()
        print(f"supervised 3-D CNN, {'all' if k is None else k} labels per class: {acc:.3f}",
              flush=True)
    for variant in VARIANTS:
        for pool in ("mean", "tokens"):
            random.manual_seed(0)
            ref = methods.build("videomae", d, **dict(VARIANTS[variant], pool=pool))
            show(f"{variant}: the untrained encoder (pool {pool})", ref.features)
        mask = ref._eval_masks(len(d.test_x), None)
        x = d.test_x.astype(np.float64)
        tok = ref.targets(x)                                           # (B, N, P)
        fig = ref.targets(np.abs(x - np.median(x, axis=(1, 2, 3, 4), keepdims=True)) > 0.2)
        seen = (fig.any(-1) * (1 - mask)).any(1).mean()
        hidden = mask[..., None] * np.ones_like(tok)
        oracle = (tok * hidden).sum((1, 2)) / hidden.sum((1, 2))        # mean of hidden pixels
        err = (((oracle[:, None, None] - tok) ** 2).mean(-1) * mask).sum() / mask.sum()
        print(f"{variant}: {int(ref.num_tokens - mask[0].sum())} of {ref.num_tokens} tokens "
              f"visible; clips with some figure visible: {seen:.3f}; fill with the mean of "
              f"the visible pixels {ref.baseline_mse(d.test_x):.4f}, with the mean of the "
              f"hidden pixels (an oracle) {err:.4f}", flush=True)


def main():
    global DRAWS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=tuple(VARIANTS), nargs="+", default=["tube"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--library", choices=("minissl", "pytorch", "both"), default="both")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a VideoMAEConfig field for every variant, e.g. mask_ratio=0.75")
    ap.add_argument("--torch-init", choices=("own", "minissl"), default="own",
                    help="PyTorch's own initial draws or minissl's weights for the seed")
    ap.add_argument("--draws", type=int, default=DRAWS,
                    help="draws of the 100 labelled clips per class of each probe")
    ap.add_argument("--diagnose", action="store_true", help="probes of the data (PyTorch)")
    args = ap.parse_args()
    if args.draws < 1:
        ap.error(f"--draws must be at least 1, got {args.draws}")
    DRAWS = args.draws
    for item in args.set:
        key, value = item.split("=", 1)
        for over in VARIANTS.values():
            over[key] = type(getattr(VideoMAEConfig, key))(value)
    d = load()
    if args.diagnose:
        return diagnose(d)
    print(f"raw pixels: probe {show_probe(probe(pixels(d.train_x), pixels(d.test_x), d))}",
          flush=True)
    runs = {k: v for k, v in (("minissl", minissl_run), ("pytorch", functools.partial(
        torch_run, init=args.torch_init))) if args.library in (k, "both")}
    for variant in args.variant:
        for lib, run in runs.items():
            got = []
            for s in args.seeds:
                got.append(run(d, variant, args.epochs, s))
                print(f"  {variant} {lib} seed {s}: test error {got[-1][0]:.4f} (fill "
                      f"{got[-1][1]:.4f}), probe {show_probe(got[-1][2])}",
                      flush=True)
            mse, base = np.array([g[:2] for g in got]).T
            acc = np.array([g[2].mean() for g in got])
            print(f"{variant} {lib}: test error {mse.mean():.4f} +- {mse.std():.4f} (fill "
                  f"{base.mean():.4f}), probe {acc.mean():.3f} +- {acc.std():.3f} "
                  f"(seeds {' '.join(map(str, args.seeds))})", flush=True)


if __name__ == "__main__":
    main()
