"""Softmax, log-softmax and fused cross-entropy kernels: the compiled kernels against the NumPy
reference, the reference against PyTorch, every backward against central finite differences,
extreme logits (1e4, -inf), ignore_index, input validation and dispatch."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl.kernels import softmax as K
from minissl.kernels._dispatch import load
from support.helpers import assert_close as _assert_close, make_array as _make_array
from support.helpers import numerical_grad
from minissl.kernels.softmax import cross_entropy_backward_ref, cross_entropy_forward_ref, log_softmax_backward_ref, log_softmax_forward_ref, softmax_backward_ref, softmax_forward_ref
from support.cuda_emulator import close, layouts

DTYPES = [np.float32, np.float64]
LAYOUTS = ["contiguous", "transposed", "sliced", "readonly"]
EXT = load("softmax")
needs_ext = pytest.mark.skipif(EXT is None, reason="Cython build missing or reference forced")


# ----------------------------------------------------------------------------------------- helpers

def make_array(rng, shape, dtype, layout="contiguous", scale=3.0):
    return _make_array(rng, shape, dtype, layout, scale=scale)


def assert_close(actual, expected, dtype, rtol32=2e-6, atol32=1e-6):
    _assert_close(actual, expected, dtype, rtol32, atol32, 1e-12, 1e-13)


def targets(rng, n, c, ignore_index=-100, p_ignore=0.25):
    t = rng.integers(0, max(c, 1), n)
    t[rng.random(n) < p_ignore] = ignore_index
    if c == 0:
        t[:] = ignore_index
    return t


shapes = st.tuples(st.integers(0, 7), st.integers(0, 40))


# --------------------------------------------------------------------------- compiled vs reference

@needs_ext
@given(shape=shapes, dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       seed=st.integers(0, 2**31))
def test_softmax_family_matches_reference(shape, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, layout)
    g = make_array(rng, shape, dtype, layout)
    y = K.softmax_forward(x)
    assert_close(y, K.softmax_forward_ref(x), dtype)
    y_log = K.log_softmax_forward(x)
    assert_close(y_log, K.log_softmax_forward_ref(x), dtype, atol32=4e-6)
    assert_close(K.softmax_backward(g, y), K.softmax_backward_ref(g, y), dtype)
    assert_close(K.log_softmax_backward(g, y_log), K.log_softmax_backward_ref(g, y_log), dtype,
                 atol32=4e-6)


@needs_ext
@given(shape=shapes, dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       scale=st.sampled_from([1.0, 0.125, 3.0]), causal=st.integers(0, 9),
       seed=st.integers(0, 2**31))
def test_scaled_causal_softmax_matches_reference(shape, dtype, layout, scale, causal, seed):
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, layout)
    g = make_array(rng, shape, dtype, layout)
    y = K.softmax_forward(x, scale, causal)
    assert_close(y, K.softmax_forward_ref(x, scale, causal), dtype)
    # The gradient's rounding error is scale times that of softmax's (g - sum g y cancels).
    assert_close(K.softmax_backward(g, y, scale, causal),
                 K.softmax_backward_ref(g, y, scale, causal), dtype, atol32=1e-6 * max(1, scale))


@pytest.mark.parametrize("fn", [K.softmax_forward, K.softmax_forward_ref])
def test_scaled_causal_softmax_is_masked_attention(fn):
    """The rows of (B, L, S) scores: softmax(scale s) with s_ij = -inf for j > i (PyTorch's
    ``is_causal``: top-left aligned), exactly 0 there; the gradient is scale times softmax's."""
    rng = np.random.default_rng(0)
    B, L, S, scale = 3, 4, 6, 0.35
    s = rng.standard_normal((B, L, S))
    masked = np.where(np.tri(L, S, dtype=bool), s * scale, -np.inf).reshape(B * L, S)
    y = fn(s.reshape(B * L, S), scale, L)
    np.testing.assert_allclose(y, K.softmax_forward_ref(masked), rtol=1e-12)
    assert (y.reshape(B, L, S)[:, ~np.tri(L, S, dtype=bool)] == 0).all()
    g = rng.standard_normal((B * L, S))
    back = K.softmax_backward if fn is K.softmax_forward else K.softmax_backward_ref
    np.testing.assert_allclose(back(g, y, scale, L), scale * K.softmax_backward_ref(g, y),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kwargs, words", [
    (dict(scale=0.0), "scale must be finite and > 0"), (dict(scale=-1.0), "scale"),
    (dict(scale=np.inf), "scale"), (dict(causal=-1), "causal must be an int >= 0"),
    (dict(causal=2.5), "causal"), (dict(causal=True), "causal")])
def test_scaled_causal_softmax_rejects_bad_options(kwargs, words):
    for fn in (lambda: K.softmax_forward(np.zeros((2, 3)), **kwargs),
               lambda: K.softmax_backward(np.zeros((2, 3)), np.zeros((2, 3)), **kwargs)):
        with pytest.raises(ValueError, match=words):
            fn()


@needs_ext
@given(shape=shapes, dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       ignore_index=st.sampled_from([-100, 0, 3]), seed=st.integers(0, 2**31))
def test_cross_entropy_matches_reference(shape, dtype, layout, ignore_index, seed):
    rng = np.random.default_rng(seed)
    n, c = shape
    x = make_array(rng, shape, dtype, layout)
    t = targets(rng, n, c, ignore_index)
    loss, lse = K.cross_entropy_forward(x, t, ignore_index)
    loss_r, lse_r = K.cross_entropy_forward_ref(x, t, ignore_index)
    assert_close(loss, loss_r, dtype, atol32=4e-6)
    assert lse.dtype == np.float64 and lse.shape == (n,)
    # float32 exponentials (2 ulp) summed in double: lse to ~1e-7 absolute
    np.testing.assert_allclose(lse, lse_r, rtol=1e-12, atol=1e-12 if dtype == np.float64 else 1e-6)
    g = make_array(rng, (n,), dtype)
    assert_close(K.cross_entropy_backward(g, x, t, lse, ignore_index),
                 K.cross_entropy_backward_ref(g, x, t, lse_r, ignore_index), dtype)


@needs_ext
def test_dispatch_uses_the_compiled_kernel(monkeypatch):
    """float32/float64 NumPy input goes through the Cython module; other floats through the
    reference (which keeps their dtype)."""
    calls = []
    monkeypatch.setattr(EXT, "softmax_forward",
                        lambda x, y, *options: calls.append(x.dtype) or y.fill(7))
    x = np.zeros((2, 3), np.float32)
    assert (K.softmax_forward(x) == 7).all() and calls == [np.float32]
    y16 = K.softmax_forward(np.zeros((2, 3), np.float16))
    assert y16.dtype == np.float16 and calls == [np.float32]
    np.testing.assert_allclose(y16, 1 / 3, rtol=1e-3)


@needs_ext
def test_compiled_entry_points_reject_what_the_wrappers_would_not_pass():
    """Called directly, the kernels check types, shapes, contiguity and targets: an error,
    never a read outside an array."""
    x = np.zeros((2, 3))
    for args in [(x, np.zeros((3, 2))), (x, np.zeros((2, 3), np.float32)), (x.T, x.T.copy()),
                 ([[0.0]], x)]:
        with pytest.raises((TypeError, ValueError), match="minissl.kernels.softmax._cpu"):
            EXT.softmax_forward(*args)
    with pytest.raises(ValueError, match="target 5 out of range"):
        EXT.cross_entropy_forward(x, np.array([0, 5]), -100, np.zeros(2), np.zeros(2))
    ro = np.zeros((2, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="minissl.kernels.softmax._cpu"):
        EXT.softmax_forward(x, ro)


def test_results_do_not_depend_on_the_thread_count_or_the_run():
    """Large enough to run in parallel: the same bits every time (static row partition)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 257)).astype(np.float32)
    t = rng.integers(0, 257, 300)
    a = K.cross_entropy_forward(x, t)
    b = K.cross_entropy_forward(x, t)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(K.softmax_forward(x), K.softmax_forward(x.copy()))


# --------------------------------------------------------------------------------- against PyTorch

@pytest.fixture(scope="module")
def torch():
    """PyTorch on one thread: its backward kernels would otherwise wake a second thread for
    every tiny tensor, which on a busy 2-core machine costs milliseconds each."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.mark.torch
@pytest.mark.parametrize("impl", ["public", "ref"])
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 30)), dtype=st.sampled_from(DTYPES),
       ignore_index=st.sampled_from([-100, 1]), seed=st.integers(0, 2**31))
def test_matches_torch(torch, impl, shape, dtype, ignore_index, seed):
    """Forward against torch's functions, backward against torch's own backward kernels
    (called directly: the autograd engine adds nothing to check here)."""
    aten = torch.ops.aten
    f = {name: getattr(K, name + ("_ref" if impl == "ref" else "")) for name in [
        "softmax_forward", "log_softmax_forward", "softmax_backward", "log_softmax_backward",
        "cross_entropy_forward", "cross_entropy_backward"]}
    rng = np.random.default_rng(seed)
    n, c = shape
    x = make_array(rng, shape, dtype)
    g = make_array(rng, shape, dtype)
    t = targets(rng, n, c, ignore_index)
    gl = make_array(rng, (n,), dtype)
    tx, tg, tt, tgl = (torch.from_numpy(a) for a in (x, g, t, gl))

    ty = torch.softmax(tx, dim=1)
    y = f["softmax_forward"](x)
    assert_close(y, ty.numpy(), dtype)
    # g - sum(g y) cancels: torch's float32 sum in another order moves it by ~1e-6 (seed 227).
    assert_close(f["softmax_backward"](g, y),
                 aten._softmax_backward_data(tg, ty, 1, tx.dtype).numpy(), dtype, atol32=4e-6)

    ty = torch.log_softmax(tx, dim=1)
    y = f["log_softmax_forward"](x)
    assert_close(y, ty.numpy(), dtype, atol32=4e-6)
    assert_close(f["log_softmax_backward"](g, y),
                 aten._log_softmax_backward_data(tg, ty, 1, tx.dtype).numpy(), dtype,
                 atol32=4e-6)

    # cross_entropy(reduction="none") is nll_loss(log_softmax(x)); so is its backward
    tl = torch.nn.functional.cross_entropy(tx, tt, reduction="none", ignore_index=ignore_index)
    g_log = aten.nll_loss_backward(tgl, ty, tt, None, 0, ignore_index, torch.tensor(0.0))
    tdx = aten._log_softmax_backward_data(g_log, ty, 1, tx.dtype)
    loss, lse = f["cross_entropy_forward"](x, t, ignore_index)
    assert_close(loss, tl.numpy(), dtype, atol32=4e-6)
    np.testing.assert_allclose(lse, torch.logsumexp(tx.double(), 1).numpy(), rtol=1e-12,
                               atol=1e-12 if dtype == np.float64 else 1e-6)
    assert_close(f["cross_entropy_backward"](gl, x, t, lse, ignore_index), tdx.numpy(), dtype)


# ------------------------------------------------------------------------------ finite differences

@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 5)), seed=st.integers(0, 2**31))
def test_backward_matches_finite_differences(shape, seed):
    rng = np.random.default_rng(seed)
    n, c = shape
    x = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    gl = rng.standard_normal(n)
    t = targets(rng, n, c, ignore_index=-1, p_ignore=0.3)

    num = numerical_grad(lambda z: np.sum(g * K.softmax_forward(z)), x)
    np.testing.assert_allclose(K.softmax_backward(g, K.softmax_forward(x)), num, atol=1e-8)
    num = numerical_grad(lambda z: np.sum(g * K.log_softmax_forward(z)), x)
    np.testing.assert_allclose(K.log_softmax_backward(g, K.log_softmax_forward(x)), num,
                               atol=1e-8)
    num = numerical_grad(lambda z: np.sum(gl * K.cross_entropy_forward(z, t, -1)[0]), x)
    _, lse = K.cross_entropy_forward(x, t, -1)
    np.testing.assert_allclose(K.cross_entropy_backward(gl, x, t, lse, -1), num, atol=1e-8)


# --------------------------------------------------------------------------- values and edge cases

def test_hand_computed_values():
    x = np.array([[0.0, np.log(3.0)], [1.0, 1.0]])
    np.testing.assert_allclose(K.softmax_forward(x), [[0.25, 0.75], [0.5, 0.5]], rtol=1e-15)
    loss, lse = K.cross_entropy_forward(x, np.array([0, 1]))
    np.testing.assert_allclose(lse, [np.log(4.0), 1 + np.log(2.0)], rtol=1e-15)
    np.testing.assert_allclose(loss, [np.log(4.0), np.log(2.0)], rtol=1e-15)
    grad = K.cross_entropy_backward(np.array([1.0, 2.0]), x, np.array([0, 1]), lse)
    np.testing.assert_allclose(grad, [[-0.75, 0.75], [1.0, -1.0]], rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e4, -1e4, 3e38])
def test_huge_logits_stay_finite(dtype, scale):
    """Logits of 1e4 overflow a naive exp; the max shift keeps every exponent <= 0."""
    big = np.float32(scale) if dtype == np.float32 else scale
    x = np.array([[big, 0.0, big / 2], [0.0, big, big]], dtype=dtype)
    t = np.array([0, 2])
    y = K.softmax_forward(x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)
    loss, lse = K.cross_entropy_forward(x, t)
    grad = K.cross_entropy_backward(np.ones(2, dtype), x, t, lse)
    y_log = K.log_softmax_forward(x)
    for a in (loss, lse, grad, y_log, K.log_softmax_backward(np.ones_like(x), y_log)):
        assert np.isfinite(a).all()
    if scale == 1e4:
        np.testing.assert_allclose(loss, [0.0, np.log(2.0)], atol=1e-6)
        # softmax - onehot, accurate to float32 rounding although lse is ~1e4
        np.testing.assert_allclose(grad[1], [0.0, 0.5, -0.5], atol=1e-7)
    if scale == -1e4:
        np.testing.assert_allclose(loss, [1e4, 1e4], rtol=1e-7)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_kernels_flush_subnormal_results_to_zero(dtype):
    """Probabilities below the smallest normal number come out as 0, never subnormal: a
    subnormal costs ~100 cycles in every later multiply (a causal attention row is half
    masked), and an absolute error below 1.2e-38 (2.2e-308 in float64) changes no sum."""
    deep = -100.0 if dtype == np.float32 else -720.0      # exp(deep) is subnormal
    x = np.array([[0.0, deep, -np.inf, deep / 2, -20.0]] * 3, dtype)
    t = np.array([0, 1, 3])
    loss, lse = K.cross_entropy_forward(x, t)
    for out in (K.softmax_forward(x), K.softmax_backward(np.ones_like(x), K.softmax_forward(x)),
                K.cross_entropy_backward(np.ones(3, dtype), x, t, lse)):
        small = np.abs(out[out != 0])
        assert (small >= np.finfo(dtype).tiny).all(), out
    np.testing.assert_allclose(K.softmax_forward(x), K.softmax_forward_ref(x), rtol=1e-6,
                               atol=np.finfo(dtype).tiny)


@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_entries(dtype):
    """A masked diagonal: exp(-inf) = 0 and no NaN while a row has a finite entry."""
    x = np.array([[-np.inf, 1.0, 2.0], [0.5, -np.inf, -np.inf], [3.0, 1.0, -np.inf]], dtype)
    t = np.array([2, 0, 1])
    y = K.softmax_forward(x)
    assert np.isfinite(y).all() and (y[np.isinf(x)] == 0).all()
    np.testing.assert_allclose(y[1], [1, 0, 0])
    y_log = K.log_softmax_forward(x)
    assert (y_log[np.isinf(x)] == -np.inf).all() and np.isfinite(y_log[np.isfinite(x)]).all()
    assert np.isfinite(K.softmax_backward(np.ones_like(x), y)).all()
    assert np.isfinite(K.log_softmax_backward(np.ones_like(x), y_log)).all()
    loss, lse = K.cross_entropy_forward(x, t)
    assert np.isfinite(loss).all() and np.isfinite(lse).all()
    grad = K.cross_entropy_backward(np.ones(3, dtype), x, t, lse)
    assert np.isfinite(grad).all() and (grad[np.isinf(x)] == 0).all()
    np.testing.assert_allclose(loss, K.cross_entropy_forward_ref(x, t)[0], rtol=1e-6)


def test_ignored_rows_have_zero_loss_and_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    t = np.array([1, -100, 4, -100])
    loss, lse = K.cross_entropy_forward(x, t)
    assert loss[1] == 0 and loss[3] == 0 and (loss[[0, 2]] > 0).all()
    grad = K.cross_entropy_backward(np.ones(4, np.float32), x, t, lse)
    assert (grad[[1, 3]] == 0).all() and (grad[[0, 2]] != 0).all()
    # an ignore_index inside [0, C) ignores that class
    loss, _ = K.cross_entropy_forward(x, np.array([0, 1, 2, 0]), ignore_index=0)
    assert loss[0] == 0 and loss[3] == 0 and (loss[[1, 2]] > 0).all()


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
def test_size_zero(shape):
    x = np.zeros(shape, np.float32)
    for f in (K.softmax_forward, K.log_softmax_forward):
        assert f(x).shape == shape and f(x).dtype == np.float32
    assert K.softmax_backward(x, x).shape == shape
    assert K.log_softmax_backward(x, x).shape == shape
    t = np.full(shape[0], -100)
    loss, lse = K.cross_entropy_forward(x, t)
    assert loss.shape == (shape[0],) and (loss == 0).all() and lse.dtype == np.float64
    grad = K.cross_entropy_backward(np.ones(shape[0], np.float32), x, t, lse)
    assert grad.shape == shape and grad.dtype == np.float32


def test_on_device(device):
    """The public functions on the device's arrays agree with the reference on the host."""
    from minissl.backend import to_device, xp_for
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7))
    t = np.array([0, 6, -100, 3, 2])
    xd, td = to_device(x, device), to_device(t, device)
    assert_close(to_device(K.softmax_forward(xd), "cpu"), K.softmax_forward_ref(x), np.float64)
    loss, lse = K.cross_entropy_forward(xd, td)
    assert_close(to_device(loss, "cpu"), K.cross_entropy_forward_ref(x, t)[0], np.float64)
    grad = K.cross_entropy_backward(xp_for(device).ones(5), xd, td, lse)
    lse_ref = K.cross_entropy_forward_ref(x, t)[1]
    assert_close(to_device(grad, "cpu"), K.cross_entropy_backward_ref(np.ones(5), x, t, lse_ref),
                 np.float64)


# -------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("call, exc, words", [
    (lambda: K.softmax_forward(np.zeros(3)), ValueError, ["softmax_forward", "(3,)"]),
    (lambda: K.log_softmax_forward(np.zeros((2, 2), np.int64)), TypeError,
     ["log_softmax_forward", "int64"]),
    (lambda: K.softmax_backward(np.zeros((2, 3)), np.zeros((3, 2))), ValueError,
     ["softmax_backward", "(2, 3)", "(3, 2)"]),
    (lambda: K.log_softmax_backward(np.zeros((2, 3), np.float32), np.zeros((2, 3))), TypeError,
     ["log_softmax_backward", "float32", "float64"]),
    (lambda: K.cross_entropy_forward(np.zeros((2, 3)), np.array([0, 3])), ValueError,
     ["cross_entropy_forward", "target[1] = 3", "(2, 3)"]),
    (lambda: K.cross_entropy_forward(np.zeros((2, 3)), np.array([-1, 0])), ValueError,
     ["cross_entropy_forward", "target[0] = -1"]),
    (lambda: K.cross_entropy_forward(np.zeros((2, 3)), np.array([0, 1, 2])), ValueError,
     ["cross_entropy_forward", "(2,)", "(3,)"]),
    (lambda: K.cross_entropy_forward(np.zeros((2, 3)), np.array([0.0, 1.0])), TypeError,
     ["cross_entropy_forward", "integer"]),
    (lambda: K.cross_entropy_backward(np.ones(3), np.zeros((2, 3)), np.array([0, 1]),
                                      np.zeros(2)), ValueError,
     ["cross_entropy_backward", "(2,)", "(3,)"]),
    (lambda: K.cross_entropy_backward(np.ones(2), np.zeros((2, 3)), np.array([0, 7]),
                                      np.zeros(2)), ValueError,
     ["cross_entropy_backward", "target[1] = 7"]),
    (lambda: K.cross_entropy_backward(np.ones(2, np.float32), np.zeros((2, 3)), np.array([0, 1]),
                                      np.zeros(2)), TypeError,
     ["cross_entropy_backward", "grad_loss", "float32"]),
    (lambda: K.softmax_forward([[1.0, 2.0]]), TypeError, ["softmax_forward", "list"]),
])
def test_bad_input_raises_with_the_function_name(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# --------------------------------------------------------------- CUDA kernels vs the reference
# Through the public functions on device arrays: the CUDA source run by the emulator
# (tests/support/cuda_emulator.py), or on a GPU (the ``runner`` fixture, conftest.py).

rows = st.tuples(st.integers(1, 9), st.integers(1, 70))


@given(shape=rows, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1.0, 30.0, 1e4]))
def test_cuda_softmax_family_matches_reference(runner, shape, dtype, seed, scale):
    rng = np.random.default_rng(seed)
    x = layouts(rng, shape, dtype, scale)
    if shape[1] > 2:
        x[0, 1] = -np.inf                     # a masked entry (self-similarity in NT-Xent)
    g = layouts(rng, shape, dtype)
    y_ref, ylog_ref = softmax_forward_ref(x), log_softmax_forward_ref(x)
    with runner as r:
        y = r.host(K.softmax_forward(r.dev(x)))
        ylog = r.host(K.log_softmax_forward(r.dev(x)))
        dy = r.host(K.softmax_backward(r.dev(g), r.dev(y_ref)))
        dylog = r.host(K.log_softmax_backward(r.dev(g), r.dev(ylog_ref)))
    close(y, y_ref, dtype)
    close(ylog, ylog_ref, dtype, atol32=2e-5 * max(1.0, scale / 100))
    close(dy, softmax_backward_ref(g, y_ref), dtype, atol32=1e-5)
    close(dylog, log_softmax_backward_ref(g, ylog_ref), dtype, atol32=1e-5)


@given(shape=rows, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1.0, 0.25, 4.0]), causal=st.integers(0, 5))
def test_cuda_scaled_causal_softmax_matches_reference(runner, shape, dtype, seed, scale, causal):
    rng = np.random.default_rng(seed)
    x = layouts(rng, shape, dtype)
    g = layouts(rng, shape, dtype)
    y_ref = softmax_forward_ref(x, scale, causal)
    with runner as r:
        y = r.host(K.softmax_forward(r.dev(x), scale, causal))
        dy = r.host(K.softmax_backward(r.dev(g), r.dev(y_ref), scale, causal))
    close(y, y_ref, dtype)
    close(dy, softmax_backward_ref(g, y_ref, scale, causal), dtype, atol32=1e-5 * max(1, scale))


@given(shape=rows, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1.0, 1e4]), ignore_index=st.sampled_from([-100, 0, 3]))
def test_cuda_cross_entropy_matches_reference(runner, shape, dtype, seed, scale, ignore_index):
    n, c = shape
    rng = np.random.default_rng(seed)
    x = layouts(rng, shape, dtype, scale)
    t = rng.integers(0, c, n)
    t[rng.random(n) < 0.3] = ignore_index
    g = rng.standard_normal(n).astype(dtype)
    loss_ref, lse_ref = cross_entropy_forward_ref(x, t, ignore_index)
    with runner as r:
        loss, lse = K.cross_entropy_forward(r.dev(x), r.dev(t), ignore_index)
        loss, lse = r.host(loss), r.host(lse)
        grad = r.host(K.cross_entropy_backward(r.dev(g), r.dev(x), r.dev(t), r.dev(lse_ref),
                                               ignore_index))
    assert lse.dtype == np.float64
    np.testing.assert_allclose(lse, lse_ref, rtol=1e-12 if dtype == np.float64 else 1e-6)
    close(loss, loss_ref, dtype, rtol32=2e-5, atol32=2e-5 * max(1.0, scale / 1e3))
    close(grad, cross_entropy_backward_ref(g, x, t, lse_ref, ignore_index), dtype, atol32=1e-6)


def test_cuda_cross_entropy_bad_target_gives_nan_not_a_crash(runner):
    """The GPU cannot raise on a target value without a device-to-host copy: a target outside
    [0, C) that is not ignore_index marks its row with NaN instead (documented). The launchers
    are called directly: this is about the kernels, also under MINISSL_REFERENCE=1."""
    from minissl.kernels.softmax import cuda as launch
    x = np.zeros((3, 4), np.float32)
    t = np.array([1, 4, -1])                  # 4 and -1 are out of range, ignore_index=-100
    with runner as r:
        loss, lse = launch.cross_entropy_forward(r.dev(x), r.dev(t))
        grad = launch.cross_entropy_backward(r.dev(np.ones(3, np.float32)), r.dev(x), r.dev(t),
                                             lse)
        loss, grad = r.host(loss), r.host(grad)
    assert np.isfinite(loss[0]) and np.isnan(loss[1:]).all()
    assert np.isfinite(grad[0]).all() and np.isnan(grad[1:]).all()
