"""NumPy reference of the exact GELU: the specification (the math is in __init__.py).

Array-module generic (``xp = get_array_module(x)``), so it also runs on CuPy arrays.
"""
import math

import numpy as np

from ...backend import get_array_module

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


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
