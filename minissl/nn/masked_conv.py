"""Masked convolution: PixelCNN's causal Conv2d (van den Oord et al., "Pixel Recurrent Neural
Networks", 2016, section 3.5; "Conditional Image Generation with PixelCNN Decoders", 2016,
section 2.2 and figure 1).

An autoregressive image model predicts pixel (i, j) from the pixels before it in raster order:
the rows above, and the pixels to the left in row i. A convolution respects that order when the
taps of its (kh, kw) kernel that would read a later pixel are zero; with the centre tap
(ci, cj) = (kh // 2, kw // 2) over output pixel (i, j) and "same" padding, ``mask`` keeps

  stack          type "A" (the first layer: reads the image)  type "B" (later layers)
  "full"         rows < ci, and row ci left of cj             the same and the centre
  "vertical"     rows < ci                                    rows <= ci
  "horizontal"   row ci left of cj                            row ci up to and with cj

"full" is the PixelCNN of the first paper, whose stacked masks leave a blind spot (the pixels
above and to the right of (i, j) never reach it). The gated PixelCNN splits it into a vertical
stack, which sees every row above (the rows strictly above after a type "A" layer, and a type
"B" vertical layer reads only features of rows above), and a horizontal stack, which sees the
row to the left and, through a 1x1 connection, the vertical stack: together every earlier
pixel, no blind spot. A type "B" layer may read the centre because its input at (i, j) already
depends only on the pixels before (i, j).

The weight has nn.Conv2d's layout and name (``state_dict`` is a Conv2d's); the mask is a
non-persistent buffer, applied to the weight in ``forward``, so that masked taps get a zero
gradient and stay at zero (they are zeroed at initialisation).
"""
import numpy as np

from .. import functional as F
from .layers import Conv2d

MASK_TYPES = ("A", "B")
STACKS = ("full", "vertical", "horizontal")


def causal_mask(kernel_size, mask_type, stack="full"):
    """The (kh, kw) 0/1 mask of the table in the module docstring."""
    kh, kw = kernel_size
    ci, cj = kh // 2, kw // 2
    rows, cols = np.arange(kh)[:, None], np.arange(kw)[None, :]
    b = mask_type == "B"
    if stack == "vertical":
        keep = (rows <= ci) if b else (rows < ci)
        return np.broadcast_to(keep, (kh, kw)).astype(np.float64)
    centre = (rows == ci) & ((cols <= cj) if b else (cols < cj))
    return (centre if stack == "horizontal" else (rows < ci) | centre).astype(np.float64)


class MaskedConv2d(Conv2d):
    """A Conv2d with stride 1 and "same" padding whose taps that read a later pixel in raster
    order are zero (see the module docstring): x (N, C_in, H, W) -> (N, C_out, H, W).

    ``MaskedConv2d(in_channels, out_channels, kernel_size, mask_type="B", stack="full",
    bias=True, rng=None, dtype=None)``; odd kernel sizes, so that the centre tap is the output
    pixel."""

    def __init__(self, in_channels, out_channels, kernel_size, mask_type="B", stack="full",
                 bias=True, rng=None, dtype=None):
        if mask_type not in MASK_TYPES or stack not in STACKS:
            raise ValueError(f"MaskedConv2d: mask_type must be one of {MASK_TYPES} and stack "
                             f"one of {STACKS}, got {mask_type!r}, {stack!r}")
        k = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 2
        if len(k) != 2 or any(isinstance(v, (int, np.integer)) and v % 2 == 0 for v in k):
            raise ValueError(f"MaskedConv2d: kernel_size must be odd (a centre tap), got "
                             f"{kernel_size!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride=1,
                         padding=(k[0] // 2, k[1] // 2), bias=bias, rng=rng, dtype=dtype)
        self.mask_type, self.stack = mask_type, stack
        mask = causal_mask(self.kernel_size, mask_type, stack).astype(self.weight.dtype)
        self.weight.data *= mask
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}, stack={self.stack!r}"
