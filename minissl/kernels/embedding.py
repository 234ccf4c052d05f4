"""Backward of an embedding lookup: a deterministic scatter-add of rows.

The forward ``out = weight[indices]`` gathers rows of weight (V, D); ``indices`` has any shape
and out has shape (*indices.shape, D). Its adjoint scatters the gradient back:

    grad_weight[v] = sum over positions p with indices[p] == v of grad_out[p]

Repeated indices accumulate (a token that occurs five times gets five contributions).
Every row of grad_weight is summed in the order the positions appear in ``indices``, by one
thread, so the result is the same bit for bit on every run and every thread count (atomic
adds, as GPU scatters use, would not be). Rows that no index selects get zero.

The public function validates its input (an index outside [0, num_embeddings) raises
ValueError) and dispatches: the Cython kernel (csrc/embedding.pyx) for float32/float64 NumPy
arrays, ``embedding_backward_ref`` otherwise.
"""
import numpy as np

from ..backend import get_array_module
from ._loader import compiled, gpu

__all__ = ["embedding_backward", "embedding_backward_ref"]


def embedding_backward_ref(indices, grad_out, num_embeddings):
    """grad_weight (num_embeddings, D): row v is the sum of grad_out at positions with index v.

    ``xp.add.at`` is the unbuffered scatter-add: repeated indices accumulate, in index order.
    """
    xp = get_array_module(grad_out)
    d = grad_out.shape[-1]
    grad_weight = xp.zeros((num_embeddings, d), dtype=grad_out.dtype)
    xp.add.at(grad_weight, indices.reshape(-1), grad_out.reshape(indices.size, d))
    return grad_weight


def check_args(indices, grad_out, num_embeddings):
    """The checks of embedding_backward's arguments that need no data (CPU and GPU alike);
    returns num_embeddings as an int."""
    fn = "embedding_backward"
    if not hasattr(indices, "dtype") or indices.dtype.kind not in "iu":
        raise TypeError(f"{fn}: indices must be an integer array, got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)}")
    if not hasattr(grad_out, "dtype") or grad_out.dtype.kind != "f":
        raise TypeError(f"{fn}: grad_out must be a floating-point array, got "
                        f"{getattr(grad_out, 'dtype', type(grad_out).__name__)}")
    if grad_out.ndim != indices.ndim + 1 or grad_out.shape[:-1] != indices.shape:
        raise ValueError(f"{fn}: grad_out must have shape (*indices.shape, D) = "
                         f"{tuple(indices.shape) + ('D',)}, got {tuple(grad_out.shape)}")
    if isinstance(num_embeddings, (bool, np.bool_)) or not isinstance(
            num_embeddings, (int, np.integer)) or num_embeddings < 0:
        raise ValueError(f"{fn}: num_embeddings must be a non-negative int, got "
                         f"{num_embeddings!r}")
    return int(num_embeddings)


def embedding_backward(indices, grad_out, num_embeddings):
    """Gradient of ``weight[indices]`` with respect to weight (num_embeddings, D).

    indices: integer array of any shape; grad_out: float array of shape (*indices.shape, D).
    """
    if get_array_module(grad_out) is not np:  # GPU: minissl/kernels/cuda.py
        return gpu("embedding_backward", embedding_backward_ref)(indices, grad_out, num_embeddings)
    fn = "embedding_backward"
    num_embeddings = check_args(indices, grad_out, num_embeddings)
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= num_embeddings:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{fn}: index {bad} is out of range for num_embeddings = "
                             f"{num_embeddings} (indices of shape {tuple(indices.shape)})")
    ext = compiled("embedding", grad_out)
    if ext is None or grad_out.size == 0:
        return embedding_backward_ref(indices, grad_out, num_embeddings)
    d = grad_out.shape[-1]
    idx = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
    g = np.ascontiguousarray(grad_out).reshape(idx.shape[0], d)
    grad_weight = np.zeros((num_embeddings, d), dtype=grad_out.dtype)
    ext.embedding_backward(idx, g, grad_weight)
    return grad_weight
