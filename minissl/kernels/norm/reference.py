"""NumPy reference of layer norm and batch norm: the specification (the math is in __init__.py).

Array-module generic (``xp = get_array_module(x)``), so it also runs on CuPy arrays.
"""
import numpy as np

from ...backend import get_array_module


def _moments(x, axis):
    """Mean and biased variance over ``axis``, in float64, keepdims; 0 and 0 for empty groups."""
    n = 1
    for a in axis:
        n *= x.shape[a]
    x64 = x.astype(np.float64)
    mean = x64.sum(axis=axis, keepdims=True) / max(n, 1)
    var = ((x64 - mean) ** 2).sum(axis=axis, keepdims=True) / max(n, 1)
    return x64, mean, var


def _affine(xhat, weight, bias, shape):
    y = xhat
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def layer_norm_forward_ref(x, weight=None, bias=None, eps=1e-5):
    """y = (x - mean) * rstd * weight + bias, statistics over each row of x (M, D).

    Returns (y, mean (M,), rstd (M,)), all in x's dtype.
    """
    xp = get_array_module(x)
    x64, mean, var = _moments(x, axis=(1,))
    rstd = 1.0 / xp.sqrt(var + eps)
    y = _affine((x64 - mean) * rstd, weight, bias, (1, -1))
    return y.astype(x.dtype), mean[:, 0].astype(x.dtype), rstd[:, 0].astype(x.dtype)


def layer_norm_backward_ref(grad_y, x, mean, rstd, weight=None):
    """(grad_x, grad_weight or None, grad_bias) for layer_norm_forward; see the module."""
    g = grad_y.astype(np.float64)
    mean = mean.astype(np.float64)[:, None]
    rstd = rstd.astype(np.float64)[:, None]
    xhat = (x.astype(np.float64) - mean) * rstd
    gh = g if weight is None else g * weight.astype(np.float64)[None, :]
    n = max(x.shape[1], 1)
    dx = rstd * (gh - gh.sum(axis=1, keepdims=True) / n
                 - xhat * ((gh * xhat).sum(axis=1, keepdims=True) / n))
    dw = None if weight is None else (g * xhat).sum(axis=0).astype(weight.dtype)
    db = g.sum(axis=0).astype(x.dtype)
    return dx.astype(x.dtype), dw, db


def batch_norm_forward_ref(x, weight=None, bias=None, eps=1e-5, relu=False):
    """y = (x - mean_c) * rstd_c * weight_c + bias_c, statistics per channel over (N, L);
    with ``relu``, y = max(that, 0) (a fused ReLU).

    x is (N, C, L). Returns (y, mean (C,), var (C,) biased, rstd (C,)), all in x's dtype.
    """
    xp = get_array_module(x)
    x64, mean, var = _moments(x, axis=(0, 2))
    rstd = 1.0 / xp.sqrt(var + eps)
    y = _affine((x64 - mean) * rstd, weight, bias, (1, -1, 1)).astype(x.dtype)
    flat = lambda a: a.reshape(-1).astype(x.dtype)  # noqa: E731
    return (xp.maximum(y, 0) if relu else y), flat(mean), flat(var), flat(rstd)


def batch_norm_backward_ref(grad_y, x, mean, rstd, weight=None, relu_output=None):
    """(grad_x, grad_weight or None, grad_bias) for batch_norm_forward; see the module. With
    ``relu_output`` (the forward's y with a fused ReLU), grad_y first goes through the ReLU's
    backward: grad_y * (relu_output > 0)."""
    if relu_output is not None:
        grad_y = grad_y * (relu_output > 0)
    n = max(x.shape[0] * x.shape[2], 1)
    g = grad_y.astype(np.float64)
    mean = mean.astype(np.float64).reshape(1, -1, 1)
    rstd = rstd.astype(np.float64).reshape(1, -1, 1)
    xhat = (x.astype(np.float64) - mean) * rstd
    sum_g = g.sum(axis=(0, 2), keepdims=True)
    sum_gx = (g * xhat).sum(axis=(0, 2), keepdims=True)
    w = 1.0 if weight is None else weight.astype(np.float64).reshape(1, -1, 1)
    dx = w * rstd * (g - sum_g / n - xhat * (sum_gx / n))
    dw = None if weight is None else sum_gx.reshape(-1).astype(weight.dtype)
    db = sum_g.reshape(-1).astype(x.dtype)
    return dx.astype(x.dtype), dw, db


def l2_normalize_forward_ref(x, eps=1e-12):
    """y = x / max(||x||_2, eps) for each row of x (M, D), computed in float64.

    Returns (y in x's dtype, norm (M,) float64: the divisor max(||x_i||, eps))."""
    xp = get_array_module(x)
    x64 = x.astype(np.float64)
    norm = xp.maximum(xp.sqrt((x64 * x64).sum(axis=1)), eps)
    return (x64 / norm[:, None]).astype(x.dtype), norm


def l2_normalize_backward_ref(grad_y, y, norm, eps=1e-12):
    """dx = (g - y <g, y>) / norm for each row, with <g, y> taken as 0 on a row whose norm was
    clamped to eps (norm <= eps: there y = x / eps does not depend on the direction of x)."""
    xp = get_array_module(y)
    g, y64 = grad_y.astype(np.float64), y.astype(np.float64)
    proj = xp.where(norm <= eps, 0.0, (g * y64).sum(axis=1))
    return ((g - y64 * proj[:, None]) / norm[:, None]).astype(y.dtype)
