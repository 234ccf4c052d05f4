"""Matrix products: ``matmul`` (NumPy's ``@`` semantics) and the fused ``linear`` layer.

For C = A B:  dA = G B^T,  dB = A^T G. With batch dimensions both sides broadcast like any
binary op, so their gradients are summed back with ``sum_to``.
"""
import math

from ..autograd import Function, Tensor, as_tensor_like
from ..kernels.gemm import addmm as _addmm, matmul as _mm, sum_rows as _sum_rows
from .elementwise import sum_to


def _mT(a):
    return a.swapaxes(-1, -2)


def _rows(x):
    """``x`` (..., k) viewed as a matrix (rows, k). NumPy's matmul runs a (B, T, k) operand
    against a matrix as B separate products (1.4-1.7x slower on gpt_char's shapes, 2 cores);
    one product over all rows is what BLAS is fast at."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])   # not -1: sizes may be 0


class MatMul(Function):
    """y = a @ b (1-D operands promoted to matrices as NumPy does, then squeezed again)."""

    __slots__ = ("a", "b")

    def forward(self, a, b):
        self.a, self.b = a, b
        if a.ndim > 2 and b.ndim == 2:
            return _mm(_rows(a), b).reshape(*a.shape[:-1], b.shape[1])
        return _mm(a, b)

    def backward(self, g):
        a, b = self.a, self.b
        if a.ndim > 2 and b.ndim == 2:     # a stack against one matrix: products over all rows
            ga = gb = None
            if self.needs_grad[0]:
                ga = _mm(_rows(g), b.T).reshape(a.shape).astype(a.dtype, copy=False)
            if self.needs_grad[1]:
                gb = _mm(_rows(a).T, _rows(g)).astype(b.dtype, copy=False)
            return ga, gb
        a2 = a[None, :] if a.ndim == 1 else a          # (1, k) row vector
        b2 = b[:, None] if b.ndim == 1 else b          # (k, 1) column vector
        if a.ndim == 1:
            g = g[..., None, :] if b.ndim > 1 else g[..., None]
        if b.ndim == 1:
            g = g[..., None]
        ga = gb = None
        if self.needs_grad[0]:
            ga = sum_to(_mm(g, _mT(b2)), a2.shape).reshape(a.shape).astype(a.dtype, copy=False)
        if self.needs_grad[1]:
            gb = sum_to(_mm(_mT(a2), g), b2.shape).reshape(b.shape).astype(b.dtype, copy=False)
        return ga, gb


def matmul(a, b):
    if not isinstance(a, Tensor):
        a = as_tensor_like(a, b)
    elif not isinstance(b, Tensor):
        b = as_tensor_like(b, a)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: both operands need at least 1 dim, got shapes {a.shape} "
                         f"and {b.shape}")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned "
                         f"({ka} != {kb})")
    try:
        return MatMul()(a, b)
    except ValueError:
        raise ValueError(f"matmul: batch dims of shapes {a.shape} and {b.shape} do not "
                         "broadcast") from None


class Linear(Function):
    """y = x W^T + b with x (..., in), W (out, in), b (out,)  (PyTorch's layout).

    dx = g W;  dW = g2^T x2;  db = sum of g over rows, with x2, g2 the inputs viewed as
    matrices (rows = all leading dims). One fused op saves the transpose and the broadcast add
    of the unfused form: the bias goes into the product (``kernels.gemm.addmm``, as PyTorch's
    ``addmm``) and db is ``kernels.gemm.sum_rows``, each thread on the rows it computed.
    """

    __slots__ = ("x", "w", "has_bias")

    def forward(self, x, w, b=None):
        self.x, self.w, self.has_bias = x, w, b is not None
        x2 = _rows(x)                                       # one product (see _rows)
        y = _mm(x2, w.T) if b is None else _addmm(b, x2, w.T)
        return y.reshape(*x.shape[:-1], w.shape[0])

    def backward(self, g):
        x, w = self.x, self.w
        g2 = _rows(g)
        gx = _mm(g2, w).reshape(x.shape) if self.needs_grad[0] else None
        gw = _mm(g2.T, _rows(x)) if self.needs_grad[1] else None
        gb = _sum_rows(g2) if self.has_bias and self.needs_grad[2] else None
        return (gx, gw, gb) if self.has_bias else (gx, gw)


def linear(x, weight, bias=None):
    """``x @ weight.T + bias``: x (..., in), weight (out, in), bias (out,) -> (..., out)."""
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input of shape {x.shape} does not match weight of shape "
                         f"{weight.shape} (expected input (..., {weight.shape[-1]}))")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias of shape {bias.shape} does not match weight of shape "
                         f"{weight.shape}")
    if x.dtype != weight.dtype:
        raise TypeError(f"linear: input dtype {x.dtype} differs from weight dtype {weight.dtype}")
    if bias is not None and bias.dtype != weight.dtype:
        raise TypeError(f"linear: bias dtype {bias.dtype} differs from weight dtype {weight.dtype}")
    if bias is None:
        return Linear()(x, weight)
    return Linear()(x, weight, bias)
