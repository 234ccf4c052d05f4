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


def test_dino_views_take_main_dinos_colour_augmentation(bench):
    import minissl as ms
    d = bench.bench_shapes.load(n_train=20)
    want = ms.augment.ColorJitter(0.4, 0.4, 0.2, 0.1)
    for t in (lambda v: v.global_transform, lambda v: v.local_transform):
        ours, dinos = (t(bench.build("dino", d, views).transform).transforms
                       for views in ("shapes", "dino"))
        assert [type(a) for a in ours] == [type(a) for a in dinos]
        assert ours[0].scale == dinos[0].scale and ours[1].p == dinos[1].p  # crop and flip
        assert (dinos[2].p, dinos[3].p, ours[3].p) == (0.8, 0.2, 0.8)
        got = dinos[2].transform
        assert [getattr(got, k) for k in ("brightness", "contrast", "saturation", "hue")] == [
            getattr(want, k) for k in ("brightness", "contrast", "saturation", "hue")]


def test_set_parses_integers_as_integers(bench):
    assert bench.parse_set(["n_local=0", "teacher_temp=0.02"]) == {"n_local": 0,
                                                                 "teacher_temp": 0.02}


def test_the_official_schedules_are_main_dinos(bench):
    lr = bench.cosine_scheduler(5e-4, 1e-6, epochs=60, niter_per_ep=7, warmup_epochs=10)
    assert len(lr) == 420 and lr[0] == 0 and lr[69] == pytest.approx(5e-4)
    assert lr[70] == pytest.approx(5e-4) and lr[-1] == pytest.approx(1e-6, abs=1e-7)
    wd = bench.cosine_scheduler(0.04, 0.4, epochs=60, niter_per_ep=7)
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.4, abs=1e-4)


@pytest.mark.parametrize("lib", ["minissl", "pytorch"])
def test_official_optimisation_clips_each_gradient_and_freezes_the_last_layer(bench, lib):
    import minissl as ms
    d = bench.bench_shapes.load(n_train=20)
    if lib == "minissl":
        named = list(bench.build("dino", d).named_parameters())
        opt_cls, fill = ms.optim.AdamW, lambda p: np.full(p.shape, 10, np.float32)
        norm = lambda g: float(np.sqrt((g * g).sum()))   # noqa: E731
    else:
        enc, head = bench.torch_nets("dino", d, ms.methods.config_class("dino")())
        named = list(enc.named_parameters("encoder")) + list(head.named_parameters("head"))
        opt_cls, fill, norm = torch.optim.AdamW, lambda p: torch.full(p.shape, 10.0), \
            lambda g: float(g.norm())
    trained = [(n, p) for n, p in named if p.requires_grad]
    opt, before_step = bench.official_optimisation(named, opt_cls, epochs=60, niter_per_ep=7)
    assert [g["weight_decay"] for g in opt.param_groups][1] == 0.0
    for step, last_kept in ((6, False), (7, True)):
        for _, p in trained:
            p.grad = fill(p)
        before_step(step)
        last = [p for n, p in trained if ".last" in n]
        assert len(last) == 1 and (last[0].grad is not None) == last_kept
        assert all(norm(p.grad) == pytest.approx(3.0, rel=1e-4) for _, p in trained
                   if p.grad is not None)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.04, rel=1e-2)
    assert opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"] == pytest.approx(5e-4 * 7 / 69)


@pytest.mark.parametrize("lib", ["minissl", "pytorch"])
def test_a_step_of_official_optimisation_runs(bench, lib):
    d = bench.bench_shapes.load(n_train=256)                     # 1 step per epoch
    run = {"minissl": bench.minissl_run, "pytorch": bench.torch_run}[lib]
    features, metrics = run("dino", d, 1, 0, "official", n_local=2)
    assert features(d.test_x[:4]).shape == (4, bench.WIDTHS[-1])
    assert np.isfinite(metrics["teacher_entropy"])


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_norm_last_layer_reaches_both_libraries(bench, norm_last_layer):
    # ``--set norm_last_layer=0`` trains the last layer's norm g in minissl; so must the twin
    # (the official DINOHead: g filled with 1 either way, trained unless norm_last_layer).
    import minissl as ms
    d = bench.bench_shapes.load(n_train=20)
    cfg = ms.methods.config_class("dino")(norm_last_layer=norm_last_layer)
    ours = bench.build("dino", d, norm_last_layer=norm_last_layer).head.last_layer.weight_g
    theirs = bench.torch_nets("dino", d, cfg)[1]["last"].weight_g
    assert ours.requires_grad == theirs.requires_grad == (not norm_last_layer)
    assert np.all(ours.data == 1) and bool((theirs == 1).all())


def test_teacher_temperature_warm_up_is_the_same_in_both_libraries(bench, monkeypatch):
    # Each library's loss is told the temperature of its step: record both over 4 steps.
    import minissl as ms
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))
    import torch_port
    seen = {"minissl": [], "pytorch": []}
    for lib, mod in (("minissl", ms.losses), ("pytorch", torch_port)):
        real = mod.dino_loss
        monkeypatch.setattr(mod, "dino_loss", lambda s, t, c, st, tt, lib=lib, real=real:
                            seen[lib].append(tt) or real(s, t, c, st, tt))
    d = bench.bench_shapes.load(n_train=256)                     # 1 step per epoch
    kw = dict(n_local=1, warmup_teacher_temp=0.04, teacher_temp=0.07,
              warmup_teacher_temp_steps=3)
    bench.minissl_run("dino", d, 4, 0, **kw)
    bench.torch_run("dino", d, 4, 0, **kw)
    assert seen["minissl"] == pytest.approx([0.04, 0.055, 0.07, 0.07])
    assert seen["pytorch"] == pytest.approx(seen["minissl"])
