"""Layer norm over the rows of (M, D) and training-mode batch norm over (N, C, L); and the L2
normalisation of rows (``l2_normalize_forward``/``_backward``, with its math there).

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

Each public function checks its arguments once, then runs one of the three versions in this
folder: the CUDA kernels (norm.cu, launched by cuda.py) for CuPy arrays, the Cython kernels
(_cpu.pyx, with its C in norm.h and norm_impl.h) for float32/float64 NumPy arrays, the
``*_ref`` NumPy reference (reference.py) otherwise.
"""
import numpy as np

from .._dispatch import check_float as _check_float, check_same as _check_same
from .._dispatch import compiled, gpu, on_device
from .reference import (batch_norm_backward_ref, batch_norm_forward_ref, l2_normalize_backward_ref,
                        l2_normalize_forward_ref, layer_norm_backward_ref, layer_norm_forward_ref)

__all__ = [
    "layer_norm_forward", "layer_norm_backward", "batch_norm_forward", "batch_norm_backward",
    "l2_normalize_forward", "l2_normalize_backward",
    "layer_norm_forward_ref", "layer_norm_backward_ref", "batch_norm_forward_ref",
    "batch_norm_backward_ref", "l2_normalize_forward_ref", "l2_normalize_backward_ref",
]



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


def _check_stats(fn, grad_y, x, mean, rstd, weight, ndim, group_axis):
    """The arguments of a backward: x (``ndim``-D) and grad_y alike, the forward's mean and
    rstd (one per group along ``group_axis``), an optional weight (one per feature, axis 1)."""
    _check_float(fn, "x", x, ndim)
    _check_grad(fn, grad_y, x)
    if mean is None or rstd is None:
        raise TypeError(f"{fn}: mean and rstd are required (the forward's results)")
    _check_vector(fn, "mean", mean, x.shape[group_axis], x, dtype=False)
    _check_vector(fn, "rstd", rstd, x.shape[group_axis], x, dtype=False)
    _check_vector(fn, "weight", weight, x.shape[1], x)


def _contig(a, dtype):
    return None if a is None else np.ascontiguousarray(a, dtype=dtype)


def layer_norm_forward(x, weight=None, bias=None, eps=1e-5):
    """Layer norm of each row of x (M, D) with optional weight and bias (D,).

    Returns ``(y, mean, rstd)``: y (M, D), mean (M,) and rstd = 1/sqrt(var + eps) (M,) with
    the biased variance, all in x's dtype. See the module docstring for the math.
    """
    fn = "layer_norm_forward"
    _check_float(fn, "x", x, 2)
    _check_vector(fn, "weight", weight, x.shape[1], x)
    _check_vector(fn, "bias", bias, x.shape[1], x)
    if on_device(x):
        return gpu("norm", fn)(x, weight, bias, eps)
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
    fn = "layer_norm_backward"
    _check_stats(fn, grad_y, x, mean, rstd, weight, ndim=2, group_axis=0)
    if on_device(x):
        return gpu("norm", fn)(grad_y, x, mean, rstd, weight)
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
    fn = "batch_norm_forward"
    _check_float(fn, "x", x, 3)
    _check_vector(fn, "weight", weight, x.shape[1], x)
    _check_vector(fn, "bias", bias, x.shape[1], x)
    if x.shape[0] * x.shape[2] == 0 and x.shape[1] > 0:
        raise ValueError(f"{fn}: batch statistics need at least one value per channel, got x "
                         f"of shape {tuple(x.shape)}")
    if on_device(x):
        return gpu("norm", fn)(x, weight, bias, eps, relu)
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
    fn = "batch_norm_backward"
    _check_stats(fn, grad_y, x, mean, rstd, weight, ndim=3, group_axis=1)
    if relu_output is not None:
        _check_float(fn, "relu_output", relu_output, 3)
        _check_same(fn, ("relu_output", "x"), (relu_output, x))
    if on_device(x):
        return gpu("norm", fn)(grad_y, x, mean, rstd, weight, relu_output)
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


def l2_normalize_forward(x, eps=1e-12):
    """Each row of x (M, D) over its L2 norm, clamped below at eps:

        norm_i = max(||x_i||_2, eps),    y_i = x_i / norm_i

    (``torch.nn.functional.normalize`` with p = 2 along the rows). Returns ``(y, norm)``: y in
    x's dtype, norm (M,) float64, the norms' squares summed in float64.
    """
    fn = "l2_normalize_forward"
    _check_float(fn, "x", x, 2)
    if on_device(x):
        return gpu("norm", fn)(x, eps)
    ext = compiled("norm", x)
    if ext is None or x.size == 0:
        return l2_normalize_forward_ref(x, eps)
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    norm = np.empty(x.shape[0], dtype=np.float64)
    ext.l2_normalize_forward(x, float(eps), y, norm)
    return y, norm


def l2_normalize_backward(grad_y, y, norm, eps=1e-12):
    """The input gradient of l2_normalize_forward, from its y and norm:

        dx_i = (g_i - y_i <g_i, y_i>) / norm_i

    with <g_i, y_i> taken as 0 on a row whose norm was clamped (norm_i <= eps): there
    y_i = x_i / eps is linear in x_i, and an all-zero row gets the finite gradient g_i / eps.
    """
    fn = "l2_normalize_backward"
    _check_float(fn, "y", y, 2)
    _check_float(fn, "grad_y", grad_y, 2)
    _check_same(fn, ("grad_y", "y"), (grad_y, y))
    _check_vector(fn, "norm", norm, y.shape[0], y, dtype=False)
    if on_device(y):
        return gpu("norm", fn)(grad_y, y, norm, eps)
    ext = compiled("norm", y)
    if ext is None or y.size == 0:
        return l2_normalize_backward_ref(grad_y, y, norm, eps)
    grad_y, y = np.ascontiguousarray(grad_y), np.ascontiguousarray(y)
    dx = np.empty_like(y)
    ext.l2_normalize_backward(grad_y, y, _contig(norm, np.float64), float(eps), dx)
    return dx
