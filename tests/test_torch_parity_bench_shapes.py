"""The shapes recipe of ``benchmarks/bench_shapes.py`` is the same network in both libraries:
with minissl's weights loaded into the PyTorch encoder, both map the same images to the same
features (train and eval mode), and the views have the recipe's sizes."""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    saved = os.environ.get("MINISSL_RUNTIME")
    os.environ["MINISSL_RUNTIME"] = "default"     # the import's runtime.tune() changes nothing
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_shapes
    finally:
        sys.path.pop(0)
        if saved is None:
            del os.environ["MINISSL_RUNTIME"]
        else:
            os.environ["MINISSL_RUNTIME"] = saved
    return bench_shapes


@pytest.mark.parametrize("train", [True, False])
def test_the_conv_encoders_compute_the_same_features(bench, train):
    import minissl as ms
    ms.random.manual_seed(0)
    ours, theirs = bench.conv_encoder(), bench.torch_conv_encoder()
    state = ours.state_dict()
    missing, unexpected = theirs.load_state_dict({k: torch.from_numpy(np.array(v))
                                                  for k, v in state.items()}, strict=False)
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    ours.train(train)
    theirs.train(train)
    x = np.random.default_rng(1).random((8, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    got = ours(ms.tensor(x)).numpy()
    assert got.shape == want.shape == (8, ours.out_dim)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_the_views_have_the_recipes_sizes(bench):
    x = bench.load(n_train=20).train_x[:4]
    rng = np.random.default_rng(0)
    assert bench.augmentation()(x, rng).shape == (4, 3, 16, 16)
    views = bench.shapes_multicrop()(x, rng)
    assert [v.shape[-1] for v in views] == [16, 16] + [7] * 6


@pytest.mark.parametrize("lib", ["minissl", "pytorch"])
def test_simclr_probed_on_the_way_is_the_shorter_run(bench, monkeypatch, lib):
    # The budgets of one SimCLR run (``--epochs 1 2``) must be what separate runs give; the
    # probe is replaced by the features it would read (the same iff the encoders are).
    monkeypatch.setattr(bench, "probe", lambda features, d, labels: features(d.test_x[:16]))
    d = bench.load(n_train=bench.BATCH)                              # 1 step per epoch
    run = bench.RUNS["simclr", lib]
    got = bench.run_budgets(run, d, [1, 2], seed=0)
    assert sorted(got) == [1, 2]       # 2: the run's end; 1: probed on the way, as a 1-epoch run
    np.testing.assert_allclose(got[1], run(d, 1, 0)(d.test_x[:16]), rtol=1e-6, atol=1e-6)
    assert not np.allclose(got[1], got[2])
