"""Exact GELU kernels: the compiled kernels against the NumPy reference, the reference against
the definition and PyTorch, the backward against central finite differences, extreme values,
any shape, and input validation."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl.kernels import activation as K
from minissl.kernels._dispatch import load
from support.helpers import assert_close as _assert_close, make_array as _make_array
from minissl.kernels.activation import gelu_backward_ref, gelu_forward_ref
from support.cuda_emulator import close

DTYPES = [np.float32, np.float64]
LAYOUTS = ["contiguous", "transposed", "sliced", "readonly"]
EXT = load("activation")
needs_ext = pytest.mark.skipif(EXT is None, reason="Cython build missing or reference forced")


def make_array(rng, shape, dtype, layout="contiguous", scale=3.0):
    return _make_array(rng, shape, dtype, layout, scale=scale)


def assert_close(actual, expected, dtype):
    """float32: the compiled kernel's documented accuracy (4e-7 absolute, 1.2e-6 relative
    down to x = -3, and a few ulps more deep in the left tail where gelu is tiny)."""
    _assert_close(actual, expected, dtype, 1e-5, 5e-7, 1e-13, 1e-15)


def gelu_by_definition(x):
    """x * Phi(x) with the standard library's erf, one element at a time, in float64."""
    values = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.ravel()]
    return np.array(values).reshape(x.shape)


shapes = st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple)
nonempty = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)


@needs_ext
@given(shape=nonempty, dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       seed=st.integers(0, 2**31))
def test_compiled_matches_reference(shape, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, layout)
    g = make_array(rng, shape, dtype, layout, scale=1.0)
    assert_close(K.gelu_forward(x), K.gelu_forward_ref(x), dtype)
    assert_close(K.gelu_backward(g, x), K.gelu_backward_ref(g, x), dtype)


@needs_ext
def test_compiled_float32_accuracy_over_the_whole_range():
    """Dense grid: the float32 kernel against the float64 definition, within its documented
    error (absolute 4e-7; relative 1.5e-7 for x >= 1)."""
    x = np.linspace(-12, 12, 200_001).astype(np.float32)
    exact = K.gelu_forward_ref(x.astype(np.float64))
    y = K.gelu_forward(x).astype(np.float64)
    assert np.abs(y - exact).max() < 4e-7
    right = x >= 1
    assert (np.abs(y - exact)[right] / exact[right]).max() < 1.5e-7
    dexact = K.gelu_backward_ref(np.ones_like(exact), x.astype(np.float64))
    assert np.abs(K.gelu_backward(np.ones_like(x), x) - dexact).max() < 4e-7


@needs_ext
def test_compiled_entry_points_reject_what_the_wrappers_would_not_pass():
    with pytest.raises(ValueError, match="minissl.kernels.activation._cpu"):
        EXT.gelu_forward(np.zeros(5), np.zeros(4))
    with pytest.raises(TypeError, match="minissl.kernels.activation._cpu"):
        EXT.gelu_forward(np.zeros(5, np.int64), np.zeros(5))
    with pytest.raises(ValueError, match="minissl.kernels.activation._cpu"):
        EXT.gelu_backward(np.zeros(5), np.zeros(10)[::2], np.zeros(5))


def test_reference_matches_the_definition():
    x = np.linspace(-9, 9, 301)
    np.testing.assert_allclose(K.gelu_forward_ref(x), gelu_by_definition(x), rtol=1e-14,
                               atol=1e-300)
    np.testing.assert_allclose(K.gelu_forward(x), gelu_by_definition(x), rtol=1e-14,
                               atol=1e-300)


@pytest.fixture(scope="module")
def torch():
    """PyTorch on one thread (see test_kernels_softmax.py)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.mark.torch
@pytest.mark.parametrize("impl", ["public", "ref"])
@given(shape=nonempty, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_matches_torch(torch, impl, shape, dtype, seed):
    """Against torch's exact (erf) GELU and its backward kernel. float32 tolerance: PyTorch's
    own float32 GELU is accurate to about 1.2e-6 absolute."""
    fwd = K.gelu_forward_ref if impl == "ref" else K.gelu_forward
    bwd = K.gelu_backward_ref if impl == "ref" else K.gelu_backward
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype)
    g = make_array(rng, shape, dtype, scale=1.0)
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(fwd(x), torch.nn.functional.gelu(tx).numpy(), **tol)
    np.testing.assert_allclose(bwd(g, x), torch.ops.aten.gelu_backward(tg, tx).numpy(), **tol)


@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple),
       seed=st.integers(0, 2**31))
def test_backward_matches_finite_differences(shape, seed):
    rng = np.random.default_rng(seed)
    x = 3 * rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    eps = 1e-6
    num = g * (K.gelu_forward(x + eps) - K.gelu_forward(x - eps)) / (2 * eps)   # elementwise
    np.testing.assert_allclose(K.gelu_backward(g, x), num, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_values(dtype):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30, 40.0, -40.0], dtype)
    y = K.gelu_forward(x)
    assert y[0] == np.inf and np.isnan(y[2]) and y[3] == 0 and y[5] == 1e30 * 1 and y[7] == 40
    assert y[6] == 0 and y[8] == 0 and np.signbit(y[4])
    d = K.gelu_backward(np.ones_like(x), x)
    np.testing.assert_array_equal(d[[5, 7]], [1, 1])
    np.testing.assert_array_equal(d[[6, 8]], [0, 0])
    assert d[3] == 0.5 and np.isnan(d[2])
    assert np.isnan(d[:2]).all()                         # inf * phi(inf) = inf * 0, as in PyTorch


@given(shape=shapes, dtype=st.sampled_from(DTYPES))
def test_any_shape_including_empty_and_scalar(shape, dtype):
    x = np.full(shape, 1.0, dtype)
    y = K.gelu_forward(x)
    assert y.shape == shape and y.dtype == dtype
    np.testing.assert_allclose(y, 0.8413447460685429, rtol=1e-6)
    d = K.gelu_backward(x, x)
    assert d.shape == shape and d.dtype == dtype


def test_zero_dim_array():
    y = K.gelu_forward(np.array(2.0, np.float32))
    assert y.shape == () and abs(float(y) - 1.9544997361036416) < 1e-6


def test_other_float_dtypes_use_the_reference():
    x = np.array([-1.0, 0.5, 2.0], np.float16)
    y = K.gelu_forward(x)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, K.gelu_forward_ref(x.astype(np.float64)), rtol=2e-3)


def test_on_device(device):
    from minissl.backend import to_device
    x = np.linspace(-4, 4, 33).reshape(3, 11)
    y = K.gelu_forward(to_device(x, device))
    assert_close(to_device(y, "cpu"), K.gelu_forward_ref(x), np.float64)
    d = K.gelu_backward(to_device(x, device), to_device(x, device))
    assert_close(to_device(d, "cpu"), K.gelu_backward_ref(x, x), np.float64)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: K.gelu_forward(np.arange(3)), TypeError, ["gelu_forward", "int64"]),
    (lambda: K.gelu_forward([1.0]), TypeError, ["gelu_forward", "list"]),
    (lambda: K.gelu_backward(np.zeros((2, 3)), np.zeros((3, 2))), ValueError,
     ["gelu_backward", "(2, 3)", "(3, 2)"]),
    (lambda: K.gelu_backward(np.zeros(3, np.float32), np.zeros(3)), TypeError,
     ["gelu_backward", "float32", "float64"]),
])
def test_bad_input_raises_with_the_function_name(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# --------------------------------------------------------------- CUDA kernels vs the reference
# Through the public functions on device arrays: the CUDA source run by the emulator
# (tests/support/cuda_emulator.py), or on a GPU (the ``runner`` fixture, conftest.py).

@given(shape=st.lists(st.integers(0, 7), min_size=0, max_size=3),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_cuda_gelu_matches_reference(runner, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    x = np.asarray(3 * rng.standard_normal(shape), dtype=dtype)    # 0-d stays an array
    g = np.asarray(rng.standard_normal(shape), dtype=dtype)
    with runner as r:
        y = r.host(K.gelu_forward(r.dev(x)))
        dx = r.host(K.gelu_backward(r.dev(g), r.dev(x)))
    close(np.asarray(y), np.asarray(gelu_forward_ref(x)), dtype, rtol32=1e-6, atol32=1e-6)
    close(np.asarray(dx), np.asarray(gelu_backward_ref(g, x)), dtype, rtol32=1e-6,
          atol32=1e-6)
