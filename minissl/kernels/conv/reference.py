"""NumPy reference of the conv family: the specification (the math is in __init__.py).

The convolution as im2col and matrix products, the textbook lowering, array-module generic
(``xp = get_array_module(x)``), so it also runs on CuPy arrays.
"""
from ...backend import get_array_module
from ..im2col.reference import _out_size, col2im_ref, im2col_ref


def conv2d_forward_ref(x, weight, bias, stride, padding, dilation, im2col=im2col_ref):
    """y (N, O, OH, OW) = cols W^T (+ bias), back to NCHW."""
    xp = get_array_module(x)
    ks = tuple(weight.shape[2:])
    oh, ow = _out_size(x.shape[2], x.shape[3], ks, stride, padding, dilation)
    cols = im2col(x, ks, stride, padding, dilation)                  # (N OH OW, C kh kw)
    y = xp.matmul(cols, weight.reshape(weight.shape[0], -1).T)      # (N OH OW, O)
    if bias is not None:
        y = y + bias
    return xp.ascontiguousarray(y.reshape(x.shape[0], oh, ow, -1).transpose(0, 3, 1, 2))


def conv2d_backward_ref(x, weight, grad_out, stride, padding, dilation, need_x=True,
                        need_w=True, im2col=im2col_ref, col2im=col2im_ref):
    """(dx, dW) of y = conv2d(x, W): dW = G^T cols, dx = col2im(G W), with G the output
    gradient as rows (N OH OW, O); None for the one not asked for."""
    xp = get_array_module(x)
    ks, w2 = tuple(weight.shape[2:]), weight.reshape(weight.shape[0], -1)
    g = grad_out.transpose(0, 2, 3, 1).reshape(-1, w2.shape[0])       # (N OH OW, O)
    gx = col2im(xp.matmul(g, w2), x.shape, ks, stride, padding, dilation) if need_x else None
    gw = xp.matmul(g.T, im2col(x, ks, stride, padding, dilation)).reshape(weight.shape) \
        if need_w else None
    return gx, gw
