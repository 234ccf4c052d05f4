"""2-D convolution and transposed convolution (NCHW, PyTorch's weight layouts), via im2col.

conv2d: every output pixel is a dot product of the weight with one input window, so with the
windows laid out as rows of ``cols = im2col(x)`` (N*OH*OW, C*kh*kw) the whole convolution is
one matrix product ``Y = cols W^T`` with W = weight.reshape(O, C*kh*kw). Its adjoints:
    dW = G^T cols,   db = column sums of G,   dx = col2im(G W)
with G the output gradient as (N*OH*OW, O). conv_transpose2d is exactly the adjoint of conv2d
with respect to its input (the same col2im / im2col pair, used the other way round).

Dilation lives in im2col (a window with holes: the rows of cols are the dilated windows, the
products do not change). Groups split the channels: group g's outputs O/G read only its C/G
input channels, so with cols' columns ordered (c, i, j) group g owns one contiguous block of
C/G*kh*kw columns and the products become one batched product over the groups,
    Y_g = cols_g W_g^T,   dW_g = G_g^T cols_g,   dcols_g = G_g W_g.

``Conv2dRef`` computes exactly these products, the textbook way, and is what
``MINISSL_REFERENCE=1`` runs (and every grouped convolution). ``Conv2d`` computes the same
products transposed, image by image or in chunks, whichever is faster for the shapes
(docs/performance.md, "conv2d").
"""
import numpy as np

from ..autograd import Function
from ..backend import get_array_module
from ..kernels import conv as conv_kernels
from ..kernels._dispatch import reference_forced
from ..kernels.gemm import matmul as _mm
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
    """The textbook conv2d: Y_g = cols_g W_g^T per group, as (N*OH*OW, O) rows, then NCHW; the
    reference of ``Conv2d`` (the same products, see the module docstring)."""

    __slots__ = ("k", "stride", "padding", "dilation", "groups", "has_bias", "cols", "w3",
                 "x_shape")

    def __init__(self, k, stride, padding, has_bias, dilation=(1, 1), groups=1):
        self.k, self.stride, self.padding, self.has_bias = k, stride, padding, has_bias
        self.dilation, self.groups = dilation, groups

    def _geometry(self):
        return self.k, self.stride, self.padding, self.dilation

    def forward(self, x, w, b=None):
        _, _, _, (OH, OW) = window_geometry("conv2d", x.shape, *self._geometry())
        N, O, G = x.shape[0], w.shape[0], self.groups
        self.x_shape = x.shape
        self.cols = im2col(x, *self._geometry())                    # (N*OH*OW, C*kh*kw)
        M, CgK = self.cols.shape[0], w.shape[1] * w.shape[2] * w.shape[3]
        self.w3 = w.reshape(G, O // G, CgK)                          # W_g: (G, O/G, C/G*kh*kw)
        cols3 = self.cols.reshape(M, G, CgK).transpose(1, 0, 2)      # cols_g: (G, M, C/G*kh*kw)
        y = (cols3 @ self.w3.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(M, O)
        if b is not None:
            y = y + b
        return y.reshape(N, OH, OW, O).transpose(0, 3, 1, 2).copy()

    def backward(self, g):
        N, O, OH, OW = g.shape
        M, G = N * OH * OW, self.groups
        G3 = g.transpose(0, 2, 3, 1).reshape(M, G, O // G).transpose(1, 0, 2)  # (G, M, O/G)
        gx = gw = None
        if self.needs_grad[0]:
            dcols = (G3 @ self.w3).transpose(1, 0, 2).reshape(self.cols.shape)
            gx = col2im(dcols, self.x_shape, *self._geometry())
        if self.needs_grad[1]:
            cols3 = self.cols.reshape(M, G, self.w3.shape[2]).transpose(1, 0, 2)
            gw = (G3.transpose(0, 2, 1) @ cols3).reshape(O, self.x_shape[1] // G, *self.k)
        if self.has_bias:
            gb = g.sum(axis=(0, 2, 3)) if self.needs_grad[2] else None
            return gx, gw, gb
        return gx, gw


class Conv2d(Function):
    """y = conv2d(x, weight) + bias: Conv2dRef's products, arranged for speed.

    On the CPU, where the conv kernels are built and NumPy's BLAS is OpenBLAS, the whole op
    is the conv family's kernel (minissl/kernels/conv: image by image, each image's windows
    unfolded in the cache; nothing but x and the weight kept for the backward pass).
    Otherwise (the GPU, no compiled kernels) the products are computed transposed,
    Y^T = W cols^T (O, N*OH*OW), so that NCHW is a plane-by-plane copy; image by image
    (Y_n = W cols_n^T) when the output planes are large against the window
    (OH*OW >= PER_IMAGE_RATIO * C*kh*kw); and the input gradient in chunks of images when
    dcols is larger than 16 * CHUNK_BYTES. Why, with the measurements: docs/performance.md,
    "conv2d image by image" and "conv2d". One group only (grouped convolutions run
    Conv2dRef)."""

    __slots__ = ("k", "stride", "padding", "dilation", "has_bias", "cols", "w2", "x_shape",
                 "per_image", "fused", "x", "w")

    def __init__(self, k, stride, padding, has_bias, dilation=(1, 1)):
        self.k, self.stride, self.padding, self.has_bias = k, stride, padding, has_bias
        self.dilation = dilation

    def forward(self, x, w, b=None):
        self.fused = conv_kernels.compiled_kernel(x, w) is not None
        if self.fused:                                               # kernels/conv, the CPU
            self.x, self.w = x, w
            return conv_kernels.conv2d_forward(x, w, b, self.stride, self.padding,
                                               self.dilation)
        N = x.shape[0]
        _, _, _, (OH, OW) = window_geometry("conv2d", x.shape, self.k, self.stride, self.padding,
                                            self.dilation)
        self.x_shape = x.shape
        self.cols = im2col(x, self.k, self.stride, self.padding, self.dilation)  # (N*OH*OW, CK)
        CK = w.shape[1] * w.shape[2] * w.shape[3]
        self.w2 = w.reshape(w.shape[0], CK)                          # (O, C*kh*kw)
        self.per_image = OH * OW >= PER_IMAGE_RATIO * CK
        if self.per_image:   # Y_n = W cols_n^T: (N, O, OH*OW), NCHW as it comes
            y = _mm(self.w2, self.cols.reshape(N, OH * OW, CK).transpose(0, 2, 1))
            if b is not None:
                y += b[:, None]
            return y.reshape(N, self.w2.shape[0], OH, OW)
        # Y^T = W cols^T: channel-major (O, N*OH*OW), so that NCHW is a plane-by-plane copy.
        yt = _mm(self.w2, self.cols.T)
        if b is not None:
            yt += b[:, None]
        return _nchw(yt, N, OH, OW)

    def backward(self, g):
        N, O = g.shape[:2]
        need_x, need_w = self.needs_grad[0], self.needs_grad[1]
        need_b = self.has_bias and self.needs_grad[2]
        gx = gw = gb = None
        if self.fused:
            gx, gw = conv_kernels.conv2d_backward(self.x, self.w, g, self.stride, self.padding,
                                                  self.dilation, need_x, need_w)
            gb = g.sum(axis=(0, 2, 3)) if need_b else None
            return (gx, gw, gb) if self.has_bias else (gx, gw)
        if self.per_image:
            g3 = g.reshape(N, O, g.shape[2] * g.shape[3])            # G_n: (N, O, OH*OW)
            if need_x:
                gx = self._fold(_mm(g3.transpose(0, 2, 1), self.w2).reshape(self.cols.shape))
            if need_w:
                gw = _mm(g3, self.cols.reshape(N, g3.shape[2], self.w2.shape[1])).sum(axis=0)
            if need_b:
                gb = g3.sum(axis=(0, 2))
        else:
            gt = _cnhw(g)                                            # G^T: (O, N*OH*OW)
            if need_x:
                gx = self._input_grad(gt)
            if need_w:
                gw = _mm(gt, self.cols)                              # (O, C*kh*kw)
            if need_b:
                gb = gt.sum(axis=1)
        if gw is not None:
            gw = gw.reshape(O, self.x_shape[1], *self.k)
        return (gx, gw, gb) if self.has_bias else (gx, gw)

    def _fold(self, dcols, shape=None):
        return col2im(dcols, shape or self.x_shape, self.k, self.stride, self.padding,
                      self.dilation)

    def _input_grad(self, gt):
        """dx = col2im(G W) from G^T (O, N*OH*OW); in chunks of n images when G W is larger
        than 16 * CHUNK_BYTES (see the module docstring)."""
        N = self.x_shape[0]
        rows = gt.shape[1] // max(N, 1)                              # OH*OW per image
        image_bytes = rows * self.w2.shape[1] * gt.itemsize          # one image's dcols
        if get_array_module(gt) is not np or N * image_bytes <= 16 * CHUNK_BYTES:
            return self._fold(_mm(gt.T, self.w2))                    # dcols (N*OH*OW, C*kh*kw)
        n = max(1, CHUNK_BYTES // image_bytes)
        gx = np.empty(self.x_shape, dtype=gt.dtype)
        for i in range(0, N, n):
            j = min(i + n, N)
            gx[i:j] = self._fold(_mm(gt[:, i * rows:j * rows].T, self.w2),
                                 (j - i,) + tuple(self.x_shape[1:]))
        return gx


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _check_groups(op, groups, in_channels, out_channels, x_shape, w_shape):
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"{op}: groups={groups} must divide both the input channels "
                         f"({in_channels}, input {tuple(x_shape)}) and the output channels "
                         f"({out_channels}, weight {tuple(w_shape)})")


def _check_conv(op, x, weight, bias, in_dim, bias_dim, groups=1, nd=2):
    if x.ndim != nd + 2 or weight.ndim != nd + 2:
        layout = "(N, C, H, W)" if nd == 2 else "(N, C, L)"
        raise ValueError(f"{op}: expected input {layout} and a {nd + 2}-D weight, got input "
                         f"{x.shape} and weight {weight.shape}")
    _check_groups(op, groups, x.shape[1], weight.shape[0], x.shape, weight.shape)
    if x.shape[1] != weight.shape[in_dim] * groups:
        raise ValueError(f"{op}: input of shape {x.shape} has {x.shape[1]} channels but weight "
                         f"of shape {weight.shape} expects {weight.shape[in_dim] * groups} "
                         f"(groups={groups})")
    if bias is not None and bias.shape != (weight.shape[bias_dim],):
        raise ValueError(f"{op}: bias of shape {bias.shape} does not match weight of shape "
                         f"{weight.shape}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{op}: input dtype {x.dtype} differs from weight dtype {weight.dtype}")


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation of x (N, C, H, W) with weight (O, C/groups, kh, kw) ->
    (N, O, OH, OW), OH = (H + 2 padding - dilation (kh - 1) - 1) // stride + 1, as
    ``torch.nn.functional.conv2d``."""
    return _conv2d("conv2d", x, weight, bias, _pair(stride), _pair(padding), _pair(dilation),
                   groups)


def _conv2d(op, x, weight, bias, stride, padding, dilation, groups, nd=2):
    """conv2d and conv1d (as a conv2d of height 1) after their own argument handling."""
    _check_conv(op, x, weight, bias, 1, 0, groups, nd)
    k = tuple(weight.shape[2:])
    if nd == 1:                       # (N, C, L) as (N, C, 1, L), weight (O, C/G, 1, k)
        x = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2])
        weight = weight.reshape(weight.shape[0], weight.shape[1], 1, k[0])
        k = (1, k[0])
    window_geometry(op, x.shape, k, stride, padding, dilation)     # errors name the op
    if groups == 1 and not reference_forced():
        fn = Conv2d(k, stride, padding, bias is not None, dilation)
    else:
        fn = Conv2dRef(k, stride, padding, bias is not None, dilation, groups)
    y = fn(x, weight) if bias is None else fn(x, weight, bias)
    return y.reshape(y.shape[0], y.shape[1], y.shape[3]) if nd == 1 else y


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
        y = col2im(_mm(self.x2.T, self.w2), self.out_shape, self.k, self.stride, self.padding)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        return y

    def backward(self, g):
        gcols = im2col(g, self.k, self.stride, self.padding)         # (N*H*W, Cout*kh*kw)
        N, _, H, W = self.x_shape
        gx = _nchw(_mm(self.w2, gcols.T), N, H, W) if self.needs_grad[0] else None
        gw = _mm(self.x2, gcols).reshape(self.x2.shape[0], g.shape[1], *self.k) \
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
