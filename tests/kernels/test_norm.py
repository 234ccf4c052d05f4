"""Layer-norm, batch-norm and L2-normalisation kernels: the compiled kernels against the NumPy
reference, the
reference against PyTorch, the backward against central finite differences, the accuracy of
the statistics, size-0 input and input validation."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl.kernels import norm as K
from minissl.kernels._dispatch import load
from support.helpers import assert_close as _assert_close, make_array, numerical_grad
from minissl.kernels.norm import batch_norm_backward_ref, batch_norm_forward_ref, layer_norm_backward_ref, layer_norm_forward_ref
from support.cuda_emulator import close, layouts

DTYPES = [np.float32, np.float64]
LAYOUTS = ["contiguous", "transposed", "sliced", "readonly"]
AFFINE = [(True, True), (True, False), (False, True), (False, False)]
EXT = load("norm")
needs_ext = pytest.mark.skipif(EXT is None, reason="Cython build missing or reference forced")


# ----------------------------------------------------------------------------------------- helpers

def assert_close(actual, expected, dtype, tol32=2e-5):
    _assert_close(actual, expected, dtype, tol32, tol32, 1e-11, 1e-11)


def affine_params(rng, n, dtype, has_w, has_b):
    w = (1 + 0.5 * rng.standard_normal(n)).astype(dtype) if has_w else None
    b = rng.standard_normal(n).astype(dtype) if has_b else None
    return w, b


# --------------------------------------------------------------------------- compiled vs reference

@needs_ext
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 40)), dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(LAYOUTS), affine=st.sampled_from(AFFINE),
       seed=st.integers(0, 2**31))
def test_layer_norm_matches_reference(shape, dtype, layout, affine, seed):
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, layout, loc=rng.normal(0, 5), scale=rng.uniform(0.1, 3))
    g = make_array(rng, shape, dtype, layout)
    w, b = affine_params(rng, shape[1], dtype, *affine)
    out, ref = K.layer_norm_forward(x, w, b, 1e-5), K.layer_norm_forward_ref(x, w, b, 1e-5)
    for a, r in zip(out, ref):
        assert_close(a, r, dtype)
    _, mean, rstd = ref
    for a, r in zip(K.layer_norm_backward(g, x, mean, rstd, w),
                    K.layer_norm_backward_ref(g, x, mean, rstd, w)):
        assert_close(a, r, dtype)


@needs_ext
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 70), st.sampled_from([1, 1, 2, 5, 17])),
       dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       affine=st.sampled_from(AFFINE), seed=st.integers(0, 2**31))
def test_batch_norm_matches_reference(shape, dtype, layout, affine, seed):
    """L = 1 (BatchNorm1d, reduced row by row) and L > 1 (reduced in blocks of images)."""
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, layout, loc=rng.normal(0, 5), scale=rng.uniform(0.1, 3))
    g = make_array(rng, shape, dtype, layout)
    w, b = affine_params(rng, shape[1], dtype, *affine)
    out, ref = K.batch_norm_forward(x, w, b, 1e-5), K.batch_norm_forward_ref(x, w, b, 1e-5)
    for a, r in zip(out, ref):
        assert_close(a, r, dtype)
    _, mean, _, rstd = ref
    for a, r in zip(K.batch_norm_backward(g, x, mean, rstd, w),
                    K.batch_norm_backward_ref(g, x, mean, rstd, w)):
        assert_close(a, r, dtype)


@needs_ext
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 70), st.sampled_from([1, 1, 2, 5, 17])),
       dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       affine=st.sampled_from(AFFINE), seed=st.integers(0, 2**31))
def test_batch_norm_fused_relu_matches_reference(shape, dtype, layout, affine, seed):
    """relu=True / relu_output: the compiled passes equal the reference, which is batch norm
    then ReLU (forward) and ReLU's mask then batch norm (backward)."""
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, layout, loc=rng.normal(0, 5), scale=rng.uniform(0.1, 3))
    g = make_array(rng, shape, dtype, layout)
    w, b = affine_params(rng, shape[1], dtype, *affine)
    y, mean, var, rstd = K.batch_norm_forward(x, w, b, 1e-5, relu=True)
    ref = K.batch_norm_forward_ref(x, w, b, 1e-5, relu=True)
    for a, r in zip((y, mean, var, rstd), ref):
        assert_close(a, r, dtype)
    plain = K.batch_norm_forward(x, w, b, 1e-5)[0]
    np.testing.assert_array_equal(y, np.maximum(plain, 0))     # the same rounding, then max
    fused = K.batch_norm_backward(g, x, mean, rstd, w, relu_output=y)
    for a, r, c in zip(fused, K.batch_norm_backward_ref(g, x, mean, rstd, w, relu_output=y),
                       K.batch_norm_backward(g * (y > 0), x, mean, rstd, w)):
        assert_close(a, r, dtype)
        assert_close(a, c, dtype)


def test_large_inputs_run_in_parallel_and_deterministically():
    """Big enough for both threads; the partial sums have a fixed order, so the bits repeat."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, 96)).astype(np.float32)
    g = rng.standard_normal((700, 96)).astype(np.float32)
    w = rng.standard_normal(96).astype(np.float32)
    y, mean, rstd = K.layer_norm_forward(x, w, None, 1e-5)
    first = K.layer_norm_backward(g, x, mean, rstd, w)
    for a, r in zip(first, K.layer_norm_backward_ref(g, x, mean, rstd, w)):
        assert_close(a, r, np.float32, tol32=1e-4)
    for a, b in zip(first, K.layer_norm_backward(g, x, mean, rstd, w)):
        np.testing.assert_array_equal(a, b)
    for shape in [(700, 96, 1), (40, 8, 130)]:
        x3 = rng.standard_normal(shape).astype(np.float32)
        out = K.batch_norm_forward(x3, None, w[:shape[1]], 1e-5)
        for a, r in zip(out, K.batch_norm_forward_ref(x3, None, w[:shape[1]], 1e-5)):
            assert_close(a, r, np.float32)


@needs_ext
def test_compiled_entry_points_reject_what_the_wrappers_would_not_pass():
    """Called directly, the kernels check types, shapes and contiguity: an error, never a read
    outside an array."""
    x, m = np.zeros((2, 3)), np.zeros(2)
    with pytest.raises(ValueError, match="minissl.kernels.norm._cpu"):
        EXT.layer_norm_forward(x, np.ones(4), None, 1e-5, np.zeros((2, 3)), m, m.copy())
    with pytest.raises(ValueError, match="minissl.kernels.norm._cpu"):
        EXT.layer_norm_forward(x, None, None, 1e-5, np.zeros((2, 3)), np.zeros(3), m)
    with pytest.raises(ValueError, match="minissl.kernels.norm._cpu"):
        EXT.batch_norm_forward(x[:, :, None].transpose(1, 0, 2), None, None, 1e-5,
                               np.zeros((3, 2, 1)), m, m, m)
    with pytest.raises(ValueError, match="dw must be given exactly when weight is"):
        EXT.layer_norm_backward(x, x, m, m, np.ones(3), np.zeros((2, 3)), None, np.zeros(3))
    x3, c = np.zeros((2, 3, 4)), np.zeros(3)
    with pytest.raises(ValueError, match="minissl.kernels.norm._cpu"):   # a fused ReLU's output
        EXT.batch_norm_backward(x3, x3, c, c, None, np.zeros_like(x3), None, c.copy(),
                                np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="batch_norm_backward: .*relu_output"):
        K.batch_norm_backward(x3, x3, c, c, None, relu_output=np.zeros((2, 3, 5)))


# --------------------------------------------------------------------------------- against PyTorch

@pytest.fixture(scope="module")
def torch():
    """PyTorch on one thread (its kernels would wake a second thread for every tiny tensor,
    which costs milliseconds each on a busy 2-core machine)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def _t(torch, a):
    """A float64 tensor: PyTorch's float32 norms lose digits when var is near eps (they keep
    float32 statistics); in float64 it serves as the exact value of the same float32 inputs."""
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _n(t, dtype):
    return t.numpy().astype(dtype)


@pytest.mark.torch
@pytest.mark.parametrize("impl", ["public", "ref"])
@given(shape=st.tuples(st.integers(1, 6), st.integers(2, 20)), dtype=st.sampled_from(DTYPES),
       affine=st.sampled_from(AFFINE), seed=st.integers(0, 2**31))
def test_layer_norm_matches_torch(torch, impl, shape, dtype, affine, seed):
    """Against torch's native layer norm and its backward kernel, called directly, in float64
    on the same values (see _t)."""
    fwd = K.layer_norm_forward_ref if impl == "ref" else K.layer_norm_forward
    bwd = K.layer_norm_backward_ref if impl == "ref" else K.layer_norm_backward
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, loc=2.0, scale=3.0)
    g = make_array(rng, shape, dtype)
    w, b = affine_params(rng, shape[1], dtype, *affine)
    tx, tg, tw, tb = (_t(torch, a) for a in (x, g, w, b))
    ty, tmean, trstd = torch.native_layer_norm(tx, [shape[1]], tw, tb, 1e-5)
    y, mean, rstd = fwd(x, w, b, 1e-5)
    assert_close(y, _n(ty, dtype), dtype)
    assert_close(mean, _n(tmean, dtype)[:, 0], dtype)
    assert_close(rstd, _n(trstd, dtype)[:, 0], dtype)
    # the backward from our statistics: stored in float32 they carry rounding that dx
    # inherits (as PyTorch's do); the same values on both sides isolate the backward itself
    tdx, tdw, tdb = torch.ops.aten.native_layer_norm_backward(
        tg, tx, [shape[1]], _t(torch, mean[:, None]), _t(torch, rstd[:, None]), tw, tb,
        [True, w is not None, b is not None])
    dx, dw, db = bwd(g, x, mean, rstd, w)
    assert_close(dx, _n(tdx, dtype), dtype)
    assert_close(dw, None if w is None else _n(tdw, dtype), dtype)
    if b is not None:
        assert_close(db, _n(tdb, dtype), dtype)


@pytest.mark.torch
@pytest.mark.parametrize("impl", ["public", "ref"])
@given(shape=st.tuples(st.integers(2, 6), st.integers(1, 10), st.sampled_from([1, 3, 8])),
       dtype=st.sampled_from(DTYPES), affine=st.sampled_from(AFFINE),
       seed=st.integers(0, 2**31))
def test_batch_norm_matches_torch(torch, impl, shape, dtype, affine, seed):
    """Training-mode batch norm against torch's native kernels (forward and backward)."""
    fwd = K.batch_norm_forward_ref if impl == "ref" else K.batch_norm_forward
    bwd = K.batch_norm_backward_ref if impl == "ref" else K.batch_norm_backward
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, loc=-1.0, scale=2.0)
    g = make_array(rng, shape, dtype)
    w, b = affine_params(rng, shape[1], dtype, *affine)
    tx, tg, tw, tb = (_t(torch, a) for a in (x, g, w, b))
    ty, tmean, tinvstd = torch.native_batch_norm(tx, tw, tb, None, None, True, 0.1, 1e-5)
    y, mean, var, rstd = fwd(x, w, b, 1e-5)
    assert_close(y, _n(ty, dtype), dtype)
    assert_close(mean, _n(tmean, dtype), dtype)
    assert_close(rstd, _n(tinvstd, dtype), dtype)
    assert_close(var, _n(tx.var(dim=(0, 2), unbiased=False), dtype), dtype)
    tdx, tdw, tdb = torch.ops.aten.native_batch_norm_backward(     # from our statistics
        tg, tx, tw, None, None, _t(torch, mean), _t(torch, rstd), True, 1e-5, [True, True, True])
    dx, dw, db = bwd(g, x, mean, rstd, w)
    assert_close(dx, _n(tdx, dtype), dtype)
    assert_close(dw, None if w is None else _n(tdw, dtype), dtype)
    assert_close(db, _n(tdb, dtype), dtype)


# ------------------------------------------------------------------------------ finite differences

@pytest.mark.parametrize("affine", AFFINE)
@given(shape=st.tuples(st.integers(1, 3), st.integers(2, 5)), seed=st.integers(0, 2**31))
def test_layer_norm_backward_matches_finite_differences(affine, shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    w, b = affine_params(rng, shape[1], np.float64, *affine)
    _, mean, rstd = K.layer_norm_forward(x, w, b, 1e-5)
    dx, dw, db = K.layer_norm_backward(g, x, mean, rstd, w)
    loss = lambda x_, w_, b_: np.sum(g * K.layer_norm_forward(x_, w_, b_, 1e-5)[0])  # noqa: E731
    np.testing.assert_allclose(dx, numerical_grad(lambda z: loss(z, w, b), x), atol=1e-7)
    if w is not None:
        np.testing.assert_allclose(dw, numerical_grad(lambda z: loss(x, z, b), w), atol=1e-7)
    bias = np.zeros(shape[1]) if b is None else b      # db is d/d(bias) whether or not used
    np.testing.assert_allclose(db, numerical_grad(lambda z: loss(x, w, z), bias), atol=1e-7)


@pytest.mark.parametrize("affine", AFFINE)
@given(shape=st.tuples(st.integers(2, 3), st.integers(1, 3), st.sampled_from([1, 2])),
       seed=st.integers(0, 2**31))
def test_batch_norm_backward_matches_finite_differences(affine, shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    w, b = affine_params(rng, shape[1], np.float64, *affine)
    _, mean, _, rstd = K.batch_norm_forward(x, w, b, 1e-5)
    dx, dw, db = K.batch_norm_backward(g, x, mean, rstd, w)
    loss = lambda x_, w_, b_: np.sum(g * K.batch_norm_forward(x_, w_, b_, 1e-5)[0])  # noqa: E731
    np.testing.assert_allclose(dx, numerical_grad(lambda z: loss(z, w, b), x), atol=1e-7)
    if w is not None:
        np.testing.assert_allclose(dw, numerical_grad(lambda z: loss(x, z, b), w), atol=1e-7)
    bias = np.zeros(shape[1]) if b is None else b
    np.testing.assert_allclose(db, numerical_grad(lambda z: loss(x, w, z), bias), atol=1e-7)


@needs_ext
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 40)), dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31))
def test_l2_normalize_matches_reference(shape, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, layout, loc=rng.normal(0, 2), scale=rng.uniform(0.1, 3))
    g = make_array(rng, shape, dtype, layout)
    (y, norm), (ry, rnorm) = K.l2_normalize_forward(x), K.l2_normalize_forward_ref(x)
    assert y.dtype == x.dtype and norm.dtype == np.float64
    assert_close(y, ry, dtype)
    assert_close(norm, rnorm, np.float64)
    assert_close(K.l2_normalize_backward(g, y, norm), K.l2_normalize_backward_ref(g, y, norm),
                 dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_normalize_clamped_and_nan_rows(dtype):
    """A zero row and a row below eps are divided by eps and get the gradient g / eps; a NaN
    row stays NaN (NumPy's maximum keeps a NaN norm); the others are unit rows."""
    x = np.array([[0, 0, 0], [3, 4, 0], [np.nan, 1, 0], [1e-13, 0, 0]], dtype)
    g = np.array([[1, 2, 3], [1, 0, -1], [1, 1, 1], [2, 0, 1]], dtype)
    eps = 1e-12
    (y, norm), (ry, rnorm) = K.l2_normalize_forward(x, eps), K.l2_normalize_forward_ref(x, eps)
    np.testing.assert_array_equal(norm, rnorm)
    assert norm[0] == norm[3] == eps and norm[1] == 5 and np.isnan(norm[2])
    np.testing.assert_allclose(y, ry, rtol=1e-6)
    dx = K.l2_normalize_backward(g, y, norm, eps)
    np.testing.assert_allclose(dx, K.l2_normalize_backward_ref(g, y, norm, eps), rtol=1e-6)
    np.testing.assert_allclose(dx[[0, 3]], g[[0, 3]] / dtype(eps), rtol=1e-6)
    assert np.isnan(dx[2]).all() and np.isfinite(dx[[0, 1, 3]]).all()


def test_l2_normalize_rejects_mismatched_arguments():
    y = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="l2_normalize_backward.*grad_y"):
        K.l2_normalize_backward(np.ones((3, 5), np.float32), y, np.ones(3))
    with pytest.raises(ValueError, match="l2_normalize_backward.*norm"):
        K.l2_normalize_backward(y, y, np.ones(4))
    with pytest.raises((TypeError, ValueError), match="l2_normalize_forward"):
        K.l2_normalize_forward(np.ones(3, np.float32))


# -------------------------------------------------------------------------- statistics, edge cases

@pytest.mark.parametrize("dtype", DTYPES)
def test_statistics_are_accurate_far_from_zero(dtype):
    """|mean| >> std: the two-pass double-precision variance keeps its digits (a float32
    E[x^2] - E[x]^2 would return garbage, even a negative variance)."""
    rng = np.random.default_rng(3)
    x = (1e4 + 0.01 * rng.standard_normal((4, 3000))).astype(dtype)
    exact = x.astype(np.float64)
    _, mean, rstd = K.layer_norm_forward(x, None, None, 0.0)
    np.testing.assert_allclose(mean, exact.mean(1), rtol=1e-7)
    np.testing.assert_allclose(rstd, 1 / exact.std(1), rtol=1e-6)
    _, mean, var, _ = K.batch_norm_forward(x.T[:, :, None].copy(), None, None, 0.0)
    np.testing.assert_allclose(mean, exact.mean(1), rtol=1e-7)
    np.testing.assert_allclose(var, exact.var(1), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_statistics_merge_blocks_of_images_exactly(dtype):
    """(N, C, L) with L > 1: each block of images gets its own mean and squared deviations,
    merged block by block (Chan et al.); with a ragged last block and block means far apart,
    a merge that weighed a block wrongly or dropped the spread between the blocks' means
    would be off by far more than these tolerances, as would E[x^2] - E[x]^2 at 1e4."""
    rng = np.random.default_rng(5)
    x = 1e4 + 0.01 * rng.standard_normal((11, 3, 50)) + 3.0 * np.arange(11)[:, None, None]
    x = x.astype(dtype)
    exact = x.astype(np.float64).transpose(1, 0, 2).reshape(3, -1)
    _, mean, var, _ = K.batch_norm_forward(x, None, None, 0.0)
    np.testing.assert_allclose(mean, exact.mean(1), rtol=1e-7)
    np.testing.assert_allclose(var, exact.var(1), rtol=1e-6)


def test_hand_computed_values():
    x = np.array([[1.0, 2.0, 3.0, 6.0]])                 # mean 3, biased var 3.5
    y, mean, rstd = K.layer_norm_forward(x, np.full(4, 2.0), np.full(4, 1.0), 0.0)
    np.testing.assert_allclose(mean, [3.0])
    np.testing.assert_allclose(rstd, [1 / np.sqrt(3.5)])
    np.testing.assert_allclose(y, 2 * (x - 3) / np.sqrt(3.5) + 1)
    x3 = np.array([[[1.0], [10.0]], [[3.0], [30.0]]])     # channels (1, 3) and (10, 30)
    y, mean, var, rstd = K.batch_norm_forward(x3, None, None, 0.0)
    np.testing.assert_allclose(mean, [2.0, 20.0])
    np.testing.assert_allclose(var, [1.0, 100.0])
    np.testing.assert_allclose(y[:, :, 0], [[-1.0, -1.0], [1.0, 1.0]])


def test_statistics_keep_the_input_dtype():
    x = np.ones((3, 4), np.float32)
    assert all(a.dtype == np.float32 for a in K.layer_norm_forward(x))
    assert all(a.dtype == np.float32 for a in K.batch_norm_forward(x[:, :, None]))


def test_size_zero():
    for shape in [(0, 4), (3, 0)]:
        x = np.zeros(shape, np.float32)
        y, mean, rstd = K.layer_norm_forward(x, None, None, 1e-5)
        assert y.shape == shape and mean.shape == rstd.shape == (shape[0],)
        dx, dw, db = K.layer_norm_backward(x, x, mean, rstd, np.ones(shape[1], np.float32))
        assert dx.shape == shape and dw.shape == db.shape == (shape[1],)
        assert (dw == 0).all() and (db == 0).all()
    x = np.zeros((2, 0, 3), np.float32)
    y, mean, var, rstd = K.batch_norm_forward(x, None, None, 1e-5)
    assert y.shape == (2, 0, 3) and mean.shape == var.shape == rstd.shape == (0,)
    dx, dw, db = K.batch_norm_backward(x, x, mean, rstd, None)
    assert dx.shape == (2, 0, 3) and dw is None and db.shape == (0,)
    for shape in [(0, 3, 4), (2, 3, 0)]:
        with pytest.raises(ValueError, match="batch_norm_forward.*at least one value"):
            K.batch_norm_forward(np.zeros(shape, np.float32))


def test_on_device(device):
    from minissl.backend import to_device
    rng = np.random.default_rng(0)
    x, g, w = rng.standard_normal((4, 6)), rng.standard_normal((4, 6)), rng.standard_normal(6)
    out = K.layer_norm_forward(*(to_device(a, device) for a in (x, w, w)))
    for a, r in zip(out, K.layer_norm_forward_ref(x, w, w)):
        assert_close(to_device(a, "cpu"), r, np.float64)
    grads = K.layer_norm_backward(*(to_device(a, device) for a in (g, x, out[1], out[2], w)))
    for a, r in zip(grads, K.layer_norm_backward_ref(g, x, *K.layer_norm_forward_ref(x, w, w)[1:],
                                                     w)):
        assert_close(to_device(a, "cpu"), r, np.float64)
    x3 = x.reshape(2, 3, 4)
    out = K.batch_norm_forward(to_device(x3, device), None, None)
    for a, r in zip(out, K.batch_norm_forward_ref(x3)):
        assert_close(to_device(a, "cpu"), r, np.float64)


# -------------------------------------------------------------------------------------- validation

X2, X3, V4 = np.zeros((2, 4)), np.zeros((2, 3, 5)), np.ones(4)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: K.layer_norm_forward(np.zeros(4)), ValueError, ["layer_norm_forward", "(4,)"]),
    (lambda: K.layer_norm_forward(X2, np.ones(3)), ValueError,
     ["layer_norm_forward", "weight", "(4,)", "(3,)"]),
    (lambda: K.layer_norm_forward(X2, None, np.ones(4, np.float32)), TypeError,
     ["layer_norm_forward", "bias", "float32"]),
    (lambda: K.layer_norm_forward(X2.astype(np.int32)), TypeError, ["layer_norm_forward", "int32"]),
    (lambda: K.layer_norm_backward(np.zeros((2, 5)), X2, np.zeros(2), np.ones(2)), ValueError,
     ["layer_norm_backward", "(2, 5)", "(2, 4)"]),
    (lambda: K.layer_norm_backward(X2, X2, np.zeros(3), np.ones(2)), ValueError,
     ["layer_norm_backward", "mean", "(3,)"]),
    (lambda: K.layer_norm_backward(X2, X2, None, None), TypeError, ["layer_norm_backward"]),
    (lambda: K.batch_norm_forward(X2), ValueError, ["batch_norm_forward", "3-D", "(2, 4)"]),
    (lambda: K.batch_norm_forward(X3, V4), ValueError, ["batch_norm_forward", "(3,)", "(4,)"]),
    (lambda: K.batch_norm_backward(X3, X3, np.zeros(3), np.ones(3), V4), ValueError,
     ["batch_norm_backward", "weight", "(4,)"]),
    (lambda: K.batch_norm_backward(X3.astype(np.float32), X3, np.zeros(3), np.ones(3)),
     TypeError, ["batch_norm_backward", "float32", "float64"]),
])
def test_bad_input_raises_with_the_function_name(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# --------------------------------------------------------------- CUDA kernels vs the reference
# Through the public functions on device arrays: the CUDA source run by the emulator
# (tests/support/cuda_emulator.py), or on a GPU (the ``runner`` fixture, conftest.py).

@given(shape=st.tuples(st.integers(1, 12), st.integers(1, 40)), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31), affine=st.booleans(), offset=st.sampled_from([0.0, 1e3]))
def test_cuda_layer_norm_matches_reference(runner, shape, dtype, seed, affine, offset):
    rng = np.random.default_rng(seed)
    x = layouts(rng, shape, dtype) + dtype(offset)   # |mean| >> std: the two-pass variance
    g = layouts(rng, shape, dtype)
    w = rng.standard_normal(shape[1]).astype(dtype) if affine else None
    b = rng.standard_normal(shape[1]).astype(dtype) if affine else None
    y_ref, mean_ref, rstd_ref = layer_norm_forward_ref(x, w, b)
    with runner as r:
        y, mean, rstd = (r.host(a) for a in K.layer_norm_forward(r.dev(x), r.dev(w), r.dev(b)))
        dx, dw, db = (r.host(a) for a in K.layer_norm_backward(
            r.dev(g), r.dev(x), r.dev(mean_ref), r.dev(rstd_ref), r.dev(w)))
    tol = dict(rtol32=1e-5, atol32=1e-5 * max(1.0, offset / 10))
    close(y, y_ref, dtype, **tol)
    close(mean, mean_ref, dtype)
    close(rstd, rstd_ref, dtype, **tol)
    dx_ref, dw_ref, db_ref = layer_norm_backward_ref(g, x, mean_ref, rstd_ref, w)
    close(dx, dx_ref, dtype, rtol32=1e-4, atol32=1e-4)
    close(db, db_ref, dtype, rtol32=1e-5, atol32=1e-5)
    assert (dw is None) == (w is None)
    if w is not None:
        close(dw, dw_ref, dtype, rtol32=1e-4, atol32=1e-4)


@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 30)),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31), affine=st.booleans(),
       offset=st.sampled_from([0.0, 1e3]))
def test_cuda_batch_norm_matches_reference(runner, shape, dtype, seed, affine, offset):
    rng = np.random.default_rng(seed)
    x = layouts(rng, shape, dtype) + dtype(offset)
    g = layouts(rng, shape, dtype)
    c = shape[1]
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    y_ref, mean_ref, var_ref, rstd_ref = batch_norm_forward_ref(x, w, b)
    with runner as r:
        y, mean, var, rstd = (r.host(a) for a in K.batch_norm_forward(r.dev(x), r.dev(w),
                                                                      r.dev(b)))
        dx, dw, db = (r.host(a) for a in K.batch_norm_backward(
            r.dev(g), r.dev(x), r.dev(mean_ref), r.dev(rstd_ref), r.dev(w)))
    if shape[0] * shape[2] == 1:              # one value: var 0, rstd 1/sqrt(eps)
        tol = dict(rtol32=1e-5, atol32=1e-3)
    else:
        tol = dict(rtol32=1e-5, atol32=1e-5 * max(1.0, offset / 10))
    close(y, y_ref, dtype, **tol)
    close(mean, mean_ref, dtype)
    close(var, var_ref, dtype, rtol32=1e-5, atol32=1e-5)
    close(rstd, rstd_ref, dtype, **tol)
    dx_ref, dw_ref, db_ref = batch_norm_backward_ref(g, x, mean_ref, rstd_ref, w)
    close(dx, dx_ref, dtype, rtol32=1e-4, atol32=1e-4 * max(1.0, float(np.abs(dx_ref).max())))
    close(db, db_ref, dtype, rtol32=1e-5, atol32=1e-5)
    assert (dw is None) == (w is None)
    if w is not None:
        close(dw, dw_ref, dtype, rtol32=1e-4, atol32=1e-4)
