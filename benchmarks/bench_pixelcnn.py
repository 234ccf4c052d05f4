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

``--init`` picks each seed's initial weights: each library's own draw (``own``, the default),
or one draw for both, minissl's (``minissl``) or PyTorch's (``pytorch``): the cross experiment
that tells a difference in training from one in the draw. ``--init-stats N`` compares the two
libraries' initial weights over seeds 0..N-1 parameter by parameter
(``compare_draws.table``) and trains nothing. ``--compare-steps N`` trains both libraries from
minissl's draw in float64 on the bench's first N batches and prints, per step, the two losses
and how far the weights have drifted apart, then both test NLLs: whether the two training
loops are the same computation, apart from float32 rounding.
"""
import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import argparse
import itertools
import json
import math
import os
import sys
import time

import numpy as np

from minissl import data, optim, random
from minissl.methods.pixelcnn import (PixelCNN, PixelCNNConfig, bernoulli_baseline_bits,
                                      binarize)
from minissl.nn.masked_conv import causal_mask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_draws  # noqa: E402

BATCH, LR = 32, 3e-3
INITS = ("own", "minissl", "pytorch")
CONFIG = PixelCNNConfig(channels=32, layers=5, kernel_size=3, head_channels=64)


def batches(x, epochs, seed):
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        for i in range(len(x) // BATCH):
            yield x[order[i * BATCH:(i + 1) * BATCH]]


def torch_name(name):
    """minissl's parameter name -> the torch.nn recipe's (its layers call the stacks v, h)."""
    name = name.removeprefix("encoder.")
    return name.replace(".vertical.", ".v.").replace(".horizontal.", ".h.")


def minissl_draw(image_shape, seed):
    """minissl's initial PixelCNN for ``seed``: the one its run of the seed starts from."""
    random.manual_seed(seed)
    return PixelCNN(image_shape, CONFIG)


def torch_draw(torch, image_shape, seed):
    """PyTorch's initial network for ``seed``: the one its run of the seed starts from."""
    torch.manual_seed(seed)
    return torch_model(torch, CONFIG)


def copy_into_torch(torch, ours, net):
    """The minissl PixelCNN ``ours``'s weights into the torch.nn recipe ``net``."""
    state = {torch_name(k): torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or not all(k.endswith(".mask") for k in missing):
        raise ValueError(f"copy_into_torch: names differ: {missing}, {unexpected}")
    return net


def minissl_run(d, epochs, seed, init="own"):
    m = minissl_draw(d.image_shape, seed)
    if init == "pytorch":
        import torch
        theirs = dict(torch_draw(torch, d.image_shape, seed).named_parameters())
        named = dict(m.named_parameters())
        if sorted(theirs) != sorted(map(torch_name, named)):
            raise ValueError("minissl_run: the two networks' parameters differ")
        for name, p in named.items():
            p.data[...] = theirs[torch_name(name)].detach().numpy()
    opt = optim.Adam(m.trainable_parameters(), lr=LR)
    rng = np.random.default_rng(seed)
    for x in batches(d.train_x, epochs, seed):
        minissl_step(m, opt, x, rng)
    return m.bits_per_dim(d.test_x)


def minissl_step(m, opt, x, rng):
    """One Adam step of minissl's PixelCNN on the grey images ``x``; its loss."""
    opt.zero_grad()
    loss, _ = m.training_step(x, rng)
    loss.backward()
    opt.step()
    return loss


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


def torch_run(d, epochs, seed, init="own"):
    import torch
    torch.set_num_threads(1)
    net = torch_draw(torch, d.image_shape, seed)
    if init == "minissl":
        copy_into_torch(torch, minissl_draw(d.image_shape, seed), net)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    for x in batches(d.train_x, epochs, seed):
        torch_step(torch, net, opt, x)
    return torch_bits(torch, net, d.test_x)


def torch_step(torch, net, opt, x):
    """One Adam step of the torch.nn recipe on the grey images ``x``, binarised in the
    network's dtype; its loss."""
    b = torch.from_numpy(binarize(x)).to(next(net.parameters()).dtype)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(b), b)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def torch_bits(torch, net, test_x):
    """The torch.nn recipe's test NLL in bits per pixel, as ``PixelCNN.bits_per_dim``."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    dtype = next(net.parameters()).dtype
    with torch.no_grad():   # in batches of 512, as PixelCNN.bits_per_dim: MNIST's at once is GBs
        b = torch.from_numpy(binarize(test_x)).to(dtype)
        nats = sum(bce(net(c), c, reduction="sum").item() for c in b.split(512))
        return nats / b.numel() / math.log(2)


def compare_steps(d, seed, steps):
    """Both libraries from minissl's draw of ``seed``, in float64, on the bench's first
    ``steps`` batches: yields per step the two losses and the largest difference of a weight
    after the step, relative to that weight's largest magnitude; then both test NLLs."""
    import torch
    m = minissl_draw(d.image_shape, seed).double()
    net = copy_into_torch(torch, m, torch_model(torch, CONFIG)).double()
    opt = optim.Adam(m.trainable_parameters(), lr=LR)
    t_opt = torch.optim.Adam(net.parameters(), lr=LR)
    rng = np.random.default_rng(seed)
    epochs = -(-steps // max(1, len(d.train_x) // BATCH))
    for step, x in enumerate(itertools.islice(batches(d.train_x, epochs, seed), steps), 1):
        loss, t_loss = minissl_step(m, opt, x, rng), torch_step(torch, net, t_opt, x)
        theirs = dict(net.named_parameters())
        drift = max(float(np.abs(p.data - theirs[torch_name(n)].detach().numpy()).max()
                          / max(np.abs(p.data).max(), 1e-30)) for n, p in m.named_parameters())
        yield {"seed": seed, "step": step, "minissl_loss": loss.item(),
               "torch_loss": t_loss.item(), "weight_drift": drift}
    yield {"seed": seed, "steps": steps, "minissl_test_bits": m.bits_per_dim(d.test_x),
           "torch_test_bits": torch_bits(torch, net, d.test_x)}


def init_stats(image_shape, seeds):
    """Both libraries' initial weights over ``seeds``, compared parameter by parameter
    (``compare_draws.table``, whose pools it returns)."""
    import torch
    pools = {}
    for seed in seeds:
        theirs = dict(torch_draw(torch, image_shape, seed).named_parameters())
        for name, p in minissl_draw(image_shape, seed).named_parameters():
            compare_draws.pool(pools, name, p.data, theirs[torch_name(name)].detach().numpy())
    return compare_draws.table(pools)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--data-root")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", choices=("minissl", "torch"))
    ap.add_argument("--init", choices=INITS, default="own",
                    help="each library's own draw of the initial weights, or minissl's or "
                         "PyTorch's draw for both")
    ap.add_argument("--init-stats", type=int, metavar="N",
                    help="compare the initial weights over seeds 0..N-1; train nothing")
    ap.add_argument("--compare-steps", type=int, metavar="N",
                    help="both libraries from minissl's draw in float64 for N steps: the "
                         "losses and weights step by step, then the test NLLs (JSON lines)")
    args = ap.parse_args()
    d = data.load(args.data, **({"root": args.data_root} if args.data_root else {}))
    if args.init_stats:
        init_stats(d.image_shape, range(args.init_stats))
        return
    if args.compare_steps:
        import torch
        torch.set_num_threads(1)
        for seed in args.seeds:
            for row in compare_steps(d, seed, args.compare_steps):
                print(json.dumps(row), flush=True)
        return
    base = bernoulli_baseline_bits(binarize(d.train_x), binarize(d.test_x))
    print(f"{args.data}: {len(d.train_x)} train / {len(d.test_x)} test images "
          f"{d.image_shape}; independent Bernoulli pixels: {base:.4f} bits/dim")
    runs = [r for r in ("minissl", "torch") if args.only in (None, r)]
    results = {r: [] for r in runs}
    for seed in args.seeds:
        for r in runs:
            t0 = time.perf_counter()
            bits = (minissl_run if r == "minissl" else torch_run)(d, args.epochs, seed,
                                                                   args.init)
            results[r].append(bits)
            print(f"seed {seed} {r:8s} init {args.init} test {bits:.4f} bits/dim "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    for r, v in results.items():
        print(f"{r:8s} {np.mean(v):.4f} +- {np.std(v):.4f} bits/dim over seeds {args.seeds}")


if __name__ == "__main__":
    main()
