"""Self-prediction of hidden pixels with a convolutional encoder-decoder: inpainting and
colourisation.

* ``Inpainting`` (context encoder): Pathak, Krahenbuhl, Donahue, Darrell & Efros, "Context
  Encoders: Feature Learning by Inpainting", CVPR 2016; official code pathak22/context-encoder
  (``train_random.lua``, the random-region variant). Random regions of an image are hidden,
  the hidden pixels are replaced by the data set's mean colour (the official code writes the
  ImageNet mean 117, 104, 123 there), and the network predicts the missing pixels. The loss is
  the paper's reconstruction term (Eq. 1), the squared error on the hidden pixels only:

      L = || M * (x - F((1 - M) * x)) ||^2 / (C |M|),     M = 1 on the hidden pixels

  Differences, on purpose: no adversarial term (the paper's "L2 only" ablation: blurrier,
  but it is the part that teaches the features; a GAN is out of scope here); the regions
  are ``num_boxes`` random rectangles (the official random masks are blobs cut from an
  upsampled noise pattern, 20-30 % of the image; the boxes here cover about as much); the
  network is a U-Net (below), not the paper's bottleneck encoder-decoder with a
  channel-wise fully connected layer, and it also receives the mask as a fourth input
  channel (as later inpainting networks do), so it never has to guess which pixels are
  missing when the mean colour happens to occur in the image.

* ``Colorization``: Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016; official
  code richzhang/colorization. The network sees only the lightness of an image and predicts
  its colours. Differences, on purpose: the paper works in CIE Lab, predicts the ab channels
  as a distribution over 313 quantised bins with class rebalancing and decodes the annealed
  mean; here the input is the luma Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, PIL's
  ``convert("L")``) and the network regresses RGB in [0, 1] with a squared error over all
  pixels -- the L2 regression the paper compares against (Sec. 3.1, "regression"), which it
  shows to give desaturated colours; it is what keeps the figure a plain PSNR.

The network (``UNet``): Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for
Biomedical Image Segmentation", MICCAI 2015: per level two [Conv3x3(padding 1)-BN-ReLU] (the
paper's convolutions are unpadded; padded ones keep the output the input's size), 2x2 max
pooling down, a 2x2 stride-2 transposed convolution up, and the skip connection concatenated
before the level's convolutions; a 1x1 convolution to the output logits, squashed by a
sigmoid to pixels in [0, 1]. The features evaluated downstream are the global average of the
bottleneck (the deepest level), which skips cannot bypass.

Figure: the PSNR (peak 1) of the completed test images against the targets, per image, then
averaged over images; the trivial baselines (``baseline``) are the mean-colour fill for
inpainting and the luma copied into the three channels for colourisation. Inpainting pastes
the prediction into the hidden pixels only, so the visible pixels are exact for model and
baseline alike.
"""
from dataclasses import dataclass

import numpy as np

from .. import distributed as dist, nn
from .. import functional as F
from ..autograd import no_grad
from ..backend import get_array_module, to_device
from ..ops.shape import cat
from ..random import get_generator
from .base import SSLMethod, check_batch

__all__ = ["InpaintingConfig", "ColorizationConfig", "Inpainting", "Colorization", "UNet",
           "random_boxes", "luma", "psnr", "build_inpainting", "build_colorization"]

LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601 weights of R, G, B


def luma(x):
    """Y = 0.299 R + 0.587 G + 0.114 B of RGB images (B, 3, H, W) -> (B, 1, H, W) (NumPy or
    CuPy arrays)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"luma: expected RGB images (B, 3, H, W), got shape {tuple(x.shape)}")
    xp = get_array_module(x)
    w = xp.asarray(LUMA, dtype=x.dtype).reshape(1, 3, 1, 1)
    return (x * w).sum(axis=1, keepdims=True)


def random_boxes(n, size, rng, num_boxes=2, min_frac=0.25, max_frac=0.5):
    """Masks of ``num_boxes`` random rectangles per image: float32 (n, 1, H, W), 1 = hidden.

    ``size`` is (H, W). Each box's height (width) is a uniform integer between
    round(min_frac H) and round(max_frac H) (at least 1 pixel), its top-left corner uniform
    among the places where it fits; boxes may overlap. Drawn from ``rng`` in the order
    heights, widths, tops, lefts (each (n, num_boxes)).
    """
    H, W = (int(s) for s in size)
    if not (num_boxes >= 1 and 0 < min_frac <= max_frac <= 1):
        raise ValueError(f"random_boxes: need num_boxes >= 1 and 0 < min_frac <= max_frac <= 1,"
                         f" got {num_boxes}, {min_frac}, {max_frac}")
    rng = get_generator(rng)
    k = int(num_boxes)

    def sides(side):
        lo = max(1, int(round(min_frac * side)))
        return rng.integers(lo, max(lo, int(round(max_frac * side))) + 1, size=(n, k))

    h, w = sides(H), sides(W)                                   # (n, k) each
    top = np.floor(rng.random((n, k)) * (H - h + 1)).astype(np.int64)
    left = np.floor(rng.random((n, k)) * (W - w + 1)).astype(np.int64)
    rows = np.arange(H)[None, None, :, None]                    # (1, 1, H, 1)
    cols = np.arange(W)[None, None, None, :]                    # (1, 1, 1, W)
    inside = ((rows >= top[..., None, None]) & (rows < (top + h)[..., None, None])
              & (cols >= left[..., None, None]) & (cols < (left + w)[..., None, None]))
    return inside.any(axis=1, keepdims=True).astype(np.float32)   # (n, 1, H, W)


def psnr(pred, target):
    """Peak signal-to-noise ratio in dB of images in [0, 1] (peak 1): 10 log10(1 / MSE) per
    image (over its C H W values), averaged over the images. An exact image counts as 100 dB
    (MSE 1e-10), so one perfect image cannot make the mean infinite."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"psnr: expected two image arrays (B, C, H, W) of one shape, got "
                         f"{pred.shape} and {target.shape}")
    mse = ((pred - target) ** 2).reshape(len(pred), -1).mean(axis=1)
    return float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))))


# ------------------------------------------------------------------------------------ U-Net

def _conv_block(cin, cout, rng, dtype):
    """Two [Conv3x3(padding 1, no bias: a BN follows) - BN - ReLU], as one U-Net level."""
    layers = []
    for a, b in ((cin, cout), (cout, cout)):
        layers += [nn.Conv2d(a, b, 3, padding=1, bias=False, rng=rng, dtype=dtype),
                   nn.BatchNorm2d(b, dtype=dtype), nn.ReLU()]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """(B, in_channels, H, W) -> logits (B, out_channels, H, W); H and W divisible by
    2^(len(widths) - 1). See the module docstring."""

    def __init__(self, in_channels, out_channels, widths=(16, 32, 64), rng=None, dtype=None):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"UNet: widths must list at least two positive channel counts, "
                             f"got {widths}")
        rng = get_generator(rng)
        self.in_channels, self.widths = int(in_channels), widths
        self.factor = 2 ** (len(widths) - 1)
        self.down = nn.ModuleList([_conv_block(a, b, rng, dtype)
                                   for a, b in zip((in_channels,) + widths[:-1], widths)])
        self.pool = nn.MaxPool2d(2)
        # Deepest first: up[i] brings widths[-1 - i] to widths[-2 - i] at twice the size.
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2, rng=rng, dtype=dtype)
                                 for a, b in zip(widths[-2::-1], widths[:0:-1])])
        self.dec = nn.ModuleList([_conv_block(2 * a, a, rng, dtype) for a in widths[-2::-1]])
        self.head = nn.Conv2d(widths[0], out_channels, 1, rng=rng, dtype=dtype)
        self.out_dim = widths[-1]

    def _check(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] % self.factor \
                or x.shape[3] % self.factor:
            raise ValueError(f"UNet: expected (B, {self.in_channels}, H, W) with H and W "
                             f"divisible by {self.factor}, got shape {tuple(x.shape)}")

    def encode(self, x):
        """The outputs of every level, shallowest first: (B, widths[i], H / 2^i, W / 2^i)."""
        self._check(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(self.pool(x) if i else x)
            skips.append(x)
        return skips

    def forward(self, x):
        skips = self.encode(x)
        x = skips[-1]                                           # bottleneck
        for up, dec, skip in zip(self.up, self.dec, skips[-2::-1]):
            x = dec(cat([up(x), skip], dim=1))                  # (B, widths[i], H_i, W_i)
        return self.head(x)                                     # (B, out_channels, H, W)

    def features(self, x):
        """Global average of the bottleneck: (B, widths[-1])."""
        return self.encode(x)[-1].mean(dim=(2, 3))


# ------------------------------------------------------------------------------- the methods

@dataclass
class InpaintingConfig:
    widths: tuple = (16, 32, 64)  # U-Net channels per level (U-Net: 64 ... 1024, 5 levels)
    num_boxes: int = 2            # hidden rectangles per image (may overlap)
    min_box: float = 0.25         # smallest box side, as a fraction of the image side
    max_box: float = 0.5          # largest box side (two boxes of 0.25-0.5: about a quarter
    #                               of the image, the official random masks' 20-30 %)


@dataclass
class ColorizationConfig:
    widths: tuple = (16, 32, 64)  # U-Net channels per level


class _PixelPrediction(SSLMethod):
    """What inpainting and colourisation share: a U-Net from ``corrupt``'s input to the image,
    a squared error weighted by ``corrupt``'s mask, PSNR against the trivial baseline."""

    eval_seed = 0   # the masks the test figures use (the same for every model)

    def __init__(self, image_shape, config, in_channels, rng=None, dtype=None):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.config = config
        self.net = UNet(in_channels, self.image_shape[0], config.widths, rng=rng, dtype=dtype)
        if self.image_shape[1] % self.net.factor or self.image_shape[2] % self.net.factor:
            raise ValueError(f"{type(self).__name__}: image sides {self.image_shape[1:]} must be "
                             f"divisible by {self.net.factor} for {len(config.widths)} U-Net "
                             f"levels; use fewer widths")
        self.feature_dim = self.net.out_dim

    def corrupt(self, x, rng):
        """``(inputs, weight)``: the network's input for clean images x and the per-pixel
        weight of the loss (B, 1, H, W), or None for all pixels alike."""
        raise NotImplementedError

    def baseline(self, x, rng=None):
        """The trivial completion of x that the figure compares against."""
        raise NotImplementedError

    def _check(self, who, x, min_batch=1):
        check_batch(f"{type(self).__name__}.{who}", x, self.image_shape, "images", min_batch)

    def training_step(self, x, rng):
        self._check("training_step", x, 2)          # BatchNorm needs two rows
        inputs, weight = self.corrupt(x, rng)       # drawn for the global batch
        if weight is None:
            inputs, x = dist.shard(inputs, x)
        else:
            # The global count of hidden values: each of N ranks returns its share of the
            # global loss times N, and the ranks' gradients are averaged.
            total = float(weight.sum()) * x.shape[1] / dist.world_size()
            inputs, x, weight = dist.shard(inputs, x, weight)
        out = F.sigmoid(self.net(self.as_input(inputs)))           # (B, C, H, W) in [0, 1]
        sq = (out - self.as_input(x)) ** 2
        if weight is None:
            return sq.mean(), {}
        return (sq * self.as_input(weight)).sum() / total, {}      # weight (B, 1, H, W)

    def complete(self, x, rng=None, *, batch_size=256):
        """``(inputs, completed)``: host float32 arrays of what the network sees for images x
        (for pictures: the masked image, the grey image) and the completed images (eval mode;
        inpainting keeps the visible pixels). Masks from ``rng`` (default: ``eval_seed``)."""
        self._check("complete", x)
        rng = get_generator(self.eval_seed if rng is None else rng)
        x = to_device(x, "cpu").astype(np.float32)
        # All masks in one draw, as ``baseline`` draws them: the same whatever the batching.
        inputs, weight = self.corrupt(x, rng)
        was = self.training
        self.eval()
        done = []
        with no_grad():
            for i in range(0, len(x), batch_size):
                out = F.sigmoid(self.net(self.as_input(inputs[i:i + batch_size]))).numpy()
                done.append(out.astype(np.float32))
        self.train(was)
        done = np.concatenate(done)
        if weight is not None:
            done = x * (1 - weight) + done * weight
        return self.shown(inputs), done

    def shown(self, inputs):
        """The part of the network's input worth a picture (the image, without mask
        channels)."""
        return np.asarray(inputs[:, :self.image_shape[0]])

    def psnr(self, x, rng=None):
        """Mean PSNR (dB) of ``complete(x)`` against x."""
        return psnr(self.complete(x, rng)[1], x)

    def baseline_psnr(self, x, rng=None):
        """Mean PSNR (dB) of ``baseline(x)`` against x (the same masks as ``psnr``)."""
        self._check("baseline_psnr", x)
        return psnr(self.baseline(np.asarray(x, np.float32), rng), x)

    def heldout_metrics(self, data, limit=500):
        """What ``minissl pretrain`` logs each epoch: PSNR of the first test images."""
        x = data.test_x[:limit]
        return {"test_psnr": self.psnr(x), "baseline_psnr": self.baseline_psnr(x)}

    def picture_rows(self, x):
        """Rows of a picture of x: the network's input, its output, the target."""
        inputs, out = self.complete(x)
        return [inputs, out, x], ["input", "output", "target"]

    def feature_batch(self, x):
        """Bottleneck features (B, widths[-1]) of images x, computed from the *uncorrupted*
        input (the whole image; for colourisation its luma)."""
        x = np.asarray(to_device(x, "cpu"), np.float32)
        return self.net.features(self.as_input(self.clean_input(x)))


class Inpainting(_PixelPrediction):
    """Context encoder: fill in random boxes (see the module docstring).

    Input (B, C + 1, H, W): the image with the hidden pixels set to ``fill`` (the training
    images' mean colour, C values) and the mask as the last channel.
    """

    name = "inpainting"

    def __init__(self, image_shape, fill, config=None, rng=None, dtype=None):
        config = config or InpaintingConfig()
        if not isinstance(config, InpaintingConfig):
            raise TypeError(f"Inpainting: config must be an InpaintingConfig, got "
                            f"{type(config).__name__}")
        random_boxes(1, image_shape[1:], 0, config.num_boxes, config.min_box, config.max_box)
        super().__init__(image_shape, config, image_shape[0] + 1, rng, dtype)
        fill = np.asarray(fill, np.float32).reshape(-1)
        if fill.shape != (self.image_shape[0],):
            raise ValueError(f"Inpainting: fill must hold one value per channel "
                             f"({self.image_shape[0]}), got shape {fill.shape}")
        self.register_buffer("fill", fill.reshape(1, -1, 1, 1))

    def masks(self, n, rng):
        c = self.config
        return random_boxes(n, self.image_shape[1:], rng, c.num_boxes, c.min_box, c.max_box)

    def _fill(self, x, mask):
        xp = get_array_module(x)
        fill = xp.asarray(to_device(self.fill.data, "cpu") if xp is np else self.fill.data,
                          dtype=x.dtype)
        return x * (1 - mask) + fill * mask                      # (B, C, H, W)

    def corrupt(self, x, rng):
        xp = get_array_module(x)
        mask = xp.asarray(self.masks(len(x), rng), dtype=x.dtype)    # (B, 1, H, W)
        return xp.concatenate([self._fill(x, mask), mask], axis=1), mask

    def clean_input(self, x):
        return np.concatenate([x, np.zeros_like(x[:, :1])], axis=1)   # nothing hidden

    def baseline(self, x, rng=None):
        """The hidden pixels filled with the mean colour (the masks ``complete`` draws)."""
        rng = get_generator(self.eval_seed if rng is None else rng)
        return self._fill(x, self.masks(len(x), rng))


class Colorization(_PixelPrediction):
    """Colourisation: predict RGB (B, 3, H, W) from the luma (B, 1, H, W) (see the module
    docstring)."""

    name = "colorization"

    def __init__(self, image_shape, config=None, rng=None, dtype=None):
        config = config or ColorizationConfig()
        if not isinstance(config, ColorizationConfig):
            raise TypeError(f"Colorization: config must be a ColorizationConfig, got "
                            f"{type(config).__name__}")
        if tuple(image_shape)[0] != 3:
            raise ValueError(f"Colorization: needs RGB images (3 channels), got images of "
                             f"shape {tuple(image_shape)}")
        super().__init__(image_shape, config, 1, rng, dtype)

    def corrupt(self, x, rng):
        return luma(x), None

    def clean_input(self, x):
        return luma(x)

    def baseline(self, x, rng=None):
        """The luma copied into R, G and B (a grey image)."""
        return np.repeat(luma(x), 3, axis=1)


def build_inpainting(data, **overrides):
    """An ``Inpainting`` for an image ``Dataset``: the fill is the training images' mean
    colour; ``overrides`` set ``InpaintingConfig`` (and may include ``rng``)."""
    rng = overrides.pop("rng", None)
    _tuple_widths(overrides)
    fill = data.train_x.mean(axis=(0, 2, 3)) if len(data.train_x) else 0.5
    fill = np.broadcast_to(np.asarray(fill, np.float32), (data.image_shape[0],))
    return Inpainting(data.image_shape, fill, InpaintingConfig(**overrides), rng=rng)


def build_colorization(data, **overrides):
    """A ``Colorization`` for an RGB image ``Dataset``; ``overrides`` set
    ``ColorizationConfig`` (and may include ``rng``)."""
    rng = overrides.pop("rng", None)
    _tuple_widths(overrides)
    return Colorization(data.image_shape, ColorizationConfig(**overrides), rng=rng)


def _tuple_widths(overrides):
    if "widths" in overrides:   # --set widths=16,32 arrives as a list
        overrides["widths"] = tuple(int(w) for w in overrides["widths"])
