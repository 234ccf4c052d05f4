"""Image augmentations for self-supervised learning, on whole batches ``(B, C, H, W)``.

Contrastive and non-contrastive methods learn what stays the same between two random views of
one image, so the augmentations *are* the definition of "the same" (SimCLR, Chen et al. 2020,
section 3 and Figure 5: crop and colour distortion matter most). Each transform is a small
class called as ``t(x, rng)``:

- ``rng`` is a ``numpy.random.Generator``. Every random parameter (a crop box, an angle, a
  noise field) is drawn on the host from it, one per sample, so a seed fixes the output, on
  the CPU and on the GPU alike.
- The parameters then move to ``x``'s device with ``xp.asarray`` and are applied to the whole
  batch at once with ``xp = get_array_module(x)``: the same code runs on NumPy and CuPy arrays.
- Shape and dtype are kept (``RandomResizedCrop`` changes H, W to its ``size``), and the
  result is a new array: the input is never modified.

The parameterisations follow torchvision's (``RandomResizedCrop``, ``ColorJitter``,
``GaussianBlur``, ...), so recipes port over; the differences are noted where they occur.
"""
import math

import numpy as np

from .backend import get_array_module

__all__ = [
    "Transform", "Compose", "RandomApply", "RandomResizedCrop", "RandomShift",
    "RandomHorizontalFlip", "RandomRotation", "Rotate90", "GaussianNoise", "GaussianBlur",
    "ColorJitter", "RandomGrayscale", "PixelDropout", "two_views", "digits_simclr",
    "image_simclr", "bilinear_sample", "resized_crop", "rot90", "rgb_to_grayscale",
    "rgb_to_hsv", "hsv_to_rgb",
]


# ------------------------------------------------------------------------------------ checks

def _check_batch(who, x, floating):
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"{who}: expected an image batch of shape (B, C, H, W), got "
                         f"{shape if shape is not None else type(x).__name__}")
    if floating and x.dtype.kind != "f":
        raise TypeError(f"{who}: expected floating-point images, got dtype {x.dtype}")


def _check_rng(who, rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{who}: rng must be a numpy.random.Generator (e.g. "
                        f"numpy.random.default_rng(seed)), got {type(rng).__name__}")


def _range(who, name, value, center, bound=(0.0, math.inf)):
    """torchvision's convention: a number v means [center - v, center + v] (clipped to bound),
    a pair means itself."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or not bound[0] <= value[0] <= value[1] <= bound[1]:
            raise ValueError(f"{who}: {name} must be a pair lo <= hi within {bound}, got "
                             f"{value}")
        return float(value[0]), float(value[1])
    if value < 0:
        raise ValueError(f"{who}: {name} must be >= 0, got {value}")
    return max(center - value, bound[0]), min(center + value, bound[1])


def _per_sample(xp, values, dtype):
    """Host values (B,) -> a (B, 1, 1, 1) array on x's device, in x's dtype."""
    return xp.asarray(np.asarray(values), dtype=dtype).reshape(-1, 1, 1, 1)


class Transform:
    """Base class: ``__call__(x, rng)`` checks its arguments and calls ``apply(x, rng)``."""

    floating = True  # whether the transform interpolates, so needs floating-point images

    def __call__(self, x, rng):
        who = type(self).__name__
        _check_batch(who, x, self.floating)
        _check_rng(who, rng)
        return self.apply(x, rng)

    def apply(self, x, rng):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------- composition

class Compose(Transform):
    """Apply ``transforms`` one after the other: ``Compose([f, g])(x) = g(f(x))``."""

    floating = False  # each member checks for itself

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def apply(self, x, rng):
        for t in self.transforms:
            x = t(x, rng)
        return x.copy() if not self.transforms else x


class RandomApply(Transform):
    """Apply ``transform`` to each sample with probability ``p`` (the others pass unchanged).

    The chosen samples are transformed together, as one smaller batch.
    """

    floating = False

    def __init__(self, transform, p=0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomApply: p must be in [0, 1], got {p}")
        self.transform, self.p = transform, p

    def apply(self, x, rng):
        xp = get_array_module(x)
        chosen = np.flatnonzero(rng.random(len(x)) < self.p)
        out = x.copy()
        if chosen.size:
            idx = xp.asarray(chosen)
            y = self.transform(x[idx], rng)
            expected = (len(chosen),) + tuple(x.shape[1:])
            if tuple(y.shape) != expected:
                raise ValueError(f"RandomApply: {type(self.transform).__name__} turned "
                                 f"{expected} into {tuple(y.shape)}; it must keep the shape")
            out[idx] = y
        return out


def two_views(x, transform, rng):
    """Two independent augmentations ``(transform(x), transform(x))`` of the same batch."""
    return transform(x, rng), transform(x, rng)


# ------------------------------------------------------------------------------- resampling

def bilinear_sample(x, rows, cols):
    """Sample images at real pixel coordinates: ``out[b, c, p, q] = x[b, c](rows, cols)``.

    x (B, C, H, W); rows and cols (B, Ho, Wo) float arrays, where pixel (i, j) of x sits at
    coordinate (i, j). Bilinear interpolation is a sum over the four neighbours (i, j) of the
    point (r, s) with the tent weights ``(1 - |r - i|)(1 - |s - j|)``; neighbours outside the
    image count as zero (``grid_sample``'s ``padding_mode="zeros"``). At integer coordinates
    the result is exactly the pixel (its neighbours get weight 0).
    """
    xp = get_array_module(x)
    b, c, h, w = x.shape
    # Beyond -1 or the far edge a point has no neighbour inside the image, so clamping it there
    # changes nothing (the result is 0 either way) and keeps the indices in range.
    rows, cols = xp.clip(rows, -1, h), xp.clip(cols, -1, w)
    r0, c0 = xp.floor(rows), xp.floor(cols)
    fr = (rows - r0).astype(x.dtype)[:, None]  # (B, 1, Ho, Wo): weight of the lower neighbour
    fc = (cols - c0).astype(x.dtype)[:, None]
    # Zero-pad by one pixel before and two after: every neighbour (r0 + {0, 1}, c0 + {0, 1})
    # of a clamped point is then a pixel of the padded image, and "outside counts as zero"
    # needs no masks. Gathering from the flat array takes one index array per neighbour.
    ph, pw = h + 3, w + 3
    flat = xp.pad(x, ((0, 0), (0, 0), (1, 2), (1, 2))).reshape(-1)
    base = (xp.arange(b * c, dtype=np.int64) * (ph * pw)).reshape(b, c, 1, 1)
    i00 = base + ((r0.astype(np.int64) + 1) * pw + (c0.astype(np.int64) + 1))[:, None]
    gr, gc = 1 - fr, 1 - fc
    return (gr * (gc * flat.take(i00) + fc * flat.take(i00 + 1))
            + fr * (gc * flat.take(i00 + pw) + fc * flat.take(i00 + pw + 1)))


def resized_crop(x, top, left, height, width, size):
    """Crop box ``(top, left, height, width)`` of each sample (host int arrays (B,)), resized
    bilinearly to ``size = (Ho, Wo)``.

    The same result as torchvision's crop followed by ``F.interpolate(mode="bilinear",
    align_corners=False, antialias=False)``: output row p samples the crop at
    ``(p + 1/2) * height / Ho - 1/2``, clamped to the crop, so the crop's own edge pixels
    repeat rather than its neighbours bleeding in.
    """
    xp = get_array_module(x)
    ho, wo = size
    b = len(x)
    box = [np.asarray(v, dtype=np.float64).reshape(b, 1) for v in (top, left, height, width)]
    top, left, height, width = box
    src_r = np.clip((np.arange(ho) + 0.5) * height / ho - 0.5, 0.0, height - 1.0) + top
    src_c = np.clip((np.arange(wo) + 0.5) * width / wo - 0.5, 0.0, width - 1.0) + left
    rows = xp.asarray(src_r, dtype=x.dtype)[:, :, None]  # (B, Ho, 1)
    cols = xp.asarray(src_c, dtype=x.dtype)[:, None, :]  # (B, 1, Wo)
    return bilinear_sample(x, xp.broadcast_to(rows, (b, ho, wo)),
                           xp.broadcast_to(cols, (b, ho, wo)))


def _pair(who, size):
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"{who}: size must be an int or (height, width), got {size}")
        size = (int(size[0]), int(size[1]))
    else:
        size = (int(size), int(size))
    if min(size) < 1:
        raise ValueError(f"{who}: size must be positive, got {size}")
    return size


class RandomResizedCrop(Transform):
    """Crop a random box of random area and aspect ratio, and resize it to ``size``.

    As torchvision (the Inception crop, Szegedy et al. 2015): up to 10 tries draw an area
    fraction ``s ~ U(scale)`` and a log-uniform aspect ratio ``r`` in ``ratio``; the box is
    ``w = round(sqrt(s H W r))`` by ``h = round(sqrt(s H W / r))`` at a uniform position; the
    first try that fits wins, else the largest central box within ``ratio``. Resampling is
    bilinear without antialiasing (:func:`resized_crop`).
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size = _pair("RandomResizedCrop", size)
        if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"RandomResizedCrop: need 0 < scale[0] <= scale[1] <= 1 and "
                             f"0 < ratio[0] <= ratio[1], got scale={scale}, ratio={ratio}")
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def get_params(self, h, w, n, rng):
        """Boxes ``(top, left, height, width)``, each an int64 array (n,), for H=h, W=w."""
        tries = 10
        area = rng.uniform(self.scale[0], self.scale[1], (n, tries)) * (h * w)
        log_ratio = np.log(self.ratio)
        aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1], (n, tries)))
        bw = np.round(np.sqrt(area * aspect)).astype(np.int64)
        bh = np.round(np.sqrt(area / aspect)).astype(np.int64)
        fits = (bw > 0) & (bw <= w) & (bh > 0) & (bh <= h)
        first = np.argmax(fits, axis=1)  # index of the first try that fits
        ok = fits[np.arange(n), first]
        bh, bw = bh[np.arange(n), first], bw[np.arange(n), first]
        # Fallback: the whole image, narrowed to the nearest allowed aspect ratio.
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            fh, fw = int(round(w / self.ratio[0])), w
        elif in_ratio > self.ratio[1]:
            fh, fw = h, int(round(h * self.ratio[1]))
        else:
            fh, fw = h, w
        bh, bw = np.where(ok, bh, fh), np.where(ok, bw, fw)
        top = np.where(ok, rng.integers(0, h - bh + 1), (h - bh) // 2)
        left = np.where(ok, rng.integers(0, w - bw + 1), (w - bw) // 2)
        return top, left, bh, bw

    def apply(self, x, rng):
        top, left, bh, bw = self.get_params(x.shape[2], x.shape[3], len(x), rng)
        return resized_crop(x, top, left, bh, bw, self.size)


class RandomShift(Transform):
    """Translate each image by whole pixels ``(dy, dx)`` drawn uniformly from
    ``[-max_shift, max_shift]^2``, filling with zeros.

    The same as zero-padding by ``max_shift`` and cropping back at a random position (the
    "pad and crop" augmentation of CIFAR ResNets; the digits recipe uses ``max_shift=1``).
    """

    floating = False

    def __init__(self, max_shift=1):
        if int(max_shift) != max_shift or max_shift < 0:
            raise ValueError(f"RandomShift: max_shift must be a non-negative integer, got "
                             f"{max_shift}")
        self.max_shift = int(max_shift)

    def apply(self, x, rng):
        xp = get_array_module(x)
        m = self.max_shift
        b, c, h, w = x.shape
        shift = rng.integers(-m, m + 1, size=(b, 2))  # (dy, dx): content moves by this much
        if m == 0:
            return x.copy()
        padded = xp.pad(x, ((0, 0), (0, 0), (m, m), (m, m)))
        # Output pixel (i, j) shows input pixel (i - dy, j - dx), i.e. padded (i - dy + m, ...).
        rows = xp.asarray(m - shift[:, 0])[:, None] + xp.arange(h)  # (B, H)
        cols = xp.asarray(m - shift[:, 1])[:, None] + xp.arange(w)  # (B, W)
        out = xp.take_along_axis(
            padded, xp.broadcast_to(rows[:, None, :, None], (b, c, h, w + 2 * m)), axis=2)
        return xp.take_along_axis(out, xp.broadcast_to(cols[:, None, None, :], (b, c, h, w)),
                                  axis=3)


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability ``p``."""

    floating = False

    def __init__(self, p=0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = p

    def apply(self, x, rng):
        xp = get_array_module(x)
        flip = xp.asarray(rng.random(len(x)) < self.p).reshape(-1, 1, 1, 1)
        return xp.where(flip, x[..., ::-1], x)


class RandomRotation(Transform):
    """Rotate each image about its centre by an angle drawn uniformly from ``degrees``.

    ``degrees`` is a number d (meaning [-d, d]) or a pair. Positive angles turn the picture
    counter-clockwise, as torchvision's. The output pixel at offset ``(dy, dx)`` from the centre
    ``((H-1)/2, (W-1)/2)`` samples the input bilinearly at the offset rotated back:
    ``(dy cos t + dx sin t, dx cos t - dy sin t)``; corners that come from outside are zero.
    (torchvision defaults to nearest-neighbour sampling; bilinear is smoother.)
    """

    def __init__(self, degrees):
        self.degrees = _range("RandomRotation", "degrees", degrees, 0.0, (-math.inf, math.inf))

    def apply(self, x, rng):
        xp = get_array_module(x)
        b, _, h, w = x.shape
        theta = np.deg2rad(rng.uniform(self.degrees[0], self.degrees[1], b))
        cos = xp.asarray(np.cos(theta), dtype=x.dtype)[:, None, None]
        sin = xp.asarray(np.sin(theta), dtype=x.dtype)[:, None, None]
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        dy = (xp.arange(h, dtype=x.dtype) - cy)[None, :, None]  # (1, H, 1)
        dx = (xp.arange(w, dtype=x.dtype) - cx)[None, None, :]  # (1, 1, W)
        rows = cy + dy * cos + dx * sin  # (B, H, W)
        cols = cx + dx * cos - dy * sin
        return bilinear_sample(x, rows, cols)


def rot90(x, k):
    """Rotate each image by ``k * 90`` degrees counter-clockwise: exactly ``np.rot90(x[b],
    k[b], axes=(-2, -1))`` for every sample b.

    ``k`` is an int or an int array (B,); odd k need square images (the batch keeps one shape).
    """
    _check_batch("rot90", x, floating=False)
    xp = get_array_module(x)
    k = np.broadcast_to(np.asarray(k, dtype=np.int64) % 4, (len(x),))
    if x.shape[2] != x.shape[3] and np.any(k % 2 == 1):
        raise ValueError(f"rot90: odd multiples of 90 degrees need square images, got shape "
                         f"{x.shape}")
    out = xp.empty_like(x)
    for quarter in range(4):
        rows = np.flatnonzero(k == quarter)
        if rows.size:
            idx = xp.asarray(rows)
            out[idx] = xp.rot90(x[idx], quarter, axes=(2, 3))
    return out


class Rotate90(Transform):
    """Rotation by multiples of 90 degrees (RotNet, Gidaris et al. 2018): ``k`` fixed, or
    drawn uniformly from {0, 1, 2, 3} per sample when ``k`` is None. Exact (a permutation).

    Rotation prediction needs the labels too: draw ``k = rng.integers(0, 4, B)`` and call
    :func:`rot90` ``(x, k)`` directly.
    """

    floating = False

    def __init__(self, k=None):
        if k is not None and int(k) != k:
            raise ValueError(f"Rotate90: k must be an integer or None, got {k}")
        self.k = None if k is None else int(k) % 4

    def apply(self, x, rng):
        k = rng.integers(0, 4, len(x)) if self.k is None else self.k
        return rot90(x, k)


# --------------------------------------------------------------------------- pixel noise

class GaussianNoise(Transform):
    """Add i.i.d. ``N(0, std^2)`` noise to every element (no clipping: the noise keeps its
    variance, and a network copes with values just outside [0, 1])."""

    def __init__(self, std):
        if std < 0:
            raise ValueError(f"GaussianNoise: std must be >= 0, got {std}")
        self.std = float(std)

    def apply(self, x, rng):
        xp = get_array_module(x)
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
        noise = rng.standard_normal(x.shape, dtype=dtype)
        return x + (xp.asarray(noise) * self.std).astype(x.dtype)


class PixelDropout(Transform):
    """Set each pixel (all its channels) to zero with probability ``p``, independently.

    Unlike ``nn.Dropout`` the survivors are not rescaled by 1/(1-p): this is a corruption of
    the image, not a regulariser of activations.
    """

    floating = False

    def __init__(self, p):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"PixelDropout: p must be in [0, 1], got {p}")
        self.p = p

    def apply(self, x, rng):
        xp = get_array_module(x)
        b, _, h, w = x.shape
        drop = xp.asarray(rng.random((b, 1, h, w)) < self.p)
        return xp.where(drop, xp.zeros((), dtype=x.dtype), x)


class GaussianBlur(Transform):
    """Blur with a Gaussian of standard deviation ``sigma ~ U(sigma)`` drawn per sample.

    The kernel is torchvision's: ``g_t = exp(-t^2 / (2 sigma^2))`` for
    ``t = -(K-1)/2 .. (K-1)/2``, normalised to sum 1, applied along rows then columns (the 2-D
    Gaussian is separable), with reflect padding, so a constant image stays constant.
    """

    def __init__(self, kernel_size, sigma=(0.1, 2.0)):
        if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"GaussianBlur: kernel_size must be a positive odd integer, got "
                             f"{kernel_size}")
        self.kernel_size = int(kernel_size)
        if not isinstance(sigma, (tuple, list)):
            sigma = (sigma, sigma)
        if not 0 < sigma[0] <= sigma[1]:
            raise ValueError(f"GaussianBlur: need 0 < sigma[0] <= sigma[1], got {sigma}")
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def apply(self, x, rng):
        xp = get_array_module(x)
        b, c, h, w = x.shape
        k, r = self.kernel_size, self.kernel_size // 2
        if r >= min(h, w):
            raise ValueError(f"GaussianBlur: kernel_size {k} is too large for images {h}x{w} "
                             f"(reflect padding needs kernel_size // 2 < min(H, W))")
        sigma = rng.uniform(self.sigma[0], self.sigma[1], b)
        t = np.arange(k) - r
        g = np.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
        g /= g.sum(axis=1, keepdims=True)  # (B, K)
        g = xp.asarray(g, dtype=x.dtype)
        # Rows (vertical pass), then columns: K shifted slices of the padded batch each.
        padded = xp.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)), mode="reflect")
        out = sum(g[:, i, None, None, None] * padded[:, :, i:i + h, :] for i in range(k))
        padded = xp.pad(out, ((0, 0), (0, 0), (0, 0), (r, r)), mode="reflect")
        return sum(g[:, i, None, None, None] * padded[:, :, :, i:i + w] for i in range(k))


# ----------------------------------------------------------------------------------- colour

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale


def rgb_to_grayscale(x):
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` of a batch (B, 3, H, W), shape (B, 1, H, W)."""
    return (_GRAY[0] * x[:, 0:1] + _GRAY[1] * x[:, 1:2] + _GRAY[2] * x[:, 2:3]).astype(x.dtype)


def rgb_to_hsv(x):
    """RGB (B, 3, H, W) in [0, 1] to HSV with all three channels in [0, 1] (hue in turns).

    Value is the largest channel, saturation ``(max - min) / max``; hue is the position on the
    colour hexagon (Smith 1978), the formula of Python's colorsys and torchvision.
    """
    xp = get_array_module(x)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, minc = x.max(axis=1), x.min(axis=1)
    chroma = maxc - minc
    gray = chroma == 0
    one = xp.ones((), dtype=x.dtype)
    s = chroma / xp.where(maxc == 0, one, maxc)
    div = xp.where(gray, one, chroma)  # hue is arbitrary (0) for greys; avoid 0/0
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = xp.where(maxc == r, bc - gc,
                 xp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = xp.where(gray, 0.0, h)
    h = xp.mod(h / 6.0, 1.0)
    return xp.stack([h, s, maxc], axis=1).astype(x.dtype)


def hsv_to_rgb(x):
    """Inverse of :func:`rgb_to_hsv`: HSV (B, 3, H, W) to RGB in [0, 1]."""
    xp = get_array_module(x)
    h, s, v = x[:, 0], x[:, 1], x[:, 2]
    h6 = xp.mod(h, 1.0) * 6.0
    sector = xp.floor(h6)
    f = h6 - sector
    sector = sector.astype(np.int64) % 6
    p = xp.clip(v * (1.0 - s), 0.0, 1.0)
    q = xp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = xp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)

    def pick(options):  # options[sector], elementwise
        out = options[0]
        for i in range(1, 6):
            out = xp.where(sector == i, options[i], out)
        return out

    rgb = [pick((v, q, p, p, t, v)), pick((t, v, v, q, p, p)), pick((p, p, t, v, v, q))]
    return xp.stack(rgb, axis=1).astype(x.dtype)


class ColorJitter(Transform):
    """Random brightness, contrast, saturation and hue, in a random order per sample.

    Each strength ``v`` means a factor drawn uniformly from ``[max(0, 1 - v), 1 + v]`` (hue:
    a shift in ``[-v, v]`` turns of the colour wheel, ``v <= 0.5``); a pair gives the range
    itself, 0 disables the adjustment. The adjustments are torchvision's, each clamped to
    [0, 1], so images are expected in [0, 1]:

    - brightness ``f``: ``f x``
    - contrast ``f``: ``f x + (1 - f) mean(gray(x))``, the mean over the whole image
    - saturation ``f``: ``f x + (1 - f) gray(x)``
    - hue ``d``: ``H <- (H + d) mod 1`` in HSV space

    One-channel images get only brightness and contrast (saturation and hue do nothing to a
    grey image, as in torchvision).
    """

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
        name = "ColorJitter"
        self.brightness = _range(name, "brightness", brightness, 1.0)
        self.contrast = _range(name, "contrast", contrast, 1.0)
        self.saturation = _range(name, "saturation", saturation, 1.0)
        if not isinstance(hue, (tuple, list)) and hue > 0.5:
            raise ValueError(f"{name}: hue must be in [0, 0.5] (turns of the colour wheel), "
                             f"got {hue}")
        self.hue = _range(name, "hue", hue, 0.0, (-0.5, 0.5))

    @staticmethod
    def _brightness(x, f):
        return x * f

    @staticmethod
    def _contrast(x, f):
        gray = rgb_to_grayscale(x) if x.shape[1] == 3 else x
        return f * x + (1 - f) * gray.mean(axis=(1, 2, 3), keepdims=True)

    @staticmethod
    def _saturation(x, f):
        return f * x + (1 - f) * rgb_to_grayscale(x) if x.shape[1] == 3 else x

    @staticmethod
    def _hue(x, f):
        if x.shape[1] != 3:
            return x
        hsv = rgb_to_hsv(x)
        hsv[:, 0:1] = (hsv[:, 0:1] + f) % 1.0
        return hsv_to_rgb(hsv)

    def apply(self, x, rng):
        xp = get_array_module(x)
        b = len(x)
        ops = [(fn, lo_hi) for fn, lo_hi, identity in (
            (self._brightness, self.brightness, 1.0), (self._contrast, self.contrast, 1.0),
            (self._saturation, self.saturation, 1.0), (self._hue, self.hue, 0.0))
            if lo_hi != (identity, identity)]
        out = x.copy()
        if not ops:
            return out
        order = np.argsort(rng.random((b, len(ops))), axis=1)  # a random order per sample
        factors = [rng.uniform(lo, hi, b) for _, (lo, hi) in ops]
        for step in range(len(ops)):
            for j, (fn, _) in enumerate(ops):
                rows = np.flatnonzero(order[:, step] == j)
                if rows.size:
                    idx = xp.asarray(rows)
                    y = fn(out[idx], _per_sample(xp, factors[j][rows], x.dtype))
                    out[idx] = xp.clip(y, 0.0, 1.0)
        return out


class RandomGrayscale(Transform):
    """Replace each image by its luma (copied to every channel) with probability ``p``.

    One-channel images are grey already and pass unchanged.
    """

    def __init__(self, p=0.1):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomGrayscale: p must be in [0, 1], got {p}")
        self.p = p

    def apply(self, x, rng):
        xp = get_array_module(x)
        chosen = xp.asarray(rng.random(len(x)) < self.p).reshape(-1, 1, 1, 1)
        if x.shape[1] != 3:
            return x.copy()
        return xp.where(chosen, rgb_to_grayscale(x), x)


# ---------------------------------------------------------------------------------- presets

def digits_simclr():
    """The augmentations for 8x8 digits: shift by up to one pixel, drop 10 % of the pixels,
    add noise of std 0.1. Crops and colour jitter make no sense at 8x8 grey; these keep the
    digit readable while making two views differ in every pixel."""
    return Compose([RandomShift(1), PixelDropout(0.1), GaussianNoise(0.1)])


def image_simclr(size, scale=(0.2, 1.0), strength=0.5, blur_p=0.5):
    """SimCLR's augmentations for RGB images (Chen et al. 2020, Appendix A).

    Random resized crop to ``size``, horizontal flip, colour jitter
    ``(0.8 s, 0.8 s, 0.8 s, 0.2 s)`` with probability 0.8, grayscale with probability 0.2,
    and Gaussian blur (kernel about a tenth of the image, sigma in [0.1, 2]) with probability
    ``blur_p``. The paper uses ``strength`` s = 1 and scale (0.08, 1) on ImageNet and s = 0.5
    on CIFAR-10; on small images a larger minimum crop keeps the object in view.
    """
    h, w = _pair("image_simclr", size)
    kernel = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)  # odd, about 10 % of the side
    s = strength
    return Compose([
        RandomResizedCrop((h, w), scale=scale),
        RandomHorizontalFlip(0.5),
        RandomApply(ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), p=0.8),
        RandomGrayscale(0.2),
        RandomApply(GaussianBlur(kernel, sigma=(0.1, 2.0)), p=blur_p),
    ])
