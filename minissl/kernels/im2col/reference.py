"""NumPy reference of im2col / col2im: the specification (the math is in __init__.py).

Array-module generic (``xp = get_array_module(x)``), so it also runs on CuPy arrays.
"""
from ...backend import get_array_module


def _out_size(h, w, kernel_size, stride, padding, dilation):
    """(OH, OW) of the dilated window grid (the formula is in __init__.py)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def im2col_ref(x, kernel_size, stride, padding, dilation=(1, 1)):
    """NumPy reference of :func:`im2col` (also runs on CuPy arrays)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    oh, ow = _out_size(h, w, kernel_size, stride, padding, dilation)
    x_pad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # Offset (i, j) of every window at once: rows i dh, i dh + sh, ..., i dh + sh (OH - 1).
            rows, cols_ = slice(i * dh, i * dh + sh * oh, sh), slice(j * dw, j * dw + sw * ow, sw)
            cols[:, :, i, j] = x_pad[:, :, rows, cols_]
    # (N, C, kh, kw, OH, OW) -> rows (n, oh, ow), columns (c, i, j).
    return xp.ascontiguousarray(cols.transpose(0, 4, 5, 1, 2, 3)).reshape(n * oh * ow,
                                                                          c * kh * kw)


def col2im_ref(cols, x_shape, kernel_size, stride, padding, dilation=(1, 1)):
    """NumPy reference of :func:`col2im` (also runs on CuPy arrays)."""
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    oh, ow = _out_size(h, w, kernel_size, stride, padding, dilation)
    cols = cols.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)  # (N,C,kh,kw,OH,OW)
    x_pad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            # One offset never reads a pixel twice, so this sliced += adds every entry once.
            rows, cols_ = slice(i * dh, i * dh + sh * oh, sh), slice(j * dw, j * dw + sw * ow, sw)
            x_pad[:, :, rows, cols_] += cols[:, :, i, j]
    return xp.ascontiguousarray(x_pad[:, :, ph:ph + h, pw:pw + w])
