"""CLIP on the digits: images paired with captions made from their labels ("a handwritten
seven"), then zero-shot classification from a text prompt alone, against chance (10 %).

    python examples/clip_zero_shot.py --epochs 50
"""
import argparse

from minissl import data, evaluate, methods, random
from minissl.train import pretrain


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--data", default="digits")
    args = ap.parse_args()
    d = data.load(args.data)
    random.manual_seed(0)
    m = methods.build("clip", d)
    print(f"before training: zero-shot accuracy {m.zero_shot_accuracy(d.test_x, d.test_y):.3f}")
    hist = pretrain(m, m.training_data(d), args.epochs, batch_size=256, seed=0)
    print(f"after {args.epochs} epochs (loss {hist[-1]['loss']:.3f}, "
          f"exp(logit_scale) {hist[-1]['logit_scale']:.1f}):")
    for prompt in ("a photo of a {}", "the number {}", "{}"):
        acc = m.zero_shot_accuracy(d.test_x, d.test_y, prompt)
        print(f"  zero-shot accuracy with prompt {prompt!r}: {acc:.3f} (chance 0.100)")
    tr, te = m.features(d.train_x), m.features(d.test_x)
    print(f"  linear probe, 10 labels per class: "
          f"{evaluate.few_label_probe(tr, d.train_y, te, d.test_y, 10)[0]:.3f}")


if __name__ == "__main__":
    main()
