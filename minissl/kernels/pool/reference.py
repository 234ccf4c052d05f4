"""NumPy reference of 2-D max and average pooling: the specification (the math is in
__init__.py). Array-module generic (``xp = get_array_module(x)``), so it also runs on CuPy
arrays.
"""
import numpy as np

from ...backend import get_array_module


def _offset_index(xp, w, oh, ow, st, pad, i, j):
    """Where offset (i, j) of every window lands in the (unpadded) input plane of width w.

    Returns the input rows (OH, 1), the input columns (1, OW) and the flat indices
    row W + column (OH, OW); rows and columns are negative or past the edge in the padding.
    """
    h_in = xp.arange(oh) * st[0] - pad[0] + i                 # (OH,)
    w_in = xp.arange(ow) * st[1] - pad[1] + j                 # (OW,)
    return h_in[:, None], w_in[None, :], h_in[:, None] * w + w_in[None, :]


def max_pool2d_forward_ref(x, kernel_size, stride, padding):
    """NumPy reference of :func:`max_pool2d_forward` (also runs on CuPy arrays)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    x_pad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    best = xp.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    # Before any pixel is taken, a window points at its first in-bounds pixel (PyTorch).
    h_first = xp.maximum(xp.arange(oh) * sh - ph, 0)
    w_first = xp.maximum(xp.arange(ow) * sw - pw, 0)
    argmax = xp.broadcast_to(h_first[:, None] * w + w_first[None, :], best.shape)
    argmax = argmax.astype(np.int64)
    for i in range(kh):                               # row-major scan of the window ...
        for j in range(kw):
            v = x_pad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
            _, _, flat = _offset_index(xp, w, oh, ow, (sh, sw), (ph, pw), i, j)
            # ... taking strictly greater values (first maximum wins) and NaN (propagates).
            # Padding is -inf: never greater than best, which starts at -inf.
            take = (v > best) | xp.isnan(v)
            best = xp.where(take, v, best)
            argmax = xp.where(take, flat, argmax)
    return best, argmax


def max_pool2d_backward_ref(grad_out, argmax, x_shape, kernel_size, stride, padding):
    """NumPy reference of :func:`max_pool2d_backward` (also runs on CuPy arrays)."""
    xp = get_array_module(grad_out)
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    oh, ow = grad_out.shape[2:]
    grad_pad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=grad_out.dtype)
    for i in range(kh):
        for j in range(kw):
            h_in, w_in, flat = _offset_index(xp, w, oh, ow, (sh, sw), (ph, pw), i, j)
            inside = (h_in >= 0) & (h_in < h) & (w_in >= 0) & (w_in < w)
            # Window (oh, ow) sends its gradient to offset (i, j) iff its max sat there.
            hit = (argmax == flat) & inside
            grad_pad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += xp.where(hit, grad_out, 0)
    return xp.ascontiguousarray(grad_pad[:, :, ph:ph + h, pw:pw + w])


def avg_pool2d_forward_ref(x, kernel_size, stride, padding):
    """NumPy reference of :func:`avg_pool2d_forward` (also runs on CuPy arrays)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    x_pad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    total = xp.zeros((n, c, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            total += x_pad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
    return total / (kh * kw)                          # count_include_pad=True


def avg_pool2d_backward_ref(grad_out, x_shape, kernel_size, stride, padding):
    """NumPy reference of :func:`avg_pool2d_backward` (also runs on CuPy arrays)."""
    xp = get_array_module(grad_out)
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    oh, ow = grad_out.shape[2:]
    share = grad_out / (kh * kw)                      # each window pixel got 1/(kh kw)
    grad_pad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=grad_out.dtype)
    for i in range(kh):
        for j in range(kw):
            grad_pad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += share
    return xp.ascontiguousarray(grad_pad[:, :, ph:ph + h, pw:pw + w])
