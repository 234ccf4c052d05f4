"""Layer norm over the rows of (M, D) and training-mode batch norm over (N, C, L).

Both normalise a group of n values x_1..x_n (a row for layer norm; the N*L values of a channel
for batch norm) with their own statistics, then apply an optional per-feature affine map:

    mean = (1/n) sum_k x_k,    var = (1/n) sum_k (x_k - mean)^2     (biased variance)
    rstd = 1 / sqrt(var + eps),    xhat_k = (x_k - mean) * rstd
    y_k  = weight * xhat_k + bias

Adjoint, with g = dL/dy and gh_k = g_k * weight (the gradient reaching xhat):

    dx_k      = rstd * (gh_k - (1/n) sum_j gh_j - xhat_k * (1/n) sum_j gh_j xhat_j)
    d weight  = sum of g * xhat  over the groups that share the weight
    d bias    = sum of g         over the same groups

(Ba, Kiros & Hinton 2016, "Layer Normalization"; Ioffe & Szegedy 2015, "Batch Normalization".)
For layer norm the groups are rows and weight/bias are per column (D,); for batch norm the
groups are channels and weight/bias are per channel (C,). Callers view BatchNorm1d input
(N, C) as (N, C, 1) and BatchNorm2d input (N, C, H, W) as (N, C, H*W); they also update the
running statistics from the returned mean and var (PyTorch uses the unbiased variance there,
var * n / (n - 1)).

Statistics are returned in the input's dtype (as in PyTorch) but are computed in float64:
means and variances of many float32 values lose digits when summed in float32. The variance
is the two-pass sum of squared deviations, which does not cancel catastrophically the way
E[x^2] - E[x]^2 does when |mean| >> std.

The backward functions always return the bias gradient (the sum of g; it is cheap, and the
function cannot know whether the caller has a bias); the weight gradient is None exactly when
``weight`` is None.

Each public function validates its input and dispatches: the Cython kernels (csrc/norm.pyx)
for float32/float64 NumPy arrays, the ``*_ref`` NumPy reference otherwise; the reference uses
``xp = get_array_module(x)`` and so also runs on CuPy arrays.
"""
import numpy as np

from ..backend import get_array_module
from ._loader import compiled, gpu
# (module-private names, as minissl/kernels/cuda.py imports the checks from here)
from ._loader import check_float as _check_float, check_same as _check_same

__all__ = [
    "layer_norm_forward", "layer_norm_backward", "batch_norm_forward", "batch_norm_backward",
    "layer_norm_forward_ref", "layer_norm_backward_ref", "batch_norm_forward_ref",
    "batch_norm_backward_ref",
]


# --------------------------------------------------------------------------------------------
# NumPy reference: the specification
# --------------------------------------------------------------------------------------------

def _moments(x, axis):
    """Mean and biased variance over ``axis``, in float64, keepdims; 0 and 0 for empty groups."""
    xp = get_array_module(x)
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


# --------------------------------------------------------------------------------------------
# Validation and dispatch
# --------------------------------------------------------------------------------------------

def _check_vector(fn, name, a, n, x, dtype=True):
    """An optional per-feature vector: None, or (n,) of x's dtype."""
    if a is None:
        return
    _check_float(fn, name, a, 1)
    if a.shape[0] != n:
        raise ValueError(f"{fn}: {name} must have shape ({n},) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(a.shape)}")
    if dtype and a.dtype != x.dtype:
        raise TypeError(f"{fn}: {name} must have x's dtype {x.dtype}, got {a.dtype}")


def _check_grad(fn, grad_y, x):
    _check_float(fn, "grad_y", grad_y, x.ndim)
    _check_same(fn, ("grad_y", "x"), (grad_y, x))


def _contig(a, dtype):
    return None if a is None else np.ascontiguousarray(a, dtype=dtype)


def layer_norm_forward(x, weight=None, bias=None, eps=1e-5):
    """Layer norm of each row of x (M, D) with optional weight and bias (D,).

    Returns ``(y, mean, rstd)``: y (M, D), mean (M,) and rstd = 1/sqrt(var + eps) (M,) with
    the biased variance, all in x's dtype. See the module docstring for the math.
    """
    if get_array_module(x) is not np:  # GPU: minissl/kernels/cuda.py
        return gpu("layer_norm_forward", layer_norm_forward_ref)(x, weight, bias, eps)
    fn = "layer_norm_forward"
    _check_float(fn, "x", x, 2)
    _check_vector(fn, "weight", weight, x.shape[1], x)
    _check_vector(fn, "bias", bias, x.shape[1], x)
    ext = compiled("norm", x)
    if ext is None or x.size == 0:
        return layer_norm_forward_ref(x, weight, bias, eps)
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    mean = np.empty(x.shape[0], dtype=x.dtype)
    rstd = np.empty(x.shape[0], dtype=x.dtype)
    ext.layer_norm_forward(x, _contig(weight, x.dtype), _contig(bias, x.dtype), float(eps),
                           y, mean, rstd)
    return y, mean, rstd


def layer_norm_backward(grad_y, x, mean, rstd, weight=None):
    """Gradients of layer_norm_forward: ``(grad_x, grad_weight or None, grad_bias)``.

    ``mean`` and ``rstd`` are the forward's results; grad_weight is None when weight is None.
    """
    if get_array_module(grad_y) is not np:  # GPU: minissl/kernels/cuda.py
        return gpu("layer_norm_backward", layer_norm_backward_ref)(grad_y, x, mean, rstd, weight)
    fn = "layer_norm_backward"
    _check_float(fn, "x", x, 2)
    _check_grad(fn, grad_y, x)
    _check_vector(fn, "mean", mean, x.shape[0], x, dtype=False)
    _check_vector(fn, "rstd", rstd, x.shape[0], x, dtype=False)
    if mean is None or rstd is None:
        raise TypeError(f"{fn}: mean and rstd are required (the forward's results)")
    _check_vector(fn, "weight", weight, x.shape[1], x)
    ext = compiled("norm", x)
    if ext is None or x.size == 0:
        return layer_norm_backward_ref(grad_y, x, mean, rstd, weight)
    grad_y, x = np.ascontiguousarray(grad_y), np.ascontiguousarray(x)
    dx = np.empty_like(x)
    dw = None if weight is None else np.empty_like(weight, dtype=x.dtype)
    db = np.empty(x.shape[1], dtype=x.dtype)
    ext.layer_norm_backward(grad_y, x, _contig(mean, np.float64), _contig(rstd, np.float64),
                            _contig(weight, x.dtype), dx, dw, db)
    return dx, dw, db


def batch_norm_forward(x, weight=None, bias=None, eps=1e-5, relu=False):
    """Training-mode batch norm of x (N, C, L) with batch statistics per channel.

    Returns ``(y, mean, var, rstd)``: y (N, C, L); mean, biased var and rstd (C,), in x's
    dtype. weight and bias are optional (C,). ``relu``: y = max(batch norm, 0), a ReLU fused
    into the same pass (no second array). An empty batch (N * L == 0) has no statistics and
    raises ValueError.
    """
    if get_array_module(x) is not np:  # GPU: minissl/kernels/cuda.py, the ReLU a second pass
        y, mean, var, rstd = gpu("batch_norm_forward", batch_norm_forward_ref)(x, weight, bias,
                                                                              eps)
        if relu:
            get_array_module(x).maximum(y, 0, out=y)
        return y, mean, var, rstd
    fn = "batch_norm_forward"
    _check_float(fn, "x", x, 3)
    _check_vector(fn, "weight", weight, x.shape[1], x)
    _check_vector(fn, "bias", bias, x.shape[1], x)
    if x.shape[0] * x.shape[2] == 0 and x.shape[1] > 0:
        raise ValueError(f"{fn}: batch statistics need at least one value per channel, got x "
                         f"of shape {tuple(x.shape)}")
    ext = compiled("norm", x)
    if ext is None or x.size == 0:
        return batch_norm_forward_ref(x, weight, bias, eps, relu)
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    c = x.shape[1]
    mean, var, rstd = (np.empty(c, dtype=x.dtype) for _ in range(3))
    ext.batch_norm_forward(x, _contig(weight, x.dtype), _contig(bias, x.dtype), float(eps),
                           y, mean, var, rstd, bool(relu))
    return y, mean, var, rstd


def batch_norm_backward(grad_y, x, mean, rstd, weight=None, relu_output=None):
    """Gradients of batch_norm_forward: ``(grad_x, grad_weight or None, grad_bias)``. With a
    fused ReLU pass its output y as ``relu_output``: grad_y is masked by y > 0 in the same
    passes."""
    if get_array_module(grad_y) is not np:  # GPU: minissl/kernels/cuda.py
        if relu_output is not None:
            grad_y = grad_y * (relu_output > 0)
        return gpu("batch_norm_backward", batch_norm_backward_ref)(grad_y, x, mean, rstd, weight)
    fn = "batch_norm_backward"
    _check_float(fn, "x", x, 3)
    _check_grad(fn, grad_y, x)
    if mean is None or rstd is None:
        raise TypeError(f"{fn}: mean and rstd are required (the forward's results)")
    _check_vector(fn, "mean", mean, x.shape[1], x, dtype=False)
    _check_vector(fn, "rstd", rstd, x.shape[1], x, dtype=False)
    _check_vector(fn, "weight", weight, x.shape[1], x)
    if relu_output is not None:
        _check_float(fn, "relu_output", relu_output, 3)
        _check_same(fn, ("relu_output", "x"), (relu_output, x))
    ext = compiled("norm", x)
    if ext is None or x.size == 0:
        return batch_norm_backward_ref(grad_y, x, mean, rstd, weight, relu_output)
    grad_y, x = np.ascontiguousarray(grad_y), np.ascontiguousarray(x)
    if relu_output is not None:
        relu_output = np.ascontiguousarray(relu_output)
    dx = np.empty_like(x)
    dw = None if weight is None else np.empty(x.shape[1], dtype=x.dtype)
    db = np.empty(x.shape[1], dtype=x.dtype)
    ext.batch_norm_backward(grad_y, x, _contig(mean, np.float64), _contig(rstd, np.float64),
                            _contig(weight, x.dtype), dx, dw, db, relu_output)
    return dx, dw, db
