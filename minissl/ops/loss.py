"""Supervised losses with PyTorch's semantics: cross-entropy, MSE, BCE with logits.

Cross-entropy is fused with log-softmax (one kernel): for logits x of a row and target t,
    loss = logsumexp(x) - x_t,      dloss/dx = softmax(x) - onehot(t)
which never forms exp(x) unshifted, so logits of 1e4 do not overflow.
"""
import numpy as np

from ..autograd import Function, Tensor
from ..backend import get_array_module
from ..kernels import softmax as _k

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(op, reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


class CrossEntropy(Function):
    """Per-row cross-entropy of logits (M, C) against integer targets (M,) (rows with
    ``ignore_index`` give 0 and no gradient)."""

    __slots__ = ("target", "ignore_index", "x", "lse")

    def __init__(self, target, ignore_index):
        self.target, self.ignore_index = target, ignore_index

    def forward(self, x):
        self.x = x
        loss, self.lse = _k.cross_entropy_forward(x, self.target, self.ignore_index)
        return loss

    def backward(self, g):
        return _k.cross_entropy_backward(g, self.x, self.target, self.lse, self.ignore_index)


def cross_entropy(logits, target, reduction="mean", ignore_index=-100):
    """Cross-entropy of ``logits`` (N, C) or (N, C, d1, ...) against class indices ``target``
    (N,) or (N, d1, ...), as ``torch.nn.functional.cross_entropy``: ``mean`` averages over the
    targets that are not ``ignore_index`` (NaN if there are none, as PyTorch)."""
    _check_reduction("cross_entropy", reduction)
    t = target.data if isinstance(target, Tensor) else target
    xp = get_array_module(logits.data)
    t = xp.asarray(t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must hold integer class indices, got dtype "
                        f"{t.dtype} (shape {tuple(t.shape)})")
    if logits.ndim < 1 or (logits.ndim == 1 and t.ndim != 0) or (
            logits.ndim > 1 and tuple(t.shape) != (logits.shape[0],) + logits.shape[2:]):
        expect = "()" if logits.ndim == 1 else str((logits.shape[0],) + logits.shape[2:])
        raise ValueError(f"cross_entropy: target of shape {tuple(t.shape)} does not match "
                         f"logits of shape {logits.shape} (expected target shape {expect})")
    x = logits
    if logits.ndim == 1:
        x = x.reshape(1, -1)
    elif logits.ndim > 2:  # (N, C, d...) -> (N * d..., C)
        x = x.permute(0, *range(2, logits.ndim), 1).reshape(-1, logits.shape[1])
    t_flat = t.reshape(-1).astype(xp.int64, copy=False)
    per_row = CrossEntropy(t_flat, ignore_index)(x)
    if reduction == "none":
        return per_row.reshape(t.shape)
    total = per_row.sum()
    if reduction == "sum":
        return total
    # The count stays a 0-d array on the logits' device: int() of it would be a
    # device-to-host copy in every step on the GPU. No kept target: total / NaN, as PyTorch.
    count = (t_flat != ignore_index).sum()
    denom = xp.where(count > 0, count, np.nan).astype(total.dtype)
    return total / Tensor(denom)


def mse_loss(input, target, reduction="mean"):
    """(input - target)^2, averaged (``mean``), summed or per element (``none``)."""
    _check_reduction("mse_loss", reduction)
    if isinstance(target, Tensor) and target.shape != input.shape:
        raise ValueError(f"mse_loss: input of shape {input.shape} and target of shape "
                         f"{target.shape} differ")
    d = input - target
    sq = d * d
    return sq.mean() if reduction == "mean" else sq.sum() if reduction == "sum" else sq


class BCEWithLogits(Function):
    """loss = max(x, 0) - x y + log(1 + exp(-|x|))  (= -[y log s(x) + (1-y) log(1-s(x))],
    stable for any x);  dx = g (sigmoid(x) - y),  dy = -g x."""

    __slots__ = ("x", "y")

    def forward(self, x, y):
        xp = get_array_module(x)
        self.x, self.y = x, y
        return xp.maximum(x, 0) - x * y + xp.log1p(xp.exp(-abs(x)))

    def backward(self, g):
        xp = get_array_module(g)
        s = 0.5 * (1 + xp.tanh(0.5 * self.x))
        gx = (g * (s - self.y)).astype(self.x.dtype, copy=False) if self.needs_grad[0] else None
        gy = (-g * self.x).astype(self.y.dtype, copy=False) if self.needs_grad[1] else None
        return gx, gy


def binary_cross_entropy_with_logits(input, target, reduction="mean"):
    """Binary cross-entropy on logits (targets in [0, 1], same shape), computed stably."""
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    if not isinstance(target, Tensor):
        target = Tensor(get_array_module(input.data).asarray(target, dtype=input.dtype))
    if target.shape != input.shape:
        raise ValueError(f"binary_cross_entropy_with_logits: input of shape {input.shape} and "
                         f"target of shape {target.shape} differ")
    loss = BCEWithLogits()(input, target)
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss
