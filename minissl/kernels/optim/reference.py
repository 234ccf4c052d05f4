"""NumPy reference of the fused optimiser updates: the specification (formulas in __init__.py).

Array-module generic (``xp = get_array_module(x)``), so it also runs on CuPy arrays.
"""
import math

from ...backend import get_array_module


def sgd_step_ref(param, grad, momentum_buf, lr, momentum, dampening, weight_decay, nesterov,
                 first_step):
    """One SGD step, in place on param (and momentum_buf when momentum != 0)."""
    d = grad
    if weight_decay != 0:
        d = d + weight_decay * param                    # a new array: grad is left untouched
    if momentum != 0:
        buf = momentum_buf
        if first_step:
            buf[...] = d
        else:
            buf *= momentum
            buf += (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    param -= lr * d


def adam_step_ref(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
                  decoupled):
    """One Adam (decoupled=False) or AdamW (decoupled=True) step, in place on param,
    exp_avg and exp_avg_sq."""
    xp = get_array_module(param)
    g = grad
    if weight_decay != 0:
        if decoupled:
            param *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * param                # a new array: grad is left untouched
    exp_avg += (1 - beta1) * (g - exp_avg)              # PyTorch's lerp form of the average
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    denom = xp.sqrt(exp_avg_sq) / math.sqrt(bias_correction2) + eps
    param -= step_size * exp_avg / denom
