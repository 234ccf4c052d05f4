"""The digits recipes of the quality bar, in minissl and in PyTorch on the same machine: time
and (``--probe``) linear-probe accuracy, same probe for both.

Recipe (the project's quality bar): encoder MLP 64-256-256 with BatchNorm and ReLU, batch 256
(drop last), Adam 1e-3, augmentation = shift of up to 1 pixel, 10 % pixel dropout, Gaussian
noise 0.1. SimCLR: projector 256-256-64, NT-Xent T = 0.5. BYOL: projector 256-256-64,
predictor 64-256-64, EMA target with the cosine schedule from tau = 0.99. Rotation: head
256-256-4, all four rotations of each image (shifted by up to 1 pixel and flipped). Both
libraries get the same augmented views, made by ``minissl.augment`` in NumPy from the same
seeded generator (the same work for both), so the timings compare the training steps; minissl
runs its methods' own ``training_step``, PyTorch the same model written with ``torch.nn``.

    python benchmarks/bench_digits.py [--epochs 100]                 # SimCLR timing
    python benchmarks/bench_digits.py --method byol --probe --seeds 0 1 2
"""
import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import argparse
import copy
import time

import numpy as np

from minissl import augment, data, evaluate, methods, nn, optim, random
from minissl.methods import rotation
from minissl.methods.base import cosine_tau

BATCH = 256
RECIPES = ("simclr", "byol", "rotation")


def batch_rows(d, epochs, seed):
    """(step, epoch-seeded augmentation rng, training rows of the batch) in the order both
    runs use."""
    steps_per_epoch = len(d.train_x) // BATCH
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(d.train_x))
        for i in range(steps_per_epoch):
            yield epoch * steps_per_epoch + i, rng, order[i * BATCH:(i + 1) * BATCH]


def batches(d, epochs, seed):
    """(step, epoch-seeded augmentation rng, batch of images) in the order both runs use."""
    for step, rng, rows in batch_rows(d, epochs, seed):
        yield step, rng, d.train_x[rows]


def torch_nt_xent(torch, z1, z2, t=0.5):
    """SimCLR's NT-Xent in PyTorch: each view's positive is the other view of its image."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / t
    sim.fill_diagonal_(float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return torch.nn.functional.cross_entropy(sim, labels)


def minissl_run(d, epochs, method="simclr", seed=0, build=methods.build):
    """``build(method, d)`` makes the method (after the seed); returns (seconds, final loss,
    the trained method's ``features``)."""
    random.manual_seed(seed)
    m = nn.fuse(build(method, d))               # BatchNorm + ReLU as one op
    opt = optim.Adam(m.trainable_parameters(), lr=1e-3)
    total = epochs * (len(d.train_x) // BATCH)
    t0 = time.perf_counter()
    for step, rng, x in batches(d, epochs, seed):
        opt.zero_grad()
        loss, _ = m.training_step(x, rng)
        loss.backward()
        opt.step()
        m.on_step_end(step, total)
    return time.perf_counter() - t0, loss.item(), m.features


def torch_run(d, epochs, method="simclr", seed=0):
    import torch
    import torch.nn as tnn
    import torch.nn.functional as TF
    torch.manual_seed(seed)

    def mlp(*dims, last_plain=True):
        layers = []
        for i in range(len(dims) - 1):
            layers.append(tnn.Linear(dims[i], dims[i + 1]))
            if not (last_plain and i == len(dims) - 2):
                layers += [tnn.BatchNorm1d(dims[i + 1]), tnn.ReLU()]
        return tnn.Sequential(*layers)

    enc, proj = mlp(64, 256, 256, last_plain=False), mlp(256, 256, 64)
    online = [enc, proj]
    if method == "rotation":
        online = [enc, mlp(256, 256, 4)]                 # RotNet's head c: 256-256-4
        head = online[1]
        transform = rotation.default_rotation_augmentation(d.image_shape)
    else:
        transform = augment.digits_simclr()
    if method == "byol":
        pred = mlp(64, 256, 64)
        online.append(pred)
        target = copy.deepcopy(tnn.Sequential(enc, proj)).requires_grad_(False)
    elif method not in ("simclr", "rotation"):
        raise ValueError(f"torch_run: no PyTorch recipe for {method!r} ({', '.join(RECIPES)})")
    opt = torch.optim.Adam([p for net in online for p in net.parameters()], 1e-3)
    total = epochs * (len(d.train_x) // BATCH)

    def byol(p, z):
        return (2 - 2 * TF.cosine_similarity(p, z.detach(), dim=1)).mean()

    t0 = time.perf_counter()
    for step, rng, x in batches(d, epochs, seed):
        opt.zero_grad()
        if method == "rotation":   # all four rotations of each augmented image, labels 0..3
            x4, k = rotation.all_rotations(transform(x, rng))
            loss = TF.cross_entropy(head(enc(torch.from_numpy(x4.reshape(len(x4), -1)))),
                                    torch.from_numpy(k))
            loss.backward()
            opt.step()
            continue
        v1, v2 = (torch.from_numpy(v.reshape(BATCH, -1))
                  for v in augment.two_views(x, transform, rng))
        z1, z2 = proj(enc(v1)), proj(enc(v2))
        if method == "simclr":
            loss = torch_nt_xent(torch, z1, z2)
        else:
            with torch.no_grad():
                t1, t2 = target(v1), target(v2)
            loss = byol(pred(z1), t2) + byol(pred(z2), t1)
        loss.backward()
        opt.step()
        if method == "byol":
            tau = cosine_tau(0.99, step, total)
            with torch.no_grad():
                online_net = tnn.Sequential(enc, proj)
                for pt, po in zip(target.parameters(), online_net.parameters()):
                    pt.mul_(tau).add_(po, alpha=1 - tau)
                for bt, bo in zip(target.buffers(), online_net.buffers()):
                    bt.copy_(bo)
    elapsed = time.perf_counter() - t0

    def features(x):
        enc.eval()
        with torch.no_grad():
            return enc(torch.from_numpy(x.reshape(len(x), -1).astype(np.float32))).numpy()
    return elapsed, loss.item(), features


def probe(features, d, labels=(1, 5, 10, 50)):
    """The quality bar's linear probe (mean over 5 draws) of an encoder's features."""
    tr, te = features(d.train_x), features(d.test_x)
    return [evaluate.few_label_probe(tr, d.train_y, te, d.test_y, k)[0] for k in labels]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--method", choices=RECIPES, default="simclr")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--probe", action="store_true",
                    help="also probe both encoders' features at 1/5/10/50 labels per class")
    args = ap.parse_args()
    d = data.digits()
    try:
        import torch  # noqa: F401
        runs = {"minissl": minissl_run, "pytorch": torch_run}
    except ImportError:
        print("PyTorch not installed: minissl alone, no comparison")
        runs = {"minissl": minissl_run}
    times, accs = {k: [] for k in runs}, {k: [] for k in runs}
    for seed in args.seeds:
        for lib, run in runs.items():
            t, loss, features = run(d, args.epochs, args.method, seed)
            times[lib].append(t)
            line = f"{lib:8s} {args.method} seed {seed}: {t:6.2f} s, final loss {loss:.4f}"
            if args.probe:
                accs[lib].append(probe(features, d))
                line += "   probe 1/5/10/50: " + " ".join(f"{a:.3f}" for a in accs[lib][-1])
            print(line, flush=True)
    for lib in runs:
        line = f"{lib:8s} mean over {len(args.seeds)} seed(s): {np.mean(times[lib]):6.2f} s"
        if args.probe:
            line += "   probe 1/5/10/50: " + " ".join(f"{a:.3f}" for a in np.mean(accs[lib], 0))
        print(line)
    if len(runs) == 2:
        print(f"ratio minissl / pytorch (time): "
              f"{np.mean(times['minissl']) / np.mean(times['pytorch']):.2f}")


if __name__ == "__main__":
    main()
