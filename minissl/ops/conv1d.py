"""1-D convolution (N, C, L), PyTorch's weight layout (O, C/groups, k): a conv2d of height 1.

A sequence is an image of one row, so conv1d(x, w) = conv2d(x[:, :, None, :], w[:, :, None, :])
with stride (1, s), padding (0, p) and dilation (1, d), squeezed back: the same im2col products
(minissl/ops/conv.py), forward and backward, and the same kernels on every device. Only the
argument checks are 1-D, so that an error speaks of L and k, not of an invented height.

Causal convolution (WaveNet, van den Oord et al. 2016) is this op after a left padding,
``conv1d(F.pad(x, ((k - 1) * d, 0)), w, dilation=d)``: output t then reads x[t - (k-1) d .. t]
and nothing later.
"""
import operator

from .conv import _conv2d


def _single(op, name, value, least):
    """An int >= least from an int or a 1-tuple, as PyTorch's _single; errors name ``op``."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    try:
        if len(items) != 1 or isinstance(items[0], bool):
            raise TypeError
        v = operator.index(items[0])
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a 1-tuple of ints, "
                        f"got {value!r}") from None
    if v < least:
        raise ValueError(f"{op}: {name} must be >= {least}, got {v}")
    return v


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D cross-correlation of input (N, C, L) with weight (O, C/groups, k) -> (N, O, OL),
    OL = (L + 2 padding - dilation (k - 1) - 1) // stride + 1, as ``torch.nn.functional.conv1d``.
    """
    s = _single("conv1d", "stride", stride, 1)
    p = _single("conv1d", "padding", padding, 0)
    d = _single("conv1d", "dilation", dilation, 1)
    if input.ndim == 3 and weight.ndim == 3:
        L, k = input.shape[2], weight.shape[2]
        if (L + 2 * p - d * (k - 1) - 1) // s + 1 < 1 or k < 1:
            raise ValueError(f"conv1d: kernel size {k} with dilation {d} and padding {p} does "
                             f"not fit the input of shape {tuple(input.shape)} (weight "
                             f"{tuple(weight.shape)})")
    return _conv2d("conv1d", input, weight, bias, (1, s), (0, p), (1, d), groups, nd=1)
