"""Contrastive and non-contrastive SSL on the digits: SimCLR, MoCo, BYOL, SimSiam, Barlow
Twins, VICReg. Pretrains each method asked for, then reports a 10-labels-per-class linear
probe, a kNN accuracy and the collapse diagnostics of its features.

    python examples/contrastive.py --methods simclr byol --epochs 50
"""
import argparse
import os

import numpy as np

from minissl import augment, data, evaluate, methods, random
from minissl.train import pretrain


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+",
                    default=["simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg"])
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--out", default="runs/contrastive")
    args = ap.parse_args()
    d = data.digits()
    os.makedirs(args.out, exist_ok=True)
    print(f"{'method':14s} {'loss':>8s} {'probe@10':>9s} {'kNN':>6s} {'emb std':>8s} "
          f"{'align':>6s} {'unif':>6s}")
    for name in args.methods:
        random.manual_seed(0)
        m = methods.build(name, d)
        hist = pretrain(m, m.training_data(d), args.epochs, batch_size=256, seed=0)
        tr, te = m.features(d.train_x), m.features(d.test_x)
        probe = evaluate.few_label_probe(tr, d.train_y, te, d.test_y, 10)[0]
        knn = evaluate.knn_classify(tr, d.train_y, te, d.test_y)
        # Alignment of two augmented views of the test images, uniformity of the features.
        v1, v2 = augment.two_views(d.test_x, m.transform, np.random.default_rng(1))
        align = evaluate.alignment(m.features(v1), m.features(v2))
        unif = evaluate.uniformity(te[:500])
        print(f"{name:14s} {hist[-1]['loss']:8.4f} {probe:9.3f} {knn:6.3f} "
              f"{evaluate.embedding_std(te):8.4f} {align:6.3f} {unif:6.3f}", flush=True)
        try:
            from minissl import plots
            plots.save_all(os.path.join(args.out), m, d, hist)
            os.replace(os.path.join(args.out, "pca.png"),
                       os.path.join(args.out, f"pca_{name}.png"))
            os.replace(os.path.join(args.out, "loss.png"),
                       os.path.join(args.out, f"loss_{name}.png"))
        except ImportError:
            pass
    print(f"plots in {args.out}/")


if __name__ == "__main__":
    main()
