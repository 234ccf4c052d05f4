"""Self-supervised learning on raw audio: WaveNet, CPC and a denoising autoencoder.

Pretrains each on the procedural sound classes (``minissl.data.audio()``: 10 classes, 800
training and 200 test clips of 0.256 s at 8 kHz), then prints each method's own figure (the
test NLL against the marginal mu-law distribution; the SNR before and after denoising) and the
linear probe of every method's time-averaged features against raw samples and a log
spectrogram. Writes ``generated.wav`` (WaveNet, 2 s) and the pictures into ``--out``.

    python examples/audio.py --epochs 2                  # a few minutes per method on a CPU
    python examples/audio.py --methods cpc --epochs 16 --lr 3e-3  # the README's CPC: 400 steps
"""
import argparse
import os
import time

from minissl import data, evaluate, methods, random
from minissl.train import pretrain

METHODS = ("wavenet", "cpc", "denoising_audio")


def probe(train_f, test_f, d):
    return evaluate.linear_probe(train_f, d.train_y, test_f, d.test_y, steps=500)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="audio_out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    d = data.audio()
    print(d)
    spec = [data.log_spectrogram(x).reshape(len(x), -1) for x in (d.train_x, d.test_x)]
    print(f"{'raw samples':18s} probe {probe(d.train_x, d.test_x, d):.3f}")
    print(f"{'log spectrogram':18s} probe {probe(*spec, d):.3f}")
    for name in args.methods:
        random.manual_seed(args.seed)
        m = methods.build(name, d)
        t0 = time.perf_counter()
        pretrain(m, m.training_data(d), args.epochs, args.batch_size, lr=args.lr,
                 seed=args.seed, progress=True)
        figures = " ".join(f"{k}={v:.3f}" for k, v in m.test_metrics(d).items())
        acc = probe(m.features(d.train_x), m.features(d.test_x), d)
        print(f"{name:18s} probe {acc:.3f}  {figures}  ({time.perf_counter() - t0:.0f} s)")
        try:
            written = m.save_examples(args.out, d) if hasattr(m, "save_examples") else []
        except ImportError:   # the pictures need matplotlib
            written = []
        if written:
            print("  wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
