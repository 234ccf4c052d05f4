"""Embedding lookup: rows of a weight matrix picked by integer indices.

y[..., :] = W[idx[...], :];  dW[r] = sum of g over every position where idx == r (a
scatter-add, since an index may repeat), done by the embedding kernel.
"""
from ..autograd import Function, Tensor
from ..backend import get_array_module, is_host_array
from ..kernels import embedding as _k


class Embedding(Function):
    __slots__ = ("idx", "num")

    def __init__(self, idx):
        self.idx = idx

    def forward(self, w):
        self.num = w.shape[0]
        return w[self.idx]

    def backward(self, g):
        return _k.embedding_backward(self.idx, g, self.num)


def embedding(input, weight):
    """Look up rows of ``weight`` (num_embeddings, dim) at integer ``input`` (any shape) ->
    (*input.shape, dim), as ``torch.nn.functional.embedding``."""
    idx = input.data if isinstance(input, Tensor) else input
    idx = get_array_module(weight.data).asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, dim), got "
                         f"{weight.shape}")
    # Checked on the host only (see backend.is_host_array): on the GPU the check would stall
    # every step, and an out-of-range index is an unreported caller error (CuPy's indexing
    # wraps it around), as it is unreported in PyTorch's CUDA kernels until a device assert.
    if idx.size and is_host_array(idx) and (int(idx.min()) < 0
                                            or int(idx.max()) >= weight.shape[0]):
        raise ValueError(f"embedding: indices must lie in [0, {weight.shape[0]}), got range "
                         f"[{int(idx.min())}, {int(idx.max())}] (indices of shape "
                         f"{tuple(idx.shape)})")
    return Embedding(idx.astype("int64", copy=False))(weight)
