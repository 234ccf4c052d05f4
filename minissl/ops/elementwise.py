"""Elementwise ops: arithmetic with NumPy broadcasting, and unary math functions.

Broadcasting: ``y = a + b`` copies ``a`` along every axis where it has size 1 (or is missing);
the adjoint of that copy is a sum over those axes, done by the single ``sum_to`` below that
every binary op uses.
"""
import math

import numpy as np

from ..autograd import Function, Tensor, as_tensor_like
from ..backend import get_array_module
from ..kernels import activation as _k_act


def sum_to(g, shape):
    """Sum ``g`` down to ``shape``: the adjoint of broadcasting an array of ``shape`` to g.shape.

    Leading axes that broadcasting added are summed away, and so is every axis where ``shape``
    has size 1 but ``g`` does not.
    """
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


def _unbroadcast(g, x):
    """The gradient of one binary-op input: summed to its shape, cast to its dtype."""
    g = sum_to(g, x.shape)
    return g if g.dtype == x.dtype else g.astype(x.dtype)


def _binary(fn_cls, a, b):
    if not isinstance(a, Tensor):
        a = as_tensor_like(a, b)
    elif not isinstance(b, Tensor):
        b = as_tensor_like(b, a)
    try:
        return fn_cls()(a, b)
    except ValueError as e:
        if "broadcast" in str(e):
            raise ValueError(f"{fn_cls.__name__.lower()}: shapes {a.shape} and {b.shape} do "
                             f"not broadcast") from None
        raise


class Add(Function):
    """y = a + b;  da = sum_to(g), db = sum_to(g)."""

    integer_inputs = True

    def forward(self, a, b):
        self.a, self.b = a, b
        return a + b

    def backward(self, g):
        ga = _unbroadcast(g, self.a) if self.needs_grad[0] else None
        gb = _unbroadcast(g, self.b) if self.needs_grad[1] else None
        return ga, gb


class Sub(Function):
    """y = a - b;  da = sum_to(g), db = -sum_to(g)."""

    integer_inputs = True

    def forward(self, a, b):
        self.a, self.b = a, b
        return a - b

    def backward(self, g):
        ga = _unbroadcast(g, self.a) if self.needs_grad[0] else None
        gb = -_unbroadcast(g, self.b) if self.needs_grad[1] else None
        return ga, gb


class Mul(Function):
    """y = a * b;  da = sum_to(g * b), db = sum_to(g * a)."""

    integer_inputs = True

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        ga = _unbroadcast(g * self.b, self.a) if self.needs_grad[0] else None
        gb = _unbroadcast(g * self.a, self.b) if self.needs_grad[1] else None
        return ga, gb


class Div(Function):
    """y = a / b;  da = sum_to(g / b), db = sum_to(-g * a / b^2)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        gb_full = g / self.b
        ga = _unbroadcast(gb_full, self.a) if self.needs_grad[0] else None
        gb = _unbroadcast(-gb_full * self.a / self.b, self.b) if self.needs_grad[1] else None
        return ga, gb


class Pow(Function):
    """y = a ** b;  da = g * b * a^(b-1),  db = g * y * log(a) (taken as 0 where a == 0)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        self.y = a ** b
        return self.y

    def backward(self, g):
        a, b = self.a, self.b
        ga = _unbroadcast(g * b * a ** (b - 1), a) if self.needs_grad[0] else None
        gb = None
        if self.needs_grad[1]:
            xp = get_array_module(a)
            safe = xp.where(a > 0, a, 1)
            gb = _unbroadcast(g * self.y * xp.log(safe), b)
        return ga, gb


class PowScalar(Function):
    """y = x ** p for a Python number p;  dx = g * p * x^(p-1)."""

    __slots__ = ("p", "x")

    def __init__(self, p):
        self.p = p

    def forward(self, x):
        self.x = x
        p = self.p
        if p == 2:
            return x * x
        return x ** x.dtype.type(p) if x.dtype.kind == "f" else x ** p

    def backward(self, g):
        x, p = self.x, self.p
        if p == 2:
            return g * (2 * x)
        return g * (p * x ** x.dtype.type(p - 1))


def add(a, b):
    return _binary(Add, a, b)


def sub(a, b):
    return _binary(Sub, a, b)


def mul(a, b):
    return _binary(Mul, a, b)


def div(a, b):
    return _binary(Div, a, b)


def pow(a, b):
    if isinstance(a, Tensor) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return PowScalar(b)(a)
    return _binary(Pow, a, b)


class Cast(Function):
    """y = x converted to another floating dtype;  dx = g converted back."""

    integer_inputs = True

    __slots__ = ("dtype", "src")

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, x):
        self.src = x.dtype
        return x.astype(self.dtype)

    def backward(self, g):
        return g.astype(self.src)


class Neg(Function):
    """y = -x;  dx = -g."""

    integer_inputs = True

    __slots__ = ()

    def forward(self, x):
        return -x

    def backward(self, g):
        return -g


class Exp(Function):
    """y = exp(x);  dx = g * y."""

    __slots__ = ("y",)

    def forward(self, x):
        self.y = get_array_module(x).exp(x)
        return self.y

    def backward(self, g):
        return g * self.y


class Log(Function):
    """y = log(x);  dx = g / x."""

    __slots__ = ("x",)

    def forward(self, x):
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, g):
        return g / self.x


class Sqrt(Function):
    """y = sqrt(x);  dx = g / (2 y)."""

    __slots__ = ("y",)

    def forward(self, x):
        self.y = get_array_module(x).sqrt(x)
        return self.y

    def backward(self, g):
        return g / (2 * self.y)


class Abs(Function):
    """y = |x|;  dx = g * sign(x) (0 at x == 0, as PyTorch)."""

    integer_inputs = True

    __slots__ = ("x",)

    def forward(self, x):
        self.x = x
        return abs(x)

    def backward(self, g):
        return g * get_array_module(g).sign(self.x)


class Tanh(Function):
    """y = tanh(x);  dx = g * (1 - y^2)."""

    __slots__ = ("y",)

    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, g):
        return g * (1 - self.y * self.y)


class Sigmoid(Function):
    """y = 1 / (1 + exp(-x));  dx = g y (1-y).

    With e = exp(-|x|) <= 1 (no overflow): y = 1 / (1 + e) for x >= 0 and e / (1 + e) for
    x < 0. The second form keeps full relative precision in the left tail, where
    (1 + tanh(x/2)) / 2 cancels to 0 (already at x = -40, where y = 4e-18).
    """

    __slots__ = ("y",)

    def forward(self, x):
        xp = get_array_module(x)
        e = xp.exp(-abs(x))
        self.y = xp.where(x >= 0, 1, e) / (1 + e)
        return self.y.astype(x.dtype, copy=False)

    def backward(self, g):
        return g * self.y * (1 - self.y)


class ReLU(Function):
    """y = max(x, 0);  dx = g * [x > 0]."""

    integer_inputs = True

    __slots__ = ("y",)

    def forward(self, x):
        self.y = get_array_module(x).maximum(x, 0)
        return self.y

    def backward(self, g):
        return g * (self.y > 0)


class GELU(Function):
    """y = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 (exact form);  dx = g (Phi(x) + x phi(x))."""

    __slots__ = ("x",)

    def forward(self, x):
        self.x = x
        return _k_act.gelu_forward(x)

    def backward(self, g):
        return _k_act.gelu_backward(g, self.x)


class Clamp(Function):
    """y = min(max(x, lo), hi);  dx = g where lo <= x <= hi, else 0 (as PyTorch)."""

    __slots__ = ("lo", "hi", "x")

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi

    def forward(self, x):
        self.x = x
        return get_array_module(x).clip(x, self.lo, self.hi).astype(x.dtype, copy=False)

    def backward(self, g):
        x = self.x
        keep = True
        if self.lo is not None:
            keep = x >= self.lo
        if self.hi is not None:
            keep = keep & (x <= self.hi)
        return g * keep


def clamp(x, min=None, max=None):
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    return Clamp(min, max)(x)


def _mask_array(mask, like, op):
    m = mask.data if isinstance(mask, Tensor) else mask
    xp = get_array_module(like.data)
    m = xp.asarray(m)
    if m.dtype != bool:
        raise TypeError(f"{op}: mask must be boolean, got {m.dtype}")
    return m


class MaskedFill(Function):
    """y = where(mask, value, x);  dx = g where mask is False, else 0."""

    integer_inputs = True

    __slots__ = ("mask", "value")

    def __init__(self, mask, value):
        self.mask, self.value = mask, value

    def forward(self, x):
        return _fill_where(x, self.mask, get_array_module(x).asarray(self.value, dtype=x.dtype))

    def backward(self, g):
        return _fill_where(g, self.mask, g.dtype.type(0))


def _fill_where(a, mask, value):
    """where(mask, value, a): a copied, then value written where mask is True (a memcpy and a
    masked store: 40 % less time than ``where``'s select on NT-Xent's (2N, 2N) logits)."""
    xp = get_array_module(a)
    if np.broadcast_shapes(mask.shape, a.shape) != a.shape:
        return xp.where(mask, value, a)
    out = a.copy()
    xp.copyto(out, value, where=mask)
    return out


class FillDiagonal(Function):
    """y = x with y_ii = value for i < min(m, n);  dx = g with its diagonal set to 0."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def forward(self, x):
        return _with_diagonal(x, self.value)

    def backward(self, g):
        return _with_diagonal(g, 0)


def _with_diagonal(a, value):
    """A copy of the matrix ``a`` whose diagonal holds ``value``: one memcpy and min(m, n)
    stores (on NT-Xent's (1024, 1024) logits 0.13 ms against 0.28 for ``masked_fill`` with an
    eye mask, whose masked store reads a million mask entries)."""
    out = a.copy()
    get_array_module(a).fill_diagonal(out, value)
    return out


def fill_diagonal(x, value):
    """A copy of the matrix x (m, n) with ``value`` on its main diagonal; the out-of-place
    counterpart of PyTorch's ``Tensor.fill_diagonal_`` (without its ``wrap``)."""
    if x.ndim != 2:
        raise ValueError(f"fill_diagonal: needs a matrix (m, n), got shape {x.shape}")
    return FillDiagonal(value)(x)


def masked_fill(x, mask, value):
    m = _mask_array(mask, x, "masked_fill")
    try:
        np.broadcast_shapes(tuple(m.shape), x.shape)
    except ValueError:
        raise ValueError(f"masked_fill: mask of shape {tuple(m.shape)} does not broadcast to "
                         f"the tensor's shape {x.shape}") from None
    if np.broadcast_shapes(tuple(m.shape), x.shape) != x.shape:
        raise ValueError(f"masked_fill: mask of shape {tuple(m.shape)} would enlarge the "
                         f"tensor of shape {x.shape}")
    return MaskedFill(m, value)(x)


class Where(Function):
    """y = where(cond, a, b);  da = sum_to(g where cond), db = sum_to(g where not cond)."""

    integer_inputs = True

    __slots__ = ("cond", "a", "b")

    def __init__(self, cond):
        self.cond = cond

    def forward(self, a, b):
        self.a, self.b = a, b
        return get_array_module(a).where(self.cond, a, b)

    def backward(self, g):
        xp = get_array_module(g)
        zero = xp.zeros((), dtype=g.dtype)
        ga = _unbroadcast(xp.where(self.cond, g, zero), self.a) if self.needs_grad[0] else None
        gb = _unbroadcast(xp.where(self.cond, zero, g), self.b) if self.needs_grad[1] else None
        return ga, gb


def where(cond, a, b):
    """``a`` where ``cond`` is true, else ``b`` (broadcasting); ``cond`` is boolean."""
    like = a if isinstance(a, Tensor) else b
    if not isinstance(like, Tensor):
        like = Tensor(get_array_module(a).asarray(a, dtype=np.float32))
    a = as_tensor_like(a, like)
    b = as_tensor_like(b, like)
    c = _mask_array(cond, like, "where")
    try:
        np.broadcast_shapes(tuple(c.shape), a.shape, b.shape)
    except ValueError:
        raise ValueError(f"where: shapes {tuple(c.shape)}, {a.shape} and {b.shape} do not "
                         "broadcast") from None
    return Where(c)(a, b)


SQRT_HALF = 1 / math.sqrt(2)
