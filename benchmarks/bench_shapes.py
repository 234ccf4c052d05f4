"""What is learnable on 16 px ``shapes``, and the conv recipe the method benchmarks share.

``shapes`` draws each of 10 figures at a random position, size, tilt and pair of colours, so
a linear probe on raw pixels is near chance: the class is in the arrangement of edges, not in
any pixel. This script measures, probed identically (``bench_digits.probe``, 1/5/10 labels
per class), the references a self-supervised run must be read against:

* ``raw``: the pixels;
* ``random``: the conv encoder below at its random initialisation (minissl and PyTorch);
* ``supervised``: the same encoder trained with a linear head on ALL the training labels,
  same views and budget (PyTorch): an upper reference for what the features can hold;
* ``simclr``: SimCLR (a known-good method) with that encoder, minissl and PyTorch.

The recipe (``conv_encoder``, ``augmentation``, ``load``): 2000 training and 500 test images
of 16x16; a plain CNN of three conv3x3-BN-ReLU layers of widths 32, 64, 64 (strides 1, 2, 2)
and a global average pool (64 features); SimCLR's crop of area 0.25 to 1, flip, colour jitter
0.8/0.8/0.8/0.2 with p 0.8, then greyscale with p 0.8 (``augmentation``); batch 256, Adam 1e-3. ``bench_multicrop.py`` and ``bench_nn_v3_mim.py``
use it (``--encoder conv`` in the latter).

``--epochs`` takes several budgets: SimCLR (no schedule over the run) trains once to the
largest and is probed as it passes each (``run_budgets``), the other runs once per budget.

    python benchmarks/bench_shapes.py --what raw random supervised simclr --epochs 20 --seeds 0
    python benchmarks/bench_shapes.py --what simclr --epochs 20 60 120 --seeds 0
"""
import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import argparse
import os
import sys

import numpy as np

from minissl import augment, data, methods, multicrop, nn, optim, random

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_digits  # noqa: E402
from bench_digits import BATCH, batch_rows, batches, probe  # noqa: E402

LABELS = (1, 5, 10)
WIDTHS, STRIDES = (32, 64, 64), (1, 2, 2)
N_TRAIN = 2000


def load(n_train=N_TRAIN):
    return data.shapes(n_train=n_train, n_test=500, size=16, seed=0)


def augmentation(size=16, scale=(0.25, 1.0)):
    """SimCLR's views (Chen et al. 2020, Appendix A: crop, flip, colour jitter of strength 1)
    made for 16 px figures of random colours: greyscale with probability 0.8, not 0.2, so
    that colour, unique to each image, cannot solve the instance task alone; no blur (it
    erases a 16 px figure); crops of at least a quarter of the image keep the figure in view."""
    return augment.Compose([
        augment.RandomResizedCrop((size, size), scale=scale),
        augment.RandomHorizontalFlip(0.5),
        augment.RandomApply(augment.ColorJitter(0.8, 0.8, 0.8, 0.2), p=0.8),
        augment.RandomGrayscale(0.8),
    ])


def shapes_multicrop(n_local=6):
    """DINO's and SwAV's multi-crop for 16 px figures: 2 global views of area 0.4 to 1 at
    16 px and ``n_local`` local views of area 0.05 to 0.4 at 7 px (the official proportions,
    ``multicrop.image_multicrop``), each with the colour pipeline of ``augmentation``."""
    return multicrop.MultiCrop(augmentation(16, (0.4, 1.0)),
                               augmentation(multicrop.local_size(16), (0.05, 0.4)), 2, n_local)


def conv_encoder(in_channels=3):
    """The recipe's encoder in minissl: (B, 3, H, W) -> (B, 64); ``out_dim`` set."""
    layers, c = [], in_channels
    for w, s in zip(WIDTHS, STRIDES):
        layers += [nn.Conv2d(c, w, 3, s, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    enc = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    enc.out_dim = c
    return enc


def build(method, d, transform=None, **overrides):
    """A minissl method on ``conv_encoder`` with the recipe's views (``transform``: default
    ``augmentation()``)."""
    m = methods.build(method, d, encoder=conv_encoder(), **overrides)
    m.transform = transform or augmentation()
    return m


def torch_conv_encoder(in_channels=3):
    """The same encoder written with ``torch.nn``."""
    import torch.nn as tnn
    layers, c = [], in_channels
    for w, s in zip(WIDTHS, STRIDES):
        layers += [tnn.Conv2d(c, w, 3, s, 1, bias=False), tnn.BatchNorm2d(w), tnn.ReLU()]
        c = w
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten())


def torch_features(torch, net):
    """``features(x)`` of a PyTorch encoder in eval mode, as ``SSLMethod.features``."""
    def features(x):
        net.eval()
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return features


# ----------------------------------------------------------------------------- references

def random_minissl(d, epochs, seed):
    minissl.random.manual_seed(seed)
    return build("simclr", d).features      # untrained: the encoder's eval features


def random_torch(d, epochs, seed):
    import torch
    torch.manual_seed(seed)
    return torch_features(torch, torch_conv_encoder())


def supervised_torch(d, epochs, seed):
    import torch
    torch.manual_seed(seed)
    enc = torch_conv_encoder()
    head = torch.nn.Linear(WIDTHS[-1], d.num_classes)
    opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()), 1e-3)
    transform, labels = augmentation(), torch.from_numpy(d.train_y)
    for _, rng, rows in batch_rows(d, epochs, seed):   # the order and views of ``batches``
        logits = head(enc(torch.from_numpy(transform(d.train_x[rows], rng))))
        loss = torch.nn.functional.cross_entropy(logits, labels[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch_features(torch, enc)


def simclr_minissl(d, epochs, seed, at=None):
    """``at(steps, features)``, if given, after every step: a probe of shorter budgets on the
    way (SimCLR has no schedule over the run, so its first n steps are those of an n-step run)."""
    if at is None:
        return bench_digits.minissl_run(d, epochs, "simclr", seed, build)[2]
    random.manual_seed(seed)
    m = nn.fuse(build("simclr", d))              # as bench_digits.minissl_run
    opt = optim.Adam(m.trainable_parameters(), lr=1e-3)
    for step, rng, x in batches(d, epochs, seed):
        opt.zero_grad()
        loss, _ = m.training_step(x, rng)
        loss.backward()
        opt.step()
        at(step + 1, m.features)
    return m.features


def simclr_torch(d, epochs, seed, at=None):
    import torch
    import torch.nn as tnn
    torch.manual_seed(seed)
    enc = torch_conv_encoder()
    proj = tnn.Sequential(tnn.Linear(WIDTHS[-1], 256, bias=False), tnn.BatchNorm1d(256),
                          tnn.ReLU(), tnn.Linear(256, 64, bias=False), tnn.BatchNorm1d(64))
    proj[-1].bias.requires_grad = False              # SimCLR's output BN: scale only
    params = [p for p in list(enc.parameters()) + list(proj.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, 1e-3)
    transform = augmentation()
    for step, rng, x in batches(d, epochs, seed):
        v = torch.from_numpy(np.concatenate(augment.two_views(x, transform, rng)))
        z1, z2 = proj(enc(v)).split(len(x))          # joint batch, as SimCLR's default
        loss = bench_digits.torch_nt_xent(torch, z1, z2, 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if at is not None:
            at(step + 1, torch_features(torch, enc))
            enc.train()                              # torch_features leaves it in eval mode
    return torch_features(torch, enc)


RUNS = {("random", "minissl"): random_minissl, ("random", "pytorch"): random_torch,
        ("supervised", "pytorch"): supervised_torch,
        ("simclr", "minissl"): simclr_minissl, ("simclr", "pytorch"): simclr_torch}


def report(name, lib, accs):
    print(f"{lib:8s} {name} shapes over {len(accs)} seed(s): probe 1/5/10 "
          + bench_digits.seeds_summary(accs), flush=True)


def run_budgets(run, d, budgets, seed, show=lambda epochs, acc: None):
    """{epochs: probe} of ``run`` at each budget of ``budgets`` (epochs): SimCLR in one run to
    the largest, probed on the way; any other run once per budget. ``show(epochs, probe)`` as
    each budget is reached."""
    accs = {}

    def done(epochs, features):
        accs[epochs] = probe(features, d, LABELS)
        show(epochs, accs[epochs])
    if run not in (simclr_minissl, simclr_torch):
        for e in budgets:
            done(e, run(d, e, seed))
        return accs
    steps = {e * (len(d.train_x) // BATCH): e for e in budgets}

    def at(step, features):
        if step in steps:
            done(steps[step], features)
    run(d, max(budgets), seed, at)
    return accs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", nargs="+", default=["raw", "random", "simclr"],
                    choices=["raw", "random", "supervised", "simclr"])
    ap.add_argument("--libraries", nargs="+", default=["minissl", "pytorch"],
                    choices=["minissl", "pytorch"])
    ap.add_argument("--epochs", type=int, nargs="+", default=[20],
                    help="one budget, or several: SimCLR is probed at each in one run")
    ap.add_argument("--n-train", type=int, default=N_TRAIN)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    if min(args.epochs) < 1:
        ap.error("--epochs must be at least 1")
    d = load(args.n_train)
    budgets = sorted(set(args.epochs))
    print(f"shapes 16 px, {len(d.train_x)} train / {len(d.test_x)} test, epochs "
          + ", ".join(f"{e} = {e * (len(d.train_x) // BATCH)} steps" for e in budgets)
          + f" of batch {BATCH}", flush=True)
    for name in args.what:
        if name == "raw":
            accs = probe(lambda x: x.reshape(len(x), -1), d, LABELS)
            print("raw pixels probe 1/5/10: " + " ".join(f"{a:.3f}" for a in accs), flush=True)
            continue
        for lib in args.libraries:
            if (name, lib) not in RUNS:
                continue
            runs = budgets[-1:] if name == "random" else budgets   # untrained: no budget
            accs = {e: [] for e in runs}
            for seed in args.seeds:
                def show(e, acc, seed=seed):
                    accs[e].append(acc)
                    print(f"{lib:8s} {name} {e} epochs seed {seed}: probe 1/5/10 "
                          + " ".join(f"{a:.3f}" for a in acc), flush=True)
                run_budgets(RUNS[name, lib], d, runs, seed, show)
            for e in runs:
                report(f"{name} {e} epochs", lib, accs[e])


if __name__ == "__main__":
    main()
