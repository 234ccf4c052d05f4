"""A model of data-parallel step time at N ranks, from bench_dist.py's 1-rank measurement.

    python benchmarks/dist_model.py dist1.json [more 1-rank runs.json ...] [--fixed]

(with several runs, each time is the median of the runs' medians)

Weak scaling, as contrastive training is used: every rank keeps b rows (the measured 256),
the global batch is B = N b. Per step and rank:

    T(N) = T_net (1/1: the network on b rows, measured: step - randomness - gathered loss)
         + T_rand * N        every rank draws the randomness of the whole global batch
         + T_loss * N^p      the loss on the gathered batch, on every rank: p = 2 for
                             NT-Xent and CLIP (B x B logits), p = 1 for Barlow Twins and VICReg
                             (B x D by D x D); 0 for the others (no gathered loss)
         + T_comm(N)

T_comm sums, per collective of the step, the better of a ring and a recursive-doubling
algorithm with link latency a and bandwidth w (the alpha-beta model):

    all-reduce(S)         min(2(N-1) (a + S/(N w)),  ceil(log2 N) (a + S/w))
    all-gather(S_total)   ceil(log2 N) a + (N-1)/N S_total/w

The collectives of a step, counted on the method itself (one single-process step with hooks):
gradients (all parameters, float32, 25 MiB buckets), SyncBatchNorm (two all-reduces forward,
one backward per BatchNorm call, 2C + 1, C and 2C values; an upper bound, as the no-grad
target passes of BYOL have no backward), the gathers (forward all-gather of N b D values,
backward reduce-scatter of the same size, costed as an all-gather), MoCo's keys (a gather, no
backward), the loss and the metrics (a few scalars).

``--fixed`` models the two changes that would remove the terms growing with N (not
implemented): each rank draws only its own rows' randomness (a counter-based generator per
example), NT-Xent/CLIP compute only the local anchors' rows of the logits (b x B, p = 1, as
SimCLR's official TPU code), and Barlow Twins/VICReg all-reduce their D x D matrices from
local products instead of gathering the embeddings (p = 0).

Networks (assumed, not measured): InfiniBand HDR 200 Gb/s for CPU nodes (a = 2 us MPI
latency, w = 25 GB/s); NVLink 4 inside an 8-GPU H100 node (a = 5 us NCCL, w = 450 GB/s) and
InfiniBand NDR 400 Gb/s, one NIC per GPU, between nodes (a = 8 us, w = 50 GB/s). The GPU
rows scale the measured CPU compute down by an ASSUMED factor (--gpu-speedup, default 50),
so they show where communication starts to dominate, not a measured GPU step.
"""
import argparse
import json
import math

import numpy as np

from minissl import augment, data, distributed as dist, methods, random
from minissl.nn.layers import _BatchNorm

LOSS_POWER = {"simclr": 2, "clip": 2, "barlow_twins": 1, "vicreg": 1, "conv_simclr": 2}
NETS = {"cpu-ib": lambda n: (2e-6, 25e9),
        "gpu": lambda n: (5e-6, 450e9) if n <= 8 else (8e-6, 50e9)}


def allreduce(S, n, a, w):
    if n == 1:
        return 0.0
    return min(2 * (n - 1) * (a + S / (n * w)), math.ceil(math.log2(n)) * (a + S / w))


def allgather(S_total, n, a, w):
    if n == 1:
        return 0.0
    return math.ceil(math.log2(n)) * a + (n - 1) / n * S_total / w


def collectives(name, b=256):
    """(all-reduce sizes in bytes, all-gather per-rank bytes) of one step of ``name`` for b
    rows per rank, counted on one single-process step."""
    bn, gathers = [], []
    real_bn, real_gather = _BatchNorm.forward, dist.all_gather

    def bn_hook(self, x, relu=False):
        bn.append(self.num_features)
        return real_bn(self, x, relu=relu)

    def gather_hook(t):
        gathers.append(t.data.nbytes)
        return real_gather(t)
    if name == "conv_simclr":   # the conv workload of bench_cpu: 3 BN layers, 2 views
        params = 4 * (3 * 32 * 9 + 32 * 64 * 9 + 64 * 128 * 9 + 2 * (32 + 64 + 128)
                      + 128 * 128 + 128 + 128 * 64 + 64)
        return _sizes(params, [32, 64, 128] * 2, [b * 64 * 4] * 2, name)
    d = data.digits()
    random.manual_seed(0)
    m = methods.build(name, d)
    mods = [__import__(f"minissl.methods.{mod}", fromlist=["x"])
            for mod, *_ in methods.METHODS.values()]
    _BatchNorm.forward = bn_hook
    for mod in mods:
        if getattr(mod, "dist", None) is dist:
            mod.dist = _Gather(gather_hook)
    try:
        train = m.training_data(d)
        batch = tuple(a[:b] for a in train) if isinstance(train, tuple) else train[:b]
        m.training_step(batch, np.random.default_rng(0))
    finally:
        _BatchNorm.forward = real_bn
        for mod in mods:
            if isinstance(getattr(mod, "dist", None), _Gather):
                mod.dist = dist
    params = sum(p.data.nbytes for p in m.trainable_parameters())
    if name == "moco":          # the key encoder's BN stays local; keys gathered, no backward
        bn = bn[:len(bn) // 2]
        return _sizes(params, bn, [], name, extra_gathers=[b * m.config.proj_dim * 4])
    return _sizes(params, bn, gathers, name)


class _Gather:
    def __init__(self, hook):
        self.all_gather = hook

    def __getattr__(self, k):
        return getattr(dist, k)


def _sizes(params, bn_channels, gathers, name, extra_gathers=()):
    bucket = 25 * 2 ** 20
    reduces = [bucket] * (params // bucket) + ([params % bucket] if params % bucket else [])
    for c in bn_channels:                   # SyncBatchNorm, float32
        reduces += [(2 * c + 1) * 4, c * 4, 2 * c * 4]
    reduces += [8, 8]                       # the loss, the metrics (once per epoch: ~0)
    return reduces, list(gathers) + list(extra_gathers), len(gathers)


def model(measured, name, n, net, b, gpu_speedup, fixed=False):
    m = measured[name]
    t1 = m["step_s"]["median"]
    t_rand = m["randomness_s"]["median"]
    t_loss = m.get("loss_s", measured.get("simclr", {}).get("loss_s", 0.0)
                   if name == "conv_simclr" else 0.0)     # NT-Xent on (256, 64) as SimCLR's
    t_net = t1 - t_rand - t_loss
    power = LOSS_POWER.get(name, 0)
    if fixed:
        power = max(power - 1, 0)
    compute = t_net + t_rand * (1 if fixed else n) + t_loss * n ** power
    if net == "gpu":
        compute /= gpu_speedup
    a, w = NETS[net](n)
    reduces, gathers, backward_gathers = COLL[name]
    if fixed and name in ("barlow_twins", "vicreg"):
        D = gathers[0] // (4 * b)                 # D x D matrices instead of the gathers
        reduces = reduces + [D * D * 4] * (1 if name == "barlow_twins" else 2)
        gathers, backward_gathers = [], 0
    comm = sum(allreduce(S, n, a, w) for S in reduces)
    comm += sum(allgather(S * n, n, a, w) for S in gathers)
    comm += sum(allgather(S * n, n, a, w) for S in gathers[:backward_gathers])  # reduce-scatter
    t = compute + comm
    t_ref = t1 / (gpu_speedup if net == "gpu" else 1)
    return t, comm, t_ref / t


COLL = {}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("measured", nargs="+")
    p.add_argument("--per-rank-batch", type=int, default=256)
    p.add_argument("--gpu-speedup", type=float, default=50.0)
    p.add_argument("--ranks", type=int, nargs="*", default=[1, 8, 64, 512])
    p.add_argument("--fixed", action="store_true", help="model the two fixes (see above)")
    args = p.parse_args(argv)
    runs = [json.load(open(path)) for path in args.measured]
    measured = {}
    for name in runs[0]:
        rec = dict(runs[0][name])
        for key in ("step_s", "randomness_s"):
            rec[key] = {"median": float(np.median([r[name][key]["median"] for r in runs]))}
        if "loss_s" in rec:
            rec["loss_s"] = float(np.median([r[name]["loss_s"] for r in runs]))
        measured[name] = rec
    for name in measured:
        COLL[name] = collectives(name, args.per_rank_batch)
    for net in NETS:
        print(f"\n{net}: step ms (communication ms) and weak-scaling efficiency T(1)/T(N)")
        print("| method | grad MB | " + " | ".join(f"N={n}" for n in args.ranks) + " |")
        print("|---|---|" + "---|" * len(args.ranks))
        for name in measured:
            cells = []
            for n in args.ranks:
                t, comm, eff = model(measured, name, n, net, args.per_rank_batch,
                                     args.gpu_speedup, args.fixed)
                cells.append(f"{t * 1e3:.4g} ({comm * 1e3:.2g}) {eff:.0%}")
            grad_mb = sum(s for s in COLL[name][0] if s > 64) / 1e6
            print(f"| {name} | {grad_mb:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
