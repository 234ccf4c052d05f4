"""``make demo`` / ``minissl demo``: does self-supervision help when labels are few?

Pretrains SimCLR on scikit-learn's handwritten digits (no labels used), then fits a linear probe
on 1, 5 and 10 labelled images per class and compares three sets of features:
the SimCLR encoder's, the raw pixels, and the same encoder with random weights.
"""
import contextlib
import os
import time

from . import checkpoint, data, evaluate, methods, nn, random, runtime
from .train import pretrain


def _single_threaded_blas():
    """A context that runs BLAS on one thread (threadpoolctl, installed with scikit-learn,
    which the digits need anyway). The demo's matrices are at most 512 x 256: a second BLAS
    thread gains nothing on them and, when other processes share the cores, costs 5-10x
    (measured on this project's 2-core machine under load: about 11 s for the whole demo on one
    BLAS thread, minutes with two)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def run_demo(out="runs/demo", epochs=100, seed=0, labels=(1, 5, 10), draws=5, progress=True):
    """Pretrain, probe and print the table; writes the checkpoint and plots to ``out``."""
    with _single_threaded_blas():
        return _run_demo(out, epochs, seed, labels, draws, progress)


def _run_demo(out, epochs, seed, labels, draws, progress):
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    d = data.digits()
    print(f"digits: {len(d.train_x)} training and {len(d.test_x)} test images "
          f"{d.image_shape}, {d.num_classes} classes; labels are NOT used for pretraining")
    random.manual_seed(seed)
    method = nn.fuse(methods.build("simclr", d))   # BatchNorm + ReLU as one op (nn.fuse)
    random.manual_seed(seed)
    untrained = methods.build("simclr", d)       # the same architecture, random weights
    print(f"pretraining SimCLR for {epochs} epochs (batch 256, Adam 1e-3, NT-Xent T=0.5)...")
    history = pretrain(method, d.train_x, epochs, batch_size=256, lr=1e-3, seed=seed,
                       progress=progress)
    t_train = time.perf_counter() - t0
    checkpoint.save(os.path.join(out, "checkpoint.npz"), method, method="simclr",
                    data="digits", epoch=epochs, seed=seed, history=history)
    feats = {
        "SimCLR encoder": (method.features(d.train_x), method.features(d.test_x)),
        "raw pixels": (evaluate.raw_pixel_features(d.train_x),
                       evaluate.raw_pixel_features(d.test_x)),
        "random-init encoder": (untrained.features(d.train_x), untrained.features(d.test_x)),
    }
    print(f"\nlinear probe accuracy on the test set (mean of {draws} draws of the labelled "
          "images)")
    header = f"{'features':22s}" + "".join(f"{f'{k}/class':>10s}" for k in labels)
    print(header)
    print("-" * len(header))
    table = {}
    for name, (tr, te) in feats.items():
        accs = [evaluate.few_label_probe(tr, d.train_y, te, d.test_y, k, draws=draws,
                                         seed=seed)[0] for k in labels]
        table[name] = accs
        print(f"{name:22s}" + "".join(f"{a:10.3f}" for a in accs))
    written = []
    try:
        from . import plots
        written = plots.save_all(out, method, d, history)
    except ImportError:
        pass
    print(f"\npretraining took {t_train:.0f} s, everything {time.perf_counter() - t0:.0f} s")
    print(f"checkpoint: {os.path.join(out, 'checkpoint.npz')}")
    if written:
        print("plots: " + ", ".join(written))
    return 0


def main():
    runtime.tune()           # the process settings of a training loop (minissl/runtime.py)
    return run_demo()
