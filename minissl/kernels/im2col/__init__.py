"""im2col / col2im: convolution as one matrix product, and its adjoint.

For an input x of shape (N, C, H, W), a window (kh, kw), stride (sh, sw), zero padding
(ph, pw) and dilation (dh, dw) (the window's taps are dh rows and dw columns apart), the
output grid has

    OH = (H + 2 ph - dh (kh - 1) - 1) // sh + 1,    OW likewise

positions, and im2col lays every window out as one row of a matrix:

    cols[(n OH + oh) OW + ow, (c kh + i) kw + j] = x_pad[n, c, oh sh + i dh, ow sw + j dw]

where x_pad is x with ph zero rows and pw zero columns added on each side. Dilation 1 is the
plain window; a dilated window is a kh x kw window with holes, which is how a dilated
convolution (Yu & Koltun 2016; WaveNet's stacks) sees more context for the same weights. With a
PyTorch weight of shape (O, C, kh, kw), ``cols @ weight.reshape(O, -1).T`` is the convolution
output in (N, OH, OW, O) layout (Chellapilla, Puri & Simard, "High Performance Convolutional
Neural Networks for Document Processing", 2006; the same unrolling as Caffe's im2col and
``torch.nn.functional.unfold``, whose (N, C kh kw, L) result is our cols transposed per image).

im2col is linear, x -> A x, so its adjoint col2im is c -> A^T c: every input pixel receives
the sum of the cols entries that read it (overlapping windows add up; padding entries are
dropped). That is the gradient of im2col, <im2col(x), c> = <x, col2im(c)>, and the piece of
the convolution backward pass that returns the gradient of x.

The public functions check their arguments once, then run one of the three versions in this
folder: the CUDA kernels (im2col.cu, launched by cuda.py) for CuPy arrays, the Cython kernels
(_cpu.pyx) for float32/float64 NumPy arrays, the ``*_ref`` NumPy reference (reference.py:
readable, the specification) otherwise. The Cython col2im is a gather (each thread builds
whole input rows from the windows that cover them), so it is deterministic and parallel
without atomics.
"""
import operator

import numpy as np

from .._dispatch import compiled, gpu, on_device
from .reference import col2im_ref, im2col_ref

__all__ = ["im2col", "col2im", "im2col_ref", "col2im_ref", "window_geometry", "dilation_pair"]


# ----------------------------------------------------------------------------- validation

def _pair(fname, name, value):
    """(a, b) from an int or a pair of ints; TypeError naming the function otherwise."""
    items = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(items) != 2:
        raise TypeError(f"{fname}: {name} must be an int or a pair of ints, got {value!r}")
    try:
        if any(isinstance(v, (bool, np.bool_)) for v in items):
            raise TypeError
        return tuple(operator.index(v) for v in items)
    except TypeError:
        raise TypeError(f"{fname}: {name} must be an int or a pair of ints, "
                        f"got {value!r}") from None


def dilation_pair(fname, dilation):
    """(dh, dw) from an int or a pair of ints >= 1; TypeError/ValueError naming ``fname``."""
    dh, dw = _pair(fname, "dilation", dilation)
    if dh < 1 or dw < 1:
        raise ValueError(f"{fname}: need dilation >= 1, got dilation=({dh}, {dw})")
    return dh, dw


def window_geometry(fname, x_shape, kernel_size, stride, padding, dilation=1):
    """Validate window arguments for an input of shape ``x_shape`` (N, C, H, W).

    Returns ``(kh, kw), (sh, sw), (ph, pw), (OH, OW)`` with
    OH = (H + 2 ph - dh (kh - 1) - 1) // sh + 1 and OW likewise. Raises TypeError for
    non-integer arguments and ValueError (naming ``fname`` and the shapes) for kernel < 1,
    stride < 1, padding < 0, dilation < 1 or an empty output grid.
    """
    kh, kw = _pair(fname, "kernel_size", kernel_size)
    sh, sw = _pair(fname, "stride", stride)
    ph, pw = _pair(fname, "padding", padding)
    dh, dw = dilation_pair(fname, dilation)
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"{fname}: need kernel_size >= 1, stride >= 1 and padding >= 0, got "
                         f"kernel_size=({kh}, {kw}), stride=({sh}, {sw}), "
                         f"padding=({ph}, {pw})")
    h, w = x_shape[2], x_shape[3]
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        dil = "" if (dh, dw) == (1, 1) else f" and dilation=({dh}, {dw})"
        raise ValueError(f"{fname}: kernel_size=({kh}, {kw}) with padding=({ph}, {pw}){dil} "
                         f"does not fit the input of shape {tuple(x_shape)}: output size "
                         f"would be ({oh}, {ow})")
    return (kh, kw), (sh, sw), (ph, pw), (oh, ow)


def check_array(fname, name, a, ndim, floating=True):
    """TypeError/ValueError naming the function if ``a`` is not an ndarray (NumPy or CuPy) of
    ``ndim`` dimensions (and a floating dtype, if ``floating``)."""
    if not isinstance(a, np.ndarray) and not on_device(a):
        raise TypeError(f"{fname}: {name} must be an ndarray, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{fname}: {name} must have {ndim} dimensions, got shape {a.shape}")
    if floating and a.dtype.kind != "f":
        raise TypeError(f"{fname}: {name} must have a floating dtype, got {a.dtype}")


def check_shape4(fname, name, shape):
    """``shape`` as a tuple of 4 non-negative ints (N, C, H, W)."""
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(f"{fname}: {name} must be a tuple of 4 ints, got {shape!r}") from None
    if len(dims) != 4 or min(dims) < 0:
        raise ValueError(f"{fname}: {name} must be 4 non-negative sizes (N, C, H, W), "
                         f"got {shape!r}")
    return dims


# ----------------------------------------------------------------------------- public

def im2col(x, kernel_size, stride, padding, dilation=1):
    """Unfold the sliding windows of ``x`` (N, C, H, W) into the rows of a matrix.

    Returns ``cols`` of shape (N OH OW, C kh kw), C-contiguous, with rows ordered (n, oh, ow)
    and columns ordered (c, i, j): ``cols[(n OH + oh) OW + ow, (c kh + i) kw + j] =
    x[n, c, oh sh - ph + i dh, ow sw - pw + j dw]``, zero where that index falls in the
    padding. ``kernel_size``, ``stride``, ``padding`` and ``dilation`` are pairs (an int means
    the same value for both axes).
    """
    check_array("im2col", "x", x, 4)
    dil = dilation_pair("im2col", dilation)
    ks, st, pad, (oh, ow) = window_geometry("im2col", x.shape, kernel_size, stride, padding,
                                            dil)
    if on_device(x):
        return gpu("im2col", "im2col")(x, ks, st, pad, dil)
    ext = compiled("im2col", x)
    if ext is None:
        return im2col_ref(x, ks, st, pad, dil)
    n, c = x.shape[:2]
    cols = np.empty((n * oh * ow, c * ks[0] * ks[1]), dtype=x.dtype)
    ext.im2col(np.ascontiguousarray(x), cols, *ks, *st, *pad, *dil)
    return cols


def col2im(cols, x_shape, kernel_size, stride, padding, dilation=1):
    """The adjoint of :func:`im2col`: fold ``cols`` back into an array of shape ``x_shape``.

    ``x[n, c, h, w]`` is the sum of every entry of ``cols`` (N OH OW, C kh kw) that im2col
    read from pixel (n, c, h, w), so that ``<im2col(x), cols> == <x, col2im(cols)>`` for all
    x and cols. Given the gradient of im2col's output, this is the gradient of its input.
    """
    check_array("col2im", "cols", cols, 2)
    x_shape = check_shape4("col2im", "x_shape", x_shape)
    dil = dilation_pair("col2im", dilation)
    ks, st, pad, (oh, ow) = window_geometry("col2im", x_shape, kernel_size, stride, padding,
                                            dil)
    n, c = x_shape[:2]
    expected = (n * oh * ow, c * ks[0] * ks[1])
    if cols.shape != expected:
        raise ValueError(f"col2im: cols has shape {cols.shape}, expected {expected} for "
                         f"x_shape={x_shape}, kernel_size={ks}, stride={st}, padding={pad}, "
                         f"dilation={dil}")
    if on_device(cols):
        return gpu("im2col", "col2im")(cols, x_shape, ks, st, pad, dil)
    ext = compiled("im2col", cols)
    if ext is None:
        return col2im_ref(cols, x_shape, ks, st, pad, dil)
    x = np.empty(x_shape, dtype=cols.dtype)
    ext.col2im(np.ascontiguousarray(cols), x, *ks, *st, *pad, *dil)
    return x
