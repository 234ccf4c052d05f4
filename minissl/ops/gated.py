"""Gated activations over a channel split: ``glu`` (as ``torch.nn.functional.glu``) and
``gated_tanh``, the gated activation unit of the gated PixelCNN and WaveNet.

Both split x along ``dim`` into halves a (first) and b (second) and let b gate a:
    glu(x)        = a * sigmoid(b)
    gated_tanh(x) = tanh(a) * sigmoid(b)
(van den Oord et al., "Conditional Image Generation with PixelCNN Decoders", 2016, eq. 2;
"WaveNet", 2016, eq. 2). sigmoid(b) is computed as (1 + tanh(b / 2)) / 2, which is exact
and never overflows.
"""
from ..autograd import Function
from ..backend import get_array_module


def _halves(x, dim, op):
    nd = x.ndim
    if nd == 0 or not -nd <= dim < nd:
        raise ValueError(f"{op}: dim {dim} out of range for a tensor of shape {tuple(x.shape)}")
    dim %= nd
    if x.shape[dim] % 2:
        raise ValueError(f"{op}: halving dimension {dim} of the input of shape "
                         f"{tuple(x.shape)} needs an even size, got {x.shape[dim]}")
    h = x.shape[dim] // 2
    index = (slice(None),) * dim
    return x[index + (slice(0, h),)], x[index + (slice(h, None),)], dim


class Gated(Function):
    """y = f(a) s,  s = sigmoid(b), f = tanh (gated_tanh) or the identity (glu);
    da = g s f'(a) with f'(a) = 1 - tanh(a)^2 or 1,   db = g f(a) s (1 - s)."""

    __slots__ = ("dim", "use_tanh", "fa", "s")

    def __init__(self, dim, use_tanh):
        self.dim, self.use_tanh = dim, use_tanh

    def forward(self, x):
        xp = get_array_module(x)
        a, b, self.dim = _halves(x, self.dim, "gated_tanh" if self.use_tanh else "glu")
        self.fa = xp.tanh(a) if self.use_tanh else a
        self.s = (1 + xp.tanh(b / 2)) / 2
        return self.fa * self.s

    def backward(self, g):
        xp = get_array_module(g)
        da = g * self.s * (1 - self.fa * self.fa) if self.use_tanh else g * self.s
        db = g * self.fa * self.s * (1 - self.s)
        return xp.concatenate([da, db], axis=self.dim)


def glu(input, dim=-1):
    """The gated linear unit a * sigmoid(b) of the halves of ``input`` along ``dim``, as
    ``torch.nn.functional.glu``."""
    return Gated(dim, False)(input)


def gated_tanh(input, dim=1):
    """The gated activation tanh(a) * sigmoid(b) of the halves of ``input`` along ``dim``
    (channels by default: the gated PixelCNN's and WaveNet's unit; no PyTorch counterpart)."""
    return Gated(dim, True)(input)
