"""benchmarks/bench_mlm.py compares the two libraries on the same recipe: its torch.nn model
holds minissl's initial weights and computes the same logits, and a few training steps of
both (same windows, same masks, AdamW) give the same validation curve, through both phases
of the window lengths."""
import argparse
import importlib.util
import os

import numpy as np
import pytest

from minissl import data
from minissl.methods import masked
from minissl.methods.autoregressive import text_windows

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_mlm", os.path.join(ROOT, "benchmarks", "bench_mlm.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus():
    return data.TextCorpus.from_text("def f(x):\n    return x * 2 + 1\n\n" * 40)


ARGS = argparse.Namespace(block_size=16, n_layer=2, n_head=2, n_embd=16, batch_size=4,
                          steps=6, lr=3e-3, weight_decay=0.01, short_block=8,
                          short_fraction=0.5)


def test_torch_model_holds_minissl_weights_and_logits(bench, corpus):
    mlm = masked.MaskedLM(bench.model_config(corpus, ARGS), rng=3)
    net = bench.torch_model(torch, mlm)
    ids = np.random.default_rng(0).integers(0, mlm.mask_id + 1, size=(3, 16))
    with torch.no_grad():
        theirs = net(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(theirs, mlm(ids).numpy(), rtol=1e-4, atol=1e-5)


def test_both_libraries_train_alike_through_both_phases(bench, corpus):
    batches = masked.TwoPhaseWindows(corpus.train_ids, ARGS.steps, ARGS.block_size,
                                     ARGS.batch_size, ARGS.short_block, ARGS.short_fraction)
    probe = masked.MaskedLM(bench.model_config(corpus, ARGS), rng=0)
    val = bench.masking_draws(probe, text_windows(corpus.val_ids, 16)[:4],
                              np.random.default_rng(1))
    curves = [run(masked.MaskedLM(bench.model_config(corpus, ARGS), rng=0), batches, val,
                  ARGS, 0, 3) for run in (bench.minissl_run, bench.torch_run)]
    steps = [[s for s, _ in c] for c in curves]
    assert steps[0] == steps[1] == [0, 3, 6]
    losses = np.array([[v for _, v in c] for c in curves])
    assert abs(losses[0, -1] - losses[0, 0]) > 1e-3             # the weights moved
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-4)
