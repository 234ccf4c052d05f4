"""Scaled dot-product attention (Vaswani et al. 2017), fused into one op.

    S = q k^T * scale  (+ mask),  P = softmax(S) over keys,  y = P v
with q (..., L, E), k (..., S, E), v (..., S, Ev) and scale = 1/sqrt(E). Backward:
    dv = P^T g,  dP = g v^T,  dS = P * (dP - rowsum(dP * P)),  dq = dS k * scale,
    dk = dS^T q * scale.
Only P (..., L, S) is kept for backward; the masked scores are never stored.
``packed_self_attention`` is the same op for the packed projections of multi-head
self-attention (``nn.MultiheadSelfAttention``): heads read from, and gradients written to,
strided views of one (B, T, 3 C) array.
"""
import math

import numpy as np

from ..autograd import Function, Tensor
from ..backend import get_array_module
from ..kernels import softmax as _k
from ..kernels.gemm import matmul as _mm


def _mT(a):
    return a.swapaxes(-1, -2)


def _rows(a):
    """``a`` as (rows, last dim); explicit, so that empty operands (L or S = 0) reshape too."""
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def _attend(q, k, v, scale, causal, mask):
    """y = softmax(q k^T scale [+ mask]) v and the probabilities P, for (..., L, E) operands."""
    xp = get_array_module(q)
    s = _mm(q, _mT(k))                                   # (..., L, S), a fresh array
    L, S = s.shape[-2:]
    if mask is not None:
        s *= q.dtype.type(scale)
        if mask.dtype == bool:   # True = may attend, as PyTorch
            s = xp.where(mask, s, q.dtype.type(-xp.inf))
        else:
            s = s + mask
        scale = 1.0
    # The scale and the causal mask (position i attends to j <= i) are applied by the softmax
    # kernel in its one pass over the scores. No query or no key: P is empty and y = P v is
    # (..., L, Ev) of zeros, as in PyTorch.
    p = _k.softmax_forward(_rows(s), scale, L if causal else 0).reshape(s.shape) if s.size else s
    return _mm(p, v), p


def _attend_backward(g, p, q, k, v, scale, causal, needs, out=(None, None, None)):
    """(dq, dk, dv) of ``_attend`` (None where ``needs`` is False); ``out`` may give arrays
    (views) to write each into."""
    dv = _mm(_mT(p), g, out=out[2]) if needs[2] else None
    dp = _mm(g, _mT(v))
    # dS = scale P (dP - rowsum(dP P)): the scale in the kernel's pass; the causal mask only
    # lets it skip the entries where P is 0.
    L = p.shape[-2]
    ds = (_k.softmax_backward(_rows(dp), _rows(p), scale, L if causal else 0).reshape(p.shape)
          if p.size else dp)
    dq = _mm(ds, k, out=out[0]) if needs[0] else None
    dk = _mm(_mT(ds), q, out=out[1]) if needs[1] else None
    return dq, dk, dv


class Attention(Function):
    __slots__ = ("mask", "causal", "scale", "q", "k", "v", "p")

    def __init__(self, mask, causal, scale):
        self.mask, self.causal, self.scale = mask, causal, scale

    def forward(self, q, k, v):
        y, self.p = _attend(q, k, v, self.scale, self.causal, self.mask)
        self.q, self.k, self.v = q, k, v
        return y

    def backward(self, g):
        return _attend_backward(g, self.p, self.q, self.k, self.v, self.scale,
                                self.causal, self.needs_grad)


class PackedSelfAttention(Function):
    """Multi-head self-attention from the packed projections: qkv (B, T, 3 C) -> y (B, T, C).

    qkv holds [Q | K | V] along its last dim, each split into H heads of D = C / H; y holds
    the heads side by side (head h in columns h D .. (h + 1) D). The same math as
    ``Attention``, but the heads are read as strided views of qkv and dq, dk, dv are written
    straight into one (B, T, 3, H, D) gradient: no split, permute or head merge of their own
    in the graph, whose backward passes would each allocate and copy a (B, T, 3 C) array.
    """

    __slots__ = ("heads", "mask", "causal", "q", "k", "v", "p", "scale")

    def __init__(self, heads, mask, causal):
        self.heads, self.mask, self.causal = heads, mask, causal

    def forward(self, qkv):
        B, T, C3 = qkv.shape
        H = self.heads
        D = C3 // (3 * H)
        heads = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)    # (3, B, H, T, D) view
        self.q, self.k, self.v = heads[0], heads[1], heads[2]
        self.scale = 1.0 / math.sqrt(D)
        y, self.p = _attend(self.q, self.k, self.v, self.scale, self.causal, self.mask)
        return y.transpose(0, 2, 1, 3).reshape(B, T, H * D)              # (B, T, C), a copy

    def backward(self, g):
        B, T, C = g.shape
        H = self.heads
        xp = get_array_module(g)
        dqkv = xp.empty((B, T, 3, H, C // H), dtype=g.dtype)
        views = dqkv.transpose(2, 0, 3, 1, 4)                           # (3, B, H, T, D)
        g4 = g.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)           # (B, H, T, D) view
        _attend_backward(g4, self.p, self.q, self.k, self.v, self.scale,
                         self.causal, (True,) * 3,
                         out=(views[0], views[1], views[2]))
        return dqkv.reshape(B, T, 3 * C)


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
    return Attention(_mask_array(attn_mask, q), is_causal, 1.0 / math.sqrt(q.shape[-1]))(q, k, v)


def _mask_array(attn_mask, like):
    """An attention mask as an array on ``like``'s device: bool as given, else ``like``'s
    float dtype; None stays None."""
    if attn_mask is None:
        return None
    mask = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
    mask = get_array_module(like.data).asarray(mask)
    return mask if mask.dtype == bool else mask.astype(like.dtype)


def packed_self_attention(qkv, num_heads, attn_mask=None, is_causal=False):
    """Multi-head self-attention of packed projections qkv (B, T, 3 C) = [Q | K | V] -> (B, T, C),
    heads side by side: the same values as splitting qkv into q, k, v of shape (B, H, T, C/H),
    ``scaled_dot_product_attention`` and merging the heads, in one op (``PackedSelfAttention``)."""
    if qkv.ndim != 3 or qkv.shape[2] % (3 * num_heads):
        raise ValueError(f"packed_self_attention: expected qkv (B, T, 3 C) with C divisible by "
                         f"num_heads={num_heads}, got shape {qkv.shape}")
    if is_causal and attn_mask is not None:
        raise ValueError("packed_self_attention: give attn_mask or is_causal, not both")
    return PackedSelfAttention(num_heads, _mask_array(attn_mask, qkv), is_causal)(qkv)
