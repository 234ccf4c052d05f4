"""The digits SimCLR recipe, timed in minissl and in PyTorch on the same machine.

Recipe (the project's quality bar): encoder MLP 64-256-256 with BatchNorm and ReLU, projector
256-256-64, NT-Xent T=0.5, batch 256 (drop last), Adam 1e-3, augmentation = shift of up to 1
pixel, 10 % pixel dropout, Gaussian noise 0.1. Both libraries get the same augmented views,
made once per step by ``minissl.augment`` in NumPy (not timed separately: it is the same work
for both), so the timings compare the training steps.

    python benchmarks/bench_digits_simclr.py [--epochs 100]
"""
import argparse
import time

import numpy as np

from minissl import augment, data, losses, methods, optim, random


def minissl_run(d, epochs, seed=0):
    random.manual_seed(seed)
    m = methods.build("simclr", d)
    opt = optim.Adam(m.trainable_parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(d.train_x))
        for s in range(0, len(order) - 255, 256):
            x = d.train_x[order[s:s + 256]]
            v1, v2 = augment.two_views(x, m.transform, rng)
            opt.zero_grad()
            z1 = m.projector(m.encoder(m.as_input(v1)))
            z2 = m.projector(m.encoder(m.as_input(v2)))
            loss = losses.nt_xent(z1, z2, 0.5)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0, loss.item()


def torch_run(d, epochs, seed=0):
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
    opt = torch.optim.Adam(list(enc.parameters()) + list(proj.parameters()), 1e-3)
    transform = augment.digits_simclr()

    def nt_xent(z1, z2, t=0.5):
        z = TF.normalize(torch.cat([z1, z2]), dim=1)
        n = z1.shape[0]
        sim = z @ z.T / t
        sim.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
        return TF.cross_entropy(sim, target)

    t0 = time.perf_counter()
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(d.train_x))
        for s in range(0, len(order) - 255, 256):
            x = d.train_x[order[s:s + 256]]
            v1, v2 = augment.two_views(x, transform, rng)
            opt.zero_grad()
            z1 = proj(enc(torch.from_numpy(v1.reshape(256, -1))))
            z2 = proj(enc(torch.from_numpy(v2.reshape(256, -1))))
            loss = nt_xent(z1, z2)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0, loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    d = data.digits()
    t_ms, l_ms = minissl_run(d, args.epochs)
    print(f"minissl  {args.epochs} epochs: {t_ms:6.2f} s   final loss {l_ms:.4f}")
    try:
        t_pt, l_pt = torch_run(d, args.epochs)
    except ImportError:
        print("PyTorch not installed: no comparison")
        return
    print(f"pytorch  {args.epochs} epochs: {t_pt:6.2f} s   final loss {l_pt:.4f}")
    print(f"ratio minissl / pytorch: {t_ms / t_pt:.2f}")


if __name__ == "__main__":
    main()
