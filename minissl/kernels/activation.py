"""GELU, exact (erf) form, elementwise on an array of any shape.

Math (Hendrycks & Gimpel 2016, "Gaussian Error Linear Units"; ``torch.nn.functional.gelu``
with its default ``approximate="none"``):

    Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))          standard normal CDF
    phi(x) = exp(-x^2 / 2) / sqrt(2 pi)            standard normal density
    gelu(x) = x * Phi(x)
    d gelu / dx = Phi(x) + x * phi(x)              so  dx = g * (Phi(x) + x * phi(x))

Each public function validates its input and dispatches: the Cython kernels
(csrc/activation.pyx) for float32/float64 NumPy arrays, the ``*_ref`` NumPy reference
otherwise (it uses ``xp = get_array_module(x)`` and so also runs on CuPy arrays).

NumPy has no erf. The reference takes ``scipy.special.erf`` (``cupyx.scipy.special.erf`` on
the GPU) when SciPy is installed and otherwise applies the standard library's ``math.erf``
elementwise: exact, but slow, which only matters when the Cython build is also missing.
"""
import math

import numpy as np

from ..backend import get_array_module
from ._loader import compiled, gpu
# (module-private names, as minissl/kernels/cuda.py imports the checks from here)
from ._loader import check_float as _check_float, check_same as _check_same

__all__ = ["gelu_forward", "gelu_backward", "gelu_forward_ref", "gelu_backward_ref"]

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# NumPy reference: the specification
# --------------------------------------------------------------------------------------------

def _erf(x):
    """erf elementwise, in x's dtype."""
    xp = get_array_module(x)
    if xp is not np:
        from cupyx.scipy.special import erf
        return erf(x)
    try:
        from scipy.special import erf
    except ImportError:
        erf = np.frompyfunc(math.erf, 1, 1)
    return np.asarray(erf(x), dtype=x.dtype)


def _normal_cdf(x):
    """Phi(x) = 0.5 * (1 + erf(x / sqrt 2))."""
    return 0.5 * (1.0 + _erf(x * _SQRT1_2))


def gelu_forward_ref(x):
    """gelu(x) = x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt 2))."""
    with np.errstate(invalid="ignore"):                 # -inf * 0 = NaN, as in PyTorch
        return x * _normal_cdf(x)


def gelu_backward_ref(grad_y, x):
    """dx = g * (Phi(x) + x * phi(x)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    xp = get_array_module(x)
    with np.errstate(over="ignore", invalid="ignore"):  # x^2 = inf gives phi = 0; inf * 0
        pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)
        return grad_y * (_normal_cdf(x) + x * pdf)


# --------------------------------------------------------------------------------------------
# Validation and dispatch
# --------------------------------------------------------------------------------------------

def gelu_forward(x):
    """Exact GELU, 0.5 * x * (1 + erf(x / sqrt 2)), of an array of any shape."""
    if get_array_module(x) is not np:  # GPU: minissl/kernels/cuda.py
        return gpu("gelu_forward", gelu_forward_ref)(x)
    _check_float("gelu_forward", "x", x)
    ext = compiled("activation", x)
    if ext is None or x.size == 0:
        return gelu_forward_ref(x)
    y = np.empty(x.shape, dtype=x.dtype)                # (ascontiguousarray makes 0-d 1-d)
    ext.gelu_forward(np.ascontiguousarray(x).reshape(-1), y.reshape(-1))
    return y


def gelu_backward(grad_y, x):
    """Gradient of exact GELU: grad_y * (Phi(x) + x * phi(x)); both arrays of one shape."""
    if get_array_module(grad_y) is not np:  # GPU: minissl/kernels/cuda.py
        return gpu("gelu_backward", gelu_backward_ref)(grad_y, x)
    fn = "gelu_backward"
    _check_float(fn, "grad_y", grad_y)
    _check_float(fn, "x", x)
    _check_same(fn, ("grad_y", "x"), (grad_y, x))
    ext = compiled("activation", x)
    if ext is None or x.size == 0:
        return gelu_backward_ref(grad_y, x)
    dx = np.empty(x.shape, dtype=x.dtype)
    ext.gelu_backward(np.ascontiguousarray(grad_y).reshape(-1),
                      np.ascontiguousarray(x).reshape(-1), dx.reshape(-1))
    return dx
