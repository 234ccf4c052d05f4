"""``benchmarks/bench_multicrop.py``: ``--set`` reaches what it names in both libraries (the
views of ``shapes`` included), and its DINO options train the same in minissl and PyTorch."""
import importlib
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.setenv("MINISSL_RUNTIME", "default")   # the import's tune() changes nothing
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    return importlib.import_module("bench_multicrop")


@pytest.mark.parametrize("method", ["dino", "swav"])
def test_set_n_local_reaches_the_views_of_shapes(bench, method):
    d = bench.bench_shapes.load(n_train=20)
    x, rng = d.train_x[:4], np.random.default_rng(0)
    assert [v.shape[-1] for v in bench.build(method, d).transform(x, rng)] == [16, 16] + [7] * 6
    assert len(bench.build(method, d, n_local=0).transform(x, rng)) == 2
    assert len(bench.build(method, d, n_local=2).transform(x, rng)) == 4


def test_set_crop_areas_reach_the_views_of_shapes(bench):
    d = bench.bench_shapes.load(n_train=20)
    views = bench.build("dino", d, global_scale_min=0.14, local_scale_max=0.14).transform
    assert views.global_transform.transforms[0].scale == (0.14, 1.0)
    assert views.local_transform.transforms[0].scale == (0.05, 0.14)


def test_set_parses_integers_as_integers(bench):
    assert bench.parse_set(["n_local=0", "teacher_temp=0.02"]) == {"n_local": 0,
                                                                 "teacher_temp": 0.02}
