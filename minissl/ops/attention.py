"""Scaled dot-product attention (Vaswani et al. 2017), fused into one op.

    S = q k^T * scale  (+ mask),  P = softmax(S) over keys,  y = P v
with q (..., L, E), k (..., S, E), v (..., S, Ev) and scale = 1/sqrt(E). Backward:
    dv = P^T g,  dP = g v^T,  dS = P * (dP - rowsum(dP * P)),  dq = dS k * scale,
    dk = dS^T q * scale.
Only P (..., L, S) is kept for backward; the masked scores are never stored.
"""
import math

from ..autograd import Function, Tensor
from ..backend import get_array_module
from ..kernels import softmax as _k


def _mT(a):
    return a.swapaxes(-1, -2)


class Attention(Function):
    __slots__ = ("mask", "causal", "scale", "q", "k", "v", "p")

    def __init__(self, mask, causal, scale):
        self.mask, self.causal, self.scale = mask, causal, scale

    def forward(self, q, k, v):
        xp = get_array_module(q)
        s = q @ _mT(k)                                       # (..., L, S), a fresh array
        s *= q.dtype.type(self.scale)
        L, S = s.shape[-2:]
        if self.causal:   # position i attends to j <= i; in place, no second score array
            xp.copyto(s, q.dtype.type(-xp.inf), where=~xp.tri(L, S, dtype=bool))
        if self.mask is not None:
            if self.mask.dtype == bool:   # True = may attend, as PyTorch
                s = xp.where(self.mask, s, q.dtype.type(-xp.inf))
            else:
                s = s + self.mask
        shape = s.shape
        p = _k.softmax_forward(s.reshape(-1, S)).reshape(shape)
        self.q, self.k, self.v, self.p = q, k, v, p
        return p @ v

    def backward(self, g):
        p, q, k, v = self.p, self.q, self.k, self.v
        dv = _mT(p) @ g if self.needs_grad[2] else None
        dp = g @ _mT(v)
        S = p.shape[-1]
        ds = _k.softmax_backward(dp.reshape(-1, S), p.reshape(-1, S)).reshape(p.shape)
        ds *= q.dtype.type(self.scale)
        dq = ds @ k if self.needs_grad[0] else None
        dk = _mT(ds) @ q if self.needs_grad[1] else None
        return dq, dk, dv


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    """softmax(q k^T / sqrt(E) + mask) v, as ``torch.nn.functional.scaled_dot_product_attention``.

    ``attn_mask``: boolean (True = attend) or float (added to the scores), broadcastable to
    (..., L, S). ``is_causal``: position i attends to j <= i (top-left aligned tril).
    Batch dims of q, k, v must be equal.
    """
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"scaled_dot_product_attention: q, k, v need the same number (>= 2) of "
                         f"dims, got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"scaled_dot_product_attention: shapes q {q.shape}, k {k.shape}, "
                         f"v {v.shape} do not fit (..., L, E), (..., S, E), (..., S, Ev)")
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: give attn_mask or is_causal, not both")
    mask = None
    if attn_mask is not None:
        mask = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
        mask = get_array_module(q.data).asarray(mask)
        if mask.dtype != bool:
            mask = mask.astype(q.dtype)
    return Attention(mask, is_causal, 1.0 / math.sqrt(q.shape[-1]))(q, k, v)
