"""The three benchmark workloads of the PyTorch reference script, built in minissl.

Each workload is one full training step (forward, loss, backward, optimiser step) on fixed
random inputs, with the same architectures, shapes and optimisers as the PyTorch reference.
The script prints minissl's median step time, PyTorch's measured in the same run (by running
the reference script itself when it and torch are available), and their ratio.

    python benchmarks/bench_cpu.py [--reps 10] [--rounds 3] [--only NAME] [--no-torch]
                                   [--torch-malloc] [--json FILE]

minissl and PyTorch take turns (``--rounds``), and each ratio compares the two timings of one
round; the table shows medians over the rounds. Ratios below 1.0 mean minissl is faster. Also
printed: the share of numpy's measured sgemm rate that each step reaches (FLOPs of the step's
matrix products / sgemm GFLOP/s).
"""
import minissl as ms

# The heap and OpenMP settings (minissl/runtime.py); for OpenBLAS's, set
# OPENBLAS_THREAD_TIMEOUT=12 in the shell (NumPy is loaded by now).
TUNING = ms.runtime.tune()

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

import minissl.functional as F
from minissl import losses, nn, optim, runtime

HERE = os.path.dirname(os.path.abspath(__file__))
# The PyTorch reference script (same workloads in torch; prints "<name> cpu median <ms> ms"),
# kept outside this repository: give its path in MINISSL_TORCH_REFERENCE.
REFERENCE = os.environ.get("MINISSL_TORCH_REFERENCE", "")


def randn(*shape, rng):
    return ms.tensor(rng.standard_normal(shape, dtype=np.float32))


def mlp_simclr(rng):
    enc = nn.fuse(nn.Sequential(nn.Linear(64, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                nn.Linear(512, 128)))       # BatchNorm + ReLU as one op
    opt = optim.Adam(enc.parameters(), 1e-3)
    x1, x2 = randn(512, 64, rng=rng), randn(512, 64, rng=rng)

    def step():
        opt.zero_grad()
        loss = losses.nt_xent(enc(x1), enc(x2), temperature=0.5)
        loss.backward()
        opt.step()
        return loss
    # Matrix-product FLOPs: forward 2*m*k*n per Linear, backward twice that; two views.
    flops = 2 * 3 * 2 * 512 * (64 * 512 + 512 * 512 + 512 * 128) + 3 * 2 * 1024 * 1024 * 128
    return step, flops


def conv_simclr(rng):
    def blk(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    enc = nn.fuse(nn.Sequential(*blk(3, 32, 1), *blk(32, 64, 2), *blk(64, 128, 2),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 128),
                                nn.ReLU(), nn.Linear(128, 64)))   # BatchNorm + ReLU as one op
    opt = optim.SGD(enc.parameters(), 0.1, momentum=0.9)
    x1, x2 = randn(256, 3, 32, 32, rng=rng), randn(256, 3, 32, 32, rng=rng)

    def step():
        opt.zero_grad()
        loss = losses.nt_xent(enc(x1), enc(x2), temperature=0.5)
        loss.backward()
        opt.step()
        return loss
    convs = [(32 * 32, 3 * 9, 32), (16 * 16, 32 * 9, 64), (8 * 8, 64 * 9, 128)]
    conv_flops = sum(2 * 256 * hw * k * o for hw, k, o in convs)
    # Backward: dW for every layer, dX for all but the first (its input needs no grad).
    bwd = sum(2 * 256 * hw * k * o * (1 if i == 0 else 2) for i, (hw, k, o) in enumerate(convs))
    flops = 2 * (conv_flops + bwd)
    return step, flops


def gpt_char(rng, causal=True):
    V, T, d, B = 96, 128, 128, 32
    emb = nn.Embedding(V, d)
    pos = nn.Parameter(np.zeros((T, d), dtype=np.float32))
    blocks = nn.Sequential(nn.TransformerBlock(d, 4, causal=causal),
                           nn.TransformerBlock(d, 4, causal=causal))
    head = nn.Linear(d, V)
    params = list(emb.parameters()) + [pos] + list(blocks.parameters()) + list(head.parameters())
    opt = optim.AdamW(params, 3e-4)
    idx = rng.integers(0, V, (B, T))
    tgt = ms.tensor(rng.integers(0, V, (B, T)))

    def step():
        opt.zero_grad()
        logits = head(blocks(emb(idx) + pos))
        loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
        loss.backward()
        opt.step()
        return loss
    rows = B * T
    per_block = 2 * rows * (d * 3 * d + d * d + 2 * d * 4 * d) + 2 * 2 * B * 4 * T * T * (d // 4)
    flops = 3 * (2 * per_block + 2 * rows * d * V)
    return step, flops


WORKLOADS = {"mlp_simclr": mlp_simclr, "conv_simclr": conv_simclr, "gpt_char": gpt_char}


def time_step(step, reps, warmup=3):
    for _ in range(warmup):
        step()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2], ts[0]


def sgemm_gflops(n=1024, reps=10):
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    t = time.perf_counter()
    for _ in range(reps):
        a @ a
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def torch_times(reps, malloc=False):
    """Median ms/step of each workload from the PyTorch reference script, same machine;
    ``malloc=True`` runs it under the glibc heap settings minissl applies to itself
    (``minissl.runtime``), given to PyTorch's process through glibc's environment variables."""
    if not REFERENCE or not os.path.exists(REFERENCE):
        return {}, f"reference script not found (MINISSL_TORCH_REFERENCE={REFERENCE!r})"
    try:
        import torch  # noqa: F401
    except ImportError:
        return {}, "torch is not installed (pip install torch==2.13.0)"
    env = {**os.environ, **(runtime.ENVIRONMENT if malloc else {})}
    if TUNING.blas_thread_timeout:   # minissl's own setting, not the user's: PyTorch runs
        env.pop("OPENBLAS_THREAD_TIMEOUT")   # with its defaults
    out = subprocess.run([sys.executable, REFERENCE, "cpu", str(reps)], capture_output=True,
                         text=True, check=False, env=env)
    found = dict((m.group(1), float(m.group(2))) for m in
                 re.finditer(r"^(\w+)\s+cpu median ([\d.]+) ms", out.stdout, re.M))
    return found, None if found else out.stderr.strip()[-500:]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate minissl and PyTorch this many times; report medians")
    ap.add_argument("--only", choices=sorted(WORKLOADS))
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-malloc", action="store_true",
                    help="also time PyTorch under minissl's glibc heap settings")
    ap.add_argument("--json", help="also write the table to this JSON file")
    args = ap.parse_args(argv)
    names = [args.only] if args.only else list(WORKLOADS)
    steps = {}
    for name in names:
        ms.random.manual_seed(0)
        steps[name] = WORKLOADS[name](np.random.default_rng(0))
    # The machine's speed drifts by 10-30 % over minutes, so the libraries take turns: each
    # round times every minissl workload, then PyTorch's, and a ratio compares one round.
    runs = {name: [] for name in names}   # per round: (minissl s, torch ms, torch+heap ms, GF/s)
    why = "--no-torch" if args.no_torch else None
    for _ in range(args.rounds):
        gf = sgemm_gflops()
        mine = {name: time_step(steps[name][0], args.reps)[0] for name in names}
        ref, tuned = {}, {}
        if not args.no_torch:
            ref, why = torch_times(args.reps)
            if args.torch_malloc and ref:
                tuned = torch_times(args.reps, malloc=True)[0]
        for name in names:
            runs[name].append((mine[name], ref.get(name), tuned.get(name), gf))
    print(f"median of {args.rounds} rounds, each the median of {args.reps} steps after 3 "
          f"warm-up; minissl's heap settings {'on' if TUNING.heap else 'off'}, OpenBLAS "
          f"thread timeout {os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'default')}")
    heap = args.torch_malloc and not args.no_torch
    print(f"{'workload':12s} {'minissl ms':>11s} {'torch ms':>9s} {'ratio':>6s} "
          f"{'GFLOP':>6s} {'% sgemm':>8s}" + (f" {'torch+heap ms':>14s} {'ratio':>6s}"
                                              if heap else ""))
    nan = float("nan")

    def median(values):
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    rows = {}
    for name in names:
        flops = steps[name][1]
        r = rows[name] = {
            "minissl_ms": 1e3 * median([m for m, _, _, _ in runs[name]]),
            "torch_ms": median([t for _, t, _, _ in runs[name]]),
            "ratio": median([1e3 * m / t for m, t, _, _ in runs[name] if t]),
            "gflop": flops / 1e9,
            "roofline": median([flops / 1e9 / gf / m for m, _, _, gf in runs[name]]),
            "rounds": [{"minissl_ms": 1e3 * m, "torch_ms": t, "torch_heap_ms": h,
                        "sgemm_gflops": gf} for m, t, h, gf in runs[name]]}
        line = (f"{name:12s} {r['minissl_ms']:11.1f} {r['torch_ms'] or nan:9.1f} "
                f"{r['ratio'] or nan:6.2f} {r['gflop']:6.2f} {100 * r['roofline']:7.0f}%")
        if heap:
            r["torch_heap_ms"] = median([h for _, _, h, _ in runs[name]])
            r["ratio_heap"] = median([1e3 * m / h for m, _, h, _ in runs[name] if h])
            line += f" {r['torch_heap_ms'] or nan:14.1f} {r['ratio_heap'] or nan:6.2f}"
        print(line)
    if why:
        print(f"(PyTorch not measured: {why})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": args.rounds, "reps": args.reps, "workloads": rows}, f, indent=1)


if __name__ == "__main__":
    main()
