"""Gated PixelCNN: learn an image's density pixel by pixel, each pixel predicted from the ones
before it in raster order.

van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu, "Conditional Image
Generation with PixelCNN Decoders", NeurIPS 2016 (arXiv:1606.05328), section 2 and figure 2;
the PixelCNN itself: van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel Recurrent Neural
Networks", ICML 2016 (arXiv:1601.06759). No official code was released; the layer below was
checked against the community implementations that follow the paper's figure 2 (for example
ritheshkumar95/pytorch-vqvae's ``GatedMaskedConv2d`` and pytorch-generative's
``GatedPixelCNN``), which crop shifted convolutions where we mask (the same taps).

The pretext task is density estimation: with x binarised (one Bernoulli per pixel),

    p(x) = prod_{i,j} p(x_ij | x_<ij),     loss = -1/(HW) sum_ij log p(x_ij | x_<ij)

(the negative log-likelihood per pixel, in nats; / ln 2 gives the bits per dimension the
papers report). Causality is carried by masked convolutions (minissl.nn.MaskedConv2d): the
vertical stack sees every row above (i, j), the horizontal stack the pixels left of it in its
row plus the vertical stack, through a 1x1 convolution; together every earlier pixel, with no
blind spot. Each layer (figure 2), p feature maps per stack:

    v' = V * v                        (B, 2p, H, W)  masked k x k, rows above
    h' = H * h + 1x1(v')              (B, 2p, H, W)  masked 1 x k, left of (i, j)
    v_out = tanh(v'_a) sigmoid(v'_b)  (B, p, H, W)   the gated unit, F.gated_tanh
    h_out = h + 1x1(tanh(h'_a) sigmoid(h'_b))        residual on the horizontal stack

The first layer reads the image with type "A" masks (not the pixel itself) and has no residual
(it would hand x_ij to its own prediction); the others are type "B". A head of 1x1 convolutions
(ReLU, 1x1, ReLU, 1x1) turns the last horizontal stack into one logit per pixel.

Where this differs from the paper: binarised grey images (a fixed threshold, not the
stochastic binarisation of the binarised-MNIST benchmark) with one Bernoulli logit per pixel
instead of a 256-way softmax per colour channel (no channel masks: one channel); no
class or latent conditioning; small widths for the digits. The features ``features()``
returns (for the linear probes) are the last horizontal stack averaged over the image, an
addition of ours: the paper evaluates likelihoods and samples only.
"""
import math
from dataclasses import dataclass

import numpy as np

from .. import distributed as dist
from .. import functional as F
from .. import nn
from ..autograd import no_grad
from ..backend import get_array_module
from .base import SSLMethod

__all__ = ["PixelCNNConfig", "PixelCNN", "GatedLayer", "GatedStacks", "binarize",
           "bernoulli_baseline_bits", "build"]

LN2 = math.log(2.0)


@dataclass
class PixelCNNConfig:
    channels: int = 32          # p: feature maps of each stack (the gates read 2p)
    layers: int = 5             # gated layers: the first of type "A", the others "B"
    kernel_size: int = 3        # k: the vertical stack's k x k filters, the horizontal 1 x k
    head_channels: int = 64     # width of the 1x1 output head
    threshold: float = 0.5      # binarisation: a pixel is 1 where its grey level > threshold


def binarize(x, threshold=0.5):
    """Grey images in [0, 1] -> 0/1 float32 images (pixel > threshold)."""
    return (x > threshold).astype(np.float32)


def bernoulli_baseline_bits(train_bits, test_bits):
    """Bits per dimension on ``test_bits`` of independent Bernoulli pixels fitted on
    ``train_bits`` (Laplace-smoothed frequencies (count + 1) / (n + 2)): the baseline a
    PixelCNN must beat, a model that knows each pixel's marginal and nothing else."""
    p = (train_bits.sum(axis=0) + 1.0) / (len(train_bits) + 2.0)             # (C, H, W)
    nll = -(test_bits * np.log2(p) + (1 - test_bits) * np.log2(1 - p))       # (N, C, H, W)
    return float(nll.mean())


class GatedLayer(nn.Module):
    """One layer of the gated PixelCNN (the module docstring's four lines)."""

    def __init__(self, in_channels, channels, kernel_size, mask_type, rng=None, dtype=None):
        super().__init__()
        p, k = channels, kernel_size
        self.vertical = nn.MaskedConv2d(in_channels, 2 * p, k, mask_type, "vertical",
                                        rng=rng, dtype=dtype)
        self.horizontal = nn.MaskedConv2d(in_channels, 2 * p, (1, k), mask_type, "horizontal",
                                          rng=rng, dtype=dtype)
        self.v_to_h = nn.Conv2d(2 * p, 2 * p, 1, rng=rng, dtype=dtype)
        self.h_out = nn.Conv2d(p, p, 1, rng=rng, dtype=dtype)
        self.residual = mask_type == "B"

    def forward(self, v, h):
        v2 = self.vertical(v)                                  # (B, 2p, H, W)
        h2 = self.horizontal(h) + self.v_to_h(v2)              # (B, 2p, H, W)
        h_new = self.h_out(F.gated_tanh(h2, dim=1))            # (B, p, H, W)
        return F.gated_tanh(v2, dim=1), (h + h_new if self.residual else h_new)


class GatedStacks(nn.Module):
    """The stacks of gated layers: ``stacks(x)`` is the last horizontal stack (B, p, H, W);
    called, the features (B, p): that stack averaged over the image."""

    def __init__(self, in_channels, config, rng=None, dtype=None):
        super().__init__()
        c = config
        self.layers = nn.ModuleList([
            GatedLayer(in_channels if i == 0 else c.channels, c.channels, c.kernel_size,
                       "A" if i == 0 else "B", rng=rng, dtype=dtype) for i in range(c.layers)])
        self.out_dim = c.channels

    def stacks(self, x):
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h)
        return h

    def forward(self, x):
        return self.stacks(x).mean(dim=(2, 3))


class PixelCNN(SSLMethod):
    """The gated PixelCNN of the module docstring, on one-channel images binarised at
    ``config.threshold``."""

    name = "pixelcnn"

    def __init__(self, image_shape, config=None, rng=None, dtype=None):
        super().__init__()
        self.config = c = config or PixelCNNConfig()
        if not isinstance(c, PixelCNNConfig):
            raise TypeError(f"PixelCNN: config must be a PixelCNNConfig, got "
                            f"{type(c).__name__}")
        if len(image_shape) != 3 or image_shape[0] != 1:
            raise ValueError(f"PixelCNN: needs one-channel images (1, H, W), got image shape "
                             f"{tuple(image_shape)}")
        if c.layers < 1 or c.channels < 1 or c.head_channels < 1 or c.kernel_size % 2 == 0:
            raise ValueError(f"PixelCNN: needs layers, channels, head_channels >= 1 and an odd "
                             f"kernel_size, got {c}")
        self.image_shape = tuple(image_shape)
        self.encoder = GatedStacks(1, c, rng=rng, dtype=dtype)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c.channels, c.head_channels, 1, rng=rng,
                                                       dtype=dtype),
                                  nn.ReLU(), nn.Conv2d(c.head_channels, 1, 1, rng=rng,
                                                       dtype=dtype))
        self.feature_dim = c.channels

    def features(self, x, batch_size=1024):
        return super().features(self._bits(x), batch_size)

    def _bits(self, x):
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 4 or shape[1:] != self.image_shape:
            want = ", ".join(map(str, self.image_shape))
            raise ValueError(f"PixelCNN: expected images (B, {want}), got "
                             f"{'shape ' + str(shape) if shape else type(x).__name__}")
        return binarize(x, self.config.threshold)

    def forward(self, bits):
        """Logits (B, 1, H, W) of p(x_ij = 1 | x_<ij) for the 0/1 images ``bits``."""
        return self.head(self.encoder.stacks(self.as_input(bits)))

    def training_step(self, x, rng):
        bits = self.as_input(dist.shard(self._bits(x)))                 # this rank's rows
        loss = F.binary_cross_entropy_with_logits(self(bits), bits)     # nats per pixel
        return loss, {"bits_per_dim": loss.item() / LN2}

    def bits_per_dim(self, x, batch_size=512):
        """Mean negative log-likelihood of the binarised images ``x``, in bits per pixel
        (eval mode, no graph)."""
        was, total = self.training, 0.0
        self.eval()
        with no_grad():
            for i in range(0, len(x), batch_size):
                b = self.as_input(self._bits(x[i:i + batch_size]))
                total += F.binary_cross_entropy_with_logits(self(b), b).item() * len(b)
        self.train(was)
        return total / max(len(x), 1) / LN2

    def heldout_metrics(self, d):
        """The test split's bits per dimension, and the independent-Bernoulli baseline's."""
        t = self.config.threshold
        return {"test_bits_per_dim": self.bits_per_dim(d.test_x),
                "bernoulli_bits_per_dim": bernoulli_baseline_bits(binarize(d.train_x, t),
                                                                  binarize(d.test_x, t))}

    def sample(self, n, rng):
        """n images (n, 1, H, W) drawn pixel by pixel in raster order: H W forward passes,
        each sampling one pixel from its Bernoulli given the pixels already drawn."""
        _, H, W = self.image_shape
        p = next(iter(self.parameters()))
        xp = get_array_module(p.data)
        x = xp.zeros((n, 1, H, W), dtype=p.dtype)
        was = self.training
        self.eval()
        with no_grad():
            for i in range(H):
                for j in range(W):
                    prob = F.sigmoid(self(x)[:, 0, i, j]).numpy()
                    x[:, 0, i, j] = xp.asarray(rng.random(n) < prob, dtype=x.dtype)
        self.train(was)
        return x


def build(data, **overrides):
    """A gated PixelCNN for an image ``Dataset`` of one-channel images; ``overrides`` set
    ``PixelCNNConfig``."""
    return PixelCNN(data.image_shape, PixelCNNConfig(**overrides))
