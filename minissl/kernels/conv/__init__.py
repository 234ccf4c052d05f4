"""2-D convolution (one group, NCHW, PyTorch's weight layout), forward and backward, image by
image: each image's windows are unfolded into a buffer that stays in a core's cache and
multiplied there, instead of unfolding the whole batch into memory first.

Math. For x (N, C, H, W), weight (O, C, kh, kw), stride (sh, sw), padding (ph, pw) and
dilation (dh, dw), as ``torch.nn.functional.conv2d``,

    y[n, o, oh, ow] = b[o] + sum_{c, i, j} W[o, c, i, j] x_pad[n, c, oh sh + i dh, ow sw + j dw]

with OH, OW as in kernels/im2col. With cols_n = im2col(x[n]) (OH OW rows, C kh kw columns)
and W as the matrix (O, C kh kw), image n's output planes are one product, and so are the
adjoints (G_n: the output gradient of image n as (O, OH OW)):

    Y_n = W cols_n^T,    dW = sum_n G_n cols_n,    dx[n] = col2im(G_n^T W),    db = sum G.

Why image by image (docs/performance.md, "conv2d image by image"). Lowering the whole batch
first writes cols to memory, C kh kw times the input (75 MB for the second layer of the CPU
benchmark's conv_simclr), then reads it back for the product and again in the backward pass;
on a 2-core machine the unfold and the copies back to NCHW cost more than the products. Here
each thread takes whole images: it stages the image once, zero-padded and split by column
phase modulo the stride (so that every window tap reads one contiguous run per output row,
whatever the stride and dilation), unfolds a block of output rows into the cache, and calls
single-threaded BLAS on it, writing Y_n straight into NCHW. The backward pass unfolds again
instead of keeping cols (recomputing in the cache is cheaper than a round trip to memory).

Versions, as in every family: ``conv2d_forward_ref`` / ``conv2d_backward_ref``
(reference.py: im2col_ref and matmul, the specification); the Cython kernel (_cpu.pyx) for
float32/float64 NumPy arrays where NumPy's BLAS is OpenBLAS (kernels/gemm finds it); on the
GPU the reference's lowering with im2col's CUDA kernel and cuBLAS (cuda.py). Results do not
depend on the number of threads: each dx[n] is summed by one thread in one fixed order, and
dW's images are summed in chunks fixed by the shape, then the chunks in order.
"""
import numpy as np

from .._dispatch import compiled, on_device
from ..gemm import bind_blas, blas_lock
from ..im2col import check_array, dilation_pair, window_geometry
from .reference import conv2d_backward_ref, conv2d_forward_ref

__all__ = ["conv2d_forward", "conv2d_backward", "conv2d_forward_ref", "conv2d_backward_ref",
           "compiled_kernel"]

# dW's partial sums: at most this many chunks of images, and at most PARTS_BYTES of them.
MAX_PARTS = 32
PARTS_BYTES = 64 << 20


def _check(fname, x, weight, stride, padding, dilation, grad_out=None, bias=None):
    """The geometry ((kh, kw), stride, padding, dilation, (OH, OW)) after the argument checks;
    TypeError/ValueError naming ``fname`` and the shapes."""
    check_array(fname, "x", x, 4)
    check_array(fname, "weight", weight, 4)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"{fname}: x of shape {x.shape} has {x.shape[1]} channels, weight of "
                         f"shape {weight.shape} expects {weight.shape[1]}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{fname}: x is {x.dtype} but weight is {weight.dtype}")
    ks = tuple(weight.shape[2:])
    _, st, pad, out = window_geometry(fname, x.shape, ks, stride, padding, dilation)
    dl = dilation_pair(fname, dilation)
    if grad_out is not None:
        check_array(fname, "grad_out", grad_out, 4)
        expected = (x.shape[0], weight.shape[0]) + out
        if grad_out.shape != expected or grad_out.dtype != x.dtype:
            raise ValueError(f"{fname}: grad_out has shape {grad_out.shape} ({grad_out.dtype}),"
                             f" expected {expected} ({x.dtype}) for x {x.shape} and weight "
                             f"{weight.shape}")
    if bias is not None and (getattr(bias, "shape", None) != (weight.shape[0],)
                             or bias.dtype != x.dtype):
        raise ValueError(f"{fname}: bias must have shape ({weight.shape[0]},) and dtype "
                         f"{x.dtype} for weight {weight.shape}, got "
                         f"{getattr(bias, 'shape', type(bias).__name__)}")
    return ks, st, pad, dl, out


def compiled_kernel(x, weight):
    """The compiled module when it runs these arrays (NumPy float32/float64 of one dtype, a
    non-empty product, BLAS found), else None."""
    if x.dtype != weight.dtype or 0 in weight.shape or x.shape[1] == 0:
        return None
    module = compiled("conv", x, weight)
    if module is None or not bind_blas(module):
        return None
    return module


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """y = conv2d(x, weight) + bias, (N, O, OH, OW), C-contiguous."""
    ks, st, pad, dil, (oh, ow) = _check("conv2d_forward", x, weight, stride, padding,
                                        dilation, bias=bias)
    if on_device(x):
        from . import cuda
        return cuda.conv2d_forward(x, weight, bias, st, pad, dil)
    module = compiled_kernel(x, weight)
    if module is None:
        return conv2d_forward_ref(x, weight, bias, st, pad, dil)
    y = np.empty((x.shape[0], weight.shape[0], oh, ow), dtype=x.dtype)
    b = np.empty(0, x.dtype) if bias is None else np.ascontiguousarray(bias)
    with blas_lock:
        module.forward(np.ascontiguousarray(x), _matrix(weight), b, y, *ks, *st, *pad, *dil)
    return y


def conv2d_backward(x, weight, grad_out, stride=1, padding=0, dilation=1, need_x=True,
                    need_w=True):
    """(dx, dW) of y = conv2d(x, weight) given dL/dy = ``grad_out``; None for the one not
    asked for (``need_x``, ``need_w``). The bias gradient is ``grad_out.sum((0, 2, 3))``."""
    ks, st, pad, dil, _ = _check("conv2d_backward", x, weight, stride, padding, dilation,
                                 grad_out=grad_out)
    if on_device(x):
        from . import cuda
        return cuda.conv2d_backward(x, weight, grad_out, st, pad, dil, need_x, need_w)
    module = compiled_kernel(x, weight)
    if module is None or x.shape[0] == 0 or not (need_x or need_w):
        return conv2d_backward_ref(x, weight, grad_out, st, pad, dil, need_x, need_w)
    n, o = x.shape[0], weight.shape[0]
    ck = weight[0].size
    k = min(n, MAX_PARTS, max(1, PARTS_BYTES // (o * ck * x.itemsize))) if need_w else 1
    gx = np.empty(x.shape, dtype=x.dtype) if need_x else np.empty((1, 1, 1, 1), x.dtype)
    parts = np.empty((k, o, ck) if need_w else (1, 1, 1), dtype=x.dtype)
    with blas_lock:
        module.backward(np.ascontiguousarray(x), _matrix(weight),
                        np.ascontiguousarray(grad_out), gx, parts, *ks, *st, *pad, *dil,
                        need_x, need_w)
    gw = parts.sum(axis=0).reshape(weight.shape) if need_w else None   # chunks in order
    return (gx if need_x else None), gw


def _matrix(weight):
    return np.ascontiguousarray(weight).reshape(weight.shape[0], -1)
