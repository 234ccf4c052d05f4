"""Tests of DINO's and SwAV's losses (minissl.losses: dino_loss, dino_update_center,
sinkhorn_knopp, swav_loss), pinned as tests/test_losses.py pins the others: to naive NumPy
references (loops over crop pairs and samples, float64, the official non-log-domain Sinkhorn)
over grids of sizes and temperatures, to analytic values, by gradcheck, and for stability.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minissl as ms
from minissl import losses

# ------------------------------------------------------------------------------------------
# NumPy references, written as the official codes run them (facebookresearch/dino
# DINOLoss.forward, facebookresearch/swav distributed_sinkhorn and train), float64
# ------------------------------------------------------------------------------------------


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def _log_softmax(v):
    m = v.max()
    return v - m - np.log(np.exp(v - m).sum())


def ref_dino(student, teacher, center, ts, tt):
    total, terms = 0.0, 0
    for iq, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == iq:
                continue
            per_row = [-np.sum(_softmax((t[b] - center) / tt) * _log_softmax(s[b] / ts))
                       for b in range(len(t))]
            total += np.mean(per_row)
            terms += 1
    return total / terms


def ref_sinkhorn(scores, eps, iters):
    q = np.exp(scores / eps).T                  # (K, B), exactly the official code
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def ref_swav(scores, n_global, temp, eps, iters):
    loss = 0.0
    for i in range(n_global):
        q = ref_sinkhorn(scores[i], eps, iters)
        sub = 0.0
        for v in range(len(scores)):
            if v != i:
                sub -= np.mean([np.sum(q[b] * _log_softmax(scores[v][b] / temp))
                                for b in range(len(q))])
        loss += sub / (len(scores) - 1)
    return loss / n_global


def T(a, grad=False):
    return ms.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def crops(rng, v, b, k, scale=1.0):
    return [scale * rng.standard_normal((b, k)) for _ in range(v)]


# ------------------------------------------------------------------------------------------
# DINO
# ------------------------------------------------------------------------------------------

GRID = [(2, 2, 3), (3, 4, 5), (4, 8, 16), (10, 5, 32)]     # (crops V, batch B, dims K)


@pytest.mark.parametrize("v,b,k", GRID)
@pytest.mark.parametrize("ts,tt", [(0.1, 0.04), (0.1, 0.07), (0.5, 0.2), (1.0, 1.0)])
def test_dino_matches_reference(v, b, k, ts, tt, rng):
    s, t = crops(rng, v, b, k), crops(rng, 2 if v > 2 else 1, b, k)
    c = 0.3 * rng.standard_normal((1, k))
    got = losses.dino_loss([T(a) for a in s], [T(a) for a in t], c, ts, tt).item()
    assert got == pytest.approx(ref_dino(s, t, c[0], ts, tt), rel=1e-10)


@pytest.mark.parametrize("v,k", [(2, 2), (4, 10), (8, 64)])
def test_dino_uniform_outputs_give_log_k(v, k, rng):
    # Teacher = student, each output constant over K: uniform distributions, CE = log K
    # whatever the temperatures and the centre (a constant shift).
    const = [np.full((5, k), 3.0) for _ in range(v)]
    for ts, tt in [(0.1, 0.04), (1.0, 0.5)]:
        got = losses.dino_loss([T(a) for a in const], [T(a) for a in const[:2]],
                               np.full(k, 7.0), ts, tt).item()
        assert got == pytest.approx(math.log(k), rel=1e-12)


def test_dino_is_entropy_plus_kl_and_minimal_when_student_matches(rng):
    # With student_temp = teacher_temp, no centre, and the student's crops equal to the
    # teacher's, the loss of 2 crops is the teacher's entropy averaged over both crops' rows; moving
    # the student away raises it (KL >= 0).
    t = crops(rng, 2, 6, 5)
    same = losses.dino_loss([T(t[1]), T(t[0])], [T(a) for a in t], np.zeros(5), 0.5, 0.5)
    ent = np.mean([-np.sum(_softmax(r / 0.5) * _log_softmax(r / 0.5)) for r in np.concatenate(t)])
    assert same.item() == pytest.approx(ent, rel=1e-10)
    other = losses.dino_loss([T(t[1] + rng.standard_normal((6, 5))), T(t[0])],
                             [T(a) for a in t], np.zeros(5), 0.5, 0.5)
    assert other.item() > same.item()


def test_dino_skips_same_view_pairs(rng):
    # V = 2, G = 2: only the cross pairs (teacher 0, student 1) and (teacher 1, student 0).
    s, t = crops(rng, 2, 4, 3), crops(rng, 2, 4, 3)
    got = losses.dino_loss([T(a) for a in s], [T(a) for a in t], np.zeros(3), 0.1, 0.04)
    def ce(t, s):    # mean over the batch of H(softmax(t / 0.04), softmax(s / 0.1))
        return np.mean([-np.sum(_softmax(a / 0.04) * _log_softmax(b / 0.1)) for a, b in zip(t, s)])
    cross = (ce(t[0], s[1]) + ce(t[1], s[0])) / 2
    assert got.item() == pytest.approx(cross, rel=1e-12)


def test_dino_no_gradient_to_teacher_or_center(rng):
    s = [T(a, grad=True) for a in crops(rng, 4, 3, 5)]
    t = [T(a, grad=True) for a in crops(rng, 2, 3, 5)]
    center = T(rng.standard_normal((1, 5)), grad=True)
    losses.dino_loss(s, t, center).backward()
    assert all(x.grad is not None and np.abs(x.grad).sum() > 0 for x in s)
    assert all(x.grad is None or not np.any(x.grad) for x in t + [center])


@given(st.integers(2, 4), st.integers(1, 4), st.integers(2, 5),
       st.sampled_from([(0.1, 0.04), (0.5, 0.3)]), st.data())
def test_dino_gradcheck(v, b, k, temps, data):
    arrays = [data.draw(hnp.arrays(np.float64, (b, k), elements=st.floats(-2, 2)))
              for _ in range(v)]
    teacher = [T(a + 0.5) for a in arrays[:2]]
    assert ms.gradcheck(lambda *s: losses.dino_loss(list(s), teacher, np.zeros(k), *temps),
                        [T(a, grad=True) for a in arrays], mode="full")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dino_stable_at_extremes(dtype, rng):
    for scale, ts, tt in [(1e4, 0.1, 0.04), (1.0, 0.01, 0.01), (0.0, 0.1, 0.04)]:
        s = [ms.tensor((scale * rng.standard_normal((4, 8))).astype(dtype), requires_grad=True)
             for _ in range(4)]
        t = [ms.tensor((scale * rng.standard_normal((4, 8))).astype(dtype)) for _ in range(2)]
        loss = losses.dino_loss(s, t, np.zeros((1, 8), dtype), ts, tt)
        loss.backward()
        assert np.isfinite(loss.item()) and all(np.isfinite(x.grad).all() for x in s)


def test_dino_update_center(rng):
    t = crops(rng, 2, 5, 4)
    c = rng.standard_normal((1, 4))
    new = losses.dino_update_center(c, [T(a) for a in t], momentum=0.9)
    want = 0.9 * c + 0.1 * np.concatenate(t).mean(0, keepdims=True)
    np.testing.assert_allclose(new, want, rtol=1e-13)
    assert new.shape == (1, 4) and c is not new
    # A constant teacher output is a fixed point of the EMA of its mean.
    fixed = np.full((1, 4), 2.0)
    np.testing.assert_allclose(losses.dino_update_center(fixed, [T(np.full((3, 4), 2.0))]),
                               fixed)


def test_dino_rejects_bad_input(rng):
    s, t = [T(a) for a in crops(rng, 3, 4, 5)], [T(a) for a in crops(rng, 2, 4, 5)]
    with pytest.raises(TypeError, match="dino_loss: student_out must be a list"):
        losses.dino_loss(s[0], t, np.zeros(5))
    with pytest.raises(ValueError, match=r"dino_loss: every crop of student_out"):
        losses.dino_loss(s + [T(np.zeros((4, 6)))], t, np.zeros(5))
    with pytest.raises(ValueError, match="dino_loss: center must hold K = 5"):
        losses.dino_loss(s, t, np.zeros(4))
    with pytest.raises(ValueError, match="dino_loss: teacher_out must be G <= V"):
        losses.dino_loss(s[:2], t + t, np.zeros(5))
    with pytest.raises(ValueError, match="teacher_temp must be a positive"):
        losses.dino_loss(s, t, np.zeros(5), teacher_temp=0)
    with pytest.raises(ValueError, match="dino_update_center: center must hold K = 5"):
        losses.dino_update_center(np.zeros(3), t)


# ------------------------------------------------------------------------------------------
# Sinkhorn-Knopp and SwAV
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,k", [(1, 1), (2, 3), (8, 4), (16, 64), (64, 10)])
@pytest.mark.parametrize("eps", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("iters", [0, 1, 3, 10])
def test_sinkhorn_matches_official_iteration(b, k, eps, iters, rng):
    # Cosine-like scores in [-1, 1], where the official exp(S / eps) does not overflow.
    s = np.tanh(rng.standard_normal((b, k)))
    np.testing.assert_allclose(losses.sinkhorn_knopp(s, eps, iters), ref_sinkhorn(s, eps, iters),
                               rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("b,k", [(4, 4), (32, 8), (10, 50)])
def test_sinkhorn_marginals(b, k, rng):
    s = np.tanh(rng.standard_normal((b, k)))
    for iters in (1, 3):
        q = losses.sinkhorn_knopp(s, 0.05, iters)
        # The last step normalises the samples: each row of codes sums to 1, exactly.
        np.testing.assert_allclose(q.sum(1), np.ones(b), rtol=1e-12)
        assert (q >= 0).all()
    # At convergence the prototypes are equipartitioned: each column sums to B/K.
    q = losses.sinkhorn_knopp(s, 0.5, 500)
    np.testing.assert_allclose(q.sum(0), np.full(k, b / k), rtol=1e-6)


def test_sinkhorn_uniform_and_shift_invariant(rng):
    np.testing.assert_allclose(losses.sinkhorn_knopp(np.full((6, 4), 0.3)), np.full((6, 4), 0.25),
                               rtol=1e-13)
    np.testing.assert_allclose(losses.sinkhorn_knopp(np.zeros((6, 4))), np.full((6, 4), 0.25),
                               rtol=1e-13)
    s = rng.standard_normal((5, 7))
    np.testing.assert_allclose(losses.sinkhorn_knopp(s + 4.0), losses.sinkhorn_knopp(s),
                               rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sinkhorn_stable_at_extremes(dtype, rng):
    for s in (1e4 * rng.standard_normal((8, 5)), np.zeros((8, 5)),
              np.concatenate([np.zeros((4, 5)), 1e4 * np.ones((4, 5))])):
        q = losses.sinkhorn_knopp(s.astype(dtype), 0.05, 3)
        assert q.dtype == dtype and np.isfinite(q).all()
        np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)


def test_sinkhorn_no_gradient(rng):
    s = T(rng.standard_normal((4, 3)), grad=True)
    q = losses.sinkhorn_knopp(s)
    assert isinstance(q, np.ndarray)
    with pytest.raises(ValueError, match="sinkhorn_knopp: scores must be a floating"):
        losses.sinkhorn_knopp(np.zeros(3))
    with pytest.raises(ValueError, match="iterations must be an int"):
        losses.sinkhorn_knopp(np.zeros((2, 2)), iterations=-1)


@pytest.mark.parametrize("v,b,k", GRID)
@pytest.mark.parametrize("temp", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("n_global", [1, 2])
def test_swav_matches_reference(v, b, k, temp, n_global, rng):
    s = [np.tanh(a) for a in crops(rng, v, b, k)]
    got = losses.swav_loss([T(a) for a in s], n_global, temp).item()
    assert got == pytest.approx(ref_swav(s, n_global, temp, 0.05, 3), rel=1e-9)


def test_swav_constant_scores_give_log_k():
    for k in (2, 7, 30):
        s = [T(np.full((5, k), 0.2)) for _ in range(4)]
        assert losses.swav_loss(s).item() == pytest.approx(math.log(k), rel=1e-12)


def test_swav_codes_get_no_gradient(rng):
    # The codes of crop 0 come from crop 0's scores but are constants: crop 0's gradient
    # is only that of predicting crop 1's codes.
    s = [T(np.tanh(a), grad=True) for a in crops(rng, 2, 6, 4)]
    losses.swav_loss(s, n_global=2).backward()
    q1 = losses.sinkhorn_knopp(s[1].data)
    p0 = np.exp(np.array([_log_softmax(r / 0.1) for r in s[0].data]))
    # d/ds0 of 1/2 * mean_b -sum q1 log softmax(s0 / T) = (p0 - q1) / (2 B T)
    np.testing.assert_allclose(s[0].grad, (p0 - q1) / (2 * 6 * 0.1), rtol=1e-10, atol=1e-14)


@given(st.integers(2, 4), st.integers(1, 4), st.integers(2, 5), st.data())
def test_swav_gradcheck(v, b, k, data):
    # The codes are constants by design (no gradient through Sinkhorn), so finite differences
    # may only move the crops that are not assigned codes: crop 0 (the one global crop, the
    # target) is held fixed, the others are checked. Crop 0's own gradient is pinned above.
    arrays = [data.draw(hnp.arrays(np.float64, (b, k), elements=st.floats(-1, 1)))
              for _ in range(v)]
    target = T(arrays[0])
    assert ms.gradcheck(lambda *s: losses.swav_loss([target, *s], n_global=1, temperature=0.3),
                        [T(a, grad=True) for a in arrays[1:]], mode="full")


def test_swav_stable_at_extremes(rng):
    for scale, temp in [(1e4, 0.1), (1.0, 0.01), (0.0, 0.1)]:
        s = [T(scale * rng.standard_normal((4, 6)), grad=True) for _ in range(3)]
        loss = losses.swav_loss(s, temperature=temp)
        loss.backward()
        assert np.isfinite(loss.item()) and all(np.isfinite(x.grad).all() for x in s)


def test_swav_rejects_bad_input(rng):
    s = [T(a) for a in crops(rng, 3, 4, 5)]
    with pytest.raises(ValueError, match="swav_loss: scores needs at least 2"):
        losses.swav_loss(s[:1])
    with pytest.raises(ValueError, match=r"swav_loss: n_global must be an int in \[1, 3\]"):
        losses.swav_loss(s, n_global=4)
    with pytest.raises(ValueError, match="swav_loss: scores\\[0\\] must be a 2-D"):
        losses.swav_loss([T(np.zeros(3)), T(np.zeros(3))])


def test_swav_given_codes_replace_sinkhorn(rng):
    s = [T(np.tanh(a)) for a in crops(rng, 3, 5, 4)]
    codes = [losses.sinkhorn_knopp(x.data) for x in s[:2]]
    assert losses.swav_loss(s, codes=codes).item() == pytest.approx(losses.swav_loss(s).item(),
                                                                    rel=1e-12)
    # Uniform codes: each term is the CE of the uniform distribution, mean of -log p / K.
    uniform = [np.full((5, 4), 0.25)] * 2
    want = np.mean([np.mean([-np.mean(_log_softmax(r / 0.1)) for r in s[v].data])
                    for i in range(2) for v in range(3) if v != i])
    assert losses.swav_loss(s, codes=uniform).item() == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="swav_loss: codes must be 2 arrays of shape"):
        losses.swav_loss(s, codes=codes[:1])
