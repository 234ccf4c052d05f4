"""Inpainting and colourisation on procedural shapes, in minissl and in PyTorch: PSNR of the
completed test images against the trivial baselines (mean-colour fill; the luma copied into
R, G and B).

Recipe: ``shapes(n_train=2000, n_test=500, size=16)``; U-Net widths 16-32-64 (two 3x3
Conv-BN-ReLU per level, 2x2 max pool, 2x2 stride-2 transposed conv, skips concatenated, 1x1
conv, sigmoid); Adam 1e-3, batch 64 (drop last), ``--epochs`` epochs. Inpainting hides two
random boxes of 25-50 % of the side per image, fills them with the training images' mean
colour, gives the mask as a fourth channel and scores the squared error on the hidden pixels;
colourisation maps the BT.601 luma to RGB with the squared error on all pixels. Both libraries
get the same batches and the same masks (``minissl.methods.inpainting.random_boxes`` from the
same seeded generators, data made in NumPy); minissl runs its methods' own ``training_step``,
PyTorch the same model written with ``torch.nn``, by default from minissl's initial weights
for the seed (``--torch-init own``: PyTorch's own draws of the same distributions), so that a
difference comes from the libraries and not from the draws. The test masks are those of
``Inpainting.eval_seed`` for both.

    python benchmarks/bench_inpaint.py --task inpainting --seeds 0 1 2 [--epochs 10]
    python benchmarks/bench_inpaint.py --task colorization --seeds 0 1 2 --torch
"""
import argparse

import numpy as np

from minissl import data, methods, nn, optim, random, runtime
from minissl.methods.inpainting import psnr

BATCH, WIDTHS = 64, (16, 32, 64)


def steps(d, epochs, seed):
    """(images, generator of the step's masks) in the order both runs use."""
    per_epoch = len(d.train_x) // BATCH
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(d.train_x))
        for i in range(per_epoch):
            yield d.train_x[order[i * BATCH:(i + 1) * BATCH]], [seed, epoch, i]


def minissl_run(task, d, epochs, seed):
    random.manual_seed(seed)
    m = nn.fuse(methods.build(task, d, widths=WIDTHS))
    opt = optim.Adam(m.trainable_parameters(), lr=1e-3)
    for x, key in steps(d, epochs, seed):
        opt.zero_grad()
        loss, _ = m.training_step(x, np.random.default_rng(key))
        loss.backward()
        opt.step()
    return m.psnr(d.test_x), m.baseline_psnr(d.test_x)


def torch_run(task, d, epochs, seed, same_init=True):
    """The recipe in PyTorch; ``same_init``: from minissl's initial weights for ``seed`` (the
    weights ``minissl_run`` starts from), else from PyTorch's own draws."""
    import torch
    import torch.nn as tnn
    torch.manual_seed(seed)
    random.manual_seed(seed)
    ref = methods.build(task, d, widths=WIDTHS)   # its corrupt(): the same inputs and masks

    def level(cin, cout):
        return tnn.Sequential(tnn.Conv2d(cin, cout, 3, padding=1, bias=False),
                              tnn.BatchNorm2d(cout), tnn.ReLU(),
                              tnn.Conv2d(cout, cout, 3, padding=1, bias=False),
                              tnn.BatchNorm2d(cout), tnn.ReLU())

    class UNet(tnn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            w = WIDTHS
            self.down = tnn.ModuleList([level(a, b) for a, b in zip((cin,) + w[:-1], w)])
            self.up = tnn.ModuleList([tnn.ConvTranspose2d(b, a, 2, stride=2)
                                      for a, b in zip(w[-2::-1], w[:0:-1])])
            self.dec = tnn.ModuleList([level(2 * a, a) for a in w[-2::-1]])
            self.head = tnn.Conv2d(w[0], cout, 1)

        def forward(self, x):
            skips = []
            for i, block in enumerate(self.down):
                x = block(tnn.functional.max_pool2d(x, 2) if i else x)
                skips.append(x)
            for up, dec, skip in zip(self.up, self.dec, skips[-2::-1]):
                x = dec(torch.cat([up(x), skip], 1))
            return self.head(x)

    C = d.image_shape[0]
    net = UNet(C + 1 if task == "inpainting" else 1, C)
    if same_init:   # the same parameter and buffer names and layouts as minissl's U-Net
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                             ref.net.state_dict().items()})
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for x, key in steps(d, epochs, seed):
        inputs, weight = ref.corrupt(x, np.random.default_rng(key))
        out = torch.sigmoid(net(torch.from_numpy(inputs)))
        sq = (out - torch.from_numpy(x)) ** 2
        if weight is None:
            loss = sq.mean()
        else:
            w = torch.from_numpy(weight)
            loss = (sq * w).sum() / (w.sum() * C)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    inputs, weight = ref.corrupt(d.test_x, np.random.default_rng(ref.eval_seed))
    with torch.no_grad():
        out = torch.sigmoid(net(torch.from_numpy(inputs))).numpy()
    if weight is not None:
        out = d.test_x * (1 - weight) + out * weight
    return psnr(out, d.test_x), ref.baseline_psnr(d.test_x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("inpainting", "colorization"), default="inpainting")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--torch", action="store_true", help="also the PyTorch recipe")
    ap.add_argument("--torch-init", choices=("minissl", "own"), default="minissl",
                    help="PyTorch starts from minissl's initial weights of the seed (default) "
                         "or from its own draws")
    args = ap.parse_args()
    runtime.tune()   # the process settings of a training loop (minissl/runtime.py)
    d = data.shapes(n_train=2000, n_test=500, size=16, seed=0)
    runs = {"minissl": minissl_run}
    if args.torch:
        runs["pytorch"] = torch_run
    for lib, run in runs.items():
        kw = {"same_init": args.torch_init == "minissl"} if lib == "pytorch" else {}
        got = [run(args.task, d, args.epochs, s, **kw) for s in args.seeds]
        model, base = np.array(got).T
        print(f"{args.task} {lib}: test PSNR {model.mean():.2f} +- {model.std():.2f} dB "
              f"(seeds {' '.join(map(str, args.seeds))}: "
              f"{' '.join(f'{v:.2f}' for v in model)}); baseline {base.mean():.2f} dB",
              flush=True)


if __name__ == "__main__":
    main()
