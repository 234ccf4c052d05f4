"""CuPy launchers of the exact GELU's CUDA kernels (activation.cu), elementwise.

Each launcher has its reference's signature (reference.py) and is called by the public
function in __init__.py after the argument checks; it checks only that the arrays are on the
device.
"""
from .. import cuda as cu
from . import reference as R


def gelu_forward(x):
    """0.5 x (1 + erf(x / sqrt 2))."""
    be = cu.device_backend("gelu_forward", x=x)
    if not cu.kernel_ok(x) or x.size == 0:
        return R.gelu_forward_ref(x)
    xp = be.xp
    x = cu.contig(xp, x)
    y = xp.empty_like(x)
    k = be.kernel("activation", "gelu_fwd_kernel", x.dtype)
    k(cu.grid(x.size), (cu.THREADS,), (x, y, cu.i32(x.size)))
    return y


def gelu_backward(grad_y, x):
    """g (Phi(x) + x phi(x))."""
    be = cu.device_backend("gelu_backward", grad_y=grad_y, x=x)
    if not cu.kernel_ok(x) or x.size == 0:
        return R.gelu_backward_ref(grad_y, x)
    xp = be.xp
    g, x = cu.contig(xp, grad_y), cu.contig(xp, x)
    dx = xp.empty_like(x)
    k = be.kernel("activation", "gelu_bwd_kernel", x.dtype)
    k(cu.grid(x.size), (cu.THREADS,), (g, x, dx, cu.i32(x.size)))
    return dx
