"""Fused optimiser updates, in place: SGD (momentum, Nesterov, weight decay) and Adam/AdamW.

Each function updates ``param`` and its state buffers in place, one element at a time, with
the same formulas, in the same order, as PyTorch's single-tensor implementations
(``torch/optim/sgd.py`` and ``torch/optim/adam.py``, ``foreach=False``):

SGD (Sutskever et al. 2013 for the momentum form; Nesterov as in PyTorch):

    d = g + weight_decay * p
    if momentum != 0:
        buf = d                                           on the first step
        buf = momentum * buf + (1 - dampening) * d        afterwards
        d = d + momentum * buf   if nesterov   else   buf
    p = p - lr * d

Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019, decoupled weight decay);
``step`` is the 1-based number of this update:

    AdamW: p = p * (1 - lr * weight_decay)       Adam: g = g + weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2
    p = p - lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)

``grad`` is never modified. The Python scalars of the formulas (1 - beta1, the bias
corrections, the step size, ...) are computed in double and then rounded to the arrays'
dtype, and every array operation runs in that dtype, as in PyTorch. The Cython kernels
(_cpu.pyx, with its C in optim.h and optim_impl.h) and the CUDA kernels (optim.cu, launched by
cuda.py) perform the same operations in the same order in one pass, so the two agree
with each other, and with PyTorch, to float32 rounding (PyTorch's vector loops fuse some
multiply-adds, which changes the last bit now and then).

Param and state arrays that are not C-contiguous (views) take the reference path, which
updates them in place whatever their strides. The parameter, its gradient and its state must
be distinct arrays: the compiled kernels raise ValueError when they overlap.
"""
import math

import numpy as np

from .._dispatch import check_float, check_same, compiled, gpu, on_device
from .reference import adam_step_ref, sgd_step_ref

__all__ = ["sgd_step", "adam_step", "sgd_step_ref", "adam_step_ref"]



def _check_arrays(fn, param, named):
    """param: a writeable float array; every other array: param's shape and dtype. (CuPy
    arrays' flags have no ``writeable``: they count as writeable.)"""
    check_float(fn, "param", param)
    for name, a in named:
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"{fn}: {name} must be an ndarray, got {type(a).__name__}")
    check_same(fn, ["param"] + [name for name, _ in named], [param] + [a for _, a in named])
    for name, a in [("param", param)] + list(named[1:]):     # all but grad are written
        if not getattr(getattr(a, "flags", None), "writeable", True):
            raise ValueError(f"{fn}: {name} is read-only; it is updated in place")


def sgd_step(param, grad, momentum_buf, lr, momentum, dampening, weight_decay, nesterov,
             first_step):
    """One SGD step in place (see the module docstring).

    momentum_buf: the momentum buffer (param's shape and dtype), required when momentum != 0
    and then filled with d on ``first_step``; ignored (may be None) when momentum == 0.
    """
    fn = "sgd_step"
    named = [("grad", grad)]
    if momentum != 0:
        if momentum_buf is None:
            raise ValueError(f"{fn}: momentum = {momentum} needs a momentum_buf of param's "
                             f"shape {tuple(getattr(param, 'shape', ()))}")
        named.append(("momentum_buf", momentum_buf))
    _check_arrays(fn, param, named)
    if on_device(param):
        return gpu("optim", fn)(param, grad, momentum_buf, lr, momentum, dampening,
                                weight_decay, nesterov, first_step)
    bufs = (momentum_buf,) if momentum != 0 else ()
    # The arrays updated in place must be C-contiguous for the kernel; the reference updates
    # strided views in place.
    ext = compiled("optim", param, *bufs, contiguous=True)
    if ext is None or param.size == 0:
        sgd_step_ref(param, grad, momentum_buf, lr, momentum, dampening, weight_decay,
                     nesterov, first_step)
        return
    grad = np.ascontiguousarray(grad)
    flat = lambda a: a.reshape(-1)  # noqa: E731  (a view: C-contiguous)
    ext.sgd_step(flat(param), flat(grad), flat(momentum_buf) if bufs else None, float(lr),
                 float(momentum), float(1 - dampening), float(weight_decay), bool(nesterov),
                 bool(first_step))


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
              decoupled):
    """One Adam / AdamW step in place (see the module docstring); ``step`` >= 1 counts this
    update, ``decoupled=True`` is AdamW."""
    fn = "adam_step"
    _check_arrays(fn, param, [("grad", grad), ("exp_avg", exp_avg),
                              ("exp_avg_sq", exp_avg_sq)])
    if int(step) != step or step < 1:
        raise ValueError(f"{fn}: step counts updates from 1, got {step!r}")
    if on_device(param):
        return gpu("optim", fn)(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps,
                                weight_decay, decoupled)
    ext = compiled("optim", param, exp_avg, exp_avg_sq, contiguous=True)
    if ext is None or param.size == 0:
        adam_step_ref(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps,
                      weight_decay, decoupled)
        return
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    grad = np.ascontiguousarray(grad)
    flat = lambda a: a.reshape(-1)  # noqa: E731
    ext.adam_step(flat(param), flat(grad), flat(exp_avg), flat(exp_avg_sq),
                  float(lr / bias_correction1), float(math.sqrt(bias_correction2)),
                  float(1 - beta1), float(beta2), float(1 - beta2), float(eps),
                  float(1 - lr * weight_decay) if decoupled else 1.0,
                  0.0 if decoupled else float(weight_decay))
