"""Activations over a dimension (softmax, log-softmax) and dropout.

Softmax-type ops run their kernel over the last axis of a 2-D view; another ``dim`` is moved
to the end first and moved back after.
"""
import math

from ..autograd import Function
from ..backend import get_array_module
from ..kernels import softmax as _k
from . import elementwise as _ew


def _rows(x, dim, op):
    """``x`` as a contiguous (M, C) array of rows along ``dim``, and how to undo it."""
    nd = x.ndim
    if nd == 0 or not -nd <= dim < nd:
        raise ValueError(f"{op}: dim {dim} out of range for a tensor of shape {tuple(x.shape)}")
    dim %= nd
    moved = get_array_module(x).moveaxis(x, dim, -1) if dim != nd - 1 else x
    # The row count is given, not -1: a reshape cannot infer it when a size is 0.
    return moved.reshape(math.prod(moved.shape[:-1]), x.shape[dim]), moved.shape, dim


def _unrows(y2, moved_shape, dim, nd):
    y = y2.reshape(moved_shape)
    return get_array_module(y).moveaxis(y, -1, dim) if dim != nd - 1 else y


class Softmax(Function):
    """y_i = exp(x_i - max x) / sum_j exp(x_j - max x) along ``dim``;  dx = y (g - sum(g y))."""

    __slots__ = ("dim", "y2", "moved", "axis", "nd")

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        x2, self.moved, self.axis = _rows(x, self.dim, "softmax")
        self.nd = x.ndim
        self.y2 = _k.softmax_forward(x2)
        return _unrows(self.y2, self.moved, self.axis, self.nd)

    def backward(self, g):
        g2, _, _ = _rows(g, self.axis, "softmax")
        return _unrows(_k.softmax_backward(g2, self.y2), self.moved, self.axis, self.nd)


class LogSoftmax(Function):
    """y_i = x_i - logsumexp(x) along ``dim``;  dx = g - exp(y) sum(g)."""

    __slots__ = ("dim", "y2", "moved", "axis", "nd")

    def __init__(self, dim):
        self.dim = dim

    def forward(self, x):
        x2, self.moved, self.axis = _rows(x, self.dim, "log_softmax")
        self.nd = x.ndim
        self.y2 = _k.log_softmax_forward(x2)
        return _unrows(self.y2, self.moved, self.axis, self.nd)

    def backward(self, g):
        g2, _, _ = _rows(g, self.axis, "log_softmax")
        return _unrows(_k.log_softmax_backward(g2, self.y2), self.moved, self.axis, self.nd)


def softmax(x, dim):
    """Softmax along ``dim`` (required, as in current PyTorch)."""
    return Softmax(dim)(x)


def log_softmax(x, dim):
    """Log-softmax along ``dim``, computed stably with the log-sum-exp shift."""
    return LogSoftmax(dim)(x)


def relu(x):
    return _ew.ReLU()(x)


def gelu(x):
    """Exact GELU, x * Phi(x) with the erf form (PyTorch's default ``approximate='none'``)."""
    return _ew.GELU()(x)


def sigmoid(x):
    return _ew.Sigmoid()(x)


def tanh(x):
    return _ew.Tanh()(x)


class Dropout(Function):
    """y = x * m / (1 - p) with m ~ Bernoulli(1 - p) per element;  dx = g * m / (1 - p)."""

    __slots__ = ("scale",)

    def __init__(self, scale):
        self.scale = scale

    def forward(self, x):
        return x * self.scale

    def backward(self, g):
        return g * self.scale


def dropout(x, p=0.5, training=True):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (inverted
    dropout, as PyTorch), so that the expectation is unchanged; identity when not training."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability p={p} is not in [0, 1]")
    if not training or p == 0.0:
        return x
    xp = get_array_module(x.data)
    if p == 1.0:
        return x * 0.0
    if xp.__name__ == "numpy":
        from ..random import default_generator
        u = default_generator().random(x.shape, dtype=x.dtype)
    else:
        u = xp.random.random(x.shape, dtype=x.dtype)
    scale = (u >= p) * x.dtype.type(1.0 / (1.0 - p))
    return Dropout(scale.astype(x.dtype, copy=False))(x)

