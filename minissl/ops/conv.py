"""2-D convolution and transposed convolution (NCHW, PyTorch's weight layouts), via im2col.

conv2d: every output pixel is a dot product of the weight with one input window, so with the
windows laid out as rows of ``cols = im2col(x)`` (N*OH*OW, C*kh*kw) the whole convolution is
one matrix product ``Y = cols W^T`` with W = weight.reshape(O, C*kh*kw). Its adjoints:
    dW = G^T cols,   db = column sums of G,   dx = col2im(G W)
with G the output gradient as (N*OH*OW, O). conv_transpose2d is exactly the adjoint of conv2d
with respect to its input (the same col2im / im2col pair, used the other way round).

``Conv2dRef`` computes exactly these products, the textbook way, and is what
``MINISSL_REFERENCE=1`` runs. ``Conv2d`` computes the same products transposed, image by
image or in chunks, whichever is faster for the shapes (docs/performance.md, "conv2d").
"""
import numpy as np

from ..autograd import Function
from ..backend import get_array_module
from ..kernels._dispatch import reference_forced
from ..kernels.im2col import col2im, im2col, window_geometry

PER_IMAGE_RATIO = 4
CHUNK_BYTES = 4 << 20


def _cnhw(a):
    """(N, C, H, W) -> contiguous (C, N*H*W), channel-major rows.

    Only whole planes of H*W contiguous values move, so this copy runs at memory speed, unlike
    the element-wise transpose to (N*H*W, C) rows."""
    xp = get_array_module(a)
    n, c, h, w = a.shape
    return xp.ascontiguousarray(a.reshape(n, c, h * w).transpose(1, 0, 2)).reshape(c, n * h * w)


def _nchw(rows_t, n, h, w):
    """(C, N*H*W) channel-major rows -> contiguous (N, C, H, W), a plane-by-plane copy."""
    xp = get_array_module(rows_t)
    c = rows_t.shape[0]
    planes = rows_t.reshape(c, n, h * w).transpose(1, 0, 2)
    return xp.ascontiguousarray(planes).reshape(n, c, h, w)


class Conv2dRef(Function):
    """The textbook conv2d: Y = cols W^T as (N*OH*OW, O) rows, then NCHW; the reference of
    ``Conv2d`` (the same products, see the module docstring), run with MINISSL_REFERENCE=1."""

    __slots__ = ("k", "stride", "padding", "has_bias", "cols", "w2", "x_shape")

    def __init__(self, k, stride, padding, has_bias):
        self.k, self.stride, self.padding, self.has_bias = k, stride, padding, has_bias

    def forward(self, x, w, b=None):
        _, _, _, (OH, OW) = window_geometry("conv2d", x.shape, self.k, self.stride, self.padding)
        N, O = x.shape[0], w.shape[0]
        self.x_shape = x.shape
        self.cols = im2col(x, self.k, self.stride, self.padding)   # (N*OH*OW, C*kh*kw)
        self.w2 = w.reshape(O, w.shape[1] * w.shape[2] * w.shape[3])  # (O, C*kh*kw)
        y = self.cols @ self.w2.T                                    # (N*OH*OW, O)
        if b is not None:
            y = y + b
        return y.reshape(N, OH, OW, O).transpose(0, 3, 1, 2).copy()

    def backward(self, g):
        N, O, OH, OW = g.shape
        G = g.transpose(0, 2, 3, 1).reshape(N * OH * OW, O)         # (N*OH*OW, O)
        gx = col2im(G @ self.w2, self.x_shape, self.k, self.stride, self.padding) \
            if self.needs_grad[0] else None
        gw = (G.T @ self.cols).reshape(O, self.x_shape[1], *self.k) \
            if self.needs_grad[1] else None
        if self.has_bias:
            return gx, gw, (G.sum(axis=0) if self.needs_grad[2] else None)
        return gx, gw


class Conv2d(Function):
    """y = conv2d(x, weight) + bias: Conv2dRef's products, arranged for speed.

    The products are computed transposed, Y^T = W cols^T (O, N*OH*OW), so that NCHW is a
    plane-by-plane copy; image by image (Y_n = W cols_n^T) when the output planes are large
    against the window (OH*OW >= PER_IMAGE_RATIO * C*kh*kw); and the input gradient in chunks
    of images when dcols is larger than 16 * CHUNK_BYTES. Why, with the measurements:
    docs/performance.md, "conv2d"."""

    __slots__ = ("k", "stride", "padding", "has_bias", "cols", "w2", "x_shape", "per_image")

    def __init__(self, k, stride, padding, has_bias):
        self.k, self.stride, self.padding, self.has_bias = k, stride, padding, has_bias

    def forward(self, x, w, b=None):
        N = x.shape[0]
        _, _, _, (OH, OW) = window_geometry("conv2d", x.shape, self.k, self.stride, self.padding)
        self.x_shape = x.shape
        self.cols = im2col(x, self.k, self.stride, self.padding)   # (N*OH*OW, C*kh*kw)
        CK = w.shape[1] * w.shape[2] * w.shape[3]
        self.w2 = w.reshape(w.shape[0], CK)                          # (O, C*kh*kw)
        self.per_image = OH * OW >= PER_IMAGE_RATIO * CK
        if self.per_image:   # Y_n = W cols_n^T: (N, O, OH*OW), NCHW as it comes
            y = self.w2 @ self.cols.reshape(N, OH * OW, CK).transpose(0, 2, 1)
            if b is not None:
                y += b[:, None]
            return y.reshape(N, self.w2.shape[0], OH, OW)
        # Y^T = W cols^T: channel-major (O, N*OH*OW), so that NCHW is a plane-by-plane copy.
        yt = self.w2 @ self.cols.T
        if b is not None:
            yt += b[:, None]
        return _nchw(yt, N, OH, OW)

    def backward(self, g):
        N, O = g.shape[:2]
        need_x, need_w = self.needs_grad[0], self.needs_grad[1]
        need_b = self.has_bias and self.needs_grad[2]
        gx = gw = gb = None
        if self.per_image:
            g3 = g.reshape(N, O, g.shape[2] * g.shape[3])            # G_n: (N, O, OH*OW)
            if need_x:
                gx = self._fold((g3.transpose(0, 2, 1) @ self.w2).reshape(self.cols.shape))
            if need_w:
                gw = (g3 @ self.cols.reshape(N, g3.shape[2], self.w2.shape[1])).sum(axis=0)
            if need_b:
                gb = g3.sum(axis=(0, 2))
        else:
            gt = _cnhw(g)                                            # G^T: (O, N*OH*OW)
            if need_x:
                gx = self._input_grad(gt)
            if need_w:
                gw = gt @ self.cols                                  # (O, C*kh*kw)
            if need_b:
                gb = gt.sum(axis=1)
        if gw is not None:
            gw = gw.reshape(O, self.x_shape[1], *self.k)
        return (gx, gw, gb) if self.has_bias else (gx, gw)

    def _fold(self, dcols, shape=None):
        return col2im(dcols, shape or self.x_shape, self.k, self.stride, self.padding)

    def _input_grad(self, gt):
        """dx = col2im(G W) from G^T (O, N*OH*OW); in chunks of n images when G W is larger
        than 16 * CHUNK_BYTES (see the module docstring)."""
        N = self.x_shape[0]
        rows = gt.shape[1] // max(N, 1)                              # OH*OW per image
        image_bytes = rows * self.w2.shape[1] * gt.itemsize          # one image's dcols
        if get_array_module(gt) is not np or N * image_bytes <= 16 * CHUNK_BYTES:
            return self._fold(gt.T @ self.w2)                        # dcols (N*OH*OW, C*kh*kw)
        n = max(1, CHUNK_BYTES // image_bytes)
        gx = np.empty(self.x_shape, dtype=gt.dtype)
        for i in range(0, N, n):
            j = min(i + n, N)
            gx[i:j] = self._fold(gt[:, i * rows:j * rows].T @ self.w2,
                                 (j - i,) + tuple(self.x_shape[1:]))
        return gx


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _check_conv(op, x, weight, bias, in_dim, bias_dim):
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"{op}: expected input (N, C, H, W) and a 4-D weight, got input "
                         f"{x.shape} and weight {weight.shape}")
    if x.shape[1] != weight.shape[in_dim]:
        raise ValueError(f"{op}: input of shape {x.shape} has {x.shape[1]} channels but weight "
                         f"of shape {weight.shape} expects {weight.shape[in_dim]}")
    if bias is not None and bias.shape != (weight.shape[bias_dim],):
        raise ValueError(f"{op}: bias of shape {bias.shape} does not match weight of shape "
                         f"{weight.shape}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{op}: input dtype {x.dtype} differs from weight dtype {weight.dtype}")


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D cross-correlation of x (N, C, H, W) with weight (O, C, kh, kw) -> (N, O, OH, OW),
    OH = (H + 2 padding - kh) // stride + 1, as ``torch.nn.functional.conv2d``."""
    _check_conv("conv2d", x, weight, bias, 1, 0)
    op = Conv2dRef if reference_forced() else Conv2d
    fn = op(tuple(weight.shape[2:]), _pair(stride), _pair(padding), bias is not None)
    return fn(x, weight) if bias is None else fn(x, weight, bias)


class ConvTranspose2d(Function):
    """y = conv_transpose2d(x, weight) + bias: the input-adjoint of conv2d.

    With X the input as rows (N*H*W, Cin) and W = weight.reshape(Cin, Cout*kh*kw):
    y = col2im(X W);  dX = im2col(g) W^T,  dW = X^T im2col(g),  db = sums of g over (N, H, W).
    """

    __slots__ = ("k", "stride", "padding", "has_bias", "x2", "w2", "x_shape", "out_shape")

    def __init__(self, k, stride, padding, out_shape, has_bias):
        self.k, self.stride, self.padding = k, stride, padding
        self.out_shape, self.has_bias = out_shape, has_bias

    def forward(self, x, w, b=None):
        self.x_shape = x.shape
        self.x2 = _cnhw(x)                                           # X^T: (Cin, N*H*W)
        self.w2 = w.reshape(w.shape[0], -1)                          # (Cin, Cout*kh*kw)
        y = col2im(self.x2.T @ self.w2, self.out_shape, self.k, self.stride, self.padding)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        return y

    def backward(self, g):
        gcols = im2col(g, self.k, self.stride, self.padding)         # (N*H*W, Cout*kh*kw)
        N, _, H, W = self.x_shape
        gx = _nchw(self.w2 @ gcols.T, N, H, W) if self.needs_grad[0] else None
        gw = (self.x2 @ gcols).reshape(self.x2.shape[0], g.shape[1], *self.k) \
            if self.needs_grad[1] else None
        if self.has_bias:
            gb = g.sum(axis=(0, 2, 3)) if self.needs_grad[2] else None
            return gx, gw, gb
        return gx, gw


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0):
    """Transposed convolution of x (N, Cin, H, W) with weight (Cin, Cout, kh, kw) ->
    (N, Cout, (H-1) stride - 2 padding + kh + output_padding, ...), as PyTorch."""
    _check_conv("conv_transpose2d", x, weight, bias, 0, 1)
    s, p, op = _pair(stride), _pair(padding), _pair(output_padding)
    k = tuple(weight.shape[2:])
    if op[0] >= s[0] or op[1] >= s[1] or min(op) < 0:
        raise ValueError(f"conv_transpose2d: output_padding {op} must be >= 0 and smaller than "
                         f"stride {s}")
    out = tuple((x.shape[2 + i] - 1) * s[i] - 2 * p[i] + k[i] + op[i] for i in range(2))
    if min(out) < 1:
        raise ValueError(f"conv_transpose2d: input {x.shape} with weight {weight.shape}, stride "
                         f"{s}, padding {p} gives an empty output {out}")
    fn = ConvTranspose2d(k, s, p, (x.shape[0], weight.shape[1]) + out, bias is not None)
    return fn(x, weight) if bias is None else fn(x, weight, bias)
