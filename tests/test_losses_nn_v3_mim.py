"""The losses of NNCLR, MoCo v3 and SimMIM (minissl.losses), pinned as tests/test_losses.py
pins the others: naive NumPy references over grids of sizes and temperatures, analytic values,
stability, stop-gradients, gradcheck and input validation. PyTorch parity is in
tests/test_torch_parity_losses.py."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl import losses

from test_losses import SIZES, TEMPERATURES, T, _lse, _unit, gradcheck_full, matrices, randn

# ------------------------------------------------------------------------------------------
# NumPy references: explicit loops, float64
# ------------------------------------------------------------------------------------------


def ref_nearest(z, support):
    out = []
    for row in _unit(z):
        sims = [row @ s for s in _unit(support)]
        out.append(support[int(np.argmax(sims))])
    return np.array(out)


def ref_nnclr(nn, p, t):
    u, v = _unit(nn), _unit(p)
    total = 0.0
    for i in range(len(u)):
        logits = np.array([u[i] @ v[k] / t for k in range(len(v))])
        total += _lse(logits) - logits[i]
    return total / len(u)


def ref_mocov3(q, k, t):
    q, k = _unit(q), _unit(k)
    total = 0.0
    for i in range(len(q)):
        logits = np.array([q[i] @ k[j] / t for j in range(len(k))])
        total += _lse(logits) - logits[i]
    return 2 * t * total / len(q)


def ref_simmim(pred, target, mask):
    B, C, H, W = pred.shape
    num = sum(abs(pred[b, c, h, w] - target[b, c, h, w]) * mask[b, h, w]
              for b in range(B) for c in range(C) for h in range(H) for w in range(W))
    return num / (mask.sum() + 1e-5) / C


# ------------------------------------------------------------------------------------------
# nearest_neighbours (NNCLR's support-set lookup)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,q,d", [(1, 1, 2), (3, 7, 4), (16, 64, 8)])
def test_nearest_neighbours_matches_reference(n, q, d, rng):
    z, support = randn(rng, n, d), randn(rng, q, d)
    got = losses.nearest_neighbours(T(z), T(support)).numpy()
    np.testing.assert_array_equal(got, ref_nearest(z, support))


def test_nearest_neighbours_returns_the_exact_stored_row_and_ignores_scale(rng):
    support = randn(rng, 10, 5)
    z = 3.0 * support[[4, 0, 9]] + 1e-3 * randn(rng, 3, 5)   # near rows 4, 0, 9
    got = losses.nearest_neighbours(T(z), T(support)).numpy()
    np.testing.assert_array_equal(got, support[[4, 0, 9]])   # bit-exact copies
    far = losses.nearest_neighbours(T(z), T(7.0 * support)).numpy()   # scale is no distance
    np.testing.assert_array_equal(far, 7.0 * support[[4, 0, 9]])


def test_nearest_neighbours_has_no_gradient_and_zero_rows_are_finite(rng):
    z, support = T(randn(rng, 4, 3), True), T(randn(rng, 6, 3), True)
    nn = losses.nearest_neighbours(z, support)
    assert not nn.requires_grad
    zero = losses.nearest_neighbours(T(np.zeros((2, 3))), support).numpy()
    np.testing.assert_array_equal(zero, support.numpy()[[0, 0]])   # cos 0 everywhere: row 0


def test_nearest_neighbours_rejects_bad_shapes(rng):
    with pytest.raises(ValueError, match="nearest_neighbours.*support"):
        losses.nearest_neighbours(T(randn(rng, 4, 3)), T(randn(rng, 5, 2)))
    with pytest.raises(ValueError, match="nearest_neighbours: z must be a 2-D"):
        losses.nearest_neighbours(T(randn(rng, 4)), T(randn(rng, 5, 2)))


# ------------------------------------------------------------------------------------------
# nnclr_loss and mocov3_loss: one N-way in-batch cross-entropy, MoCo v3's scaled by 2T
# ------------------------------------------------------------------------------------------

IN_BATCH = [(losses.nnclr_loss, ref_nnclr, lambda t: 1.0),
            (losses.mocov3_loss, ref_mocov3, lambda t: 2 * t)]
IDS = ["nnclr", "mocov3"]


@pytest.mark.parametrize("loss,ref,scale", IN_BATCH, ids=IDS)
@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("t", TEMPERATURES)
def test_in_batch_losses_match_reference(loss, ref, scale, n, d, t, rng):
    a, b = randn(rng, n, d), randn(rng, n, d)
    got = loss(T(a), T(b), temperature=t).item()
    assert got == pytest.approx(ref(a, b, t), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("loss,ref,scale", IN_BATCH, ids=IDS)
@pytest.mark.parametrize("n", [2, 5, 64])
@pytest.mark.parametrize("t", TEMPERATURES)
def test_in_batch_losses_collapsed_are_log_n(loss, ref, scale, n, t, rng):
    # Every row the same direction: N equal logits, the positive among them.
    v = randn(rng, 1, 4)
    got = loss(T(np.repeat(v, n, 0)), T(np.repeat(0.3 * v, n, 0)), temperature=t).item()
    assert got == pytest.approx(scale(t) * math.log(n), rel=1e-12)


@pytest.mark.parametrize("loss,ref,scale", IN_BATCH, ids=IDS)
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_in_batch_losses_orthogonal_pairs(loss, ref, scale, n, t):
    # a_i = b_i = e_i: the positive logit 1/T, the N - 1 negatives 0.
    e = np.eye(n, n + 2)
    got = loss(T(e), T(e), temperature=t).item()
    assert got == pytest.approx(scale(t) * math.log(1 + (n - 1) * math.exp(-1 / t)),
                                rel=1e-12)


def test_nnclr_neighbours_get_no_gradient(rng):
    nn, p = T(randn(rng, 5, 3), True), T(randn(rng, 5, 3), True)
    losses.nnclr_loss(nn, p).backward()
    assert nn.grad is None and np.abs(p.grad).sum() > 0


@given(matrices(), st.sampled_from([0.1, 0.5, 1.0]))
def test_nnclr_gradcheck(zs, t):
    gradcheck_full(lambda a, b: losses.nnclr_loss(a, b, temperature=t), zs, [False, True])


def test_mocov3_is_2t_times_the_in_batch_cross_entropy_and_keys_keep_their_gradient(rng):
    q, k = T(randn(rng, 6, 4), True), T(randn(rng, 6, 4), True)
    a = losses.mocov3_loss(q, k, 0.2)
    # nnclr_loss(u, p) is the same N-way cross-entropy (rows u against all p), unscaled.
    assert a.item() == pytest.approx(0.4 * losses.nnclr_loss(q, k, 0.2).item(), rel=1e-12)
    a.backward()
    assert np.abs(q.grad).sum() > 0 and np.abs(k.grad).sum() > 0   # not detached here


@given(matrices(), st.sampled_from([0.2, 1.0]))
def test_mocov3_gradcheck(zs, t):
    gradcheck_full(lambda a, b: losses.mocov3_loss(a, b, temperature=t), zs)


# ------------------------------------------------------------------------------------------
# Stability of the two contrastive losses
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [losses.nnclr_loss, losses.mocov3_loss])
def test_low_temperature_and_zero_rows_stay_finite(loss, rng):
    a, b = randn(rng, 6, 4), randn(rng, 6, 4)
    a[2] = 0.0
    b[5] = 0.0
    ta, tb = T(a, True), T(b, True)
    out = loss(ta, tb, temperature=0.01)
    assert np.isfinite(out.item())
    assert out.item() == pytest.approx((ref_nnclr if loss is losses.nnclr_loss
                                        else ref_mocov3)(a, b, 0.01), rel=1e-9)
    out.backward()
    assert np.isfinite(tb.grad).all()
    z = np.zeros((3, 4))
    assert np.isfinite(loss(T(z), T(z), temperature=0.01).item())


@pytest.mark.parametrize("loss", [losses.nnclr_loss, losses.mocov3_loss])
def test_contrastive_input_validation(loss, rng):
    name = loss.__name__
    with pytest.raises(ValueError, match=f"{name}.*same shape"):
        loss(T(randn(rng, 4, 3)), T(randn(rng, 5, 3)))
    with pytest.raises(ValueError, match=f"{name}.*at least 2 rows"):
        loss(T(randn(rng, 1, 3)), T(randn(rng, 1, 3)))
    with pytest.raises(ValueError, match=f"{name}: temperature"):
        loss(T(randn(rng, 4, 3)), T(randn(rng, 4, 3)), temperature=0)


# ------------------------------------------------------------------------------------------
# simmim_loss
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 4, 4), (3, 1, 8, 6)])
def test_simmim_matches_reference(shape, rng):
    pred, target = randn(rng, *shape), randn(rng, *shape)
    mask = (rng.random((shape[0],) + shape[2:]) < 0.6).astype(np.float64)
    got = losses.simmim_loss(T(pred), T(target), mask).item()
    assert got == pytest.approx(ref_simmim(pred, target, mask), rel=1e-10)


def test_simmim_counts_masked_pixels_only(rng):
    pred, target = randn(rng, 2, 3, 4, 4), randn(rng, 2, 3, 4, 4)
    mask = np.zeros((2, 4, 4))
    mask[:, :2] = 1                                             # top half masked
    base = losses.simmim_loss(T(pred), T(target), mask).item()
    pred[:, :, 2:] += 100.0                                     # change the visible half only
    tp = T(pred, True)
    assert losses.simmim_loss(tp, T(target), mask).item() == pytest.approx(base, rel=1e-12)
    losses.simmim_loss(tp, T(target), mask).backward()
    assert (tp.grad[:, :, 2:] == 0).all()
    # Analytic: |error| 1 on every masked value -> 1 (the mean over pixels and channels).
    ones = losses.simmim_loss(T(target + 1.0), T(target), mask).item()
    assert ones == pytest.approx(16 / (16 + 1e-5), rel=1e-12)   # 2 images x 8 pixels


def test_simmim_empty_mask_is_zero_not_nan(rng):
    pred = randn(rng, 2, 1, 4, 4)
    assert losses.simmim_loss(T(pred), T(pred + 1), np.zeros((2, 4, 4))).item() == 0.0


def test_simmim_target_gets_no_gradient(rng):
    pred, target = T(randn(rng, 2, 1, 2, 2), True), T(randn(rng, 2, 1, 2, 2), True)
    losses.simmim_loss(pred, target, np.ones((2, 2, 2))).backward()
    assert target.grad is None and np.abs(pred.grad).sum() > 0


@given(st.integers(1, 3), st.integers(1, 2), st.integers(0, 2 ** 32 - 1))
def test_simmim_gradcheck(b, c, seed):
    r = np.random.default_rng(seed)
    pred = r.standard_normal((b, c, 2, 3))
    target = pred + np.where(r.random(pred.shape) < 0.5, 1.0, -1.0) * (0.2 + r.random(pred.shape))
    mask = (r.random((b, 2, 3)) < 0.5).astype(np.float64)      # |error| >= 0.2: no kink
    gradcheck_full(lambda p, t: losses.simmim_loss(p, t, mask), [pred, target], [True, False])


def test_simmim_input_validation(rng):
    p = T(randn(rng, 2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"simmim_loss: mask must be \(B, H, W\)"):
        losses.simmim_loss(p, p, np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="simmim_loss: pred and target"):
        losses.simmim_loss(p, T(randn(rng, 2, 1, 4, 2)), np.ones((2, 4, 4)))
    with pytest.raises(TypeError, match="simmim_loss: mask"):
        losses.simmim_loss(p, p, [[1]])


# ------------------------------------------------------------------------------------------
# simmim_norm_targets
# ------------------------------------------------------------------------------------------


def ref_norm_targets(x, window):
    """The definition, pixel by pixel: the square of ``window`` around each pixel, cut to the
    image, its mean and unbiased variance."""
    r = window // 2
    out = np.empty(x.shape)
    B, C, H, W = x.shape
    for b in range(B):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    square = x[b, c, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1]
                    var = max(square.var(ddof=1), 0.0)
                    out[b, c, i, j] = (x[b, c, i, j] - square.mean()) / math.sqrt(var + 1e-6)
    return out


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([3, 5, 7, 11]), st.integers(0, 2 ** 16))
def test_norm_targets_match_the_definition(b, c, h, w, window, seed):
    h += h * w < 2          # a 1x1 image has no variance (refused below)
    x = np.random.default_rng(seed).random((b, c, h, w)) * 3 - 1
    got = losses.simmim_norm_targets(x, window)
    np.testing.assert_allclose(got, ref_norm_targets(x, window), rtol=1e-9, atol=1e-9)


def test_norm_targets_ignore_brightness_and_contrast(rng):
    x = rng.random((2, 3, 8, 8))
    base = losses.simmim_norm_targets(x, 5)
    scaled = losses.simmim_norm_targets(4.0 * x + np.array([1.0, -2.0, 0.5])[:, None, None], 5)
    np.testing.assert_allclose(scaled, base, rtol=1e-4, atol=1e-4)   # up to the 1e-6
    flat = losses.simmim_norm_targets(np.full((1, 1, 6, 6), 0.7), 3)
    assert np.abs(flat).max() < 1e-6                                   # no contrast: zero
    x32 = x.astype(np.float32)
    got = losses.simmim_norm_targets(x32, 5)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window, x, match", [
    (4, np.zeros((1, 1, 4, 4)), "window must be an odd integer >= 3"),
    (1, np.zeros((1, 1, 4, 4)), "window must be an odd integer >= 3"),
    (3.0, np.zeros((1, 1, 4, 4)), "window must be an odd integer >= 3"),
    (3, np.zeros((4, 4)), r"x must be a float array \(B, C, H, W\) of 2 or more pixels"),
    (3, np.zeros((1, 1, 4, 4), np.int64), "x must be a float array"),
    (3, np.zeros((2, 3, 1, 1)), "of 2 or more pixels, got \\(2, 3, 1, 1\\)")])
def test_norm_targets_refuse_bad_input(window, x, match):
    with pytest.raises(ValueError, match=match):
        losses.simmim_norm_targets(x, window)
