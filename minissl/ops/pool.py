"""Pooling over 2-D windows of NCHW input.

max_pool2d: y = max over each window; the gradient goes to the (first) maximal element,
recorded as an argmax index per output. avg_pool2d: y = sum over each window / (kh*kw)
(zero padding counted, PyTorch's default count_include_pad=True); the gradient is spread
evenly over the window. adaptive_avg_pool2d: windows [floor(i H / out), ceil((i+1) H / out)).
"""
import math

from ..autograd import Function
from ..backend import get_array_module
from ..kernels import pool as _k


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _check4(op, x):
    if x.ndim != 4:
        raise ValueError(f"{op}: expected input (N, C, H, W), got shape {x.shape}")


class MaxPool2d(Function):
    __slots__ = ("k", "s", "p", "argmax", "shape")

    def __init__(self, k, s, p):
        self.k, self.s, self.p = k, s, p

    def forward(self, x):
        self.shape = x.shape
        y, self.argmax = _k.max_pool2d_forward(x, self.k, self.s, self.p)
        return y

    def backward(self, g):
        return _k.max_pool2d_backward(g, self.argmax, self.shape, self.k, self.s, self.p)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max over kernel_size windows (stride defaults to kernel_size), -inf padding."""
    _check4("max_pool2d", x)
    k = _pair(kernel_size)
    return MaxPool2d(k, _pair(stride) if stride is not None else k, _pair(padding))(x)


class AvgPool2d(Function):
    __slots__ = ("k", "s", "p", "shape")

    def __init__(self, k, s, p):
        self.k, self.s, self.p = k, s, p

    def forward(self, x):
        self.shape = x.shape
        return _k.avg_pool2d_forward(x, self.k, self.s, self.p)

    def backward(self, g):
        return _k.avg_pool2d_backward(g, self.shape, self.k, self.s, self.p)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over kernel_size windows (stride defaults to kernel_size), zero padding counted."""
    _check4("avg_pool2d", x)
    k = _pair(kernel_size)
    return AvgPool2d(k, _pair(stride) if stride is not None else k, _pair(padding))(x)


class GlobalAvgPool(Function):
    """y[n, c] = mean of x[n, c] over H x W (kept as 1 x 1);  dx = g / (H W) everywhere."""

    __slots__ = ("shape",)

    def forward(self, x):
        self.shape = x.shape
        return x.mean(axis=(2, 3), keepdims=True)

    def backward(self, g):
        xp = get_array_module(g)
        hw = self.shape[2] * self.shape[3]
        return xp.broadcast_to(g / g.dtype.type(hw), self.shape).copy()


class AdaptiveAvgPool2d(Function):
    """Mean over the adaptive windows rows [floor(i H/oh), ceil((i+1) H/oh)) x cols (same)."""

    __slots__ = ("out", "shape", "windows")

    def __init__(self, out):
        self.out = out

    def forward(self, x):
        xp = get_array_module(x)
        self.shape = x.shape
        H, W = x.shape[2:]
        oh, ow = self.out
        rows = [(i * H // oh, math.ceil((i + 1) * H / oh)) for i in range(oh)]
        cols = [(j * W // ow, math.ceil((j + 1) * W / ow)) for j in range(ow)]
        self.windows = (rows, cols)
        y = xp.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                y[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
        return y

    def backward(self, g):
        xp = get_array_module(g)
        gx = xp.zeros(self.shape, dtype=g.dtype)
        rows, cols = self.windows
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                n = (r1 - r0) * (c1 - c0)
                gx[:, :, r0:r1, c0:c1] += (g[:, :, i, j] / g.dtype.type(n))[:, :, None, None]
        return gx


def adaptive_avg_pool2d(x, output_size):
    """Average-pool x (N, C, H, W) to (N, C, oh, ow) with PyTorch's adaptive windows."""
    _check4("adaptive_avg_pool2d", x)
    out = _pair(output_size)
    if min(out) < 1:
        raise ValueError(f"adaptive_avg_pool2d: output_size {output_size} must be >= 1")
    if x.shape[2] == 0 or x.shape[3] == 0:   # the mean of no pixel is not a number
        raise ValueError(f"adaptive_avg_pool2d: input of shape {x.shape} has no pixels to "
                         "average (H and W must be >= 1)")
    if out == (1, 1):
        return GlobalAvgPool()(x)
    return AdaptiveAvgPool2d(out)(x)
