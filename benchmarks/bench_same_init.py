"""SwAV and NNCLR in minissl and in PyTorch from the SAME initial weights: how much of a gap
between the two libraries' probes is the initial draw, and how much the training.

``bench_multicrop.py`` and ``bench_nn_v3_mim.py`` initialise each library from its own
generator: the same distributions (PyTorch's defaults), different draws. Here the initial
weights of one library (``--init``; NNCLR's support set is minissl's in both) are copied into
the other; both then train in lockstep on the same views, in float32, with the recipes of those
two benchmarks (their PyTorch networks and steps), and are probed identically. In float64 the
two training loops agree step for step (``tests/test_torch_parity_training.py``); in float32
they drift apart by round-off, so this measures what that drift does to the probe.

    python benchmarks/bench_same_init.py --method swav --init minissl --seeds 0 1 2
    python benchmarks/bench_same_init.py --method swav --init pytorch --seeds 1 2
    python benchmarks/bench_same_init.py --method nnclr --init minissl --seeds 0 1 2
"""
import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import argparse
import os
import sys

import numpy as np

from minissl import data, nn, optim, random

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import bench_multicrop  # noqa: E402
import bench_nn_v3_mim  # noqa: E402
from bench_digits import batches, probe  # noqa: E402

LABELS = (1, 5, 10)
EPOCHS = {"swav": 40, "nnclr": 30}       # the defaults of the two benchmarks


def tie(pairs, init):
    """Copy the parameters and buffers of ``init``'s side of each (minissl module, torch
    module) pair into the other side (same layout, entries in module order)."""
    import torch
    for mine, theirs in pairs:
        ms, ts = mine.state_dict(), theirs.state_dict()
        mk = [k for k in ms if "num_batches" not in k]
        tk = [k for k in ts if "num_batches" not in k]
        assert [np.shape(ms[k]) for k in mk] == [tuple(ts[k].shape) for k in tk], "layouts"
        if init == "minissl":
            for a, b in zip(mk, tk):
                ts[b].copy_(torch.from_numpy(np.array(ms[a])))
        else:
            mine.load_state_dict({**{k: np.array(v) for k, v in ms.items()},
                                  **{a: ts[b].numpy().copy() for a, b in zip(mk, tk)}})


def swav(d, seed, init):
    """minissl's SwAV (as bench_multicrop trains it) and the benchmark's PyTorch SwAV step."""
    import torch
    import torch.nn.functional as TF
    from torch_port import multicrop_forward, swav_loss
    random.manual_seed(seed)
    m = bench_multicrop.build("swav", d)
    c = m.config
    torch.manual_seed(seed)
    enc, head = bench_multicrop.torch_nets("swav", d, c)
    tie([(m.encoder, enc), (m.projection_head, head["proj"]), (m.prototypes, head["protos"])],
        init)
    protos = head["protos"].weight

    def loss(x, rng, step):
        views = [torch.from_numpy(v) for v in m.transform(x, rng)]
        with torch.no_grad():
            protos.copy_(TF.normalize(protos, dim=1))
        z = TF.normalize(head["proj"](multicrop_forward(enc, views)), dim=1)
        return swav_loss(head["protos"](z).split(len(views[0])), c.temperature, c.epsilon,
                         c.sinkhorn_iterations)

    def before_update(step):
        if step < c.freeze_prototypes_steps:
            protos.grad = None
    return m, list(enc.parameters()) + list(head.parameters()), loss, before_update, enc


def nnclr(d, seed, init):
    """minissl's NNCLR (fused, as bench_nn_v3_mim trains it) and the benchmark's PyTorch
    NNCLR step (``_torch_nnclr``'s networks and ``step``)."""
    import torch
    tnn, F = torch.nn, torch.nn.functional
    mlp = bench_nn_v3_mim._mlp
    random.manual_seed(seed)
    m = bench_nn_v3_mim.build("nnclr", d)
    torch.manual_seed(seed)
    enc = mlp(tnn, (int(np.prod(d.image_shape)), 256, 256), last_bn="affine")
    enc.append(tnn.ReLU())
    proj = mlp(tnn, (256, 256, 256, 64), last_bn="affine")
    pred = mlp(tnn, (64, 256, 64))
    tie([(m.encoder, enc), (m.projector, proj), (m.predictor, pred)], init)
    queue = torch.from_numpy(np.array(m.queue.data))
    ptr = [0]
    m = nn.fuse(m)

    def loss_of(nn_, p, t=m.config.temperature):
        nn_, p = F.normalize(nn_, dim=-1), F.normalize(p, dim=-1)
        return F.cross_entropy(nn_ @ p.T / t, torch.arange(len(p)))

    def loss(x, rng, step):
        v1, v2 = bench_nn_v3_mim._views(torch, x, m.transform, rng)
        z1, z2 = proj(enc(v1)), proj(enc(v2))
        p1, p2 = pred(z1), pred(z2)
        z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
        nn1 = queue[(z1 @ queue.T).max(dim=1)[1]]
        nn2 = queue[(z2 @ queue.T).max(dim=1)[1]]
        queue[(ptr[0] + torch.arange(len(z1))) % len(queue)] = z1.detach()
        ptr[0] = (ptr[0] + len(z1)) % len(queue)
        return loss_of(nn1, p2) / 2 + loss_of(nn2, p1) / 2
    return m, [p for net in (enc, proj, pred) for p in net.parameters()], loss, None, enc


def run(method, d, seed, init, epochs=None):
    """Both libraries trained in lockstep from one initialisation; their probes."""
    import torch
    m, params, torch_loss, before_update, enc = {"swav": swav, "nnclr": nnclr}[method](
        d, seed, init)
    opt_m = optim.Adam(m.trainable_parameters(), lr=1e-3)
    opt_t = torch.optim.Adam(params, 1e-3)
    epochs = epochs or EPOCHS[method]
    total = epochs * (len(d.train_x) // 256)
    for step, rng, x in batches(d, epochs, seed):
        twin = np.random.Generator(np.random.PCG64())     # the same views for PyTorch
        twin.bit_generator.state = rng.bit_generator.state
        opt_m.zero_grad()
        loss, _ = m.training_step(x, rng)
        loss.backward()
        opt_m.step()
        m.on_step_end(step, total)
        opt_t.zero_grad()
        torch_loss(x, twin, step).backward()
        if before_update is not None:
            before_update(step)
        opt_t.step()
    return (probe(m.features, d, LABELS),
            probe(bench_nn_v3_mim._features(torch, enc), d, LABELS))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=tuple(EPOCHS), default="swav")
    ap.add_argument("--init", choices=("minissl", "pytorch"), default="minissl")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, help="default: 40 (SwAV), 30 (NNCLR), the benchmarks'")
    args = ap.parse_args()
    d = data.digits()
    for seed in args.seeds:
        mine, theirs = run(args.method, d, seed, args.init, args.epochs)
        print(f"{args.method} digits, init {args.init}, seed {seed}: probe 1/5/10 minissl "
              + " ".join(f"{a:.3f}" for a in mine) + "   pytorch "
              + " ".join(f"{a:.3f}" for a in theirs), flush=True)


if __name__ == "__main__":
    main()
