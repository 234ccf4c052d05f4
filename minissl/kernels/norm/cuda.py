"""CuPy launchers of the norm family's CUDA kernels (norm.cu).

Each launcher has its reference's signature (reference.py) and is called by the public
function in __init__.py after the argument checks; it checks only that the arrays are on the
device.
"""
import numpy as np

from .. import cuda as cu
from . import reference as R


def _optional(xp, a, like):
    """(array to pass, flag): an absent weight or bias is passed as a dummy never read."""
    return (like, cu.i32(0)) if a is None else (cu.contig(xp, a), cu.i32(1))


def layer_norm_forward(x, weight=None, bias=None, eps=1e-5):
    """GPU :func:`minissl.kernels.norm.layer_norm_forward` -> (y, mean, rstd)."""
    be = cu.device_backend("layer_norm_forward", x=x, weight=weight, bias=bias)
    if not cu.kernel_ok(x) or x.size == 0:
        return R.layer_norm_forward_ref(x, weight, bias, eps)
    xp = be.xp
    m, d = x.shape
    x = cu.contig(xp, x)
    y = xp.empty_like(x)
    mean = xp.empty(m, dtype=x.dtype)
    rstd = xp.empty(m, dtype=x.dtype)
    w, has_w = _optional(xp, weight, x)
    b, has_b = _optional(xp, bias, x)
    k = be.kernel("norm", "layer_norm_fwd_kernel", x.dtype)
    k((m,), (cu.coop_block(d),), (x, w, b, has_w, has_b, y, mean, rstd, cu.i32(d), cu.f64(eps)))
    return y, mean, rstd


def layer_norm_backward(grad_y, x, mean, rstd, weight=None):
    """GPU :func:`minissl.kernels.norm.layer_norm_backward` -> (dx, dw or None, db)."""
    be = cu.device_backend("layer_norm_backward", grad_y=grad_y, x=x, mean=mean, rstd=rstd,
                           weight=weight)
    if not cu.kernel_ok(x, grad_y) or x.size == 0:
        return R.layer_norm_backward_ref(grad_y, x, mean, rstd, weight)
    xp = be.xp
    m, d = x.shape
    g, x = cu.contig(xp, grad_y), cu.contig(xp, x)
    mean_d, rstd_d = cu.contig(xp, mean, np.float64), cu.contig(xp, rstd, np.float64)
    w, has_w = _optional(xp, weight, x)
    dx = xp.empty_like(x)
    k = be.kernel("norm", "layer_norm_bwd_dx_kernel", x.dtype)
    k((m,), (cu.coop_block(d),), (g, x, mean_d, rstd_d, w, has_w, dx, cu.i32(d)))
    # Column sums: R partials of cu.ROWS_PER_CHUNK rows each, then R partials per column.
    rpc = cu.ROWS_PER_CHUNK
    r = -(-m // rpc)
    part_w = xp.empty((r, d), dtype=np.float64)
    part_b = xp.empty((r, d), dtype=np.float64)
    k = be.kernel("norm", "layer_norm_bwd_partial_kernel", x.dtype)
    k(cu.grid(r * d), (cu.THREADS,), (g, x, mean_d, rstd_d, part_w, part_b, cu.i32(m), cu.i32(d),
                                  cu.i32(rpc), cu.i32(r * d)))
    db = xp.empty(d, dtype=x.dtype)
    dw = None if weight is None else xp.empty(d, dtype=x.dtype)
    k = be.kernel("norm", "column_finish_kernel", x.dtype)
    k(cu.grid(d), (cu.THREADS,), (part_w, part_b, db if dw is None else dw, db, has_w, cu.i32(r),
                              cu.i32(d)))
    return dx, dw, db


def _bn_chunks(count):
    """(chunk, S): each channel's ``count`` values split into S chunks of ``chunk`` values."""
    chunk = cu.coop_block(count) * cu.CHUNK_PER_THREAD
    return chunk, max(1, -(-count // chunk))


def batch_norm_forward(x, weight=None, bias=None, eps=1e-5, relu=False):
    """GPU :func:`minissl.kernels.norm.batch_norm_forward` on x (N, C, L) -> (y, mean, var,
    rstd) with batch statistics per channel."""
    be = cu.device_backend("batch_norm_forward", x=x, weight=weight, bias=bias)
    if not cu.kernel_ok(x) or x.size == 0:
        return R.batch_norm_forward_ref(x, weight, bias, eps, relu)
    xp = be.xp
    n, c, l_ = x.shape
    x = cu.contig(xp, x)
    count = n * l_
    chunk, s = _bn_chunks(count)
    parts = [xp.empty(c * s, dtype=np.float64) for _ in range(3)]
    k = be.kernel("norm", "batch_norm_stats_partial_kernel", x.dtype)
    k((c * s,), (cu.coop_block(min(count, chunk)),),
      (x, *parts, cu.i32(c), cu.i32(l_), cu.i32(s), cu.i32(chunk), cu.i32(count)))
    mean, var, rstd = (xp.empty(c, dtype=x.dtype) for _ in range(3))
    mean_d = xp.empty(c, dtype=np.float64)
    rstd_d = xp.empty(c, dtype=np.float64)
    k = be.kernel("norm", "batch_norm_stats_finish_kernel", x.dtype)
    k(cu.grid(c), (cu.THREADS,), (*parts, mean, var, rstd, mean_d, rstd_d, cu.i32(c), cu.i32(s),
                              cu.f64(eps)))
    w, has_w = _optional(xp, weight, x)
    b, has_b = _optional(xp, bias, x)
    y = xp.empty_like(x)
    k = be.kernel("norm", "batch_norm_apply_kernel", x.dtype)
    k(cu.grid(x.size), (cu.THREADS,), (x, mean_d, rstd_d, w, b, has_w, has_b, y, cu.i32(c),
                                         cu.i32(l_), cu.i32(x.size)))
    if relu:                           # the fused ReLU: a pass of its own here
        xp.maximum(y, 0, out=y)
    return y, mean, var, rstd


def batch_norm_backward(grad_y, x, mean, rstd, weight=None, relu_output=None):
    """GPU :func:`minissl.kernels.norm.batch_norm_backward` -> (dx, dw or None, db)."""
    be = cu.device_backend("batch_norm_backward", grad_y=grad_y, x=x, mean=mean, rstd=rstd,
                           weight=weight, relu_output=relu_output)
    if not cu.kernel_ok(x, grad_y) or x.size == 0:
        return R.batch_norm_backward_ref(grad_y, x, mean, rstd, weight, relu_output)
    if relu_output is not None:        # the fused ReLU's backward: a pass of its own here
        grad_y = grad_y * (relu_output > 0)
    xp = be.xp
    n, c, l_ = x.shape
    g, x = cu.contig(xp, grad_y), cu.contig(xp, x)
    mean_d, rstd_d = cu.contig(xp, mean, np.float64), cu.contig(xp, rstd, np.float64)
    count = n * l_
    chunk, s = _bn_chunks(count)
    part_g = xp.empty(c * s, dtype=np.float64)
    part_gx = xp.empty(c * s, dtype=np.float64)
    k = be.kernel("norm", "batch_norm_bwd_partial_kernel", x.dtype)
    k((c * s,), (cu.coop_block(min(count, chunk)),),
      (g, x, mean_d, rstd_d, part_g, part_gx, cu.i32(c), cu.i32(l_), cu.i32(s), cu.i32(chunk),
       cu.i32(count)))
    db = xp.empty(c, dtype=x.dtype)
    dw = None if weight is None else xp.empty(c, dtype=x.dtype)
    w, has_w = _optional(xp, weight, x)
    sg_d = xp.empty(c, dtype=np.float64)
    sgx_d = xp.empty(c, dtype=np.float64)
    k = be.kernel("norm", "batch_norm_bwd_finish_kernel", x.dtype)
    k(cu.grid(c), (cu.THREADS,), (part_g, part_gx, db if dw is None else dw, db, has_w, sg_d,
                              sgx_d, cu.i32(c), cu.i32(s)))
    dx = xp.empty_like(x)
    k = be.kernel("norm", "batch_norm_bwd_apply_kernel", x.dtype)
    k(cu.grid(x.size), (cu.THREADS,), (g, x, mean_d, rstd_d, w, has_w, sg_d, sgx_d,
                                   cu.f64(max(count, 1)), dx, cu.i32(c), cu.i32(l_), cu.i32(x.size)))
    return dx, dw, db


def l2_normalize_forward(x, eps=1e-12):
    """GPU :func:`minissl.kernels.norm.l2_normalize_forward`: the reference on CuPy's arrays
    (a reduction and a division per row, which CuPy's own kernels already run on the device;
    no CUDA kernel of our own)."""
    cu.device_backend("l2_normalize_forward", x=x)
    return R.l2_normalize_forward_ref(x, eps)


def l2_normalize_backward(grad_y, y, norm, eps=1e-12):
    """GPU :func:`minissl.kernels.norm.l2_normalize_backward`: the reference on CuPy's arrays."""
    cu.device_backend("l2_normalize_backward", grad_y=grad_y, y=y, norm=norm)
    return R.l2_normalize_backward_ref(grad_y, y, norm, eps)
