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
    python benchmarks/bench_digits.py --mode all [--rounds 3] [--epochs 20] [--method M]

Without ``--mode`` both libraries run in this process, minissl imported first and
``minissl.runtime.tune()`` applied (as the command line runs). ``--mode fresh|one-process|all``
times the recipe's training loop (median ms per step, view making included) in the modes of
``benchmarks/bench_cpu.py`` and prints its tables: each library in its own fresh process per
round (NumPy then minissl, as a script imports them, with and without ``tune()``; PyTorch with
its defaults and with minissl's heap settings), and both in one process with PyTorch imported
first, no ``tune()``. PyTorch's processes import minissl too, after PyTorch, for the data and
the views.
"""
import sys

if "--worker" in sys.argv and "--no-torch" not in sys.argv:
    # A measured process: its first imports are part of the setting.
    if sys.argv[sys.argv.index("--worker") + 1].split("+")[0] in ("torch", "one-process"):
        import torch  # noqa: F401  (PyTorch first, then NumPy, then minissl)

import argparse
import copy
import importlib.util
import json
import os
import statistics
import time

import numpy as np

from minissl import augment, data, evaluate, methods, nn, optim, random, runtime
from minissl.methods import rotation
from minissl.methods.base import cosine_tau

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cpu  # noqa: E402  (the modes, the worker protocol and the tables)

BATCH = 256
RECIPES = ("simclr", "byol", "rotation")


def batch_rows(d, epochs, seed, batch=BATCH):
    """(step, epoch-seeded augmentation rng, training rows of the batch) in the order both
    runs use."""
    steps_per_epoch = len(d.train_x) // batch
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(d.train_x))
        for i in range(steps_per_epoch):
            yield epoch * steps_per_epoch + i, rng, order[i * batch:(i + 1) * batch]


def batches(d, epochs, seed, batch=BATCH):
    """(step, epoch-seeded augmentation rng, batch of images) in the order both runs use."""
    for step, rng, rows in batch_rows(d, epochs, seed, batch):
        yield step, rng, d.train_x[rows]


def torch_nt_xent(torch, z1, z2, t=0.5):
    """SimCLR's NT-Xent in PyTorch: each view's positive is the other view of its image."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / t
    sim.fill_diagonal_(float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return torch.nn.functional.cross_entropy(sim, labels)


def minissl_run(d, epochs, method="simclr", seed=0, build=methods.build, batch=BATCH):
    """``build(method, d)`` makes the method (after the seed); returns ((seconds, median ms
    per step), final loss, the trained method's ``features``)."""
    random.manual_seed(seed)
    m = nn.fuse(build(method, d))               # BatchNorm + ReLU as one op
    opt = optim.Adam(m.trainable_parameters(), lr=1e-3)
    total = epochs * (len(d.train_x) // batch)
    clock = [time.perf_counter()]
    for step, rng, x in batches(d, epochs, seed, batch):
        opt.zero_grad()
        loss, _ = m.training_step(x, rng)
        loss.backward()
        opt.step()
        m.on_step_end(step, total)
        clock.append(time.perf_counter())
    return timing(clock), loss.item(), m.features


def timing(clock):
    """(seconds in all, median ms per step) from the clock read before and after each step."""
    return clock[-1] - clock[0], 1e3 * statistics.median(np.diff(clock))


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

    clock = [time.perf_counter()]
    for step, rng, x in batches(d, epochs, seed):
        clock.append(time.perf_counter())
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
    clock.append(time.perf_counter())
    elapsed = timing(clock[1:])

    def features(x):
        enc.eval()
        with torch.no_grad():
            return enc(torch.from_numpy(x.reshape(len(x), -1).astype(np.float32))).numpy()
    return elapsed, loss.item(), features


def probe(features, d, labels=(1, 5, 10, 50)):
    """The quality bar's linear probe (mean over 5 draws) of an encoder's features."""
    tr, te = features(d.train_x), features(d.test_x)
    return [evaluate.few_label_probe(tr, d.train_y, te, d.test_y, k)[0] for k in labels]


def seeds_summary(accs):
    """One line of ``probe`` rows over seeds: "mean+-sd" per number of labels."""
    a = np.array(accs)
    return " ".join(f"{m:.3f}+-{s:.3f}" for m, s in zip(a.mean(0), a.std(0)))


def worker(kind, method, epochs, seed, rounds, with_torch=True):
    """Run in a child process (``--mode``): the recipe's median step ms for one configuration
    of ``bench_cpu.FRESH`` (one round) or ``one-process`` (``rounds`` rounds, PyTorch
    first), printed as the one result line ``bench_cpu`` reads."""
    library = kind.split("+")[0]
    libraries = {"minissl": ["minissl"], "torch": ["torch"], "one-process": ["torch", "minissl"]}
    libraries = [lib for lib in libraries[library] if with_torch or lib == "minissl"]
    tuning = runtime.tune()._asdict() if kind == "minissl+tune" else None
    run = {"minissl": minissl_run, "torch": torch_run}
    d = data.digits()
    result = {"tuning": tuning, "flops": {}, "rounds": []}
    for _ in range(rounds):
        r = {"levels": {}}
        for lib in libraries:   # each run's step ms, the machine's speed before and after it
            before = bench_cpu.machine_level()
            r[lib] = {method: run[lib](d, epochs, method, seed)[0][1]}
            r["levels"][lib] = {method: [before, bench_cpu.machine_level()]}
        result["rounds"].append(r)
    print(bench_cpu.RESULT + json.dumps(result), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs per run (default 100; 20 with --mode)")
    ap.add_argument("--method", choices=RECIPES, default="simclr")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--probe", action="store_true",
                    help="also probe both encoders' features at 1/5/10/50 labels per class")
    ap.add_argument("--mode", choices=("fresh", "one-process", "all"),
                    help="time the recipe in bench_cpu.py's modes (one run per round)")
    ap.add_argument("--rounds", type=int, default=3, help="with --mode: rounds")
    ap.add_argument("--no-torch", action="store_true", help="with --mode: minissl only")
    ap.add_argument("--json", help="with --mode: also write the tables to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--names", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.epochs is None:
        args.epochs = 20 if (args.mode or args.worker) else 100
    if args.epochs < 1 or args.rounds < 1:
        ap.error("--epochs and --rounds must be at least 1")
    if args.worker:
        return worker(args.worker, args.method, args.epochs, args.seeds[0], args.rounds,
                      with_torch=not args.no_torch)
    if args.mode:
        return timing_modes(args)
    runtime.tune()   # the process settings of a training loop (minissl/runtime.py)
    d = data.digits()
    if importlib.util.find_spec("torch") is not None:
        runs = {"minissl": minissl_run, "pytorch": torch_run}
    else:
        print("PyTorch not installed: minissl alone, no comparison")
        runs = {"minissl": minissl_run}
    times, accs = {k: [] for k in runs}, {k: [] for k in runs}
    for seed in args.seeds:
        for lib, run in runs.items():
            (t, _), loss, features = run(d, args.epochs, args.method, seed)
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


def timing_modes(args):
    """``--mode``: bench_cpu.py's tables for the recipe, one run of ``--epochs`` per round."""
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    args.reps = args.epochs * (len(data.digits().train_x) // BATCH)   # steps per run
    args.steps_note = f"each round the median of the run's {args.reps} steps"
    print(f"digits {args.method} recipe, {args.epochs} epochs of batch {BATCH} per run, "
          f"seed {args.seeds[0]}; a step includes making its views")
    extra = ["--method", args.method, "--epochs", str(args.epochs), "--seeds", str(args.seeds[0])]
    report = bench_cpu.run_modes(args, [args.method], with_torch,
                                 all_modes=("fresh", "one-process"), script=__file__,
                                 extra=extra)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
