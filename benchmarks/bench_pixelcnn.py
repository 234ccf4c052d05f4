"""The gated PixelCNN recipe in minissl and in PyTorch on the same batches: test negative
log-likelihood in bits per dimension, against independent Bernoulli pixels.

Recipe: images binarised at 0.5; gated PixelCNN (van den Oord et al. 2016, figure 2) with 5
layers of 32 feature maps per stack, 3x3 vertical and 1x3 horizontal masked filters, a 1x1
head of 64 (ReLU, 1x1, ReLU, 1x1 -> one logit per pixel); Bernoulli likelihood; Adam 3e-3,
batch 32 (drop last), 10 epochs. Both libraries see the same batches in the same order (a
permutation per epoch from the seed); minissl runs its method's own ``training_step``, PyTorch
the same network written with ``torch.nn`` (PyTorch's default initialisation, masked taps
zeroed, as minissl.nn.MaskedConv2d does).

    python benchmarks/bench_pixelcnn.py --seeds 0 1 2                 # digits, both
    python benchmarks/bench_pixelcnn.py --data mnist --data-root DIR --epochs 3 --seeds 0 1 2

(DIR/mnist/ from benchmarks/make_mnist_subset.py when MNIST itself is not at hand: the README's
MNIST-subset figures are these 3 epochs, 375 steps on 4000 images.)
"""
import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import argparse
import math
import time

import numpy as np

from minissl import data, optim, random
from minissl.methods.pixelcnn import (PixelCNN, PixelCNNConfig, bernoulli_baseline_bits,
                                      binarize)
from minissl.nn.masked_conv import causal_mask

BATCH, LR = 32, 3e-3
CONFIG = PixelCNNConfig(channels=32, layers=5, kernel_size=3, head_channels=64)


def batches(x, epochs, seed):
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        for i in range(len(x) // BATCH):
            yield x[order[i * BATCH:(i + 1) * BATCH]]


def minissl_run(d, epochs, seed):
    random.manual_seed(seed)
    m = PixelCNN(d.image_shape, CONFIG)
    opt = optim.Adam(m.trainable_parameters(), lr=LR)
    rng = np.random.default_rng(seed)
    for x in batches(d.train_x, epochs, seed):
        opt.zero_grad()
        loss, _ = m.training_step(x, rng)
        loss.backward()
        opt.step()
    return m.bits_per_dim(d.test_x)


def torch_model(torch, c):
    tnn, TF = torch.nn, torch.nn.functional

    class Masked(tnn.Conv2d):
        def __init__(self, i, o, k, mask_type, stack):
            super().__init__(i, o, k, padding=(k[0] // 2, k[1] // 2))
            self.register_buffer("mask", torch.as_tensor(
                causal_mask(k, mask_type, stack), dtype=torch.float32))
            with torch.no_grad():
                self.weight *= self.mask

        def forward(self, x):
            return TF.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def gate(x):
        a, b = x.chunk(2, 1)
        return torch.tanh(a) * torch.sigmoid(b)

    class Layer(tnn.Module):
        def __init__(self, i, t):
            super().__init__()
            p, k = c.channels, c.kernel_size
            self.v = Masked(i, 2 * p, (k, k), t, "vertical")
            self.h = Masked(i, 2 * p, (1, k), t, "horizontal")
            self.v_to_h, self.h_out = tnn.Conv2d(2 * p, 2 * p, 1), tnn.Conv2d(p, p, 1)
            self.residual = t == "B"

        def forward(self, v, h):
            v2 = self.v(v)
            h_new = self.h_out(gate(self.h(h) + self.v_to_h(v2)))
            return gate(v2), (h + h_new if self.residual else h_new)

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.layers = tnn.ModuleList([Layer(1 if i == 0 else c.channels,
                                                "A" if i == 0 else "B")
                                          for i in range(c.layers)])
            self.head = tnn.Sequential(tnn.ReLU(), tnn.Conv2d(c.channels, c.head_channels, 1),
                                       tnn.ReLU(), tnn.Conv2d(c.head_channels, 1, 1))

        def forward(self, x):
            v = h = x
            for layer in self.layers:
                v, h = layer(v, h)
            return self.head(h)

    return Net()


def torch_run(d, epochs, seed):
    import torch
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    net = torch_model(torch, CONFIG)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for x in batches(d.train_x, epochs, seed):
        b = torch.from_numpy(binarize(x))
        loss = bce(net(b), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():   # in batches of 512, as PixelCNN.bits_per_dim: MNIST's at once is GBs
        b = torch.from_numpy(binarize(d.test_x))
        nats = sum(bce(net(c), c, reduction="sum").item() for c in b.split(512))
        return nats / b.numel() / math.log(2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--data-root")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", choices=("minissl", "torch"))
    args = ap.parse_args()
    d = data.load(args.data, **({"root": args.data_root} if args.data_root else {}))
    base = bernoulli_baseline_bits(binarize(d.train_x), binarize(d.test_x))
    print(f"{args.data}: {len(d.train_x)} train / {len(d.test_x)} test images "
          f"{d.image_shape}; independent Bernoulli pixels: {base:.4f} bits/dim")
    runs = [r for r in ("minissl", "torch") if args.only in (None, r)]
    results = {r: [] for r in runs}
    for seed in args.seeds:
        for r in runs:
            t0 = time.perf_counter()
            bits = (minissl_run if r == "minissl" else torch_run)(d, args.epochs, seed)
            results[r].append(bits)
            print(f"seed {seed} {r:8s} test {bits:.4f} bits/dim "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    for r, v in results.items():
        print(f"{r:8s} {np.mean(v):.4f} +- {np.std(v):.4f} bits/dim over seeds {args.seeds}")


if __name__ == "__main__":
    main()
