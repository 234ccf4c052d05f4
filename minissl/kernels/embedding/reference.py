"""NumPy reference of the embedding backward: the specification (the math is in __init__.py).

Array-module generic (``xp = get_array_module(x)``), so it also runs on CuPy arrays.
"""
from ...backend import get_array_module


def embedding_backward_ref(indices, grad_out, num_embeddings):
    """grad_weight (num_embeddings, D): row v is the sum of grad_out at positions with index v.

    ``xp.add.at`` is the unbuffered scatter-add: repeated indices accumulate, in index order.
    """
    xp = get_array_module(grad_out)
    d = grad_out.shape[-1]
    grad_weight = xp.zeros((num_embeddings, d), dtype=grad_out.dtype)
    xp.add.at(grad_weight, indices.reshape(-1), grad_out.reshape(indices.size, d))
    return grad_weight
