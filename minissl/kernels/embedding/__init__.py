"""Backward of an embedding lookup: a deterministic scatter-add of rows.

The forward ``out = weight[indices]`` gathers rows of weight (V, D); ``indices`` has any shape
and out has shape (*indices.shape, D). Its adjoint scatters the gradient back:

    grad_weight[v] = sum over positions p with indices[p] == v of grad_out[p]

Repeated indices accumulate (a token that occurs five times gets five contributions).
Every row of grad_weight is summed in the order the positions appear in ``indices``, by one
thread, so the result is the same bit for bit on every run and every thread count (atomic
adds, as GPU scatters use, would not be). Rows that no index selects get zero.

The public function checks its arguments once (an index outside [0, num_embeddings) raises
ValueError; on the GPU such an index contributes nothing, as checking it there would need a
device-to-host copy), then runs one of the three versions in this folder: the CUDA kernel
(embedding.cu, launched by cuda.py) for CuPy arrays, the Cython kernel (_cpu.pyx) for
float32/float64 NumPy arrays, ``embedding_backward_ref`` (reference.py) otherwise.
"""
import numpy as np

from .._dispatch import compiled, gpu, on_device
from .reference import embedding_backward_ref

__all__ = ["embedding_backward", "embedding_backward_ref"]


def _check_args(indices, grad_out, num_embeddings):
    """The checks of embedding_backward's arguments; returns num_embeddings as an int. The
    index values are checked on the host only."""
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
    num_embeddings = int(num_embeddings)
    if indices.size and not on_device(indices):
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= num_embeddings:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{fn}: index {bad} is out of range for num_embeddings = "
                             f"{num_embeddings} (indices of shape {tuple(indices.shape)})")
    return num_embeddings


def embedding_backward(indices, grad_out, num_embeddings):
    """Gradient of ``weight[indices]`` with respect to weight (num_embeddings, D).

    indices: integer array of any shape; grad_out: float array of shape (*indices.shape, D).
    """
    num_embeddings = _check_args(indices, grad_out, num_embeddings)
    if on_device(grad_out):
        return gpu("embedding", "embedding_backward")(indices, grad_out, num_embeddings)
    ext = compiled("embedding", grad_out)
    if ext is None or grad_out.size == 0:
        return embedding_backward_ref(indices, grad_out, num_embeddings)
    d = grad_out.shape[-1]
    idx = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
    g = np.ascontiguousarray(grad_out).reshape(idx.shape[0], d)
    grad_weight = np.zeros((num_embeddings, d), dtype=grad_out.dtype)
    ext.embedding_backward(idx, g, grad_weight)
    return grad_weight
