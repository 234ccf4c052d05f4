"""CuPy launchers of the fused optimiser updates' CUDA kernels (optim.cu), in place.

Each launcher has its reference's signature (reference.py) and is called by the public
function in __init__.py after the argument checks; it checks only that the arrays are on the
device.
"""
import math

from .. import cuda as cu
from . import reference as R


def _in_place_ok(*arrays):
    """The fused kernels update C-contiguous arrays; views take the reference, which updates
    them in place whatever their strides."""
    return cu.kernel_ok(*arrays) and all(a.flags.c_contiguous for a in arrays)


def sgd_step(param, grad, momentum_buf, lr, momentum, dampening, weight_decay, nesterov,
             first_step):
    """One fused SGD update, in place."""
    bufs = (momentum_buf,) if momentum != 0 else ()
    be = cu.device_backend("sgd_step", param=param, grad=grad,
                           momentum_buf=bufs[0] if bufs else None)
    if not _in_place_ok(param, *bufs) or param.size == 0:
        R.sgd_step_ref(param, grad, momentum_buf, lr, momentum, dampening, weight_decay,
                       nesterov, first_step)
        return
    xp = be.xp
    t = param.dtype.type
    k = be.kernel("optim", "sgd_kernel", param.dtype)
    k(cu.grid(param.size), (cu.THREADS,), (param, cu.contig(xp, grad), bufs[0] if bufs else param,
                                           cu.i32(param.size), t(lr), t(momentum),
                                           t(1 - dampening), t(weight_decay),
                                           cu.i32(weight_decay != 0), cu.i32(momentum != 0),
                                           cu.i32(bool(nesterov)), cu.i32(bool(first_step))))


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
              decoupled):
    """One fused Adam/AdamW update, in place."""
    be = cu.device_backend("adam_step", param=param, grad=grad, exp_avg=exp_avg,
                           exp_avg_sq=exp_avg_sq)
    if not _in_place_ok(param, exp_avg, exp_avg_sq) or param.size == 0:
        R.adam_step_ref(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps,
                        weight_decay, decoupled)
        return
    xp = be.xp
    t = param.dtype.type
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    k = be.kernel("optim", "adam_kernel", param.dtype)
    k(cu.grid(param.size), (cu.THREADS,), (param, cu.contig(xp, grad), exp_avg, exp_avg_sq,
                                           cu.i32(param.size), t(lr / bias_correction1),
                                           t(math.sqrt(bias_correction2)), t(1 - beta1),
                                           t(beta2), t(1 - beta2), t(eps),
                                           t(1 - lr * weight_decay), t(weight_decay),
                                           cu.i32(weight_decay != 0 and bool(decoupled)),
                                           cu.i32(weight_decay != 0 and not decoupled)))
