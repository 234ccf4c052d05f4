"""Data-parallel step time, bytes communicated and time in communication, per method.

    mpiexec -n 1 python benchmarks/bench_dist.py --json dist1.json
    mpiexec -n 2 python benchmarks/bench_dist.py --json dist2.json

Workloads: the digits recipe (batch 256, MLP encoder, Adam 1e-3; each method's own
``training_step``, so the augmentation, the gathers and SyncBatchNorm are the real ones) for
the image methods, and the conv workload of bench_cpu.py (SimCLR, 3 conv-BN-ReLU blocks on
256 x 3 x 32 x 32, SGD) with its embeddings gathered. Every collective goes through a wrapper
of the backend that counts its payload bytes (what this rank sends: the array it reduces or
its rows of a gather) and the seconds spent in it, which include waiting for the slower rank.
Also measured on rank 0: the time a step spends drawing the global batch's randomness (up to
the method's first ``dist.shard``; every rank repeats it) and, for the methods whose loss runs
on the gathered batch, that loss's forward and backward alone: the inputs of the model in
benchmarks/dist_model.py. Medians and quartiles over the measured steps.
"""
import minissl  # noqa: F401

minissl.runtime.tune()   # the training loop's process settings, as the CLI (minissl/runtime.py)

import argparse
import importlib
import json
import time

import numpy as np

import minissl as ms
from minissl import data, distributed as dist, losses, methods, nn, optim, random
from minissl.train import make_optimizer

DIGITS_METHODS = ("simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg", "rotation",
                  "clip")
GATHERED_LOSS = {"simclr": lambda z1, z2: losses.nt_xent(z1, z2, 0.5),
                 "barlow_twins": lambda z1, z2: losses.barlow_twins_loss(z1, z2),
                 "vicreg": lambda z1, z2: losses.vicreg_loss(z1, z2),
                 "clip": lambda z1, z2: losses.clip_loss(z1, z2, ms.tensor(np.log(1 / 0.07)))}
BATCH = 256


class Meter:
    """Wraps the backend's collectives: bytes this rank sends and seconds spent, per step."""

    def __init__(self, backend):
        self.bytes = self.seconds = 0.0
        for name in ("allreduce_sum", "reduce_scatter_sum", "allgather", "broadcast"):
            setattr(backend, name, self._wrap(getattr(backend, name)))

    def _wrap(self, fn):
        def measured(a, *args):
            t0 = time.perf_counter()
            out = fn(a, *args)
            self.seconds += time.perf_counter() - t0
            self.bytes += a.nbytes
            return out
        return measured

    def reset(self):
        self.bytes = self.seconds = 0.0


class FirstShard:
    """Time from the step's start to the method's first ``dist.shard``: the randomness."""

    def __init__(self):
        self.t0, self.at = 0.0, None
        real = dist.shard

        def shard(*arrays):
            if self.at is None:
                self.at = time.perf_counter() - self.t0
            return real(*arrays)
        for module in {m for m, *_ in methods.METHODS.values()} | {"base"}:
            mod = importlib.import_module(f"minissl.methods.{module}")
            if getattr(mod, "dist", None) is dist:
                mod.dist = _Proxy(shard)

    def start(self):
        self.t0, self.at = time.perf_counter(), None


class _Proxy:
    """``minissl.distributed`` with ``shard`` replaced."""

    def __init__(self, shard):
        self.shard = shard

    def __getattr__(self, name):
        return getattr(dist, name)


def digits_workload(name, d):
    random.manual_seed(0)
    method = methods.build(name, d)
    train = method.training_data(d)
    opt = make_optimizer(method, "adam", lr=1e-3)
    dist.prepare(method)

    def step(i, rng):
        idx = np.random.default_rng(i).permutation(len(d.train_x))[:BATCH]
        batch = tuple(a[idx] for a in train) if isinstance(train, tuple) else train[idx]
        opt.zero_grad()
        loss, _ = method.training_step(batch, rng)
        loss.backward()
        dist.all_reduce_gradients(method.parameters())
        opt.step()
        method.on_step_end(i, 1000)
        return dist.all_reduce(loss.item())
    return step


def conv_workload():
    def blk(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    random.manual_seed(0)
    enc = nn.Sequential(*blk(3, 32, 1), *blk(32, 64, 2), *blk(64, 128, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 128), nn.ReLU(),
                        nn.Linear(128, 64))
    dist.prepare(enc)
    opt = optim.SGD(enc.parameters(), 0.1, momentum=0.9)
    g = np.random.default_rng(0)
    x1, x2 = (g.standard_normal((BATCH, 3, 32, 32), dtype=np.float32) for _ in range(2))
    x1, x2 = ms.tensor(dist.shard(x1)), ms.tensor(dist.shard(x2))

    def step(i, rng):
        opt.zero_grad()
        loss = losses.nt_xent(dist.all_gather(enc(x1)), dist.all_gather(enc(x2)), 0.5)
        loss.backward()
        dist.all_reduce_gradients(enc.parameters())
        opt.step()
        return dist.all_reduce(loss.item())
    return step


def loss_seconds(name, dims, reps=10):
    """Forward + backward of the method's loss alone on a (BATCH, dims) pair."""
    g = np.random.default_rng(0)
    z1, z2 = (ms.tensor(g.standard_normal((BATCH, dims), dtype=np.float32),
                        requires_grad=True) for _ in range(2))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        GATHERED_LOSS[name](z1, z2).backward()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def quartiles(values):
    q = np.percentile(values, [25, 50, 75])
    return {"p25": float(q[0]), "median": float(q[1]), "p75": float(q[2])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    dist.init()
    meter = Meter(dist.backend())
    first = FirstShard()
    d = data.digits()
    names = [n for n in DIGITS_METHODS + ("conv_simclr",) if not args.only or n in args.only]
    results = {}
    for name in names:
        step = conv_workload() if name == "conv_simclr" else digits_workload(name, d)
        rows = []
        for i in range(args.warmup + args.steps):
            rng = np.random.default_rng([0, i])
            dist.barrier()
            meter.reset()
            first.start()
            t0 = time.perf_counter()
            step(i, rng)
            rows.append((time.perf_counter() - t0, meter.seconds, meter.bytes,
                         first.at or 0.0))
        rows = np.array(rows[args.warmup:])
        rec = {"step_s": quartiles(rows[:, 0]), "comm_s": quartiles(rows[:, 1]),
               "bytes_per_step": float(np.median(rows[:, 2])),
               "randomness_s": quartiles(rows[:, 3]), "ranks": dist.world_size(),
               "batch": BATCH}
        results[name] = rec
        if dist.rank() == 0:
            print(f"{name:13s} ranks {dist.world_size()}  step {rec['step_s']['median']*1e3:7.1f}"
                  f" ms [{rec['step_s']['p25']*1e3:.1f}, {rec['step_s']['p75']*1e3:.1f}]  comm "
                  f"{rec['comm_s']['median']*1e3:6.1f} ms  sent {rec['bytes_per_step']/1e6:6.2f}"
                  f" MB  randomness {rec['randomness_s']['median']*1e3:5.1f} ms", flush=True)
    if dist.rank() == 0:
        if dist.world_size() == 1:
            dims = {"simclr": 64, "barlow_twins": 512, "vicreg": 512, "clip": 64}
            for name in GATHERED_LOSS:
                if name in results:
                    results[name]["loss_s"] = loss_seconds(name, dims[name])
            if "conv_simclr" in results:                  # NT-Xent on (256, 64) too
                results["conv_simclr"]["loss_s"] = loss_seconds("simclr", 64)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
