"""GELU, exact (erf) form, elementwise on an array of any shape.

Math (Hendrycks & Gimpel 2016, "Gaussian Error Linear Units"; ``torch.nn.functional.gelu``
with its default ``approximate="none"``):

    Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))          standard normal CDF
    phi(x) = exp(-x^2 / 2) / sqrt(2 pi)            standard normal density
    gelu(x) = x * Phi(x)
    d gelu / dx = Phi(x) + x * phi(x)              so  dx = g * (Phi(x) + x * phi(x))

Each public function checks its arguments once, then runs one of the three versions in this
folder: the CUDA kernels (activation.cu, launched by cuda.py) for CuPy arrays, the Cython
kernels (_cpu.pyx, with its C in activation.h) for float32/float64 NumPy arrays, the ``*_ref``
NumPy reference (reference.py) otherwise.

NumPy has no erf. The reference takes ``scipy.special.erf`` (``cupyx.scipy.special.erf`` on
the GPU) when SciPy is installed and otherwise applies the standard library's ``math.erf``
elementwise: exact, but slow, which only matters when the Cython build is also missing.
"""
import numpy as np

from .._dispatch import check_float as _check_float, check_same as _check_same
from .._dispatch import compiled, gpu, on_device
from .reference import gelu_backward_ref, gelu_forward_ref

__all__ = ["gelu_forward", "gelu_backward", "gelu_forward_ref", "gelu_backward_ref"]


def gelu_forward(x):
    """Exact GELU, 0.5 * x * (1 + erf(x / sqrt 2)), of an array of any shape."""
    _check_float("gelu_forward", "x", x)
    if on_device(x):
        return gpu("activation", "gelu_forward")(x)
    ext = compiled("activation", x)
    if ext is None or x.size == 0:
        return gelu_forward_ref(x)
    y = np.empty(x.shape, dtype=x.dtype)                # (ascontiguousarray makes 0-d 1-d)
    ext.gelu_forward(np.ascontiguousarray(x).reshape(-1), y.reshape(-1))
    return y


def gelu_backward(grad_y, x):
    """Gradient of exact GELU: grad_y * (Phi(x) + x * phi(x)); both arrays of one shape."""
    fn = "gelu_backward"
    _check_float(fn, "grad_y", grad_y)
    _check_float(fn, "x", x)
    _check_same(fn, ("grad_y", "x"), (grad_y, x))
    if on_device(x):
        return gpu("activation", fn)(grad_y, x)
    ext = compiled("activation", x)
    if ext is None or x.size == 0:
        return gelu_backward_ref(grad_y, x)
    dx = np.empty(x.shape, dtype=x.dtype)
    ext.gelu_backward(np.ascontiguousarray(grad_y).reshape(-1),
                      np.ascontiguousarray(x).reshape(-1), dx.reshape(-1))
    return dx
