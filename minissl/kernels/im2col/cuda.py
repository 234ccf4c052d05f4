"""CuPy launchers of im2col / col2im's CUDA kernels (im2col.cu).

Each launcher has its reference's signature (reference.py: geometry as (h, w) pairs) and is
called by the public function in __init__.py after the argument checks; it checks only that
the arrays are on the device. im2col runs one thread per entry of cols (coalesced writes),
col2im one thread per input pixel, gathering the windows that cover it in (i, j) order.
"""
from .. import cuda as cu
from . import reference as R


def _geometry(c, h, w, ks, st, pad, dil, oh, ow, total):
    return tuple(cu.i32(v) for v in (c, h, w, *ks, *st, *pad, *dil, oh, ow, total))


def im2col(x, kernel_size, stride, padding, dilation=(1, 1)):
    """cols (N OH OW, C kh kw) of x (N, C, H, W)."""
    be = cu.device_backend("im2col", x=x)
    xp = be.xp
    n, c, h, w = x.shape
    oh, ow = R._out_size(h, w, kernel_size, stride, padding, dilation)
    shape = (n * oh * ow, c * kernel_size[0] * kernel_size[1])
    total = shape[0] * shape[1]
    if not cu.kernel_ok(x) or total > cu.MAX_ELEMENTS:
        return R.im2col_ref(x, kernel_size, stride, padding, dilation)
    cols = xp.empty(shape, dtype=x.dtype)
    if total:
        k = be.kernel("im2col", "im2col_kernel", x.dtype)
        k(cu.grid(total), (cu.THREADS,),
          (cu.contig(xp, x), cols, *_geometry(c, h, w, kernel_size, stride, padding, dilation,
                                              oh, ow, total)))
    return cols


def col2im(cols, x_shape, kernel_size, stride, padding, dilation=(1, 1)):
    """The adjoint of im2col, as a gather: x (N, C, H, W) from cols (N OH OW, C kh kw)."""
    be = cu.device_backend("col2im", cols=cols)
    xp = be.xp
    n, c, h, w = x_shape
    oh, ow = R._out_size(h, w, kernel_size, stride, padding, dilation)
    total = n * c * h * w
    if not cu.kernel_ok(cols) or total > cu.MAX_ELEMENTS:
        return R.col2im_ref(cols, x_shape, kernel_size, stride, padding, dilation)
    x = xp.empty(x_shape, dtype=cols.dtype)
    if total:
        k = be.kernel("im2col", "col2im_kernel", cols.dtype)
        k(cu.grid(total), (cu.THREADS,),
          (cu.contig(xp, cols), x, *_geometry(c, h, w, kernel_size, stride, padding, dilation,
                                              oh, ow, total)))
    return x
