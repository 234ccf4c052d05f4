"""Normalisation ops: batch norm, layer norm, L_p normalisation, cosine similarity.

Batch norm (Ioffe & Szegedy 2015), per channel c over the N*L values of the batch:
    xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps),  y = weight * xhat + bias
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = g * weight
Layer norm (Ba et al. 2016) is the same algebra over the last dims of each row instead.
"""
import numpy as np

from ..autograd import Function, Tensor
from ..backend import get_array_module
from ..kernels import norm as _k
from .activation import _rows, _unrows, relu as relu_op


def _optional(*tensors):
    """The Tensors that are present, and a tuple telling which of the slots were filled."""
    return [t for t in tensors if t is not None], tuple(t is not None for t in tensors)


def _split_grads(gx, gw, gb, present):
    out = [gx]
    if present[0]:
        out.append(gw)
    if present[1]:
        out.append(gb)
    return tuple(out)


class BatchNormTrain(Function):
    """Training-mode batch norm on x viewed as (N, C, L) with batch statistics (see module).

    ``relu=True`` fuses a ReLU: y = max(bn(x), 0), and backward masks g by y > 0 inside the
    kernel's passes; one op and one array instead of two (what ``nn.fuse`` asks for).

    ``running`` = (running_mean or None, running_var or None, momentum): the forward updates
    them in place from the mean and variance the kernel returns (see ``batch_norm``)."""

    __slots__ = ("eps", "present", "relu", "running", "x3", "y3", "mean", "rstd", "w", "shape")

    def __init__(self, eps, present, relu=False, running=(None, None, 0.0)):
        self.eps, self.present, self.relu, self.running = eps, present, relu, running

    def forward(self, x, *wb):
        w = wb[0] if self.present[0] else None
        b = wb[-1] if self.present[1] else None
        self.shape = x.shape
        self.x3 = x.reshape(x.shape[0], x.shape[1], -1)
        y, self.mean, var, self.rstd = _k.batch_norm_forward(self.x3, w, b, self.eps, self.relu)
        self.y3 = y if self.relu else None
        self.w = w
        _update_running(*self.running, self.mean, var, self.x3.shape[0] * self.x3.shape[2])
        self.running = None                  # no reference to the module's buffers in the graph
        return y.reshape(x.shape)

    def backward(self, g):
        gx, gw, gb = _k.batch_norm_backward(g.reshape(self.x3.shape), self.x3, self.mean,
                                            self.rstd, self.w, relu_output=self.y3)
        return _split_grads(gx.reshape(self.shape), gw, gb, self.present)


def _update_running(running_mean, running_var, momentum, mean, var, n):
    """running = (1 - momentum) running + momentum batch, in place, with the unbiased batch
    variance var * n / (n - 1) for running_var (as PyTorch)."""
    for run, batch in ((running_mean, mean), (running_var, var * (n / (n - 1)))):
        if run is not None:
            r = run.data if isinstance(run, Tensor) else run
            r *= 1 - momentum
            r += (momentum * batch).astype(r.dtype, copy=False)


class BatchNormEval(Function):
    """Eval-mode batch norm, an affine map per channel with the running statistics:
    y = (x - rm) s w + b with s = 1/sqrt(rv + eps);  dx = g s w,  dw = sum g xhat,  db = sum g."""

    __slots__ = ("present", "rm", "s", "xhat", "scale", "axes")

    def __init__(self, present, rm, rv, eps):
        self.present, self.rm = present, rm
        self.s = 1.0 / get_array_module(rv).sqrt(rv + eps)

    def forward(self, x, *wb):
        shape = (1, -1) + (1,) * (x.ndim - 2)   # broadcast (C,) over (N, C, *)
        self.axes = (0,) + tuple(range(2, x.ndim))
        self.xhat = ((x - self.rm.reshape(shape)) * self.s.reshape(shape)).astype(x.dtype)
        self.scale = self.s.reshape(shape).astype(x.dtype)
        y = self.xhat
        if self.present[0]:
            self.scale = self.scale * wb[0].reshape(shape)
            y = y * wb[0].reshape(shape)
        if self.present[1]:
            y = y + wb[-1].reshape(shape)
        return y

    def backward(self, g):
        gx = g * self.scale
        gw = (g * self.xhat).sum(axis=self.axes) if self.present[0] else None
        gb = g.sum(axis=self.axes) if self.present[1] else None
        return _split_grads(gx, gw, gb, self.present)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, relu=False):
    """Batch normalisation of x (N, C, *) per channel, as ``torch.nn.functional.batch_norm``.

    Training: normalise with the batch mean and biased variance, and update the running arrays
    in place: ``running = (1 - momentum) * running + momentum * batch`` with the UNBIASED batch
    variance (n / (n - 1) times the biased one), as PyTorch does. Eval: use the running arrays.
    ``running_mean``/``running_var`` may be None in training (then nothing is updated).
    ``relu=True`` (a minissl extension) returns ``relu(batch_norm(...))``, in training as one
    fused op.
    """
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected input (N, C, *), got shape {x.shape}")
    C = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(f"batch_norm: {name} of shape {tuple(t.shape)} does not match the "
                             f"{C} channels of input {x.shape}")
    tensors, present = _optional(weight, bias)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: eval mode needs running_mean and running_var")
        rm = running_mean.data if isinstance(running_mean, Tensor) else running_mean
        rv = running_var.data if isinstance(running_var, Tensor) else running_var
        y = BatchNormEval(present, rm, rv, eps)(x, *tensors)
        return relu_op(y) if relu else y
    n = x.numel() // max(C, 1)
    if n <= 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                         f"got input of shape {x.shape}")
    return BatchNormTrain(eps, present, relu, (running_mean, running_var, momentum))(x, *tensors)


class LayerNorm(Function):
    """Layer norm of x over its last dims ``normalized_shape`` (rows of D = prod of them).

    y = (x - mean) * rstd * weight + bias per row;  the backward is the kernel's."""

    __slots__ = ("eps", "present", "D", "x2", "mean", "rstd", "w", "nshape")

    def __init__(self, nshape, eps, present):
        self.nshape, self.eps, self.present = nshape, eps, present
        D = 1
        for s in nshape:
            D *= s
        self.D = D

    def forward(self, x, *wb):
        w = wb[0].reshape(-1) if self.present[0] else None
        b = wb[-1].reshape(-1) if self.present[1] else None
        self.x2 = x.reshape(-1, self.D)
        y, self.mean, self.rstd = _k.layer_norm_forward(self.x2, w, b, self.eps)
        self.w = w
        return y.reshape(x.shape)

    def backward(self, g):
        gx, gw, gb = _k.layer_norm_backward(g.reshape(self.x2.shape), self.x2, self.mean,
                                            self.rstd, self.w)
        gw = None if gw is None else gw.reshape(self.nshape)
        gb = None if gb is None else gb.reshape(self.nshape)
        return _split_grads(gx.reshape(g.shape), gw, gb, self.present)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise each row over the last dims ``normalized_shape`` (biased variance), then
    scale by ``weight`` and shift by ``bias`` (both of ``normalized_shape``), as PyTorch."""
    nshape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[x.ndim - len(nshape):] != nshape or len(nshape) > x.ndim:
        raise ValueError(f"layer_norm: normalized_shape {nshape} does not match the last dims "
                         f"of input {x.shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != nshape:
            raise ValueError(f"layer_norm: {name} of shape {tuple(t.shape)} does not match "
                             f"normalized_shape {nshape}")
    if 0 in nshape:
        raise ValueError(f"layer_norm: normalized_shape {nshape} holds no element to "
                         f"normalise over (input {x.shape})")
    tensors, present = _optional(weight, bias)
    return LayerNorm(nshape, eps, present)(x, *tensors)


class Normalize(Function):
    """y = x / max(||x||_2, eps) along ``dim``.

    dx = (g - y <g, y>) / n where n = ||x|| > eps, and g / eps where the norm was clamped, so an
    all-zero row gets a finite gradient (an unfused sqrt would give 0 * inf = NaN there).
    The rows (``dim`` moved last) go to the norm kernels' ``l2_normalize_forward`` and
    ``_backward`` (minissl/kernels/norm: one pass a row, sums in float64).
    """

    __slots__ = ("dim", "eps", "y", "n", "moved")

    def __init__(self, dim, eps):
        self.dim, self.eps = dim, eps

    def forward(self, x):
        rows, self.moved, _ = _rows(x, self.dim, "normalize")
        self.y, self.n = _k.l2_normalize_forward(rows, self.eps)
        return _unrows(self.y, self.moved, self.dim, x.ndim)

    def backward(self, g):
        g2, _, _ = _rows(g, self.dim, "normalize")
        dx = _k.l2_normalize_backward(g2, self.y, self.n, self.eps)
        return _unrows(dx, self.moved, self.dim, g.ndim)


def normalize(x, p=2, dim=1, eps=1e-12):
    """x / max(||x||_p, eps) along ``dim`` (``torch.nn.functional.normalize``)."""
    nd = x.ndim
    if nd == 0 or not -nd <= dim < nd:
        raise ValueError(f"normalize: dim {dim} out of range for shape {x.shape}")
    if p == 2:
        return Normalize(dim % nd, eps)(x)
    norm = (x.abs() ** p).sum(dim=dim, keepdim=True) ** (1.0 / p)
    return x / norm.clamp(min=eps)


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """<x1, x2> / (max(||x1||, eps) max(||x2||, eps)) along ``dim``, broadcasting x1 and x2
    (each vector is normalised separately, as in current PyTorch)."""
    try:
        shape = np.broadcast_shapes(x1.shape, x2.shape)
    except ValueError:
        raise ValueError(f"cosine_similarity: shapes {x1.shape} and {x2.shape} do not "
                         "broadcast") from None
    if not -len(shape) <= dim < len(shape):
        raise ValueError(f"cosine_similarity: dim {dim} out of range for shape {shape}")
    neg = dim % len(shape) - len(shape)  # the same axis counted from the end, valid for both
    if -neg > min(x1.ndim, x2.ndim):
        raise ValueError(f"cosine_similarity: dim {dim} is missing from shape "
                         f"{x1.shape if x1.ndim < x2.ndim else x2.shape}")
    # Broadcasting along ``dim`` itself must happen before the norms are taken (as torch):
    # a size-1 vector repeated n times has sqrt(n) times its norm.
    n = shape[neg]
    ones = (n,) + (1,) * (-neg - 1)
    if x1.shape[neg] != n:
        x1 = x1 * get_array_module(x1.data).ones(ones, dtype=x1.dtype)
    if x2.shape[neg] != n:
        x2 = x2 * get_array_module(x2.data).ones(ones, dtype=x2.dtype)
    return (normalize(x1, dim=neg, eps=eps) * normalize(x2, dim=neg, eps=eps)).sum(dim=neg)
