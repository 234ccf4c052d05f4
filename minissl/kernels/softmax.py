"""Softmax, log-softmax and the fused softmax-cross-entropy, over the last axis of (M, C).

Math (one row x of C logits; all functions work row by row):

    lse(x)          = log sum_j exp(x_j)                     (log-sum-exp)
                    = m + log sum_j exp(x_j - m),  m = max_j x_j   (stable: every exp <= 1)
    softmax(x)_j    = exp(x_j - lse(x))
    log_softmax(x)_j = x_j - lse(x)

Adjoints (g is the gradient of the output, y the saved output):

    softmax:      dx = y * (g - sum_j g_j y_j)
    log_softmax:  dx = g - exp(y) * sum_j g_j

Cross-entropy of a row with target class t (Bridle 1990; the fused form is what
``torch.nn.functional.cross_entropy`` computes with ``reduction="none"``):

    loss = lse(x) - x_t,        d loss / dx_j = softmax(x)_j - [j == t]

Rows whose target equals ``ignore_index`` have loss 0 and gradient 0.

Stability: subtracting the row maximum keeps every exponent <= 0, so logits of 1e4 do not
overflow, and entries of -inf (a masked diagonal, say) contribute exp(-inf) = 0. A row whose
entries are all -inf has no softmax; it gives NaN, as in PyTorch.

The log-sum-exp returned by ``cross_entropy_forward`` is float64 whatever the logits' dtype:
``cross_entropy_backward`` evaluates exp(x - lse), and a float32 lse of ~1e4 would carry an
absolute error of ~1e-3 into that exponent.

Each public function validates its input and dispatches: the Cython kernels (csrc/softmax.pyx)
for float32/float64 NumPy arrays, the ``*_ref`` NumPy reference otherwise. The reference uses
``xp = get_array_module(x)`` so that it also runs on CuPy arrays.
"""
import numpy as np

from ..backend import get_array_module
from ._loader import compiled, gpu
# (module-private names, as minissl/kernels/cuda.py imports the checks from here)
from ._loader import check_float as _check_float, check_same as _check_same

__all__ = [
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
    "cross_entropy_forward", "cross_entropy_backward",
    "softmax_forward_ref", "softmax_backward_ref", "log_softmax_forward_ref",
    "log_softmax_backward_ref", "cross_entropy_forward_ref", "cross_entropy_backward_ref",
]


# --------------------------------------------------------------------------------------------
# NumPy reference: the specification
# --------------------------------------------------------------------------------------------

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


def softmax_forward_ref(x):
    """softmax(x)_ij = exp(x_ij - m_i) / sum_k exp(x_ik - m_i), m_i = max_k x_ik."""
    e = get_array_module(x).exp(x - _row_max(x))
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


def softmax_backward_ref(grad_y, y):
    """dx_ij = y_ij * (g_ij - sum_k g_ik y_ik)."""
    return y * (grad_y - (grad_y * y).sum(axis=-1, keepdims=True))


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


# --------------------------------------------------------------------------------------------
# Validation and dispatch
# --------------------------------------------------------------------------------------------

def _check_target(fn, target, logits, ignore_index):
    """target: integer (N,) with entries in [0, C) or equal to ignore_index."""
    if not hasattr(target, "dtype") or target.dtype.kind not in "iu":
        raise TypeError(f"{fn}: target must be an integer array, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    n, c = logits.shape
    if target.shape != (n,):
        raise ValueError(f"{fn}: target must have shape ({n},) for logits of shape "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")
    if n == 0:
        return
    # Two reductions settle the common case; the elementwise test only runs when some entry
    # lies outside [0, C), which is legitimate only for ignore_index.
    if int(target.min()) >= 0 and int(target.max()) < c:
        return
    bad = ((target < 0) | (target >= c)) & (target != ignore_index)
    if bool(bad.any()):
        i = int(get_array_module(target).argmax(bad))
        raise ValueError(f"{fn}: target[{i}] = {int(target[i])} is out of range for logits of "
                         f"shape {tuple(logits.shape)} (expected 0 <= target < {c} or "
                         f"target == ignore_index = {ignore_index})")


def softmax_forward(x):
    """Softmax over the last axis of a 2-D array (M, C); see the module docstring."""
    if get_array_module(x) is not np:  # GPU: minissl/kernels/cuda.py
        return gpu("softmax_forward", softmax_forward_ref)(x)
    fn = "softmax_forward"
    _check_float(fn, "x", x, ndim=2)
    ext = compiled("softmax", x)
    if ext is None or x.size == 0:
        return softmax_forward_ref(x)
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    ext.softmax_forward(x, y)
    return y


def log_softmax_forward(x):
    """Log-softmax over the last axis of a 2-D array (M, C); see the module docstring."""
    if get_array_module(x) is not np:  # GPU: minissl/kernels/cuda.py
        return gpu("log_softmax_forward", log_softmax_forward_ref)(x)
    fn = "log_softmax_forward"
    _check_float(fn, "x", x, ndim=2)
    ext = compiled("softmax", x)
    if ext is None or x.size == 0:
        return log_softmax_forward_ref(x)
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    ext.log_softmax_forward(x, y)
    return y


def softmax_backward(grad_y, y):
    """Gradient of softmax: y * (grad_y - sum(grad_y * y, -1)); arrays (M, C)."""
    if get_array_module(grad_y) is not np:  # GPU: minissl/kernels/cuda.py
        return gpu("softmax_backward", softmax_backward_ref)(grad_y, y)
    fn = "softmax_backward"
    _check_float(fn, "grad_y", grad_y, ndim=2)
    _check_float(fn, "y", y, ndim=2)
    _check_same(fn, ("grad_y", "y"), (grad_y, y))
    ext = compiled("softmax", grad_y, y)
    if ext is None or y.size == 0:
        return softmax_backward_ref(grad_y, y)
    grad_y, y = np.ascontiguousarray(grad_y), np.ascontiguousarray(y)
    dx = np.empty_like(y)
    ext.softmax_backward(grad_y, y, dx)
    return dx


def log_softmax_backward(grad_y, y_log):
    """Gradient of log-softmax: grad_y - exp(y_log) * sum(grad_y, -1); arrays (M, C)."""
    if get_array_module(grad_y) is not np:  # GPU: minissl/kernels/cuda.py
        return gpu("log_softmax_backward", log_softmax_backward_ref)(grad_y, y_log)
    fn = "log_softmax_backward"
    _check_float(fn, "grad_y", grad_y, ndim=2)
    _check_float(fn, "y_log", y_log, ndim=2)
    _check_same(fn, ("grad_y", "y_log"), (grad_y, y_log))
    ext = compiled("softmax", grad_y, y_log)
    if ext is None or y_log.size == 0:
        return log_softmax_backward_ref(grad_y, y_log)
    grad_y, y_log = np.ascontiguousarray(grad_y), np.ascontiguousarray(y_log)
    dx = np.empty_like(y_log)
    ext.log_softmax_backward(grad_y, y_log, dx)
    return dx


def cross_entropy_forward(logits, target, ignore_index=-100):
    """Per-row cross-entropy of logits (N, C) against integer classes target (N,).

    Returns ``(loss, lse)``: loss (N,) in the logits' dtype, 0 at rows whose target is
    ``ignore_index``; lse (N,) float64, the log-sum-exp of each row, saved for the backward.
    Targets outside [0, C) other than ``ignore_index`` raise ValueError.
    """
    if get_array_module(logits) is not np:  # GPU: minissl/kernels/cuda.py
        kernel = gpu("cross_entropy_forward", cross_entropy_forward_ref)
        return kernel(logits, target, ignore_index)
    fn = "cross_entropy_forward"
    _check_float(fn, "logits", logits, ndim=2)
    _check_target(fn, target, logits, ignore_index)
    ext = compiled("softmax", logits)
    if ext is None or logits.size == 0:
        return cross_entropy_forward_ref(logits, target, ignore_index)
    logits = np.ascontiguousarray(logits)
    target = np.ascontiguousarray(target, dtype=np.int64)
    loss = np.empty(logits.shape[0], dtype=logits.dtype)
    lse = np.empty(logits.shape[0], dtype=np.float64)
    ext.cross_entropy_forward(logits, target, ignore_index, loss, lse)
    return loss, lse


def cross_entropy_backward(grad_loss, logits, target, lse, ignore_index=-100):
    """Gradient of the per-row cross-entropy with respect to the logits (N, C).

    ``grad_logits[i] = grad_loss[i] * (softmax(logits[i]) - onehot(target[i]))``, zero on rows
    whose target is ``ignore_index``. ``lse`` is the second result of the forward.
    """
    if get_array_module(grad_loss) is not np:  # GPU: minissl/kernels/cuda.py
        kernel = gpu("cross_entropy_backward", cross_entropy_backward_ref)
        return kernel(grad_loss, logits, target, lse, ignore_index)
    fn = "cross_entropy_backward"
    _check_float(fn, "logits", logits, ndim=2)
    _check_float(fn, "grad_loss", grad_loss, ndim=1)
    _check_float(fn, "lse", lse, ndim=1)
    n = logits.shape[0]
    if grad_loss.shape != (n,) or lse.shape != (n,):
        raise ValueError(f"{fn}: grad_loss and lse must have shape ({n},) for logits of shape "
                         f"{tuple(logits.shape)}, got {tuple(grad_loss.shape)} and "
                         f"{tuple(lse.shape)}")
    if grad_loss.dtype != logits.dtype:
        raise TypeError(f"{fn}: grad_loss must have the logits' dtype {logits.dtype}, got "
                        f"{grad_loss.dtype}")
    _check_target(fn, target, logits, ignore_index)
    ext = compiled("softmax", logits, lse)
    if ext is None or logits.size == 0:
        return cross_entropy_backward_ref(grad_loss, logits, target, lse, ignore_index)
    logits = np.ascontiguousarray(logits)
    grad_loss = np.ascontiguousarray(grad_loss)
    lse = np.ascontiguousarray(lse, dtype=np.float64)
    target = np.ascontiguousarray(target, dtype=np.int64)
    grad = np.empty_like(logits)
    ext.cross_entropy_backward(grad_loss, logits, target, lse, ignore_index, grad)
    return grad
