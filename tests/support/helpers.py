"""Helpers shared by the kernel tests: inputs in every memory layout, one closeness check with
per-dtype tolerances, and central-difference gradients."""
import numpy as np

LAYOUTS = ["contiguous", "transposed", "sliced", "readonly", "fortran"]


def make_array(rng, shape, dtype, layout="contiguous", loc=0.0, scale=1.0):
    """Normal values (mean ``loc``, std ``scale``) of ``shape`` in a memory layout the kernels
    must accept: "contiguous"; "transposed" (a view with the axes reversed) and "sliced"
    (every other entry of the last axis of a wider array), which are not C-contiguous, so the
    public functions must copy them; "readonly" (C-contiguous, not writeable: the kernels read
    their inputs through const pointers); "fortran" (column-major)."""
    shape = tuple(shape)

    def normal(s):
        return (loc + scale * rng.standard_normal(s)).astype(dtype)
    if layout == "transposed":
        return normal(shape[::-1]).T
    if layout == "sliced":
        return normal(shape[:-1] + (2 * shape[-1],))[..., ::2]
    a = normal(shape)
    if layout == "readonly":
        a.flags.writeable = False
    return np.asfortranarray(a) if layout == "fortran" else a


def assert_close(actual, expected, dtype, rtol32=1e-5, atol32=1e-5, rtol64=1e-12,
                 atol64=1e-12, exact=False):
    """Same shape and dtype, and equal within the tolerances of ``dtype`` (or bit for bit,
    if ``exact``); None matches only None (an absent weight gradient)."""
    if expected is None:
        assert actual is None, type(actual)
        return
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    if exact:
        np.testing.assert_array_equal(actual, expected)
    elif np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=rtol64, atol=atol64)
    else:
        np.testing.assert_allclose(actual, expected, rtol=rtol32, atol=atol32)


def numerical_grad(f, x, eps=1e-6):
    """Central differences of the scalar function f at x (float64), one entry at a time."""
    x = x.astype(np.float64).copy()
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        fp = f(x)
        x[i] = old - eps
        fm = f(x)
        x[i] = old
        grad[i] = (fp - fm) / (2 * eps)
    return grad
