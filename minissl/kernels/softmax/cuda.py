"""CuPy launchers of the softmax family's CUDA kernels (softmax.cu).

Each launcher has its reference's signature (reference.py) and is called by the public
function in __init__.py after the argument checks; it checks only that the arrays are on the
device. Rows are reduced by one block each (see softmax.cu).
"""
import numpy as np

from .. import cuda as cu
from . import reference as R


def _rows(fname, kernel_name, names, make_args, reference, x, *extra):
    """Launch a one-block-per-row kernel on (M, C) arrays ``x, *extra`` (called ``names``),
    or the reference for what the kernels do not cover."""
    be = cu.device_backend(fname, **dict(zip(names, (x, *extra))))
    if not cu.kernel_ok(x, *extra) or x.size == 0:
        return reference(x, *extra)
    xp = be.xp
    m, c = x.shape
    out = xp.empty((m, c), dtype=x.dtype)
    k = be.kernel("softmax", kernel_name, x.dtype)
    k((m,), (cu.coop_block(c),), make_args(xp, out, x, *extra))
    return out


def _forward_args(xp, y, x):
    return (cu.contig(xp, x), y, cu.i32(x.shape[1]), x.dtype.type(-np.inf))


def _backward_args(xp, dx, g, y):
    return (cu.contig(xp, g), cu.contig(xp, y), dx, cu.i32(g.shape[1]))


def _scaled(make_args, scale, causal):
    """The argument list of ``make_args`` followed by the scale (as T) and the causal rows."""
    def args(xp, out, *arrays):
        return make_args(xp, out, *arrays) + (out.dtype.type(scale), cu.i32(causal))
    return args


def softmax_forward(x, scale=1.0, causal=0):
    return _rows("softmax_forward", "softmax_fwd_kernel", ("x",),
                 _scaled(_forward_args, scale, causal),
                 lambda x: R.softmax_forward_ref(x, scale, causal), x)


def log_softmax_forward(x):
    return _rows("log_softmax_forward", "log_softmax_fwd_kernel", ("x",), _forward_args,
                 R.log_softmax_forward_ref, x)


def softmax_backward(grad_y, y, scale=1.0, causal=0):
    return _rows("softmax_backward", "softmax_bwd_kernel", ("grad_y", "y"),
                 _scaled(_backward_args, scale, causal),
                 lambda g, y: R.softmax_backward_ref(g, y, scale, causal), grad_y, y)


def log_softmax_backward(grad_y, y_log):
    return _rows("log_softmax_backward", "log_softmax_bwd_kernel", ("grad_y", "y_log"),
                 _backward_args, R.log_softmax_backward_ref, grad_y, y_log)


def cross_entropy_forward(logits, target, ignore_index=-100):
    """-> (loss, lse float64). A target outside [0, C) that is not ``ignore_index`` gives a NaN
    loss (no ValueError: that check would need a device-to-host copy)."""
    be = cu.device_backend("cross_entropy_forward", logits=logits, target=target)
    if not cu.kernel_ok(logits) or logits.size == 0:
        return R.cross_entropy_forward_ref(logits, target, ignore_index)
    xp = be.xp
    n, c = logits.shape
    loss = xp.empty(n, dtype=logits.dtype)
    lse = xp.empty(n, dtype=np.float64)
    k = be.kernel("softmax", "cross_entropy_fwd_kernel", logits.dtype)
    t = logits.dtype.type
    k((n,), (cu.coop_block(c),), (cu.contig(xp, logits), cu.contig(xp, target, np.int64), loss,
                                  lse, cu.i32(c), cu.i64(ignore_index), t(-np.inf), t(np.nan)))
    return loss, lse


def cross_entropy_backward(grad_loss, logits, target, lse, ignore_index=-100):
    """grad_loss[:, None] * (softmax(logits) - onehot(target)); NaN rows for bad targets."""
    be = cu.device_backend("cross_entropy_backward", grad_loss=grad_loss, logits=logits,
                           target=target, lse=lse)
    if not cu.kernel_ok(logits) or logits.size == 0:
        return R.cross_entropy_backward_ref(grad_loss, logits, target, lse, ignore_index)
    xp = be.xp
    c = logits.shape[1]
    total = logits.size
    grad = xp.empty(logits.shape, dtype=logits.dtype)
    k = be.kernel("softmax", "cross_entropy_bwd_kernel", logits.dtype)
    k(cu.grid(total), (cu.THREADS,), (cu.contig(xp, grad_loss, logits.dtype),
                                      cu.contig(xp, logits), cu.contig(xp, target, np.int64),
                                      cu.contig(xp, lse, np.float64), grad, cu.i32(c),
                                      cu.i64(ignore_index), logits.dtype.type(np.nan),
                                      cu.i32(total)))
    return grad
