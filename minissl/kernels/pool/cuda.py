"""CuPy launchers of 2-D pooling's CUDA kernels (pool.cu).

Each launcher has its reference's signature (reference.py: geometry as (h, w) pairs) and is
called by the public function in __init__.py after the argument checks; it checks only that
the arrays are on the device. Forwards run one thread per output; backwards one thread per
input pixel, a gather over the windows that cover it (deterministic, race-free).
"""
import numpy as np

from .. import cuda as cu
from . import reference as R


def _out_size(x_shape, ks, st, pad):
    return ((x_shape[2] + 2 * pad[0] - ks[0]) // st[0] + 1,
            (x_shape[3] + 2 * pad[1] - ks[1]) // st[1] + 1)


def _geometry_args(x_shape, ks, st, pad, out_hw):
    return tuple(cu.i32(v) for v in (x_shape[2], x_shape[3], *ks, *st, *pad, *out_hw))


def max_pool2d_forward(x, kernel_size, stride, padding):
    """-> (out, argmax int64), both (N, C, OH, OW)."""
    be = cu.device_backend("max_pool2d_forward", x=x)
    if not cu.kernel_ok(x):
        return R.max_pool2d_forward_ref(x, kernel_size, stride, padding)
    xp = be.xp
    out_hw = _out_size(x.shape, kernel_size, stride, padding)
    out = xp.empty((x.shape[0], x.shape[1], *out_hw), dtype=x.dtype)
    argmax = xp.empty(out.shape, dtype=np.int64)
    if out.size:
        k = be.kernel("pool", "max_pool_fwd_kernel", x.dtype)
        k(cu.grid(out.size), (cu.THREADS,),
          (cu.contig(xp, x), out, argmax,
           *_geometry_args(x.shape, kernel_size, stride, padding, out_hw),
           x.dtype.type(-np.inf), cu.i32(out.size)))
    return out, argmax


def max_pool2d_backward(grad_out, argmax, x_shape, kernel_size, stride, padding):
    """grad_x of shape x_shape, a gather over input pixels."""
    be = cu.device_backend("max_pool2d_backward", grad_out=grad_out, argmax=argmax)
    total = int(np.prod(x_shape))
    if not cu.kernel_ok(grad_out) or total > cu.MAX_ELEMENTS:
        return R.max_pool2d_backward_ref(grad_out, argmax, x_shape, kernel_size, stride,
                                         padding)
    xp = be.xp
    out_hw = _out_size(x_shape, kernel_size, stride, padding)
    grad_x = xp.empty(x_shape, dtype=grad_out.dtype)
    if total:
        k = be.kernel("pool", "max_pool_bwd_kernel", grad_out.dtype)
        k(cu.grid(total), (cu.THREADS,),
          (cu.contig(xp, grad_out), cu.contig(xp, argmax), grad_x,
           *_geometry_args(x_shape, kernel_size, stride, padding, out_hw), cu.i32(total)))
    return grad_x


def avg_pool2d_forward(x, kernel_size, stride, padding):
    """(N, C, OH, OW), count_include_pad=True."""
    be = cu.device_backend("avg_pool2d_forward", x=x)
    if not cu.kernel_ok(x):
        return R.avg_pool2d_forward_ref(x, kernel_size, stride, padding)
    xp = be.xp
    out_hw = _out_size(x.shape, kernel_size, stride, padding)
    out = xp.empty((x.shape[0], x.shape[1], *out_hw), dtype=x.dtype)
    if out.size:
        k = be.kernel("pool", "avg_pool_fwd_kernel", x.dtype)
        k(cu.grid(out.size), (cu.THREADS,),
          (cu.contig(xp, x), out, *_geometry_args(x.shape, kernel_size, stride, padding, out_hw),
           cu.i32(out.size)))
    return out


def avg_pool2d_backward(grad_out, x_shape, kernel_size, stride, padding):
    """grad_x of shape x_shape, a gather over input pixels."""
    be = cu.device_backend("avg_pool2d_backward", grad_out=grad_out)
    total = int(np.prod(x_shape))
    if not cu.kernel_ok(grad_out) or total > cu.MAX_ELEMENTS:
        return R.avg_pool2d_backward_ref(grad_out, x_shape, kernel_size, stride, padding)
    xp = be.xp
    out_hw = _out_size(x_shape, kernel_size, stride, padding)
    grad_x = xp.empty(x_shape, dtype=grad_out.dtype)
    if total:
        k = be.kernel("pool", "avg_pool_bwd_kernel", grad_out.dtype)
        k(cu.grid(total), (cu.THREADS,),
          (cu.contig(xp, grad_out), grad_x,
           *_geometry_args(x_shape, kernel_size, stride, padding, out_hw), cu.i32(total)))
    return grad_x
