"""Softmax, log-softmax and the fused softmax-cross-entropy, over the last axis of (M, C).

Math (one row x of C logits; all functions work row by row):

    lse(x)          = log sum_j exp(x_j)                     (log-sum-exp)
                    = m + log sum_j exp(x_j - m),  m = max_j x_j   (stable: every exp <= 1)
    softmax(x)_j    = exp(x_j - lse(x))
    log_softmax(x)_j = x_j - lse(x)

Adjoints (g is the gradient of the output, y the saved output):

    softmax:      dx = y * (g - sum_j g_j y_j)

``softmax_forward`` / ``softmax_backward`` also take the scale and the causal mask of
attention scores: softmax(scale x) with row r over columns j <= r mod L only (the rest 0),
and its gradient scale * y * (g - sum_j g_j y_j). Fused, they save attention two passes over
its (..., L, S) scores and skip the masked half of each causal row.
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

Each public function checks its arguments once, then runs one of the three versions in this
folder: the CUDA kernels (softmax.cu, launched by cuda.py) for CuPy arrays, the Cython kernels
(_cpu.pyx, with its C in softmax.h) for float32/float64 NumPy arrays, the ``*_ref`` NumPy
reference (reference.py) otherwise.
"""
import numpy as np

from .._dispatch import check_float as _check_float, check_same as _check_same
from .._dispatch import compiled, gpu, on_device
from .reference import (cross_entropy_backward_ref, cross_entropy_forward_ref,
                        log_softmax_backward_ref, log_softmax_forward_ref, softmax_backward_ref,
                        softmax_forward_ref)

__all__ = [
    "softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
    "cross_entropy_forward", "cross_entropy_backward",
    "softmax_forward_ref", "softmax_backward_ref", "log_softmax_forward_ref",
    "log_softmax_backward_ref", "cross_entropy_forward_ref", "cross_entropy_backward_ref",
]



def _check_target(fn, target, logits, ignore_index):
    """target: integer (N,) with entries in [0, C) or equal to ignore_index. The values are
    checked on the host only: on the GPU that would be a device-to-host copy in every step, so
    there the kernels guard their reads instead (see minissl/kernels/cuda.py)."""
    if not hasattr(target, "dtype") or target.dtype.kind not in "iu":
        raise TypeError(f"{fn}: target must be an integer array, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    n, c = logits.shape
    if target.shape != (n,):
        raise ValueError(f"{fn}: target must have shape ({n},) for logits of shape "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")
    if n == 0 or on_device(target):
        return
    # Two reductions settle the common case; the elementwise test only runs when some entry
    # lies outside [0, C), which is legitimate only for ignore_index.
    if int(target.min()) >= 0 and int(target.max()) < c:
        return
    bad = ((target < 0) | (target >= c)) & (target != ignore_index)
    if bool(bad.any()):
        i = int(np.argmax(bad))
        raise ValueError(f"{fn}: target[{i}] = {int(target[i])} is out of range for logits of "
                         f"shape {tuple(logits.shape)} (expected 0 <= target < {c} or "
                         f"target == ignore_index = {ignore_index})")


def _check_rows(fn, names, arrays):
    """2-D floating arrays (M, C) of one shape and dtype."""
    for name, a in zip(names, arrays):
        _check_float(fn, name, a, ndim=2)
    _check_same(fn, names, arrays)


def _rowwise(name, names, reference, *arrays, options=()):
    """Check and dispatch one of the four row-wise kernels below: the CUDA kernel for device
    arrays, the compiled one (on C-contiguous copies, into a new output of the last array's
    shape) for non-empty host arrays it takes, else the NumPy reference. ``options`` follow
    the arrays in every version's call."""
    _check_rows(name, names, arrays)
    if on_device(arrays[0]):
        return gpu("softmax", name)(*arrays, *options)
    ext = compiled("softmax", *arrays)
    if ext is None or arrays[-1].size == 0:
        return reference(*arrays, *options)
    arrays = [np.ascontiguousarray(a) for a in arrays]
    out = np.empty_like(arrays[-1])
    getattr(ext, name)(*arrays, out, *options)
    return out


def _options(fn, scale, causal):
    """(scale, causal) checked: a finite scale > 0 (the row maximum of scale x is then scale
    times that of x) and a whole number of query rows L >= 0 (0: no mask)."""
    scale = float(scale)
    if not (0.0 < scale < np.inf):
        raise ValueError(f"{fn}: scale must be finite and > 0, got {scale}")
    if isinstance(causal, bool) or not isinstance(causal, (int, np.integer)) or causal < 0:
        raise ValueError(f"{fn}: causal must be an int >= 0 (the rows per causal block), "
                         f"got {causal!r}")
    return scale, int(causal)


def softmax_forward(x, scale=1.0, causal=0):
    """Softmax over the last axis of scale * x, x (M, C); see the module docstring.

    ``causal = L > 0`` masks row r beyond column r mod L (probability 0 there): the scores of
    causal self-attention (..., L, S) as rows, masked and scaled in the one pass over them
    (the masked entries are never exponentiated)."""
    options = _options("softmax_forward", scale, causal)
    return _rowwise("softmax_forward", ("x",), softmax_forward_ref, x, options=options)


def log_softmax_forward(x):
    """Log-softmax over the last axis of a 2-D array (M, C); see the module docstring."""
    return _rowwise("log_softmax_forward", ("x",), log_softmax_forward_ref, x)


def softmax_backward(grad_y, y, scale=1.0, causal=0):
    """Gradient of softmax(scale x) with respect to x: scale y (grad_y - sum(grad_y y, -1));
    arrays (M, C); 0 at the entries ``causal`` masks (see ``softmax_forward``)."""
    options = _options("softmax_backward", scale, causal)
    return _rowwise("softmax_backward", ("grad_y", "y"), softmax_backward_ref, grad_y, y,
                    options=options)


def log_softmax_backward(grad_y, y_log):
    """Gradient of log-softmax: grad_y - exp(y_log) * sum(grad_y, -1); arrays (M, C)."""
    return _rowwise("log_softmax_backward", ("grad_y", "y_log"), log_softmax_backward_ref,
                    grad_y, y_log)


def cross_entropy_forward(logits, target, ignore_index=-100):
    """Per-row cross-entropy of logits (N, C) against integer classes target (N,).

    Returns ``(loss, lse)``: loss (N,) in the logits' dtype, 0 at rows whose target is
    ``ignore_index``; lse (N,) float64, the log-sum-exp of each row, saved for the backward.
    Targets outside [0, C) other than ``ignore_index`` raise ValueError (on the GPU: a NaN
    loss, see minissl/kernels/cuda.py).
    """
    fn = "cross_entropy_forward"
    _check_float(fn, "logits", logits, ndim=2)
    _check_target(fn, target, logits, ignore_index)
    if on_device(logits):
        return gpu("softmax", fn)(logits, target, ignore_index)
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
    if on_device(logits):
        return gpu("softmax", fn)(grad_loss, logits, target, lse, ignore_index)
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
