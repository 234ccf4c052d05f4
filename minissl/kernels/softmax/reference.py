"""NumPy reference of the softmax family: the specification (the math is in __init__.py).

Array-module generic (``xp = get_array_module(x)``), so it also runs on CuPy arrays.
"""
import numpy as np

from ...backend import get_array_module


def _row_max(x):
    """max over the last axis, keepdims; -inf for rows of zero length (the identity of max)."""
    xp = get_array_module(x)
    if x.shape[-1] == 0:
        return xp.full(x.shape[:-1] + (1,), -np.inf, dtype=x.dtype)
    return x.max(axis=-1, keepdims=True)


def _lse_ref(x):
    """Row-wise log-sum-exp (M, 1) in float64: m + log(sum exp(x - m))."""
    xp = get_array_module(x)
    m = _row_max(x)
    s = xp.exp(x - m).sum(axis=-1, keepdims=True, dtype=np.float64)
    with np.errstate(divide="ignore"):                  # an empty row: log 0 = -inf, rightly
        return m.astype(np.float64) + xp.log(s)


def causal_keep(shape, causal, xp=np):
    """(M, C) bool, True where row r keeps column j: j <= r mod L with L = ``causal`` (the rows
    of causal attention scores (..., L, S) flattened: query i = r mod L sees keys j <= i)."""
    m, c = shape
    return xp.arange(c)[None, :] <= (xp.arange(m) % causal)[:, None]


def softmax_forward_ref(x, scale=1.0, causal=0):
    """softmax(s)_ij = exp(s_ij - m_i) / sum_k exp(s_ik - m_i), s = scale x, m_i = max_k s_ik;
    with causal = L > 0 the entries j > r mod L of row r are masked (-inf, probability 0)."""
    xp = get_array_module(x)
    s = x * x.dtype.type(scale) if scale != 1.0 else x
    if causal:
        s = xp.where(causal_keep(x.shape, causal, xp), s, x.dtype.type(-np.inf))
    e = xp.exp(s - _row_max(s))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax_forward_ref(x):
    """log_softmax(x)_ij = x_ij - lse_i, computed as (x_ij - m_i) - log sum_k exp(x_ik - m_i).

    The maximum is subtracted first: x_ij - m_i is exact for the entries that matter, and
    what remains to subtract is a small number.
    """
    xp = get_array_module(x)
    shifted = x - _row_max(x)
    s = xp.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return (shifted - xp.log(s)).astype(x.dtype, copy=False)


def softmax_backward_ref(grad_y, y, scale=1.0, causal=0):
    """dx_ij = scale y_ij (g_ij - sum_k g_ik y_ik), the gradient with respect to x of
    softmax(scale x); with causal = L > 0, 0 at the masked entries (where y is 0)."""
    xp = get_array_module(grad_y)
    dx = y * (grad_y - (grad_y * y).sum(axis=-1, keepdims=True))
    if scale != 1.0:
        dx = dx * y.dtype.type(scale)
    if causal:
        dx = xp.where(causal_keep(y.shape, causal, xp), dx, y.dtype.type(0))
    return dx


def log_softmax_backward_ref(grad_y, y_log):
    """dx_ij = g_ij - exp(y_ij) * sum_k g_ik   (exp(y) is the softmax)."""
    xp = get_array_module(grad_y)
    return grad_y - xp.exp(y_log) * grad_y.sum(axis=-1, keepdims=True)


def cross_entropy_forward_ref(logits, target, ignore_index=-100):
    """Per-row cross-entropy: loss_i = lse_i - logits[i, target_i]; 0 where target_i is ignored.

    Returns (loss (N,) in the logits' dtype, lse (N,) float64).
    """
    xp = get_array_module(logits)
    lse = _lse_ref(logits)[:, 0]
    keep = target != ignore_index
    safe_target = xp.where(keep, target, 0)             # any valid column for ignored rows
    if logits.shape[1] == 0:                            # only ignored rows can exist here
        picked = xp.zeros(logits.shape[0], dtype=np.float64)
    else:
        picked = xp.take_along_axis(logits, safe_target[:, None], axis=1)[:, 0]
    loss = xp.where(keep, lse - picked, 0.0)
    return loss.astype(logits.dtype), lse


def cross_entropy_backward_ref(grad_loss, logits, target, lse, ignore_index=-100):
    """grad_logits_ij = grad_loss_i * (softmax(logits)_ij - [j == target_i]); 0 on ignored rows."""
    xp = get_array_module(logits)
    n, c = logits.shape
    p = xp.exp(logits.astype(np.float64) - lse[:, None])
    onehot = xp.arange(c)[None, :] == target[:, None]
    keep = (target != ignore_index)[:, None]
    grad = xp.where(keep, grad_loss[:, None] * (p - onehot), 0.0)
    return grad.astype(logits.dtype)
