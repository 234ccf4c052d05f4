"""Every method of ``minissl list``: N ranks with B/N examples each give the loss, the
gradients and the weights of ONE process with the global batch B (1e-12 in float64, 1e-5 in
float32), step after step. Each rank computes the one-process reference itself, inside
``dist.single_process()``, from the same seed."""
import numpy as np
import pytest

from minissl import data, distributed as dist, methods, random
from dist_helpers import assert_close, run_steps

STEPS, BATCH = 3, 8

TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. " * 8
SMALL = {   # a few widths down, so that fifteen methods x two runs stay a few seconds
    "gpt": dict(block_size=8, n_layer=1, n_head=2, n_embd=16),
    "mlm": dict(block_size=8, n_layer=1, n_head=2, n_embd=16),
    "mae": dict(embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                decoder_num_heads=2),
    "videomae": dict(patch_size=4, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                     decoder_depth=1, decoder_num_heads=2, mask_ratio=0.5),
    "inpainting": dict(widths=(4, 8)),
    "colorization": dict(widths=(4, 8)),
    # The queue wraps within the steps. Shuffle BN: the MLP encoder in 2 groups of 4 rows (one
    # per rank of 2; groups of 2 rows make BN so ill-conditioned that round-off grows ~500x a
    # step), the conv encoder in 4 groups of 2 images (two per rank).
    "moco": dict(queue_size=24, bn_splits=2),
    "moco-conv": dict(queue_size=24, bn_splits=4),
    "moco-syncbn": dict(queue_size=24, bn_splits=1),   # one group across ranks: SyncBatchNorm
    # NNCLR's support set wraps within the steps; the ViTs a block of width 16.
    "nnclr": dict(queue_size=12),
    "mocov3": dict(embed_dim=16, depth=1, num_heads=2),
    "simmim": dict(embed_dim=16, depth=1, num_heads=2),
    "wavenet": dict(quantization_channels=16, residual_channels=4, dilation_channels=4,
                    skip_channels=6, layers=3, stacks=1, window=64),
    "cpc": dict(channels=8, context_layers=2, prediction_steps=3),   # every frame a candidate
    "denoising_audio": dict(channels=4, dilations=(1, 2)),
}


def _data(name):
    kind = methods.data_kind(name.split("-")[0])
    if kind == "text":
        return data.TextCorpus.from_text(TEXT)
    if kind == "series":
        return data.ar(n_series=4 * BATCH, length=24, seed=0)
    if kind == "video":
        return data.moving_shapes(n_train=4 * BATCH, n_test=0, frames=4, size=8, seed=0)
    if kind == "audio":
        return data.audio(n_per_class=4, clip_length=512, seed=0)
    if name.endswith("-conv") or name == "colorization":   # conv encoder; RGB
        return data.shapes(n_train=4 * BATCH, n_test=8, size=8, seed=0)   # conv encoder
    d = data.digits()
    return d


def _global_batches(method, d):
    train = method.training_data(d)
    pick = lambda a, i: a[i * BATCH:(i + 1) * BATCH]                      # noqa: E731
    if isinstance(train, tuple):
        return [tuple(pick(a, i) for a in train) for i in range(STEPS)]
    return [pick(train, i) for i in range(STEPS)]


def _run(name, d, dtype):
    random.manual_seed(0)
    method = methods.build(name.split("-")[0], d, **SMALL.get(name, {}))
    method = method.double() if dtype == np.float64 else method
    dist.prepare(method)
    batches = _global_batches(method, d)
    rngs = [np.random.default_rng([0, i]) for i in range(STEPS)]
    return run_steps(method, batches, rngs)


def _compare(name, dtype, tol):
    d = _data(name)
    with dist.single_process():
        ref = _run(name, d, dtype)
    got = _run(name, d, dtype)
    for step, (a, b) in enumerate(zip(got[0], ref[0])):
        assert_close(a, b, tol, f"{name}: loss of step {step}")
    for step, (ga, gb) in enumerate(zip(got[1], ref[1])):
        assert ga.keys() == gb.keys(), f"{name}: parameters with gradients differ"
        # Relative to the step's largest gradient: a gradient that is 0 in exact arithmetic
        # (a bias before BatchNorm) is round-off of the size of the terms it sums.
        scale = max([1.0] + [float(np.abs(g).max()) for g in gb.values() if g.size])
        for k in gb:
            assert_close(ga[k], gb[k], tol, f"{name}: gradient of {k} at step {step}", scale)
    for k in ref[2]:
        assert_close(got[2][k], ref[2][k], tol, f"{name}: {k} after {STEPS} steps")


@pytest.mark.parametrize("name", list(methods.METHODS) + ["simclr-conv", "byol-conv",
                                                          "moco-conv", "moco-syncbn",
                                                          "dino-conv", "swav-conv"])
def test_n_ranks_equal_one_process_float64(name):
    _compare(name, np.float64, 1e-12)


@pytest.mark.parametrize("name", ["simclr", "barlow_twins", "moco"])
def test_n_ranks_equal_one_process_float32(name):
    _compare(name, np.float32, 1e-5)
