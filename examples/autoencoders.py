"""Autoencoders on images: a plain autoencoder, a denoising autoencoder and a VAE.

Pretrains each (Adam, batch 256), then prints for each the reconstruction error on the test
split, and the few-label linear probe of its frozen features next to raw pixels and a
randomly initialised encoder. Saves one PNG with test images, the DAE's corrupted inputs, the
three reconstructions and new images sampled from the VAE's prior.

    python examples/autoencoders.py                      # digits, 100 epochs, ~1-2 minutes
    python examples/autoencoders.py --data shapes --epochs 2 --labels 10   # conv, slow on CPU
"""
import argparse
import os
import time

import numpy as np

from minissl import data, evaluate, methods, random
from minissl.train import pretrain

NAMES = {"autoencoder": "autoencoder", "denoising": "denoising AE", "vae": "VAE"}


def probe(train_f, test_f, d, labels, draws, seed):
    return [evaluate.few_label_probe(train_f, d.train_y, test_f, d.test_y, k, draws=draws,
                                     seed=seed) for k in labels]


def row(name, accs, extra=""):
    return f"{name:22s}" + "".join(f"  {m:.3f}±{s:.3f}" for m, s in accs) + extra


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", choices=["digits", "shapes"])
    ap.add_argument("--methods", nargs="+", default=list(NAMES), choices=list(NAMES))
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--labels", type=int, nargs="+", default=[1, 5, 10, 50],
                    help="labelled images per class for the linear probe")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/autoencoders")
    args = ap.parse_args()

    d = data.load(args.data)
    print(d)
    print(f"{'features':22s}" + "".join(f"{f'{k}/class':>14s}" for k in args.labels)
          + "   test MSE")
    print(row("raw pixels", probe(evaluate.raw_pixel_features(d.train_x),
                                  evaluate.raw_pixel_features(d.test_x), d, args.labels,
                                  args.draws, args.seed)), flush=True)
    random.manual_seed(args.seed)
    init = methods.build("autoencoder", d)                  # untrained: a random-init encoder
    print(row("random-init encoder", probe(init.features(d.train_x), init.features(d.test_x),
                                           d, args.labels, args.draws, args.seed)), flush=True)

    trained = {}
    for name in args.methods:
        random.manual_seed(args.seed)
        m = methods.build(name, d)
        t0 = time.perf_counter()
        pretrain(m, m.training_data(d), args.epochs, args.batch_size, lr=args.lr,
                 seed=args.seed, progress=False)
        seconds = time.perf_counter() - t0
        accs = probe(m.features(d.train_x), m.features(d.test_x), d, args.labels, args.draws,
                     args.seed)
        # Pixel MSE of the reconstruction of clean test images (the VAE: of the posterior
        # mean); the DAE also of test images corrupted by its own noise, held out.
        mse = f"   {m.reconstruction_mse(d.test_x):.4f}"
        if name == "denoising":
            noisy = m.corrupt(d.test_x, np.random.default_rng(1))
            mse += (f" (corrupted input: {m.reconstruction_mse(d.test_x, noisy):.4f}, "
                    f"vs {float(np.mean((noisy - d.test_x) ** 2)):.4f} if left as is)")
        print(row(NAMES[name], accs, mse + f"   [{seconds:.0f} s]"), flush=True)
        trained[name] = m

    try:
        from minissl import plots
    except ImportError:
        print("matplotlib is not installed: no picture")
        return
    os.makedirs(args.out, exist_ok=True)
    x = d.test_x[:12]
    rows, names = [x], ["input"]
    if "denoising" in trained:
        noisy = trained["denoising"].corrupt(x, np.random.default_rng(1))
        rows += [noisy, trained["denoising"].reconstruct(noisy)]
        names += ["corrupted", "DAE(corr.)"]
    for name, short in (("autoencoder", "AE"), ("vae", "VAE")):
        if name in trained:
            rows.append(trained[name].reconstruct(x))
            names.append(f"{short}(input)")
    if "vae" in trained:
        rows.append(trained["vae"].sample(12, np.random.default_rng(0)))
        names.append("VAE sample")
    path = plots.image_grid(rows, os.path.join(args.out, f"autoencoders_{args.data}.png"),
                            f"{args.data}: reconstructions and VAE samples "
                            f"({args.epochs} epochs)", names)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
