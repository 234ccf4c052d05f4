"""The character-level masked language model (BERT's recipe, scaled down) in minissl and in
PyTorch on the same batches and masks: masked-token validation loss in nats, against the
unigram model at the same positions.

Corpus: the first ``--max-chars`` characters of Python's standard library (``data.text``),
90 % train / 10 % validation. Model: ``MaskedLM`` with 2 pre-LN blocks of width 128 (its
default has 4), 4 heads, context 64, BERT's N(0, 0.02) initialisation. Optimiser: AdamW,
constant lr 2e-3, betas (0.9, 0.99), weight decay 0.01 on every parameter. Steps: 300 in
BERT's two sequence lengths (``masked.TwoPhaseWindows``): windows of ``--short-block``
characters (batch 128) for the first 80 % of the steps, then windows of 64 (batch 32), 2048
characters per step either way; ``--short-fraction 0`` keeps one length, the recipe that
gave 3.20 nats (there with 4 blocks, for 2 minutes). Masking is BERT's
(``create_pretraining_data.py``): per window max(1, round(0.15 T)) positions, of those 80 %
-> [MASK], 10 % -> a random character, 10 % unchanged; the loss is the cross-entropy at
those positions only.

Both libraries see the same inputs: every random draw (the windows, then the masking's
``noise``, ``u`` and ``random_ids`` in ``MaskedLM.mask_tokens``'s order) comes from one
NumPy generator seeded with the seed; minissl runs its method's own ``training_step``,
PyTorch a ``torch.nn`` model (``nn.TransformerEncoderLayer``, pre-LN, GELU, no dropout)
that starts from a copy of minissl's initial weights.

Validation: the first 16384 validation characters as windows of 64, masked once with the
draws of seed 1 (the same 2560 positions for every run and step). The unigram row is the
training split's character frequencies (add-one smoothed) scored at those positions: the
best a model that ignores the context can do.

    python benchmarks/bench_mlm.py --seeds 0 1 2                  # the README's recipe, both
    python benchmarks/bench_mlm.py --short-fraction 0             # one phase: the old recipe
    python benchmarks/bench_mlm.py --n-layer 4 --steps 600 --short-fraction 0.9  # the example
"""
if __name__ == "__main__":
    import minissl
    minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import argparse
import json
import math
import os
import time

import numpy as np

from minissl import data, optim, random
from minissl.methods import masked
from minissl.methods.autoregressive import text_windows, unigram_entropy

VAL_CHARS, VAL_SEED = 16384, 1   # the first 16384 validation characters, masked once


def model_config(corpus, args):
    return masked.MaskedLMConfig(vocab_size=corpus.vocab_size, block_size=args.block_size,
                                 n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)


def masking_draws(mlm, ids, rng):
    """``MaskedLM.mask_tokens``'s corruption, through the module-level ``bert_masking``
    from the draws taken in the same order (so PyTorch gets the same inputs)."""
    B, T = ids.shape
    noise, u = rng.random((B, T)), rng.random((B, T))
    random_ids = rng.integers(0, mlm.config.vocab_size, size=(B, T))
    c = mlm.config
    return masked.bert_masking(ids, noise, u, random_ids, mask_id=mlm.mask_id,
                               mask_prob=c.mask_prob, mask_token_prob=c.mask_token_prob,
                               random_token_prob=c.random_token_prob)


def _log(step, loss):
    print(f"    step {step:5d}  validation {loss:.4f}", flush=True)
    return step, loss


def minissl_run(mlm, batches, val, args, seed, evaluate_every):
    """Trains ``mlm`` with its own ``training_step``; returns the validation curve."""
    opt = optim.AdamW(mlm.trainable_parameters(), lr=args.lr, betas=(0.9, 0.99),
                      weight_decay=args.weight_decay)
    rng = np.random.default_rng(seed)
    val_in, val_t = val

    def evaluate():
        mlm.eval()
        from minissl import functional as F
        from minissl.autograd import no_grad
        with no_grad():
            logits = mlm(val_in)
            B, T, V = logits.shape
            loss = F.cross_entropy(logits.reshape(B * T, V), val_t.reshape(-1),
                                   ignore_index=masked.IGNORE_INDEX)
        mlm.train()
        return loss.item()

    curve = []
    for step in range(args.steps):
        if step % evaluate_every == 0:
            curve.append(_log(step, evaluate()))
        opt.zero_grad()
        loss, _ = mlm.training_step(batches(step, rng), rng)
        loss.backward()
        opt.step()
    curve.append(_log(args.steps, evaluate()))
    return curve


def torch_model(torch, mlm):
    """The same network in ``torch.nn``, holding a copy of ``mlm``'s weights."""
    tnn = torch.nn
    c = mlm.config

    class MLM(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte = tnn.Embedding(c.vocab_size + 1, c.n_embd)
            self.wpe = tnn.Parameter(torch.zeros(c.block_size, c.n_embd))
            self.layers = tnn.ModuleList([tnn.TransformerEncoderLayer(
                c.n_embd, c.n_head, 4 * c.n_embd, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True) for _ in range(c.n_layer)])
            self.ln_f = tnn.LayerNorm(c.n_embd)
            self.head = tnn.Sequential(tnn.Linear(c.n_embd, c.n_embd), tnn.GELU(),
                                       tnn.LayerNorm(c.n_embd),
                                       tnn.Linear(c.n_embd, c.vocab_size))

        def forward(self, idx):
            x = self.wte(idx) + self.wpe[:idx.shape[1]]
            for layer in self.layers:
                x = layer(x)
            return self.head(self.ln_f(x))

    net = MLM()
    src = {k: np.asarray(v.data) for k, v in mlm.named_parameters()}
    names = {"wte.weight": "wte.weight", "wpe": "wpe.weight", "ln_f.weight": "ln_f.weight",
             "ln_f.bias": "ln_f.bias"}
    for i in range(c.n_layer):
        for theirs, ours in (("norm1", "ln1"), ("self_attn.in_proj", "attn.qkv"),
                             ("self_attn.out_proj", "attn.proj"), ("norm2", "ln2"),
                             ("linear1", "mlp.0"), ("linear2", "mlp.2")):
            for w in ("weight", "bias"):
                sep = "_" if theirs == "self_attn.in_proj" else "."
                names[f"layers.{i}.{theirs}{sep}{w}"] = f"h.{i}.{ours}.{w}"
    for j in (0, 2, 3):
        for w in ("weight", "bias"):
            names[f"head.{j}.{w}"] = f"head.{j}.{w}"
    state = net.state_dict()
    if set(names) != set(state) or set(names.values()) != set(src):
        raise RuntimeError("bench_mlm: the PyTorch model's parameters do not match minissl's")
    net.load_state_dict({k: torch.from_numpy(src[v].copy()) for k, v in names.items()})
    return net


def torch_run(mlm, batches, val, args, seed, evaluate_every):
    import torch
    torch.set_num_threads(1)
    net = torch_model(torch, mlm)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.99),
                            weight_decay=args.weight_decay)
    ce = torch.nn.functional.cross_entropy
    rng = np.random.default_rng(seed)
    val_in, val_t = (torch.from_numpy(a) for a in val)
    V = mlm.config.vocab_size

    def evaluate():
        net.eval()
        with torch.no_grad():
            loss = ce(net(val_in).reshape(-1, V), val_t.reshape(-1), ignore_index=-100).item()
        net.train()
        return loss

    curve = []
    for step in range(args.steps):
        if step % evaluate_every == 0:
            curve.append(_log(step, evaluate()))
        inputs, targets = masking_draws(mlm, batches(step, rng), rng)
        loss = ce(net(torch.from_numpy(inputs)).reshape(-1, V), torch.from_numpy(targets)
                  .reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    curve.append(_log(args.steps, evaluate()))
    return curve


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-chars", type=int, default=300_000)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--short-block", type=int, default=16)
    ap.add_argument("--short-fraction", type=float, default=0.8)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--evaluate-every", type=int, default=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", choices=("minissl", "torch"))
    ap.add_argument("--json", help="write the curves to this file")
    args = ap.parse_args()

    corpus = data.text(max_chars=args.max_chars)
    batches = masked.TwoPhaseWindows(corpus.train_ids, args.steps, args.block_size,
                                     args.batch_size, args.short_block, args.short_fraction)
    probe = masked.MaskedLM(model_config(corpus, args))
    val_ids = text_windows(corpus.val_ids[:VAL_CHARS], args.block_size)
    val = masking_draws(probe, val_ids, np.random.default_rng(VAL_SEED))
    counts = np.bincount(corpus.train_ids, minlength=corpus.vocab_size) + 1.0
    chosen = val[1][val[1] != masked.IGNORE_INDEX]
    unigram = float(-np.log(counts / counts.sum())[chosen].mean())
    print(f"{corpus}; {len(batches.long)} training windows of {args.block_size}; "
          f"{len(chosen)} masked validation positions")
    print(f"unigram model at those positions {unigram:.4f} nats (unigram entropy of train "
          f"{unigram_entropy(corpus.train_ids):.4f}; log V = {math.log(corpus.vocab_size):.4f})")
    print(f"recipe: {args.n_layer} layers x {args.n_embd} ({args.n_head} heads), batch "
          f"{args.batch_size}, {args.steps} steps (the first {batches.switch} on windows of "
          f"{args.short_block}, batch {batches.short_batch}), AdamW lr {args.lr} (constant), "
          f"betas (0.9, 0.99), weight decay {args.weight_decay}")
    runs = [r for r in ("minissl", "torch") if args.only in (None, r)]
    results, curves = {r: [] for r in runs}, {r: {} for r in runs}
    for seed in args.seeds:
        for r in runs:
            random.manual_seed(seed)
            mlm = masked.MaskedLM(model_config(corpus, args))     # the seed's initial weights
            t0 = time.perf_counter()
            curve = (minissl_run if r == "minissl" else torch_run)(
                mlm, batches, val, args, seed, args.evaluate_every)
            results[r].append(curve[-1][1])
            curves[r][seed] = curve
            print(f"seed {seed} {r:8s} " + " ".join(f"{s}:{v:.3f}" for s, v in curve) +
                  f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    for r, v in results.items():
        print(f"{r:8s} {np.mean(v):.4f} +- {np.std(v):.4f} nats over seeds {args.seeds} "
              f"(unigram {unigram:.4f})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "unigram": unigram, "curves": curves}, f)


if __name__ == "__main__":
    main()
