"""The PyTorch VideoMAE of ``benchmarks/bench_video.py`` is minissl's: with minissl's weights
copied in (``TransformerEncoderLayer``'s packed in-projection is the [Q | K | V] of ``qkv``),
the same predictions of every token, the same loss and the same features (all the tokens, and
the official fc_norm of their mean), for tube and frame-wise masking. The benchmark's
comparison is then one of training, not of models (``--torch-init minissl``: not even of
initial weights)."""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from minissl import data, methods  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import bench_video  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("pool", ["tokens", "mean"])
@pytest.mark.parametrize("variant", sorted(bench_video.VARIANTS))
def test_bench_video_torch_model_is_minissls(variant, pool):
    d = data.moving_shapes(n_train=6, n_test=0, frames=4, size=8, seed=0)
    over = dict(bench_video.VARIANTS[variant], patch_size=4, depth=2, decoder_depth=1,
                embed_dim=16, decoder_embed_dim=8, num_heads=2, decoder_num_heads=2, pool=pool)
    m = methods.build("videomae", d, rng=np.random.default_rng(0), **over)
    m.to(dtype=np.float64)
    net = bench_video.torch_model(torch, m).double()
    net.load_state_dict(bench_video.torch_state(torch, m), strict=True)
    net.eval()
    x = d.train_x.astype(np.float64)
    mask = m.masks(len(x), np.random.default_rng(1))
    keep, restore = (torch.from_numpy(a) for a in methods.videomae.mask_indices(mask))
    with torch.no_grad():
        got = net(torch.from_numpy(x), keep, restore).numpy()
        feats = net.features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, m._predict(x, mask), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(feats, m.features(x), rtol=1e-5, atol=1e-6)   # float32 out
