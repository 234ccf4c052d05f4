"""The argument checks shared by the losses (``minissl.losses``, ``minissl.losses_multicrop``):
one clear error naming the loss, the argument and its shape."""
import math
import numbers

import numpy as np

from .autograd import Tensor


def _check_float(fn, name, x):
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a minissl Tensor, got {type(x).__name__}")
    if x.dtype.char not in "fd":   # the engine's dtype policy (autograd.Function), by name
        raise TypeError(f"{fn}: {name} must be a float32 or float64 tensor, got dtype "
                        f"{x.dtype} (shape {x.shape})")


def _check_matrix(fn, name, x, min_rows=1):
    """``x`` is a floating (rows, D) Tensor with D >= 1 and at least ``min_rows`` rows."""
    _check_float(fn, name, x)
    if x.ndim != 2:
        raise ValueError(f"{fn}: {name} must be a 2-D (N, D) tensor, got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError(f"{fn}: {name} has no features (shape {x.shape})")
    if x.shape[0] < min_rows:
        raise ValueError(f"{fn}: {name} of shape {x.shape} has {x.shape[0]} row(s); this loss "
                         f"needs at least {min_rows}")


def _check_pair(fn, names, a, b, min_rows=1):
    """Two (N, D) Tensors of one shape and dtype (the two views, or prediction and target)."""
    _check_matrix(fn, names[0], a)
    _check_matrix(fn, names[1], b)
    if a.shape != b.shape:
        raise ValueError(f"{fn}: {names[0]} and {names[1]} must have the same shape (N, D), "
                         f"got {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"{fn}: {names[0]} and {names[1]} must share one dtype, got "
                        f"{a.dtype} and {b.dtype}")
    if a.shape[0] < min_rows:
        raise ValueError(f"{fn}: needs at least {min_rows} rows (N >= {min_rows}) to form "
                         f"pairs, got {names[0]} and {names[1]} of shape {a.shape}")


def _positive(fn, name, value):
    """``value`` as a Python float, checked positive and finite. (A NumPy float64 scalar
    would otherwise promote a float32 loss to float64.)"""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{fn}: {name} must be a positive finite number, got {value!r}")
    return float(value)


def _number(fn, name, value):
    """``value`` as a Python float (a loss weight); finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{fn}: {name} must be a finite number, got {value!r}")
    return float(value)


def _indices(values):
    """An int64 Tensor of class indices (the targets of a cross-entropy), built with the
    array module of the embeddings so that no host-to-device copy happens on the GPU."""
    return Tensor(values.astype(np.int64, copy=False))
