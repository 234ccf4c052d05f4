"""Contrastive and non-contrastive methods: SimCLR, MoCo, BYOL, SimSiam, Barlow Twins, VICReg,
CLIP. Each lowers its loss on tiny data; the momentum targets move only through their EMA;
MoCo's queue wraps and its keys get no gradient; CLIP's scale and zero-shot behave."""
import math

import numpy as np
import pytest

from minissl import data, methods, optim, random
from minissl.methods.base import cosine_tau

IMAGE_METHODS = ["simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg", "clip"]


@pytest.fixture(scope="module")
def digits64():
    d = data.digits()
    return d, d.train_x[:64], d.train_y[:64]


def _batch(name, x, y):
    return (x, y) if name == "clip" else x


def _steps(method, batch, n, lr=1e-3, seed=0):
    """n steps on one fixed batch with the same augmentations each time; the losses."""
    opt = optim.Adam(method.trainable_parameters(), lr=lr)
    out = []
    for i in range(n):
        opt.zero_grad()
        loss, _ = method.training_step(batch, np.random.default_rng(seed))
        loss.backward()
        opt.step()
        method.on_step_end(i, n)
        out.append(loss.item())
    return out


@pytest.mark.parametrize("name", IMAGE_METHODS)
def test_training_lowers_the_loss(name, digits64):
    d, x, y = digits64
    random.manual_seed(0)
    kw = {"queue_size": 128} if name == "moco" else {}
    m = methods.build(name, d, **kw)
    losses = _steps(m, _batch(name, x, y), 25)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 1e-3, losses
    f = m.features(x)
    assert f.shape == (64, 256) and f.dtype == np.float32 and np.isfinite(f).all()


def _params(module):
    return [p.data.copy() for p in module.parameters()]


def test_moco_keys_get_no_gradient_and_follow_the_ema(digits64):
    d, x, _ = digits64
    random.manual_seed(0)
    m = methods.build("moco", d, queue_size=96, momentum=0.9)
    opt = optim.Adam(m.trainable_parameters(), lr=1e-2)
    key_before, online_before = _params(m.key_encoder), _params(m.encoder)
    opt.zero_grad()
    loss, _ = m.training_step(x, np.random.default_rng(0))
    loss.backward()
    assert all(p.grad is None for p in m.key_encoder.parameters())
    assert all(p.grad is None for p in m.key_projector.parameters())
    assert all(not p.requires_grad for p in m.key_encoder.parameters())
    opt.step()
    m.on_step_end(0, 1)
    # The key encoder moved by exactly the EMA of the (pre-step) online weights.
    for k_new, k_old, o_old in zip(_params(m.key_encoder), key_before, online_before):
        np.testing.assert_allclose(k_new, 0.9 * k_old + 0.1 * o_old, rtol=1e-5, atol=1e-6)
    ids = {id(p) for p in opt.param_groups[0]["params"]}
    assert not ids & {id(p) for p in m.key_encoder.parameters()}


def test_moco_queue_pointer_wraps():
    random.manual_seed(0)
    d = data.digits()
    m = methods.build("moco", d, queue_size=10, proj_dim=4)
    keys = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    m.enqueue(keys)
    assert int(m.queue_ptr.data[0]) == 6
    np.testing.assert_array_equal(m.queue.data[:6], keys)
    m.enqueue(keys + 100)                     # 4 fit at the end, 2 wrap to the front
    assert int(m.queue_ptr.data[0]) == 2
    np.testing.assert_array_equal(m.queue.data[6:], keys[:4] + 100)
    np.testing.assert_array_equal(m.queue.data[:2], keys[4:] + 100)
    np.testing.assert_array_equal(m.queue.data[2:6], keys[2:6])


def test_moco_queue_is_enqueued_after_backward(digits64):
    d, x, _ = digits64
    random.manual_seed(0)
    m = methods.build("moco", d, queue_size=128)
    q0 = m.queue.data.copy()
    loss, _ = m.training_step(x, np.random.default_rng(0))
    np.testing.assert_array_equal(m.queue.data, q0)   # unchanged until the step ends
    loss.backward()
    m.on_step_end(0, 1)
    assert int(m.queue_ptr.data[0]) == 64
    assert not np.allclose(m.queue.data[:64], q0[:64])
    np.testing.assert_allclose(np.linalg.norm(m.queue.data[:64], axis=1), 1, rtol=1e-5)


def test_byol_target_changes_only_through_the_ema(digits64):
    d, x, _ = digits64
    random.manual_seed(0)
    m = methods.build("byol", d, base_tau=0.9)
    opt = optim.Adam(m.trainable_parameters(), lr=1e-2)
    target_before = _params(m.target_encoder)
    opt.zero_grad()
    loss, _ = m.training_step(x, np.random.default_rng(0))
    loss.backward()
    assert all(p.grad is None for p in m.target_encoder.parameters())
    opt.step()
    online_after = _params(m.encoder)
    m.on_step_end(0, 10)
    tau = cosine_tau(0.9, 0, 10)
    assert tau == pytest.approx(0.9)
    for t_new, t_old, o in zip(_params(m.target_encoder), target_before, online_after):
        np.testing.assert_allclose(t_new, tau * t_old + (1 - tau) * o, rtol=1e-5, atol=1e-6)


def test_cosine_tau_schedule():
    assert cosine_tau(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_tau(0.99, 100, 100) == pytest.approx(1.0)
    assert cosine_tau(0.99, 50, 100) == pytest.approx(0.995)
    vals = [cosine_tau(0.99, k, 100) for k in range(101)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))


def test_clip_scale_init_clamp_and_zero_shot(digits64):
    d, x, y = digits64
    random.manual_seed(0)
    m = methods.build("clip", d)
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    m.logit_scale.data[...] = 10.0
    m.on_step_end(0, 1)
    assert m.logit_scale.item() == pytest.approx(math.log(100), rel=1e-6)
    pred = m.zero_shot_predict(x)
    assert pred.shape == (64,) and pred.min() >= 0 and pred.max() < 10
    assert 0.0 <= m.zero_shot_accuracy(x, y) <= 1.0


def test_clip_tokenize_marks_end_of_text():
    from minissl.methods.clip import EOT, PAD, tokenize
    ids = tokenize(["a seven", "zero"], 12)
    assert ids.shape == (2, 12) and ids.dtype == np.int64
    assert ids[0, 7] == EOT and ids[1, 4] == EOT
    assert (ids[0, 8:] == PAD).all() and (ids[0, :7] > EOT).all()
