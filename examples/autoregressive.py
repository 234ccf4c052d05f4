"""Autoregression: a character-level GPT on Python's own sources, and a linear AR(p) model
that recovers the coefficients of a synthetic process.

Part 1 trains ``CharGPT`` (nanoGPT-style, AdamW, cosine schedule) on the first
``--max-chars`` characters of the standard library and prints its validation loss in
nats/char next to the unigram entropy of the corpus (the best a model without context can
do), then a sample. Part 2 fits ``ARModel`` by next-value prediction on ``data.ar()`` and
prints its coefficients next to the true ones and the least-squares solution. Saves a PNG
with the GPT's loss curves and the AR coefficients (if matplotlib is installed).

    python examples/autoregressive.py                     # ~5 minutes on 2 CPU cores
    python examples/autoregressive.py --max-minutes 1 --max-chars 100000
"""
import argparse
import math
import os
import time

import numpy as np

from minissl import data, optim, random
from minissl.methods import autoregressive as ar
from minissl.train import pretrain


def train_gpt(args):
    corpus = data.text(max_chars=args.max_chars)
    print(corpus)
    random.manual_seed(args.seed)
    gpt = ar.build(corpus, block_size=args.block_size, n_layer=args.n_layer,
                   n_head=args.n_head, n_embd=args.n_embd)
    n_params = sum(p.data.size for p in gpt.parameters())
    print(f"CharGPT: {args.n_layer} layers, {args.n_head} heads, width {args.n_embd}, "
          f"context {args.block_size}: {n_params / 1e6:.2f} M parameters")

    h_train = ar.unigram_entropy(corpus.train_ids, corpus.vocab_size)
    # The unigram model fitted on train and scored on val (add-one smoothed): a fair baseline
    # for the validation loss, which a model must beat by using its context.
    counts = np.bincount(corpus.train_ids, minlength=corpus.vocab_size) + 1.0
    unigram_val = float(-np.log(counts / counts.sum())[corpus.val_ids].mean())
    init_val = gpt.estimate_loss(corpus, "val", args.eval_iters)

    # nanoGPT's recipe (shakespeare_char): AdamW, betas (0.9, 0.99), weight decay 0.1 on the
    # matrices only, linear warm-up then cosine decay to lr / 10.
    decay = [p for p in gpt.trainable_parameters() if p.ndim >= 2]
    no_decay = [p for p in gpt.trainable_parameters() if p.ndim < 2]
    opt = optim.AdamW([{"params": decay, "weight_decay": 0.1},
                       {"params": no_decay, "weight_decay": 0.0}], lr=args.lr,
                      betas=(0.9, 0.99))
    total = args.max_steps
    sched = optim.CosineWarmupSchedule(opt, warmup_steps=min(100, total // 10),
                                       total_steps=total, final_lr=args.lr / 10)
    rng = np.random.default_rng(args.seed)
    curve = []                                    # (step, train loss, val loss)
    t0 = time.perf_counter()
    step = 0
    while step < total and time.perf_counter() - t0 < 60 * args.max_minutes:
        x, y = corpus.windows("train", args.batch_size, args.block_size, rng)
        opt.zero_grad()
        loss, _ = gpt.training_step((x, y), rng)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % args.eval_every == 0 or step == total:
            # Both splits scored the same way (fixed windows, eval mode), not the running
            # mean of the training batches, which lags behind the model.
            train = gpt.estimate_loss(corpus, "train", args.eval_iters)
            val = gpt.estimate_loss(corpus, "val", args.eval_iters)
            curve.append((step, train, val))
            el = time.perf_counter() - t0
            print(f"  step {step:5d}  train {curve[-1][1]:.3f}  val {val:.3f} nats/char  "
                  f"[{el:.0f} s, {step * args.batch_size * args.block_size / el:.0f} "
                  f"chars/s]", flush=True)
    seconds = time.perf_counter() - t0
    train = gpt.estimate_loss(corpus, "train", args.eval_iters)
    val = gpt.estimate_loss(corpus, "val", args.eval_iters)
    if not curve or curve[-1][0] != step:
        curve.append((step, train, val))
    print(f"\nafter {step} steps ({seconds:.0f} s, {step * args.batch_size} windows of "
          f"{args.block_size}):")
    print(f"  validation loss          {val:.3f} nats/char ({val / math.log(2):.3f} bits/char)")
    print(f"  training loss            {train:.3f}   (the validation split is the end of "
          f"the corpus, which may be easier text)")
    print(f"  at initialisation        {init_val:.3f}   (log V = "
          f"{math.log(corpus.vocab_size):.3f}, V = {corpus.vocab_size})")
    print(f"  unigram entropy (train)  {h_train:.3f}   (unigram model on val: "
          f"{unigram_val:.3f})")
    prompt = corpus.encode("def ")[None]
    sample = gpt.generate(prompt, args.sample_chars, temperature=0.8, top_k=20, rng=args.seed)
    print("\nsample (temperature 0.8, top-k 20), prompt 'def ':\n" + "-" * 60)
    print(corpus.decode(sample[0]))
    print("-" * 60)
    return curve, {"val": val, "init": init_val, "unigram": h_train,
                   "unigram_val": unigram_val}


def fit_ar(args):
    series = data.ar(n_series=64, length=256, seed=args.seed)
    random.manual_seed(args.seed)
    model = ar.build(series)
    t0 = time.perf_counter()
    # Full batch: plain gradient descent on the convex MSE, so it lands on least squares.
    hist = pretrain(model, model.training_data(series), epochs=args.ar_epochs, batch_size=64,
                    lr=0.02, seed=args.seed, progress=False)
    a_ls, b_ls = ar.ARModel.least_squares(series.series, series.order)
    print(f"\nAR({series.order}) model: {series.series.shape[0]} series x "
          f"{series.series.shape[1]} steps, {args.ar_epochs} epochs "
          f"({time.perf_counter() - t0:.1f} s), final MSE {hist[-1]['loss']:.4f} "
          f"(innovation variance {series.noise_std ** 2:.4f})")
    print(f"  {'':14s}" + "".join(f"{f'a_{k + 1}':>9s}" for k in range(series.order))
          + f"{'b':>9s}")
    for name, a, b in (("true", series.coefficients, 0.0),
                       ("least squares", a_ls, b_ls),
                       ("ARModel (SGD)", model.coefficients, model.intercept)):
        print(f"  {name:14s}" + "".join(f"{v:9.4f}" for v in a) + f"{b:9.4f}")
    err = np.abs(model.coefficients - series.coefficients).max()
    print(f"  max |a_model - a_true| = {err:.4f},  max |a_model - a_ls| = "
          f"{np.abs(model.coefficients - a_ls).max():.2e}")
    return series, model, a_ls


def save_png(path, curve, stats, series, model, a_ls):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no PNG)")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if curve:
        steps, tr, va = zip(*curve)
        ax1.plot(steps, tr, label="train")
        ax1.plot(steps, va, label="validation")
        ax1.axhline(stats["unigram"], color="gray", ls="--", label="unigram entropy")
        ax1.set_xlabel("step")
        ax1.set_ylabel("nats / char")
        ax1.set_title("CharGPT on the Python standard library")
        ax1.legend()
    k = np.arange(series.order)
    ax2.bar(k - 0.25, series.coefficients, 0.25, label="true")
    ax2.bar(k, a_ls, 0.25, label="least squares")
    ax2.bar(k + 0.25, model.coefficients, 0.25, label="ARModel")
    ax2.set_xticks(k, [f"a_{i + 1}" for i in k])
    ax2.axhline(0, color="black", lw=0.5)
    ax2.set_title("AR coefficients")
    ax2.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-chars", type=int, default=300_000)
    ap.add_argument("--epochs", type=float, default=None,
                    help="passes over the training characters (sets --max-steps)")
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--max-minutes", type=float, default=5.0,
                    help="stop the GPT training after this long")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--sample-chars", type=int, default=300)
    ap.add_argument("--ar-epochs", type=int, default=300)
    ap.add_argument("--skip-gpt", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/autoregressive")
    args = ap.parse_args()
    if args.epochs is not None:
        n_train = int(args.max_chars * 0.9)
        args.max_steps = max(1, int(args.epochs * n_train / (args.batch_size * args.block_size)))

    curve, stats = ([], {}) if args.skip_gpt else train_gpt(args)
    series, model, a_ls = fit_ar(args)
    save_png(os.path.join(args.out, "autoregressive.png"), curve,
             stats or {"unigram": float("nan")}, series, model, a_ls)


if __name__ == "__main__":
    main()
