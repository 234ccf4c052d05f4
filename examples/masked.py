"""Masking: a masked autoencoder (MAE) on images, and a BERT-style masked language model on
Python's own sources.

Part 1 pretrains ``MAE`` (75 % of the patches removed, AdamW with the paper's betas and
weight decay, cosine schedule with warm-up) and prints the reconstruction error of the
removed patches of test images next to simple baselines (the mean training image; each
image's mean visible pixel), then a few-label linear probe of the frozen encoder features
next to raw pixels and the untrained encoder. Part 2 trains ``MaskedLM`` with the 80/10/10
rule for ``--mlm-steps`` (BERT's two sequence lengths: 90 % of the steps on windows of 16
characters, then 64) and prints its loss and accuracy on the chosen positions of the
validation text. Saves a PNG of test images, masked inputs and reconstructions (if
matplotlib is installed).

    python examples/masked.py                        # digits, 100 epochs + 600 MLM steps
    python examples/masked.py --data shapes --epochs 10 --skip-mlm
    python examples/masked.py --skip-mae                  # the masked LM alone (README)
"""
import argparse
import math
import os
import time

import numpy as np

from minissl import data, evaluate, optim, random
from minissl.methods import masked
from minissl.methods.autoregressive import text_windows, unigram_entropy
from minissl.train import pretrain


def baselines(d, mae, rng_seed):
    """Masked-patch MSE of two predictors that need no training: the mean training image,
    and each test image's mean visible pixel (per channel) painted into its removed patches."""
    _, mask_img, _ = mae.reconstruct(d.test_x, rng_seed)               # the same masks
    m = mask_img.astype(np.float64)
    x = d.test_x.astype(np.float64)
    C = x.shape[1]
    mean_img = d.train_x.astype(np.float64).mean(0, keepdims=True)     # (1, C, H, W)
    vis = 1 - m
    vis_mean = (x * vis).sum((2, 3), keepdims=True) / vis.sum((2, 3), keepdims=True)
    denom = m.sum() * C
    return {"mean training image": float((((mean_img - x) ** 2) * m).sum() / denom),
            "mean visible pixel": float((((vis_mean - x) ** 2) * m).sum() / denom)}


def run_mae(args, d):
    random.manual_seed(args.seed)
    mae = masked.build_mae(d)
    untrained = masked.build_mae(d)                    # another draw of the initial weights
    c = mae.config
    print(f"MAE: {mae.num_patches} patches of {c.patch_size}x{c.patch_size}, "
          f"{mae.len_keep} visible; encoder {c.depth} x {c.embed_dim}, decoder "
          f"{c.decoder_depth} x {c.decoder_embed_dim}; mask ratio {c.mask_ratio}")
    init_err = mae.reconstruction_mse(d.test_x, args.seed)
    steps = args.epochs * (len(d.train_x) // args.batch_size)
    # The paper's recipe (App. A.1): AdamW, betas (0.9, 0.95), weight decay 0.05, cosine
    # schedule with warm-up (40 of 800 epochs there; 5 % here).
    opt = optim.AdamW(mae.trainable_parameters(), lr=args.lr, betas=(0.9, 0.95),
                      weight_decay=0.05)
    sched = optim.CosineWarmupSchedule(opt, warmup_steps=max(1, steps // 20), total_steps=steps)
    t0 = time.perf_counter()
    hist = pretrain(mae, mae.training_data(d), args.epochs, args.batch_size, optimizer=opt,
                    scheduler=sched, seed=args.seed, progress=False,
                    on_epoch_end=lambda e, r: print(f"  epoch {e + 1:4d}  loss {r['loss']:.4f}",
                                                    flush=True)
                    if (e + 1) % max(1, args.epochs // 10) == 0 else None)
    seconds = time.perf_counter() - t0
    err = mae.reconstruction_mse(d.test_x, args.seed)
    print(f"\nreconstruction MSE of the removed patches, {len(d.test_x)} test images "
          f"(pixels in [0, 1]), after {args.epochs} epochs ({seconds:.0f} s):")
    print(f"  MAE                   {err:.4f}")
    print(f"  MAE at initialisation {init_err:.4f}")
    for name, v in baselines(d, mae, args.seed).items():
        print(f"  {name:21s} {v:.4f}")

    labels = args.labels
    print(f"\nfew-label linear probe (test accuracy, mean ± std of {args.draws} draws):")
    print(f"  {'features':22s}" + "".join(f"{f'{k}/class':>14s}" for k in labels))
    for name, (tr, te) in (
            ("raw pixels", (evaluate.raw_pixel_features(d.train_x),
                            evaluate.raw_pixel_features(d.test_x))),
            ("untrained encoder", (untrained.features(d.train_x),
                                   untrained.features(d.test_x))),
            ("MAE encoder", (mae.features(d.train_x), mae.features(d.test_x)))):
        accs = [evaluate.few_label_probe(tr, d.train_y, te, d.test_y, k, draws=args.draws,
                                         seed=args.seed) for k in labels]
        print(f"  {name:22s}" + "".join(f"  {m:.3f}±{s:.3f}" for m, s in accs), flush=True)
    return mae, hist


def run_mlm(args):
    corpus = data.text(max_chars=args.max_chars)
    random.manual_seed(args.seed)
    mlm = masked.build_mlm(corpus, block_size=args.block_size)
    c = mlm.config
    print(f"\nMaskedLM on {corpus}: {c.n_layer} layers x {c.n_embd}, context {c.block_size}")
    val = text_windows(corpus.val_ids, c.block_size)[:256]

    def evaluate_mlm():
        # Fixed masks (seed 1) so that scores before and after training are comparable.
        mlm.eval()
        loss, m = mlm.training_step(val, np.random.default_rng(1))
        mlm.train()
        return loss.item(), m["mlm_accuracy"]

    init = evaluate_mlm()
    # The best context-free guess at the same chosen positions: the training unigram
    # distribution (add-one smoothed).
    _, targets = mlm.mask_tokens(val, np.random.default_rng(1))
    counts = np.bincount(corpus.train_ids, minlength=corpus.vocab_size) + 1.0
    unigram = float(-np.log(counts / counts.sum())[targets[targets != -100]].mean())
    opt = optim.AdamW(mlm.trainable_parameters(), lr=args.mlm_lr, betas=(0.9, 0.99),
                      weight_decay=0.01)
    # BERT's two sequence lengths: short windows first (the same characters per step), so
    # that a masked position finds its neighbours, then full ones for the positions beyond.
    phases = masked.TwoPhaseWindows(corpus.train_ids, args.mlm_steps, c.block_size,
                                    args.batch_size_text, args.mlm_short_block)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for step in range(args.mlm_steps):
        opt.zero_grad()
        loss, _ = mlm.training_step(phases(step, rng), rng)
        loss.backward()
        opt.step()
    loss, acc = evaluate_mlm()
    print(f"after {args.mlm_steps} steps ({phases.switch} on windows of "
          f"{args.mlm_short_block}; {time.perf_counter() - t0:.0f} s), on the chosen 15 % of "
          f"{len(val)} validation windows:")
    print(f"  masked-token loss  {loss:.3f} nats (at init {init[0]:.3f}; log V = "
          f"{math.log(corpus.vocab_size):.3f})")
    print(f"  unigram model      {unigram:.3f} at these positions (unigram entropy of train "
          f"{unigram_entropy(corpus.train_ids):.3f})")
    print(f"  accuracy           {acc:.3f} (at init {init[1]:.3f})")


def save_png(path, mae, d, seed):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no PNG)")
        return
    x = d.test_x[:10]
    prediction, mask_img, pasted = mae.reconstruct(x, seed)
    shown = x * (1 - mask_img) + 0.5 * mask_img                       # removed: gray
    rows = [("test image", x), ("visible 25 %", shown), ("prediction", prediction),
            ("visible + predicted", pasted)]
    fig, axes = plt.subplots(len(rows), len(x), figsize=(len(x) * 0.9, len(rows) * 0.95),
                             squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j, img in enumerate(np.clip(imgs, 0, 1)):
            ax = axes[i][j]
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray_r", vmin=0, vmax=1)   # digits: 1 = ink
            else:
                ax.imshow(img.transpose(1, 2, 0))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(name, fontsize=7)
    fig.suptitle("MAE: reconstructions of test images from 25 % of their patches", fontsize=9)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    print(f"saved {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", choices=["digits", "shapes"])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32,
                    help="small batches: on 1258 images the MAE needs steps (paper: 4096)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--labels", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--skip-mae", action="store_true")
    ap.add_argument("--skip-mlm", action="store_true")
    ap.add_argument("--mlm-steps", type=int, default=600)
    ap.add_argument("--mlm-short-block", type=int, default=16,
                    help="window length of the first 90 %% of the MLM steps (BERT's 128 of 512)")
    ap.add_argument("--mlm-lr", type=float, default=2e-3)
    ap.add_argument("--max-chars", type=int, default=300_000)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size-text", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/masked")
    args = ap.parse_args()

    if not args.skip_mae:
        d = data.load(args.data)
        print(d)
        mae, _ = run_mae(args, d)
        save_png(os.path.join(args.out, "mae_reconstructions.png"), mae, d, args.seed)
    if not args.skip_mlm:
        run_mlm(args)


if __name__ == "__main__":
    main()
