"""NumPy reference of the conv family: the specification (the math is in __init__.py).

The convolution as im2col and matrix products, the textbook lowering, array-module generic
(``xp = get_array_module(x)``), so it also runs on CuPy arrays.
"""
from ...backend import get_array_module
from ..im2col.reference import col2im_ref, im2col_ref


def _rows(x, weight, stride, padding, dilation, im2col):
    """(cols (N OH OW, C kh kw), W (O, C kh kw), (N, OH, OW))."""
    n, _, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = weight.shape[2:], stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = im2col(x, (kh, kw), stride, padding, dilation)
    return cols, weight.reshape(weight.shape[0], -1), (n, oh, ow)


def conv2d_forward_ref(x, weight, bias, stride, padding, dilation, im2col=im2col_ref):
    """y (N, O, OH, OW) = cols W^T (+ bias), back to NCHW."""
    xp = get_array_module(x)
    cols, w2, (n, oh, ow) = _rows(x, weight, stride, padding, dilation, im2col)
    y = xp.matmul(cols, w2.T)                                       # (N OH OW, O)
    if bias is not None:
        y = y + bias
    return xp.ascontiguousarray(y.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2))


def conv2d_backward_ref(x, weight, grad_out, stride, padding, dilation, need_x=True,
                        need_w=True, im2col=im2col_ref, col2im=col2im_ref):
    """(dx, dW) of y = conv2d(x, W): dW = G^T cols, dx = col2im(G W), with G the output
    gradient as rows (N OH OW, O); None for the one not asked for."""
    xp = get_array_module(x)
    cols, w2, _ = _rows(x, weight, stride, padding, dilation, im2col)
    g = grad_out.transpose(0, 2, 3, 1).reshape(cols.shape[0], w2.shape[0])
    gx = col2im(xp.matmul(g, w2), x.shape, tuple(weight.shape[2:]), stride, padding,
                dilation) if need_x else None
    gw = xp.matmul(g.T, cols).reshape(weight.shape) if need_w else None
    return gx, gw
