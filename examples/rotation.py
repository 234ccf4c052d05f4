"""Rotation prediction (RotNet) on images: learn features by telling which way up an image is.

Pretrains RotNet (each image shifted and flipped at random, then all four of its rotations in
the batch, as the official code; Adam), then prints the rotation accuracy on the held-out
test images and the few-label linear probe of its frozen features next to raw pixels and a
randomly initialised encoder. Saves a PNG of the four rotations of some test images, each
row labelled with how many of them the model turns the right way.

    python examples/rotation.py                          # digits, 100 epochs, about a minute
    python examples/rotation.py --head-hidden 0          # a linear rotation head instead
    python examples/rotation.py --data shapes --epochs 2 --labels 10     # conv, slow on CPU
"""
import argparse
import os
import time

import numpy as np

from minissl import data, evaluate, methods, random
from minissl.autograd import no_grad
from minissl.methods.rotation import all_rotations
from minissl.train import pretrain


def probe(train_f, test_f, d, labels, draws, seed):
    return [evaluate.few_label_probe(train_f, d.train_y, test_f, d.test_y, k, draws=draws,
                                     seed=seed) for k in labels]


def row(name, accs, extra=""):
    return f"{name:22s}" + "".join(f"  {m:.3f}±{s:.3f}" for m, s in accs) + extra


def predict(method, x, batch_size=1024):
    """Predicted rotation (0..3) of each image, in eval mode."""
    was = method.training
    method.eval()
    with no_grad():
        out = np.concatenate([method(x[i:i + batch_size]).numpy().argmax(1)
                              for i in range(0, len(x), batch_size)])
    method.train(was)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", choices=["digits", "shapes"])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--head-hidden", type=int, default=256,
                    help="hidden width of the rotation head; 0 for a linear head")
    ap.add_argument("--no-augment", action="store_true",
                    help="rotate the images as they are (no random shift and flip)")
    ap.add_argument("--labels", type=int, nargs="+", default=[1, 5, 10, 50],
                    help="labelled images per class for the linear probe")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/rotation")
    args = ap.parse_args()

    d = data.load(args.data)
    print(d)
    print(f"{'features':22s}" + "".join(f"{f'{k}/class':>14s}" for k in args.labels))
    print(row("raw pixels", probe(evaluate.raw_pixel_features(d.train_x),
                                  evaluate.raw_pixel_features(d.test_x), d, args.labels,
                                  args.draws, args.seed)), flush=True)
    random.manual_seed(args.seed)
    m = methods.build("rotation", d, head_hidden=args.head_hidden or None,
                      augment=not args.no_augment)
    print(row("random-init encoder", probe(m.features(d.train_x), m.features(d.test_x), d,
                                           args.labels, args.draws, args.seed)), flush=True)
    t0 = time.perf_counter()
    hist = pretrain(m, m.training_data(d), args.epochs, args.batch_size, lr=args.lr,
                    seed=args.seed, progress=False)
    seconds = time.perf_counter() - t0
    print(row("RotNet", probe(m.features(d.train_x), m.features(d.test_x), d, args.labels,
                              args.draws, args.seed),
              f"   [{seconds:.0f} s, final loss {hist[-1]['loss']:.4f}]"))

    x4, k = all_rotations(d.test_x)
    pred = predict(m, x4)
    print(f"rotation accuracy on the test images: {(pred == k).mean():.3f} (chance 0.250); "
          "per rotation 0/90/180/270: "
          + " ".join(f"{(pred[k == r] == r).mean():.3f}" for r in range(4)))
    # Digits that look alike turned by 180 degrees (0, 1, 8) cap this below 1.
    per_class = [(pred[np.repeat(d.test_y, 4) == c] == k[np.repeat(d.test_y, 4) == c]).mean()
                 for c in range(d.num_classes)]
    print("per class: " + " ".join(f"{name}={a:.2f}" for name, a in
                                   zip(d.class_names, per_class)))

    try:
        from minissl import plots
    except ImportError:
        print("matplotlib is not installed: no picture")
        return
    os.makedirs(args.out, exist_ok=True)
    n = 12
    rows = [x4[r::4][:n] for r in range(4)]                  # row r: every image turned r times
    names = [f"{90 * r}°: {np.mean(pred[r::4][:n] == r):.0%} ok" for r in range(4)]
    path = plots.image_grid(rows, os.path.join(args.out, f"rotation_{args.data}.png"),
                            f"{args.data}: the four rotations RotNet tells apart "
                            f"({args.epochs} epochs)", names)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
