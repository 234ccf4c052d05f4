"""The project's quality bar: every image method on the digits, probed with few labels.

Protocol (issue "SSL methods end to end"): encoder MLP 64-256-256 with BatchNorm and ReLU
(features = its output), 100 epochs, batch 256, Adam lr 1e-3; augmentation = random shift of
up to 1 pixel, 10 % pixel dropout, Gaussian noise 0.1; linear probe = logistic regression on
standardised frozen features fitted on K labelled training images per class, mean test
accuracy over 5 random draws.

    python examples/digits_protocol.py                       # all methods, ~10 minutes
    python examples/digits_protocol.py --methods simclr byol --epochs 100 --json out.json
    python examples/digits_protocol.py --methods moco --set moco.bn_splits=1   # a config field
"""
import argparse
import ast
import json
import time

import numpy as np

from minissl import data, evaluate, methods, random
from minissl.train import pretrain

DEFAULT = ["simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg", "clip",
           "denoising", "autoencoder", "vae", "rotation", "mae"]


def probe_row(tr, te, d, labels, draws, seed):
    return [evaluate.few_label_probe(tr, d.train_y, te, d.test_y, k, draws=draws,
                                     seed=seed)[0] for k in labels]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=DEFAULT)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--labels", type=int, nargs="+", default=[1, 5, 10, 50])
    ap.add_argument("--json")
    ap.add_argument("--set", nargs="*", default=[], metavar="METHOD.FIELD=VALUE",
                    help="override a field of a method's config, e.g. moco.bn_splits=1")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        name, _, field = key.partition(".")
        if not (name and field and value):
            ap.error(f"--set expects METHOD.FIELD=VALUE, got {item!r}")
        overrides.setdefault(name, {})[field] = ast.literal_eval(value)
    d = data.digits()
    rows = {}
    rows["raw pixels"] = probe_row(evaluate.raw_pixel_features(d.train_x),
                                   evaluate.raw_pixel_features(d.test_x), d, args.labels,
                                   args.draws, args.seed)
    random.manual_seed(args.seed)
    init = methods.build("simclr", d)
    rows["random-init encoder"] = probe_row(init.features(d.train_x), init.features(d.test_x),
                                            d, args.labels, args.draws, args.seed)
    extra = {}
    for name in args.methods:
        t0 = time.perf_counter()
        random.manual_seed(args.seed)
        m = methods.build(name, d, **overrides.get(name, {}))
        hist = pretrain(m, m.training_data(d), args.epochs, args.batch_size, lr=args.lr,
                        seed=args.seed, progress=False)
        rows[name] = probe_row(m.features(d.train_x), m.features(d.test_x), d, args.labels,
                               args.draws, args.seed)
        extra[name] = {"final_loss": hist[-1]["loss"], "seconds": time.perf_counter() - t0}
        if name == "clip":
            extra[name]["zero_shot"] = m.zero_shot_accuracy(d.test_x, d.test_y)
        print(f"{name:20s}" + "".join(f"{a:8.3f}" for a in rows[name])
              + f"   ({extra[name]['seconds']:.0f} s, final loss {hist[-1]['loss']:.4f})",
              flush=True)
    print(f"\n{'features':20s}" + "".join(f"{f'{k}/class':>8s}" for k in args.labels))
    for name, accs in rows.items():
        print(f"{name:20s}" + "".join(f"{a:8.3f}" for a in accs))
    if "clip" in extra:
        print(f"CLIP zero-shot accuracy on the test set: {extra['clip']['zero_shot']:.3f} "
              "(chance 0.100)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"labels": args.labels, "rows": rows, "extra": extra}, f, indent=1)


if __name__ == "__main__":
    main()
