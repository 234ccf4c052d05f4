"""CuPy launcher of the embedding backward's CUDA kernel (embedding.cu).

The launcher has its reference's signature (reference.py) and is called by the public function
in __init__.py after the argument checks; it checks only that the arrays are on the device.
"""
import numpy as np

from .. import cuda as cu
from . import reference as R


def embedding_backward(indices, grad_out, num_embeddings):
    """grad_weight (V, D), row v the sum of grad_out over the positions holding v, in
    position order (deterministic). Indices outside [0, num_embeddings) contribute nothing."""
    be = cu.device_backend("embedding_backward", indices=indices, grad_out=grad_out)
    xp = be.xp
    v = num_embeddings
    d = grad_out.shape[-1]
    p = indices.size
    if not cu.kernel_ok(grad_out) or v * d > cu.MAX_ELEMENTS:
        return R.embedding_backward_ref(indices, grad_out, v)
    grad_weight = xp.empty((v, d), dtype=grad_out.dtype)
    if v * d == 0:
        return grad_weight
    if p == 0:
        grad_weight[...] = 0
        return grad_weight
    # One block size serves as the tile of positions and as the slice of columns per block.
    block = cu.coop_block(max(p, d))
    k = be.kernel("embedding", "embedding_bwd_kernel", grad_out.dtype)
    k((v, -(-d // block)), (block,), (cu.contig(xp, indices, np.int64).reshape(-1),
                                      cu.contig(xp, grad_out).reshape(p, d), grad_weight,
                                      cu.i32(p), cu.i32(d)))
    return grad_weight
