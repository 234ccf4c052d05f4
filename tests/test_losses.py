"""Tests of minissl.losses (the SSL objectives), in the style of lightly's tests/loss/.

Each loss is pinned four ways:
  * to a hand-written NumPy reference (loops over anchors / pairs, float64) over a grid of
    sizes and temperatures;
  * to the analytic values the literature gives (NT-Xent of collapsed embeddings is
    log(2N-1), InfoNCE with identical negatives log(K+1), Barlow Twins' affine invariance, ...);
  * by gradcheck in float64 on hypothesis-drawn sizes and values away from kinks;
  * by stability checks (temperature 0.01, logits 1e4, all-zero rows) and input validation.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minissl as ms
from minissl import losses
from minissl.backend import to_device

# ------------------------------------------------------------------------------------------
# NumPy references: deliberately naive (explicit loops over anchors and pairs), float64
# ------------------------------------------------------------------------------------------


def _unit(x, eps=1e-12):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def _lse(v):
    m = np.max(v)
    return m + np.log(np.sum(np.exp(v - m)))


def ref_nt_xent(z1, z2, t):
    z = _unit(np.concatenate([z1, z2]))
    n2 = len(z)
    total = 0.0
    for a in range(n2):
        pos = (a + n2 // 2) % n2
        logits = np.array([z[a] @ z[b] / t for b in range(n2) if b != a])
        total += _lse(logits) - z[a] @ z[pos] / t
    return total / n2


def ref_info_nce(q, k, neg, t):
    q, k, neg = _unit(q), _unit(k), _unit(neg)
    total = 0.0
    for i in range(len(q)):
        logits = np.array([q[i] @ k[i]] + [q[i] @ n for n in neg]) / t
        total += _lse(logits) - logits[0]
    return total / len(q)


def ref_clip(img, txt, logit_scale):
    u, v = _unit(img), _unit(txt)
    s = math.exp(logit_scale)
    n = len(u)
    per_image = [_lse([s * u[i] @ v[j] for j in range(n)]) - s * u[i] @ v[i] for i in range(n)]
    per_text = [_lse([s * u[i] @ v[j] for i in range(n)]) - s * u[j] @ v[j] for j in range(n)]
    return (np.mean(per_image) + np.mean(per_text)) / 2


def ref_byol(p, z):
    return np.mean([np.sum((a - b) ** 2) for a, b in zip(_unit(p), _unit(z))])


def ref_simsiam(p, z):
    return -np.mean([a @ b for a, b in zip(_unit(p, 1e-8), _unit(z, 1e-8))])


def ref_barlow(z1, z2, lambd):
    def bn(z):
        z = np.asarray(z, dtype=np.float64)
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)   # numpy var: biased
    a, b = bn(z1), bn(z2)
    n, d = a.shape
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij ** 2
    return loss


def ref_vicreg(z1, z2, sim_w=25.0, var_w=25.0, cov_w=1.0, eps=1e-4):
    x, y = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    n, d = x.shape
    sim = np.mean((x - y) ** 2)
    var = 0.0
    cov = 0.0
    for z in (x, y):
        std = np.sqrt(z.var(0, ddof=1) + eps)
        var += np.mean(np.maximum(1 - std, 0)) / 2
        c = np.cov(z, rowvar=False, ddof=1).reshape(d, d)
        cov += sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return sim_w * sim + var_w * var + cov_w * cov


def ref_kl(mu, logvar):
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2, per dim, summed; mean over rows
    s2 = np.exp(logvar)
    return np.mean(np.sum(-0.5 * logvar + (s2 + mu ** 2) / 2 - 0.5, axis=1))


def ref_mae(pred, target, mask, norm_pix=False):
    b, l, p = pred.shape
    num = den = 0.0
    for i in range(b):
        for j in range(l):
            t = target[i, j].astype(np.float64)
            if norm_pix:
                t = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)
            num += mask[i, j] * np.mean((pred[i, j] - t) ** 2)
            den += mask[i, j]
    return num / den


def ref_alignment(z1, z2, alpha=2):
    return np.mean([np.linalg.norm(a - b) ** alpha for a, b in zip(_unit(z1), _unit(z2))])


def ref_uniformity(z, t=2):
    u = _unit(z)
    n = len(u)
    pots = [np.exp(-t * np.sum((u[i] - u[j]) ** 2)) for i in range(n) for j in range(i + 1, n)]
    return np.log(np.mean(pots))


# ------------------------------------------------------------------------------------------
# Helpers and strategies
# ------------------------------------------------------------------------------------------


def T(a, grad=False, dtype=np.float64):
    return ms.tensor(np.asarray(a, dtype=dtype), requires_grad=grad)


def randn(rng, *shape):
    return rng.standard_normal(shape)


# Entries of magnitude in [0.3, 2]: every row norm is >= 0.42, far from the clamp of
# F.normalize, so finite differences see a smooth function.
_entry = st.one_of(st.floats(0.3, 2.0), st.floats(-2.0, -0.3))


@st.composite
def matrices(draw, count=2, n=(2, 6), d=(2, 5), unique=False):
    rows = draw(st.integers(*n))
    cols = draw(st.integers(*d))
    return [draw(hnp.arrays(np.float64, (rows, cols), elements=_entry, unique=unique))
            for _ in range(count)]


def gradcheck_full(fn, arrays, grad_flags=None):
    grad_flags = grad_flags or [True] * len(arrays)
    inputs = [T(a, g) for a, g in zip(arrays, grad_flags)]
    assert ms.gradcheck(fn, inputs, mode="full")


SIZES = [(2, 2), (3, 5), (8, 4), (16, 32)]
TEMPERATURES = [0.01, 0.07, 0.5, 1.0]

# ------------------------------------------------------------------------------------------
# NT-Xent (SimCLR)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("t", TEMPERATURES)
def test_nt_xent_matches_reference(n, d, t, rng):
    z1, z2 = randn(rng, n, d), randn(rng, n, d)
    got = losses.nt_xent(T(z1), T(z2), temperature=t).item()
    assert got == pytest.approx(ref_nt_xent(z1, z2, t), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("n", [2, 3, 7, 32])
@pytest.mark.parametrize("t", TEMPERATURES)
def test_nt_xent_collapsed_is_log_2n_minus_1(n, t, rng):
    # Every row the same vector: all 2N-1 logits of an anchor are 1/T, the positive among them.
    v = randn(rng, 1, 5)
    z = np.repeat(v, n, axis=0)
    got = losses.nt_xent(T(z), T(z * 3.0), temperature=t).item()
    assert got == pytest.approx(math.log(2 * n - 1), rel=1e-12)


@pytest.mark.parametrize("n", [2, 4, 6])
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_orthogonal_pairs(n, t):
    # z1_i = z2_i = e_i: positive logit 1/T, the 2N-2 negatives 0.
    z = np.eye(n, n + 1)
    got = losses.nt_xent(T(z), T(z), temperature=t).item()
    assert got == pytest.approx(math.log(1 + (2 * n - 2) * math.exp(-1 / t)), rel=1e-12)


def test_nt_xent_symmetric_in_views_and_scale_invariant(rng):
    z1, z2 = randn(rng, 5, 4), randn(rng, 5, 4)
    a = losses.nt_xent(T(z1), T(z2), 0.3).item()
    assert losses.nt_xent(T(z2), T(z1), 0.3).item() == pytest.approx(a, rel=1e-12)
    assert losses.nt_xent(T(2.5 * z1), T(0.1 * z2), 0.3).item() == pytest.approx(a, rel=1e-12)


@given(matrices(), st.sampled_from([0.1, 0.5, 1.0]))
def test_nt_xent_gradcheck(zs, t):
    gradcheck_full(lambda a, b: losses.nt_xent(a, b, temperature=t), zs)


# ------------------------------------------------------------------------------------------
# InfoNCE (MoCo)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("k", [1, 7])
@pytest.mark.parametrize("t", TEMPERATURES)
def test_info_nce_matches_reference(n, d, k, t, rng):
    q, key, neg = randn(rng, n, d), randn(rng, n, d), randn(rng, k, d)
    got = losses.info_nce(T(q), T(key), T(neg), temperature=t).item()
    assert got == pytest.approx(ref_info_nce(q, key, neg, t), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("k", [1, 2, 15, 256])
@pytest.mark.parametrize("t", TEMPERATURES)
def test_info_nce_identical_negatives_is_log_k_plus_1(k, t, rng):
    # q, k and all K negatives the same direction: K+1 equal logits, the positive among them.
    v = randn(rng, 1, 6)
    q = np.repeat(v, 3, axis=0)
    got = losses.info_nce(T(q), T(2 * q), T(np.repeat(0.5 * v, k, axis=0)), t).item()
    assert got == pytest.approx(math.log(k + 1), rel=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("t", [0.07, 0.5])
def test_info_nce_orthogonal_negatives(k, t):
    # q = k = e_0, negatives e_1..e_K: logits [1/T, 0, ..., 0].
    e = np.eye(k + 1)
    got = losses.info_nce(T(e[:1]), T(e[:1]), T(e[1:]), t).item()
    assert got == pytest.approx(math.log(1 + k * math.exp(-1 / t)), rel=1e-12)


@given(matrices(count=3), st.sampled_from([0.1, 0.5, 1.0]))
def test_info_nce_gradcheck(zs, t):
    q, k, neg = zs
    # negatives are a constant (detached): only query and key are checked.
    gradcheck_full(lambda a, b, c: losses.info_nce(a, b, c, temperature=t), [q, k, neg[:3]],
                   [True, True, False])


def test_info_nce_negatives_get_no_gradient(rng):
    q, k, neg = T(randn(rng, 4, 3), True), T(randn(rng, 4, 3), True), T(randn(rng, 9, 3), True)
    losses.info_nce(q, k, neg).backward()
    assert neg.grad is None
    assert q.grad is not None and np.abs(q.grad).sum() > 0
    assert k.grad is not None and np.abs(k.grad).sum() > 0


# ------------------------------------------------------------------------------------------
# CLIP
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("scale", [0.0, math.log(1 / 0.07), math.log(100.0)])
def test_clip_matches_reference(n, d, scale, rng):
    img, txt = randn(rng, max(n, 2), d), randn(rng, max(n, 2), d)
    got = losses.clip_loss(T(img), T(txt), T(scale)).item()
    assert got == pytest.approx(ref_clip(img, txt, scale), rel=1e-10, abs=1e-10)
    # A Python number is accepted as a constant scale, and a (1,) tensor as a scalar.
    assert losses.clip_loss(T(img), T(txt), scale).item() == pytest.approx(got, rel=1e-12)
    s1 = T([scale], True)
    assert losses.clip_loss(T(img), T(txt), s1).item() == pytest.approx(got, rel=1e-12)


@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_clip_orthonormal_pairs_and_symmetry(n, scale, rng):
    # Matching pairs are the same basis vector: logits e^s I, each CE = log(1 + (N-1) e^{-e^s}).
    e = np.eye(n, n + 2)
    got = losses.clip_loss(T(e), T(2 * e), T(scale)).item()
    assert got == pytest.approx(math.log(1 + (n - 1) * math.exp(-math.exp(scale))), rel=1e-12)
    img, txt = randn(rng, n, 3), randn(rng, n, 3)
    assert losses.clip_loss(T(img), T(txt), T(scale)).item() == pytest.approx(
        losses.clip_loss(T(txt), T(img), T(scale)).item(), rel=1e-12)


@given(matrices(), st.floats(-1.0, 2.5))
def test_clip_gradcheck(zs, scale):
    gradcheck_full(losses.clip_loss, zs + [np.array(scale)])


# ------------------------------------------------------------------------------------------
# BYOL and SimSiam
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
def test_byol_and_simsiam_match_reference(n, d, rng):
    p, z = randn(rng, n, d), randn(rng, n, d)
    assert losses.byol_loss(T(p), T(z)).item() == pytest.approx(ref_byol(p, z), rel=1e-12)
    assert losses.simsiam_loss(T(p), T(z)).item() == pytest.approx(ref_simsiam(p, z), rel=1e-12)


@pytest.mark.parametrize("n,d", SIZES)
def test_byol_and_simsiam_at_p_equal_z_and_minus_z(n, d, rng):
    z = randn(rng, n, d)
    assert losses.byol_loss(T(z), T(z)).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.byol_loss(T(3 * z), T(z)).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.byol_loss(T(-z), T(z)).item() == pytest.approx(4.0, rel=1e-12)
    assert losses.simsiam_loss(T(z), T(z)).item() == pytest.approx(-1.0, rel=1e-12)
    assert losses.simsiam_loss(T(0.2 * z), T(z)).item() == pytest.approx(-1.0, rel=1e-12)
    assert losses.simsiam_loss(T(-z), T(z)).item() == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("loss", [losses.byol_loss, losses.simsiam_loss])
def test_byol_simsiam_target_gets_no_gradient(loss, rng):
    p, z = T(randn(rng, 4, 3), True), T(randn(rng, 4, 3), True)
    loss(p, z).backward()
    assert z.grad is None
    assert p.grad is not None and np.abs(p.grad).sum() > 0


@given(matrices(count=2))
def test_byol_gradcheck(zs):
    gradcheck_full(losses.byol_loss, zs, [True, False])


@given(matrices(count=2))
def test_simsiam_gradcheck(zs):
    gradcheck_full(losses.simsiam_loss, zs, [True, False])


# ------------------------------------------------------------------------------------------
# Barlow Twins
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("lambd", [5e-3, 0.1, 1.0])
def test_barlow_twins_matches_reference(n, d, lambd, rng):
    z1, z2 = randn(rng, n, d), randn(rng, n, d)
    got = losses.barlow_twins_loss(T(z1), T(z2), lambd=lambd).item()
    assert got == pytest.approx(ref_barlow(z1, z2, lambd), rel=1e-10)


@pytest.mark.parametrize("n,d", [(4, 3), (16, 8)])
def test_barlow_twins_invariant_to_affine_map_of_each_view(n, d, rng):
    z1, z2 = randn(rng, n, d), randn(rng, n, d)
    a1, b1 = rng.uniform(0.5, 3.0, d), rng.normal(0, 5, d)
    a2, b2 = rng.uniform(0.5, 3.0, d), rng.normal(0, 5, d)
    base = losses.barlow_twins_loss(T(z1), T(z2)).item()
    moved = losses.barlow_twins_loss(T(a1 * z1 + b1), T(a2 * z2 + b2)).item()
    # Exact up to the eps 1e-5 added to the variance (relative effect ~ eps / var).
    assert moved == pytest.approx(base, rel=1e-4)
    # A negative scale flips a feature's correlations: the loss changes.
    flipped = losses.barlow_twins_loss(T(-z1), T(z2)).item()
    assert abs(flipped - base) > 1e-3


def test_barlow_twins_zero_for_identical_decorrelated_views():
    # Columns of a Hadamard matrix: mean 0, variance 1, orthogonal, so C = I / (1 + 1e-5).
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], float)[:, 1:]
    got = losses.barlow_twins_loss(T(h), T(h)).item()
    assert got == pytest.approx(3 * (1 - 1 / (1 + 1e-5)) ** 2, rel=1e-6)
    assert got < 1e-9


@given(matrices(unique=True), st.sampled_from([5e-3, 0.5]))
def test_barlow_twins_gradcheck(zs, lambd):
    # Columns with spread: standardisation divides by sqrt(var + 1e-5).
    assume(all(np.ptp(z, axis=0).min() > 0.1 for z in zs))
    gradcheck_full(lambda a, b: losses.barlow_twins_loss(a, b, lambd=lambd), zs)


# ------------------------------------------------------------------------------------------
# VICReg
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 2.0, 3.0)])
@pytest.mark.parametrize("spread", [0.3, 3.0])  # hinge active (std < 1) / inactive (std > 1)
def test_vicreg_matches_reference(n, d, weights, spread, rng):
    z1, z2 = spread * randn(rng, n, d), spread * randn(rng, n, d)
    got = losses.vicreg_loss(T(z1), T(z2), *weights).item()
    assert got == pytest.approx(ref_vicreg(z1, z2, *weights), rel=1e-10)


def test_vicreg_analytic_values():
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], float)[:, 1:]
    # Identical views, uncorrelated features of std 2 * sqrt(4/3) > 1: every term is 0.
    assert losses.vicreg_loss(T(2 * h), T(2 * h)).item() == pytest.approx(0.0, abs=1e-12)
    # Collapsed (constant) identical views: only the variance hinge, 1 - sqrt(eps), remains.
    c = np.ones((5, 3))
    assert losses.vicreg_loss(T(c), T(c)).item() == pytest.approx(25.0 * (1 - 1e-2), rel=1e-12)
    assert losses.vicreg_loss(T(c), T(c), var_weight=2.0, eps=1e-6).item() == pytest.approx(
        2.0 * (1 - 1e-3), rel=1e-12)
    # Invariance term alone: views differing by a constant shift (variance/covariance equal).
    assert losses.vicreg_loss(T(2 * h), T(2 * h + 0.5)).item() == pytest.approx(
        25.0 * 0.25, rel=1e-12)


@given(matrices(unique=True), st.sampled_from([(25.0, 25.0, 1.0), (1.0, 3.0, 2.0)]))
def test_vicreg_gradcheck(zs, weights):
    # Steer away from the hinge's kink at std = 1.
    for z in zs:
        std = np.sqrt(z.var(axis=0, ddof=1) + 1e-4)
        assume(np.abs(std - 1).min() > 1e-3)
    gradcheck_full(lambda a, b: losses.vicreg_loss(a, b, *weights), zs)


# ------------------------------------------------------------------------------------------
# KL of a diagonal Gaussian (VAE) and the MAE loss
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,d", SIZES)
def test_kl_normal_matches_reference(b, d, rng):
    mu, logvar = randn(rng, b, d), randn(rng, b, d)
    assert losses.kl_normal(T(mu), T(logvar)).item() == pytest.approx(ref_kl(mu, logvar),
                                                                       rel=1e-12)


def test_kl_normal_analytic_values(rng):
    zero = np.zeros((3, 4))
    assert losses.kl_normal(T(zero), T(zero)).item() == 0.0
    mu = randn(rng, 3, 4)
    # Unit variance: KL = |mu|^2 / 2 per row.
    assert losses.kl_normal(T(mu), T(zero)).item() == pytest.approx(
        np.mean(np.sum(mu ** 2, axis=1)) / 2, rel=1e-12)
    # Gradient at the prior: zero (the minimum).
    m, lv = T(zero, True), T(zero, True)
    losses.kl_normal(m, lv).backward()
    assert np.all(m.grad == 0) and np.all(lv.grad == 0)


@given(matrices(count=2))
def test_kl_normal_gradcheck(zs):
    gradcheck_full(losses.kl_normal, zs)


@st.composite
def mae_inputs(draw):
    b, l, p = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 4))
    pred = draw(hnp.arrays(np.float64, (b, l, p), elements=st.floats(-2, 2)))
    target = draw(hnp.arrays(np.float64, (b, l, p), elements=_entry, unique=True))
    mask = draw(hnp.arrays(bool, (b, l)))
    mask.flat[draw(st.integers(0, b * l - 1))] = True   # at least one masked patch
    return pred, target, mask


@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 5, 3), (4, 16, 12)])
@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_matches_reference(shape, norm_pix, rng):
    pred, target = randn(rng, *shape), randn(rng, *shape)
    mask = rng.random(shape[:2]) < 0.6
    mask.flat[0] = True
    got = losses.mae_loss(T(pred), T(target), mask, norm_pix=norm_pix).item()
    assert got == pytest.approx(ref_mae(pred, target, mask, norm_pix), rel=1e-12)
    # The mask may be a Tensor, and a float weight per patch.
    w = mask * rng.uniform(0.5, 2.0, shape[:2])
    got_w = losses.mae_loss(T(pred), T(target), ms.tensor(w), norm_pix=norm_pix).item()
    assert got_w == pytest.approx(ref_mae(pred, target, w, norm_pix), rel=1e-12)


def test_mae_ignores_unmasked_patches(rng):
    pred, target = randn(rng, 2, 6, 4), randn(rng, 2, 6, 4)
    mask = np.array([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0]], dtype=bool)
    base = losses.mae_loss(T(pred), T(target), mask).item()
    pred2, target2 = pred.copy(), target.copy()
    pred2[~mask] += 100 * randn(rng, (~mask).sum(), 4)
    target2[~mask] -= 50.0
    assert losses.mae_loss(T(pred2), T(target2), mask).item() == pytest.approx(base, rel=1e-12)
    p = T(pred, True)
    losses.mae_loss(p, T(target), mask).backward()
    assert np.all(p.grad[~mask] == 0) and np.all(np.abs(p.grad[mask]).sum(-1) > 0)
    # All patches masked: the plain mean squared error.
    full = np.ones((2, 6), dtype=bool)
    assert losses.mae_loss(T(pred), T(target), full).item() == pytest.approx(
        np.mean((pred - target) ** 2), rel=1e-12)


@given(mae_inputs(), st.booleans())
def test_mae_gradcheck(inputs, norm_pix):
    pred, target, mask = inputs
    gradcheck_full(lambda p, t: losses.mae_loss(p, t, mask, norm_pix=norm_pix), [pred, target])


# ------------------------------------------------------------------------------------------
# Alignment and uniformity (Wang & Isola 2020)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("alpha", [1, 2, 3])
def test_alignment_matches_reference(n, d, alpha, rng):
    z1, z2 = randn(rng, n, d), randn(rng, n, d)
    got = losses.alignment(T(z1), T(z2), alpha=alpha).item()
    assert got == pytest.approx(ref_alignment(z1, z2, alpha), rel=1e-12)


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("t", [0.5, 2, 10])
def test_uniformity_matches_reference(n, d, t, rng):
    z = randn(rng, n, d)
    assert losses.uniformity(T(z), t=t).item() == pytest.approx(ref_uniformity(z, t), rel=1e-10)


def test_alignment_uniformity_analytic_values(rng):
    z = randn(rng, 4, 3)
    assert losses.alignment(T(z), T(2 * z)).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.alignment(T(z), T(-z)).item() == pytest.approx(4.0, rel=1e-12)
    assert losses.alignment(T(z), T(-z), alpha=1).item() == pytest.approx(2.0, rel=1e-12)
    collapsed = np.repeat(z[:1], 5, axis=0)
    assert losses.uniformity(T(collapsed)).item() == pytest.approx(0.0, abs=1e-12)
    antipodal = np.array([[1.0, 0.0], [-3.0, 0.0]])
    assert losses.uniformity(T(antipodal), t=2).item() == pytest.approx(-8.0, rel=1e-12)
    # Three points at 120 degrees: every squared distance is 3.
    tri = np.array([[math.cos(a), math.sin(a)] for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)])
    assert losses.uniformity(T(tri), t=1).item() == pytest.approx(-3.0, rel=1e-12)
    # Far larger t than the potential's exponent can hold unshifted: exp(-4000) underflows.
    assert losses.uniformity(T(antipodal), t=1000).item() == pytest.approx(-4000.0, rel=1e-12)


@given(matrices(), st.sampled_from([1, 2, 3]))
def test_alignment_gradcheck(zs, alpha):
    z1, z2 = zs
    if alpha != 2:  # |u - v|^alpha has a kink where a pair coincides
        assume(np.min(np.linalg.norm(_unit(z1) - _unit(z2), axis=1)) > 0.1)
    gradcheck_full(lambda a, b: losses.alignment(a, b, alpha=alpha), zs)


@given(matrices(count=1), st.sampled_from([0.5, 2, 5]))
def test_uniformity_gradcheck(zs, t):
    gradcheck_full(lambda a: losses.uniformity(a, t=t), zs)


# ------------------------------------------------------------------------------------------
# All losses: projection gradcheck at a larger size, dtype, stability, devices, bad input
# ------------------------------------------------------------------------------------------

N_BIG, D_BIG = 24, 16


def _cases(rng, n=N_BIG, d=D_BIG):
    """(name, fn, arrays, requires_grad flags) for every loss at size (n, d)."""
    a, b, c = randn(rng, n, d), randn(rng, n, d), randn(rng, 2 * n, d)
    mask = rng.random((n, 2)) < 0.5
    mask[0, 0] = True
    return [
        ("nt_xent", lambda x, y: losses.nt_xent(x, y, 0.2), [a, b], [True, True]),
        ("info_nce", lambda x, y, z: losses.info_nce(x, y, z, 0.1), [a, b, c],
         [True, True, False]),
        ("clip_loss", losses.clip_loss, [a, b, np.array(2.0)], [True, True, True]),
        ("byol_loss", losses.byol_loss, [a, b], [True, False]),
        ("simsiam_loss", losses.simsiam_loss, [a, b], [True, False]),
        ("barlow_twins_loss", losses.barlow_twins_loss, [a, b], [True, True]),
        ("vicreg_loss", losses.vicreg_loss, [0.5 * a, 2 * b], [True, True]),
        ("kl_normal", losses.kl_normal, [a, 0.5 * b], [True, True]),
        ("mae_loss", lambda x, y: losses.mae_loss(x, y, mask, norm_pix=True),
         [a.reshape(n, 2, d // 2), b.reshape(n, 2, d // 2)], [True, True]),
        ("alignment", losses.alignment, [a, b], [True, True]),
        ("uniformity", losses.uniformity, [a], [True]),
    ]


@pytest.mark.parametrize("index", range(11))
def test_projection_gradcheck_at_larger_size(index, rng):
    name, fn, arrays, flags = _cases(rng)[index]
    inputs = [T(x, g) for x, g in zip(arrays, flags)]
    for seed in range(3):
        assert ms.gradcheck(fn, inputs, mode="projection", seed=seed), name


@pytest.mark.parametrize("index", range(11))
def test_float32_in_float32_out_close_to_float64(index, rng):
    name, fn, arrays, flags = _cases(rng, n=8, d=8)[index]
    x32 = [T(x, g, np.float32) for x, g in zip(arrays, flags)]
    out = fn(*x32)
    assert out.dtype == np.float32 and out.shape == (), name
    out.backward()
    for t in x32:
        if t.grad is not None:
            assert t.grad.dtype == np.float32, name
    ref = fn(*[T(x) for x in arrays]).item()
    assert out.item() == pytest.approx(ref, rel=1e-4, abs=1e-4), name
    # Hyper-parameters given as NumPy float64 scalars must not promote the loss to float64.
    if name == "nt_xent":
        assert losses.nt_xent(x32[0], x32[1], np.float64(0.1)).dtype == np.float32


def _finite_loss_and_grads(loss, inputs):
    assert np.isfinite(loss.item())
    loss.backward()
    for t in inputs:
        if t.requires_grad and t.grad is not None:
            assert np.all(np.isfinite(t.grad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_at_temperature_0_01(dtype, rng):
    # Logits of 100: exp(100) overflows float32, so only a max-shifted log-sum-exp survives.
    z1, z2 = randn(rng, 8, 4), randn(rng, 8, 4)
    a, b = T(z1, True, dtype), T(z2, True, dtype)
    loss = losses.nt_xent(a, b, temperature=0.01)
    assert loss.item() == pytest.approx(ref_nt_xent(z1, z2, 0.01), rel=1e-4)
    _finite_loss_and_grads(loss, [a, b])
    q, k, neg = T(z1, True, dtype), T(z2, True, dtype), T(randn(rng, 16, 4), False, dtype)
    loss = losses.info_nce(q, k, neg, temperature=0.01)
    assert loss.item() == pytest.approx(ref_info_nce(z1, z2, neg.numpy(), 0.01), rel=1e-4)
    _finite_loss_and_grads(loss, [q, k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_stable_at_logits_1e4(dtype, rng):
    img, txt = randn(rng, 6, 5), randn(rng, 6, 5)
    a, b, s = T(img, True, dtype), T(txt, True, dtype), T(math.log(1e4), True, dtype)
    loss = losses.clip_loss(a, b, s)
    assert loss.item() == pytest.approx(ref_clip(img, txt, math.log(1e4)), rel=1e-3)
    _finite_loss_and_grads(loss, [a, b, s])


@pytest.mark.parametrize("index", range(11))
def test_all_zero_row_gives_no_nan(index, rng):
    name, fn, arrays, flags = _cases(rng, n=6, d=4)[index]
    arrays = [x.copy() for x in arrays]
    arrays[0].reshape(arrays[0].shape[0], -1)[1] = 0.0      # one all-zero embedding row
    if name not in ("kl_normal", "mae_loss", "clip_loss"):
        arrays[-1 if name != "clip_loss" else 1].reshape(len(arrays[-1]), -1)[2] = 0.0
    for dtype in (np.float32, np.float64):
        inputs = [T(x, g, dtype) for x, g in zip(arrays, flags)]
        _finite_loss_and_grads(fn(*inputs), inputs)


def test_all_zero_everything_is_finite():
    zero = np.zeros((4, 3))
    for loss in (losses.nt_xent(T(zero, True), T(zero, True)),
                 losses.info_nce(T(zero, True), T(zero, True), T(zero)),
                 losses.clip_loss(T(zero, True), T(zero, True), T(0.0, True)),
                 losses.barlow_twins_loss(T(zero, True), T(zero, True)),
                 losses.vicreg_loss(T(zero, True), T(zero, True))):
        assert np.isfinite(loss.item())
    # Zero embeddings carry no information: NT-Xent is the uniform (2N-1)-way guess.
    assert losses.nt_xent(T(zero), T(zero)).item() == pytest.approx(math.log(7), rel=1e-12)


@pytest.mark.parametrize("index", range(11))
def test_on_device_matches_cpu(index, device, rng):
    name, fn, arrays, flags = _cases(rng, n=8, d=8)[index]
    cpu = [T(x, g) for x, g in zip(arrays, flags)]
    dev = [ms.tensor(x, requires_grad=g, device=device) for x, g in zip(arrays, flags)]
    if name == "mae_loss":  # the mask must live on the same device
        fn = _device_mae(rng, device)
        cpu_out, dev_out = _device_mae(rng, "cpu")(*cpu), fn(*dev)
    else:
        cpu_out, dev_out = fn(*cpu), fn(*dev)
    assert dev_out.device == device
    assert dev_out.item() == pytest.approx(cpu_out.item(), rel=1e-10, abs=1e-12)
    cpu_out.backward()
    dev_out.backward()
    for c, g in zip(cpu, dev):
        if c.grad is not None:
            np.testing.assert_allclose(to_device(g.grad, "cpu"), c.grad, rtol=1e-9, atol=1e-12)


def _device_mae(rng, device):
    mask = np.zeros((8, 2), dtype=bool)
    mask[::2, 1:] = True
    m = ms.tensor(mask, device=device)
    return lambda x, y: losses.mae_loss(x, y, m, norm_pix=True)


# ------------------------------------------------------------------------------------------
# Bad input: a clear error naming the loss and the shapes
# ------------------------------------------------------------------------------------------

Z = T(np.ones((4, 3)))


@pytest.mark.parametrize("call,match", [
    (lambda: losses.nt_xent(Z, T(np.ones((4, 2)))), r"nt_xent.*\(4, 3\).*\(4, 2\)"),
    (lambda: losses.nt_xent(Z, T(np.ones((5, 3)))), r"nt_xent.*\(4, 3\).*\(5, 3\)"),
    (lambda: losses.nt_xent(T(np.ones(3)), T(np.ones(3))), r"nt_xent.*z1.*\(3,\)"),
    (lambda: losses.nt_xent(T(np.ones((1, 3))), T(np.ones((1, 3)))), r"nt_xent.*N >= 2"),
    (lambda: losses.nt_xent(Z, Z, temperature=0.0), r"nt_xent.*temperature"),
    (lambda: losses.nt_xent(Z, Z, temperature=-1), r"nt_xent.*temperature"),
    (lambda: losses.info_nce(Z, Z, T(np.ones((5, 2)))), r"info_nce.*\(4, 3\).*\(5, 2\)"),
    (lambda: losses.info_nce(Z, Z, T(np.ones((0, 3)))), r"info_nce.*negatives.*\(0, 3\)"),
    (lambda: losses.info_nce(Z, T(np.ones((3, 3))), Z), r"info_nce.*\(4, 3\).*\(3, 3\)"),
    (lambda: losses.clip_loss(Z, T(np.ones((4, 5))), 1.0), r"clip_loss.*\(4, 3\).*\(4, 5\)"),
    (lambda: losses.clip_loss(T(np.ones((1, 3))), T(np.ones((1, 3))), 1.0),
     r"clip_loss.*N >= 2"),
    (lambda: losses.clip_loss(Z, Z, T(np.ones(2))), r"clip_loss.*logit_scale.*\(2,\)"),
    (lambda: losses.byol_loss(Z, T(np.ones((4, 3, 1)))), r"byol_loss.*target.*\(4, 3, 1\)"),
    (lambda: losses.simsiam_loss(Z, T(np.ones((2, 3)))), r"simsiam_loss.*\(4, 3\).*\(2, 3\)"),
    (lambda: losses.barlow_twins_loss(T(np.ones((1, 3))), T(np.ones((1, 3)))),
     r"barlow_twins_loss.*N >= 2.*\(1, 3\)"),
    (lambda: losses.barlow_twins_loss(Z, T(np.ones((4, 4)))),
     r"barlow_twins_loss.*\(4, 3\).*\(4, 4\)"),
    (lambda: losses.vicreg_loss(T(np.ones((1, 3))), T(np.ones((1, 3)))),
     r"vicreg_loss.*N >= 2"),
    (lambda: losses.vicreg_loss(Z, T(np.ones((3, 3)))), r"vicreg_loss.*\(4, 3\).*\(3, 3\)"),
    (lambda: losses.kl_normal(Z, T(np.ones((4, 2)))), r"kl_normal.*\(4, 3\).*\(4, 2\)"),
    (lambda: losses.mae_loss(Z, Z, np.ones(4)), r"mae_loss.*\(B, L, P\).*\(4, 3\)"),
    (lambda: losses.mae_loss(T(np.ones((2, 3, 4))), T(np.ones((2, 3, 4))), np.ones((3, 2))),
     r"mae_loss.*mask.*\(2, 3\).*\(3, 2\)"),
    (lambda: losses.mae_loss(T(np.ones((2, 3, 4))), T(np.ones((2, 3, 4))), np.zeros((2, 3))),
     r"mae_loss.*selects no patch"),
    (lambda: losses.mae_loss(T(np.ones((2, 3, 1))), T(np.ones((2, 3, 1))), np.ones((2, 3)),
                             norm_pix=True), r"mae_loss.*P >= 2"),
    (lambda: losses.alignment(Z, T(np.ones((4, 2)))), r"alignment.*\(4, 3\).*\(4, 2\)"),
    (lambda: losses.uniformity(T(np.ones((1, 3)))), r"uniformity.*\(1, 3\)"),
])
def test_bad_shapes_raise_value_error_naming_the_loss(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call,match", [
    (lambda: losses.nt_xent(np.ones((4, 3)), Z), r"nt_xent.*z1.*Tensor.*ndarray"),
    (lambda: losses.byol_loss(Z, ms.tensor(np.ones((4, 3), np.float32))), r"byol_loss.*dtype"),
    (lambda: losses.kl_normal(ms.tensor(np.ones((4, 3), np.int64)), Z), r"kl_normal.*mu.*int64"),
    (lambda: losses.clip_loss(Z, Z, "1.0"), r"clip_loss.*logit_scale"),
])
def test_bad_types_raise_type_error_naming_the_loss(call, match):
    with pytest.raises(TypeError, match=match):
        call()


# ------------------------------------------------------------------------------------------
# cpc_loss: InfoNCE on future frames, candidates = every frame of the batch
# ------------------------------------------------------------------------------------------

def ref_cpc(pred, z):
    """Loops over steps and anchors: -log softmax over all B T frames, at the positive."""
    B, L, K, _ = pred.shape
    per_step = []
    for k in range(1, K + 1):
        terms = []
        for b in range(B):
            for t in range(L - k):
                logits = np.array([pred[b, t, k - 1] @ z[b2, t2]
                                   for b2 in range(B) for t2 in range(L)])
                terms.append(_lse(logits) - pred[b, t, k - 1] @ z[b, t + k])
        per_step.append(np.mean(terms))
    return float(np.mean(per_step))


@pytest.mark.parametrize("B, L, K, D", [(1, 2, 1, 1), (2, 5, 3, 4), (3, 4, 3, 2), (4, 9, 2, 8)])
def test_cpc_loss_matches_reference(B, L, K, D, rng):
    pred, z = randn(rng, B, L, K, D), randn(rng, B, L, D)
    got = losses.cpc_loss(T(pred), T(z)).item()
    assert got == pytest.approx(ref_cpc(pred, z), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("B, L, K", [(1, 3, 2), (4, 6, 5)])
def test_cpc_loss_of_equal_frames_is_log_bl(B, L, K, rng):
    z = np.broadcast_to(randn(rng, 1, 1, 3), (B, L, 3))
    got = losses.cpc_loss(T(randn(rng, B, L, K, 3)), T(z)).item()
    assert got == pytest.approx(math.log(B * L), rel=1e-12)


def test_cpc_loss_finds_the_future_frame():
    # one-hot frames, each prediction the exact future frame: the loss tends to 0 with scale
    B, L, K = 2, 4, 2
    z = 30.0 * np.eye(B * L).reshape(B, L, B * L)
    pred = np.zeros((B, L, K, B * L))
    for k in range(1, K + 1):
        pred[:, :L - k, k - 1] = z[:, k:]
    assert losses.cpc_loss(T(pred), T(z)).item() < 1e-12
    assert math.isfinite(losses.cpc_loss(T(pred * 1e3), T(z)).item())   # logits of 1e6


@given(st.integers(1, 3), st.integers(2, 5), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 2 ** 32 - 1))
def test_cpc_loss_gradcheck(B, L, K, D, seed):
    assume(K < L)
    r = np.random.default_rng(seed)
    gradcheck_full(losses.cpc_loss, [r.standard_normal((B, L, K, D)),
                                     r.standard_normal((B, L, D))])


def test_cpc_loss_of_a_slice_with_everyone_as_candidates(rng):
    # Two "ranks" with two sequences each: their mean is the loss of the whole batch.
    pred, z = randn(rng, 4, 6, 3, 5), randn(rng, 4, 6, 5)
    whole = losses.cpc_loss(T(pred), T(z)).item()
    halves = [losses.cpc_loss(T(pred[o:o + 2]), T(z), offset=o).item() for o in (0, 2)]
    assert np.mean(halves) == pytest.approx(whole, rel=1e-12)
    with pytest.raises(ValueError, match="offset 3"):
        losses.cpc_loss(T(pred[:2]), T(z), offset=3)


def test_cpc_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"cpc_loss: expected predictions \(B, T, K, D\)"):
        losses.cpc_loss(T(np.zeros((2, 3, 1, 4))), T(np.zeros((2, 4, 4))))
    with pytest.raises(ValueError, match="1 <= K < T"):
        losses.cpc_loss(T(np.zeros((2, 3, 3, 4))), T(np.zeros((2, 3, 4))))
    with pytest.raises(TypeError, match="cpc_loss: z must be a minissl Tensor"):
        losses.cpc_loss(T(np.zeros((2, 3, 1, 4))), np.zeros((2, 3, 4)))
