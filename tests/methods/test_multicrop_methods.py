"""DINO and SwAV (minissl/methods/dino.py, swav.py): training lowers the loss, the views and
outputs have the shapes of the multi-crop bookkeeping, the stop-gradients hold (teacher,
centre, codes, frozen prototypes), and the state (EMA teacher, centre, step) round-trips."""
import numpy as np
import pytest

from minissl import data, losses, methods, optim, random
from minissl.autograd import tensor


@pytest.fixture(scope="module")
def digits64():
    d = data.digits()
    return d, d.train_x[:64]


def _steps(m, x, n, seed=0):
    opt = optim.Adam(m.trainable_parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    out = []
    for step in range(n):
        opt.zero_grad()
        loss, metrics = m.training_step(x, rng)
        loss.backward()
        opt.step()
        m.on_step_end(step, n)
        out.append((loss.item(), metrics))
    return out


@pytest.mark.parametrize("name,diag", [("dino", ("teacher_entropy", "teacher_student_kl")),
                                       ("swav", ("assignment_entropy", "code_entropy"))])
def test_training_lowers_the_loss_and_reports_diagnostics(name, diag, digits64):
    d, x = digits64
    random.manual_seed(0)
    m = methods.build(name, d, n_local=2)
    hist = _steps(m, x, 25)
    values = [v for v, _ in hist]
    assert all(np.isfinite(values))
    assert np.mean(values[-5:]) < np.mean(values[:3]) - 1e-3, values
    for key in diag:
        assert all(np.isfinite(met[key]) and met[key] >= 0 for _, met in hist)
    f = m.features(x)
    assert f.shape == (64, 256) and f.dtype == np.float32 and np.isfinite(f).all()


def test_dino_views_outputs_and_stop_gradients(digits64):
    d, x = digits64
    random.manual_seed(0)
    m = methods.build("dino", d, n_local=3, out_dim=32)
    views = m.transform(x, np.random.default_rng(0))
    assert len(views) == 5 and all(v.shape == (64, 1, 8, 8) for v in views)
    out = m._outputs(m.encoder, m.head, views)
    assert [o.shape for o in out] == [(64, 32)] * 5
    center0 = m.center.data.copy()
    loss, _ = m.training_step(x, np.random.default_rng(1))
    loss.backward()
    # The teacher gets no gradient; the student and its head do (g of the last layer is fixed).
    assert all(p.grad is None for p in m.teacher_encoder.parameters())
    assert all(p.grad is None for p in m.teacher_head.parameters())
    assert m.head.last_layer.weight_g.grad is None and not m.head.last_layer.weight_g.requires_grad
    assert m.head.last_layer.weight_v.grad is not None
    assert all(p.grad is not None for p in m.encoder.parameters())
    # The centre moved by the EMA of the teacher's mean output over the 2 global views.
    views = m.transform(x, np.random.default_rng(1))
    t = m._outputs(m.teacher_encoder, m.teacher_head, views[:2])
    np.testing.assert_allclose(m.center.data, losses.dino_update_center(center0, t, 0.9),
                               rtol=1e-5, atol=1e-7)


def test_dino_weight_norm_last_layer_rows_have_norm_g():
    from minissl.methods.dino import WeightNormLinear
    lin = WeightNormLinear(4, 3, fixed_norm=True, rng=0)
    lin.weight_v.data[...] *= 7.0
    # Each output row's weight has norm g = 1: a unit input along a row gives at most 1.
    out = lin(tensor(np.eye(4, dtype=np.float32))).data          # (4, 3): W^T
    np.testing.assert_allclose(np.linalg.norm(out, axis=0), 1.0, rtol=1e-6)
    assert [k for k, _ in lin.named_parameters()] == ["weight_v", "weight_g"]


def test_dino_teacher_follows_the_student_by_ema(digits64):
    d, x = digits64
    random.manual_seed(0)
    m = methods.build("dino", d, n_local=1, momentum_teacher=0.9)
    before = [p.data.copy() for p in m.teacher_head.parameters()]
    _steps(m, x, 1)
    for pt, ps, b in zip(m.teacher_head.parameters(), m.head.parameters(), before):
        np.testing.assert_allclose(pt.data, 0.9 * b + 0.1 * ps.data, rtol=1e-5, atol=1e-7)


def test_swav_prototypes_frozen_then_trained_and_normalised(digits64):
    d, x = digits64
    random.manual_seed(0)
    m = methods.build("swav", d, n_local=2, freeze_prototypes_steps=2)
    rng = np.random.default_rng(0)
    for step in range(3):
        loss, _ = m.training_step(x, rng)
        # The step normalised the prototypes to unit rows before scoring.
        np.testing.assert_allclose(np.linalg.norm(m.prototypes.weight.data, axis=1), 1.0,
                                   rtol=1e-5)
        m.zero_grad()
        loss.backward()
        frozen = m.prototypes.weight.grad is None
        assert frozen == (step < 2), step
        assert all(p.grad is not None for p in m.encoder.parameters())
        m.on_step_end(step, 3)
    assert int(m.step.data[0]) == 3


def test_swav_codes_are_sinkhorn_of_the_global_views(digits64, monkeypatch):
    d, x = digits64
    random.manual_seed(0)
    m = methods.build("swav", d, n_local=1)
    seen = {}
    real = losses.swav_loss

    def spy(scores, *args, codes=None, **kw):
        seen["scores"], seen["codes"] = scores, codes
        return real(scores, *args, codes=codes, **kw)
    monkeypatch.setattr(losses, "swav_loss", spy)
    loss, _ = m.training_step(x, np.random.default_rng(0))
    assert len(seen["scores"]) == 3 and len(seen["codes"]) == 2
    for s, q in zip(seen["scores"][:2], seen["codes"]):
        np.testing.assert_allclose(q, losses.sinkhorn_knopp(s.data, 0.05, 3), rtol=1e-12)
    assert loss.item() == pytest.approx(real(seen["scores"], 2, 0.2).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["dino", "swav"])
def test_state_round_trip_continues_identically(name, digits64):
    d, x = digits64
    random.manual_seed(0)
    a = methods.build(name, d, n_local=1)
    _steps(a, x, 2)
    random.manual_seed(1)
    b = methods.build(name, d, n_local=1)
    b.load_state_dict({k: tensor(v) for k, v in a.state_dict().items()})
    keys = set(a.state_dict())
    assert ({"center"} if name == "dino" else {"step"}) <= keys
    la, _ = a.training_step(x, np.random.default_rng(9))
    lb, _ = b.training_step(x, np.random.default_rng(9))
    assert la.item() == lb.item()


@pytest.mark.parametrize("name", ["dino", "swav"])
def test_conv_encoder_takes_two_resolutions(name):
    d = data.shapes(n_train=16, n_test=4, size=16, seed=0)
    random.manual_seed(0)
    m = methods.build(name, d, n_local=2)
    views = m.transform(d.train_x[:8], np.random.default_rng(0))
    assert [v.shape[-1] for v in views] == [16, 16, 7, 7]     # round(16 * 96 / 224) = 7
    loss, _ = m.training_step(d.train_x[:8], np.random.default_rng(0))
    loss.backward()
    assert np.isfinite(loss.item())


# ------------------------------------------------------------------------------------------
# Multi-crop as an option of SimCLR and BYOL (local views meet the global ones only)
# ------------------------------------------------------------------------------------------


def test_simclr_multi_crop_pairs_each_local_view_with_the_global_views(digits64):
    d, x = digits64
    random.manual_seed(0)
    m = methods.build("simclr", d, multi_crop=2, joint_batch=False)
    loss, _ = m.training_step(x, np.random.default_rng(4))
    views = m.transform(x, np.random.default_rng(4))
    assert len(views) == 4
    z = [m.projector(m.encoder(m.as_input(v))) for v in views]
    pairs = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]          # never (2, 3): local-local
    want = np.mean([losses.nt_xent(z[i], z[v], 0.5).item() for i, v in pairs])
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_byol_multi_crop_regresses_every_view_onto_the_global_targets(digits64):
    d, x = digits64
    random.manual_seed(0)
    m = methods.build("byol", d, multi_crop=3)
    loss, _ = m.training_step(x, np.random.default_rng(4))
    loss.backward()
    views = [m.as_input(v) for v in m.transform(x, np.random.default_rng(4))]
    p = [m.predictor(m.projector(m.encoder(v))) for v in views]
    t = [m.target_projector(m.target_encoder(v)) for v in views[:2]]
    pairs = [(i, v) for i in (0, 1) for v in range(5) if v != i]
    want = 2 / len(pairs) * sum(losses.byol_loss(p[v], t[i]).item() for i, v in pairs)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert all(q.grad is None for q in m.target_encoder.parameters())


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_multi_crop_option_trains(name, digits64):
    d, x = digits64
    random.manual_seed(0)
    m = methods.build(name, d, multi_crop=2)
    values = [v for v, _ in _steps(m, x, 20)]
    assert np.mean(values[-5:]) < np.mean(values[:3]) - 1e-3, values


def test_dino_teacher_temperature_warms_up_over_the_first_steps(digits64, monkeypatch):
    # main_dino.py's DINOLoss.teacher_temp_schedule: linspace(warmup_teacher_temp,
    # teacher_temp, warm-up) then constant; counted here in steps, and resumed from the state.
    d, x = digits64
    seen = []
    real = losses.dino_loss
    monkeypatch.setattr(losses, "dino_loss", lambda s, t, c, st, tt: seen.append(tt) or
                        real(s, t, c, st, tt))
    kw = dict(n_local=1, warmup_teacher_temp=0.04, teacher_temp=0.07,
              warmup_teacher_temp_steps=3)
    random.manual_seed(0)
    a = methods.build("dino", d, **kw)
    _steps(a, x, 2)
    b = methods.build("dino", d, **kw)
    b.load_state_dict({k: tensor(v) for k, v in a.state_dict().items()})
    _steps(b, x, 3)
    assert seen == pytest.approx([0.04, 0.055, 0.07, 0.07, 0.07])
    # The default (no warm-up) keeps the state of a constant temperature: no step counter.
    assert "step" in a.state_dict() and "step" not in methods.build("dino", d).state_dict()


def test_dino_teacher_entropy_uses_the_step_temperature(digits64):
    d, x = digits64
    random.manual_seed(0)
    warm = methods.build("dino", d, n_local=1, warmup_teacher_temp=0.5,
                         warmup_teacher_temp_steps=2)
    random.manual_seed(0)
    hot = methods.build("dino", d, n_local=1, teacher_temp=0.5)
    (_, m1), = _steps(warm, x, 1)
    (_, m2), = _steps(hot, x, 1)
    assert m1["teacher_entropy"] == pytest.approx(m2["teacher_entropy"], rel=1e-6)


def test_dino_rejects_a_negative_warm_up():
    with pytest.raises(ValueError, match="DINO: warmup_teacher_temp_steps"):
        methods.build("dino", data.digits(), warmup_teacher_temp_steps=-1)
