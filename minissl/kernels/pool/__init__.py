"""2-D max and average pooling, forward and backward (PyTorch semantics).

For x of shape (N, C, H, W), window (kh, kw), stride (sh, sw) and padding (ph, pw), window
(oh, ow) of the (OH, OW) output grid,

    OH = (H + 2 ph - kh) // sh + 1,    OW = (W + 2 pw - kw) // sw + 1,

covers input rows oh sh - ph + i (0 <= i < kh) and columns ow sw - pw + j (0 <= j < kw).
As in ``torch.nn.functional.max_pool2d`` / ``avg_pool2d`` with ceil_mode=False and dilation 1:

- max pooling: padding counts as -inf (it is never selected; PyTorch requires padding <= half
  the window, so every window holds at least one real pixel). ``argmax`` is the flat index
  h W + w of the chosen pixel in its input plane: the first maximum in row-major window order,
  a NaN wins so that it propagates, and a window of -inf keeps its first in-bounds pixel.
  Backward: dL/dx[h, w] = sum of dL/dout[oh, ow] over the windows whose argmax is (h, w).
- average pooling, count_include_pad=True (PyTorch's default): padding counts as 0 and every
  window is divided by kh kw. Backward (the adjoint): dL/dx[h, w] = sum over the windows
  covering (h, w) of dL/dout[oh, ow] / (kh kw).

Max pooling in CNNs: Ranzato et al., "Unsupervised learning of invariant feature hierarchies
with applications to object recognition" (CVPR 2007); Krizhevsky et al., "ImageNet
Classification with Deep Convolutional Neural Networks" (NeurIPS 2012).

The public functions check their arguments once, then run one of the three versions in this
folder: the CUDA kernels (pool.cu, launched by cuda.py) for CuPy arrays, the Cython kernels
(_cpu.pyx) for float32/float64 NumPy arrays, the ``*_ref`` NumPy reference (reference.py, the
specification) otherwise. Both backward passes are gathers over input pixels
(deterministic, race-free).
"""
import numpy as np

from .._dispatch import compiled, gpu, on_device
from ..im2col import check_array, check_shape4, window_geometry
from .reference import (avg_pool2d_backward_ref, avg_pool2d_forward_ref,
                        max_pool2d_backward_ref, max_pool2d_forward_ref)

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
           "avg_pool2d_backward", "max_pool2d_forward_ref", "max_pool2d_backward_ref",
           "avg_pool2d_forward_ref", "avg_pool2d_backward_ref"]


# ----------------------------------------------------------------------------- validation

def _pool_geometry(fname, x_shape, kernel_size, stride, padding):
    """window_geometry plus PyTorch's pooling rules: padding <= kernel / 2 and H, W >= 1."""
    ks, st, pad, out = window_geometry(fname, x_shape, kernel_size, stride, padding)
    if 2 * pad[0] > ks[0] or 2 * pad[1] > ks[1]:
        raise ValueError(f"{fname}: padding={pad} must be at most half of kernel_size={ks} "
                         f"(input of shape {tuple(x_shape)})")
    if x_shape[2] < 1 or x_shape[3] < 1:
        raise ValueError(f"{fname}: input of shape {tuple(x_shape)} has an empty plane")
    return ks, st, pad, out


def _check_grad_out(fname, grad_out, x_shape, out_hw):
    expected = (x_shape[0], x_shape[1], *out_hw)
    if grad_out.shape != expected:
        raise ValueError(f"{fname}: grad_out has shape {grad_out.shape}, expected {expected} "
                         f"for x_shape={x_shape}")


# ----------------------------------------------------------------------------- public

def max_pool2d_forward(x, kernel_size, stride, padding):
    """Max pooling of x (N, C, H, W) -> (out, argmax), both (N, C, OH, OW).

    ``argmax`` (int64) holds the flat index h W + w, into its input plane, of the pixel each
    window selected (see the module docstring for ties and NaN). ``kernel_size``, ``stride``
    and ``padding`` are pairs (an int means both axes); padding <= kernel_size / 2.
    """
    fname = "max_pool2d_forward"
    check_array(fname, "x", x, 4)
    ks, st, pad, (oh, ow) = _pool_geometry(fname, x.shape, kernel_size, stride, padding)
    if on_device(x):
        return gpu("pool", fname)(x, ks, st, pad)
    ext = compiled("pool", x)
    if ext is None:
        return max_pool2d_forward_ref(x, ks, st, pad)
    out = np.empty((x.shape[0], x.shape[1], oh, ow), dtype=x.dtype)
    argmax = np.empty(out.shape, dtype=np.int64)
    ext.max_pool2d_forward(np.ascontiguousarray(x), out, argmax, *ks, *st, *pad)
    return out, argmax


def max_pool2d_backward(grad_out, argmax, x_shape, kernel_size, stride, padding):
    """Gradient of max pooling with respect to x, of shape ``x_shape`` (N, C, H, W).

    grad_x[n, c, h, w] = sum of grad_out[n, c, oh, ow] over the windows (oh, ow) that cover
    (h, w) and whose ``argmax`` is h W + w. An argmax outside its own window selects nothing.
    """
    fname = "max_pool2d_backward"
    check_array(fname, "grad_out", grad_out, 4)
    if on_device(argmax) != on_device(grad_out):
        raise TypeError(f"{fname}: grad_out and argmax must be arrays of the same device")
    check_array(fname, "argmax", argmax, 4, floating=False)
    if argmax.dtype != np.int64:
        raise TypeError(f"{fname}: argmax must be int64, got {argmax.dtype}")
    x_shape = check_shape4(fname, "x_shape", x_shape)
    ks, st, pad, out_hw = _pool_geometry(fname, x_shape, kernel_size, stride, padding)
    _check_grad_out(fname, grad_out, x_shape, out_hw)
    if argmax.shape != grad_out.shape:
        raise ValueError(f"{fname}: argmax has shape {argmax.shape}, expected grad_out's "
                         f"{grad_out.shape}")
    if on_device(grad_out):
        return gpu("pool", fname)(grad_out, argmax, x_shape, ks, st, pad)
    ext = compiled("pool", grad_out)
    if ext is None:
        return max_pool2d_backward_ref(grad_out, argmax, x_shape, ks, st, pad)
    grad_x = np.empty(x_shape, dtype=grad_out.dtype)
    ext.max_pool2d_backward(np.ascontiguousarray(grad_out), np.ascontiguousarray(argmax),
                            grad_x, *ks, *st, *pad)
    return grad_x


def avg_pool2d_forward(x, kernel_size, stride, padding):
    """Average pooling of x (N, C, H, W) -> (N, C, OH, OW), count_include_pad=True.

    out[n, c, oh, ow] = (1 / (kh kw)) sum_{i, j} x_pad[n, c, oh sh + i, ow sw + j], with zero
    padding; padding <= kernel_size / 2 as in PyTorch.
    """
    fname = "avg_pool2d_forward"
    check_array(fname, "x", x, 4)
    ks, st, pad, (oh, ow) = _pool_geometry(fname, x.shape, kernel_size, stride, padding)
    if on_device(x):
        return gpu("pool", fname)(x, ks, st, pad)
    ext = compiled("pool", x)
    if ext is None:
        return avg_pool2d_forward_ref(x, ks, st, pad)
    out = np.empty((x.shape[0], x.shape[1], oh, ow), dtype=x.dtype)
    ext.avg_pool2d_forward(np.ascontiguousarray(x), out, *ks, *st, *pad)
    return out


def avg_pool2d_backward(grad_out, x_shape, kernel_size, stride, padding):
    """Gradient of average pooling with respect to x, of shape ``x_shape`` (N, C, H, W).

    grad_x[n, c, h, w] = sum over the windows (oh, ow) covering (h, w) of
    grad_out[n, c, oh, ow] / (kh kw): the adjoint of :func:`avg_pool2d_forward`.
    """
    fname = "avg_pool2d_backward"
    check_array(fname, "grad_out", grad_out, 4)
    x_shape = check_shape4(fname, "x_shape", x_shape)
    ks, st, pad, out_hw = _pool_geometry(fname, x_shape, kernel_size, stride, padding)
    _check_grad_out(fname, grad_out, x_shape, out_hw)
    if on_device(grad_out):
        return gpu("pool", fname)(grad_out, x_shape, ks, st, pad)
    ext = compiled("pool", grad_out)
    if ext is None:
        return avg_pool2d_backward_ref(grad_out, x_shape, ks, st, pad)
    grad_x = np.empty(x_shape, dtype=grad_out.dtype)
    ext.avg_pool2d_backward(np.ascontiguousarray(grad_out), grad_x, *ks, *st, *pad)
    return grad_x
