"""Reductions over dimensions: sum, mean, max, var.

Each backward re-inserts the reduced axes (``keepdim``-style) so the output gradient
broadcasts against the input: the adjoint of a sum over an axis is a copy along it.
"""
from ..autograd import Function
from ..backend import get_array_module


def normalize_dims(dim, ndim, op):
    """``dim`` (None, an int or a tuple of ints, negatives allowed) as a sorted tuple of axes."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out = []
    for d in dims:
        if not isinstance(d, int) or not -max(ndim, 1) <= d < max(ndim, 1):
            raise ValueError(f"{op}: dim {d} is out of range for a tensor with {ndim} dims")
        if ndim:  # a 0-d tensor accepts dim 0 and -1 (as torch) and has no axis to reduce
            out.append(d % ndim)
    return tuple(sorted(set(out)))


def _expand_back(g, axes, keepdim, shape):
    """Reinsert the reduced axes into ``g`` and broadcast it to ``shape``."""
    xp = get_array_module(g)
    if not keepdim:
        g = xp.expand_dims(g, axes) if axes else g
    return xp.broadcast_to(g, shape)


class Sum(Function):
    """y = sum_{axes} x;  dx = g broadcast back along the summed axes."""

    integer_inputs = True

    __slots__ = ("dim", "keepdim", "axes", "shape")

    def __init__(self, dim=None, keepdim=False):
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x):
        self.axes = normalize_dims(self.dim, x.ndim, "sum")
        self.shape = x.shape
        return x.sum(axis=self.axes, keepdims=self.keepdim)

    def backward(self, g):
        return _expand_back(g, self.axes, self.keepdim, self.shape).copy()


class Mean(Function):
    """y = sum_{axes} x / n;  dx = g / n broadcast back (n = number of reduced elements)."""

    __slots__ = ("dim", "keepdim", "axes", "shape", "n")

    def __init__(self, dim=None, keepdim=False):
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x):
        self.axes = normalize_dims(self.dim, x.ndim, "mean")
        self.shape = x.shape
        n = 1
        for a in self.axes:
            n *= x.shape[a]
        self.n = n
        return x.mean(axis=self.axes, keepdims=self.keepdim)

    def backward(self, g):
        return _expand_back(g / self.n, self.axes, self.keepdim, self.shape).astype(g.dtype)


class Max(Function):
    """y = max_{axes} x;  dx = g at the maximal elements (split evenly between ties), else 0.

    The even split on ties equals ``torch.amax``; ``torch.max(dim)`` gives the whole gradient
    to the first maximum instead. The two agree wherever the maximum is unique.
    """

    integer_inputs = True

    __slots__ = ("dim", "keepdim", "axes", "x", "y")

    def __init__(self, dim=None, keepdim=False):
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x):
        self.axes = normalize_dims(self.dim, x.ndim, "max")
        if x.size == 0:
            raise ValueError(f"max: cannot reduce an empty tensor of shape {tuple(x.shape)}")
        self.x = x
        self.y = x.max(axis=self.axes, keepdims=True)
        return self.y if self.keepdim else self.y.reshape(
            [s for i, s in enumerate(x.shape) if i not in self.axes])

    def backward(self, g):
        hit = self.x == self.y
        count = hit.sum(axis=self.axes, keepdims=True)
        g = _expand_back(g, self.axes, self.keepdim, self.y.shape)
        return (hit * (g / count)).astype(self.x.dtype, copy=False)


class Var(Function):
    """y = sum (x - mean)^2 / (n - ddof), ddof = 1 if unbiased;  dx = g 2 (x - mean) / (n - ddof)."""

    __slots__ = ("dim", "keepdim", "ddof", "axes", "centered", "denom")

    def __init__(self, dim=None, keepdim=False, unbiased=True):
        self.dim, self.keepdim, self.ddof = dim, keepdim, int(bool(unbiased))

    def forward(self, x):
        self.axes = normalize_dims(self.dim, x.ndim, "var")
        n = 1
        for a in self.axes:
            n *= x.shape[a]
        self.denom = n - self.ddof
        self.centered = x - x.mean(axis=self.axes, keepdims=True)
        y = (self.centered * self.centered).sum(axis=self.axes, keepdims=self.keepdim)
        return y / self.denom if self.denom > 0 else y * float("nan")

    def backward(self, g):
        g = _expand_back(g, self.axes, self.keepdim, self.centered.shape)
        # One element, unbiased: the forward is NaN (n - 1 = 0), and so is its gradient, as
        # in PyTorch; never a ZeroDivisionError.
        scale = 2.0 / self.denom if self.denom > 0 else float("nan")
        return (g * self.centered * scale).astype(self.centered.dtype, copy=False)
