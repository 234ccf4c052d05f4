"""Multi-crop: two global views and K local views of each image, at two sizes.

Caron et al. (SwAV, NeurIPS 2020, section 3.2) compare more views of an image without paying
for more full-size views: besides the 2 usual crops (large area, full resolution, the
"global" views) each image gives K small crops (small area, low resolution, the "local"
views). The methods compare every view with the global ones only, so a local view must
predict what the global views see: "local-to-global" correspondence (DINO, Caron et al. ICCV
2021, section 3.1). How each method pairs the views (docs/faithful.md):

* DINO: the teacher sees the 2 global views, the student all 2 + K; every student view
  is trained toward every teacher view but its own (``losses.dino_loss``).
* SwAV: codes are computed for the 2 global views only; every other view predicts each
  global view's codes (``losses.swav_loss``).
* SimCLR (``multi_crop > 0``): NT-Xent of the global pair and of every (global, local)
  pair, the other images' views of that pair as negatives, averaged over the pairs; with no
  local views this is the plain two-view NT-Xent.
* BYOL (``multi_crop > 0``): the EMA target sees only the 2 global views; the online
  prediction of every other view regresses each global target (the loss of the pairs,
  scaled so that with no local views it is BYOL's usual two-term sum).

The official crops (``main_dino.py`` ``DataAugmentationDINO``: global 224 px of area
(0.4, 1), local 96 px of area (0.05, 0.4); ``main_swav.py``: 224 px of (0.14, 1), 96 px of
(0.05, 0.14)) scale to our images as sizes H and round(96 H / 224); the 8x8 digits, whose MLP
encoder needs 8x8 inputs, get local crops of a smaller area resized back to 8x8 (one size).
"""
import numpy as np

from . import augment
from .backend import get_array_module
from .ops.shape import cat

__all__ = ["MultiCrop", "image_multicrop", "digits_multicrop", "default_multicrop",
           "local_size", "local_transform", "group_by_size", "encode_by_size", "view_pairs"]


class MultiCrop:
    """``views = MultiCrop(global_t, local_t, n_global=2, n_local=6)(x, rng)``: a list of
    ``n_global`` arrays ``global_t(x, rng)`` (each (B, C, Hg, Wg)) then ``n_local`` arrays
    ``local_t(x, rng)`` (each (B, C, Hl, Wl)), drawn in that order from ``rng``."""

    def __init__(self, global_transform, local_transform, n_global=2, n_local=6):
        if int(n_global) != n_global or n_global < 1 or int(n_local) != n_local or n_local < 0:
            raise ValueError(f"MultiCrop: need n_global >= 1 and n_local >= 0 (integers), "
                             f"got {n_global!r} and {n_local!r}")
        if n_local and local_transform is None:
            raise ValueError("MultiCrop: n_local > 0 needs a local_transform")
        self.global_transform, self.local_transform = global_transform, local_transform
        self.n_global, self.n_local = int(n_global), int(n_local)

    def __call__(self, x, rng):
        return ([self.global_transform(x, rng) for _ in range(self.n_global)]
                + [self.local_transform(x, rng) for _ in range(self.n_local)])

    def __repr__(self):
        return (f"MultiCrop({self.n_global} x {self.global_transform!r}, "
                f"{self.n_local} x {self.local_transform!r})")


def local_size(size):
    """The side of the local crops for global crops of side ``size``: the official 96/224."""
    return max(1, int(round(size * 96 / 224)))


def _colour(size, scale, strength, blur_p):
    """SimCLR's crop/flip/colour/blur pipeline (``augment.image_simclr``) at ``size``, with
    the crop area ``scale``: DINO's global and local crops use the same photometric ones."""
    return augment.image_simclr(size, scale=scale, strength=strength, blur_p=blur_p)


def local_transform(image_shape, scale=(0.05, 0.4), strength=0.5):
    """The augmentation of the local views of a data set of ``image_shape`` (C, H, W).

    RGB or larger images: a crop of area in ``scale`` resized to ``local_size(H)``, then
    flipped, colour-jittered, greyed and blurred as ``augment.image_simclr``. The 8x8 grey
    digits (an MLP encoder needs 8x8 inputs): a crop of area 0.25 to 0.6 (``scale`` is not
    used) resized back to 8x8, then 10 % pixel dropout and noise 0.1 as the digits recipe."""
    c, h, w = image_shape
    if h * w <= 256 and c == 1:
        return augment.Compose([augment.RandomResizedCrop((h, w), scale=(0.25, 0.6)),
                                augment.PixelDropout(0.1), augment.GaussianNoise(0.1)])
    return _colour(local_size(h), scale, strength, 0.5)


def image_multicrop(size, n_local=6, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
                    strength=0.5):
    """Multi-crop for RGB images of side ``size``: 2 global crops of ``size`` with area in
    ``global_scale`` and ``n_local`` local crops of side ``local_size(size)`` with area in
    ``local_scale``, each then flipped, colour-jittered, greyed and blurred as
    ``augment.image_simclr`` (blur 0.5 on both; the official DINO uses 1.0 and 0.1 on the two
    global views, which one transform for both global views does not express)."""
    return MultiCrop(_colour(size, global_scale, strength, 0.5),
                     local_transform((3, size, size), local_scale, strength), 2, n_local)


def digits_multicrop(n_local=6):
    """Multi-crop for the 8x8 digits: the global views are the digits recipe
    (``augment.digits_simclr``: shift, pixel dropout, noise); the local views crop a smaller
    area (0.25 to 0.6, aspect ratio 3/4 to 4/3), resize it back to 8x8 (the MLP encoder's
    input) and add the same dropout and noise (``local_transform``)."""
    return MultiCrop(augment.digits_simclr(), local_transform((1, 8, 8)), 2, n_local)


def default_multicrop(image_shape, n_local=6, global_scale=(0.4, 1.0),
                      local_scale=(0.05, 0.4)):
    """The multi-crop of a data set of ``image_shape`` (C, H, W): ``digits_multicrop`` for
    small grey images (the digits), ``image_multicrop`` otherwise."""
    c, h, w = image_shape
    if h * w <= 256 and c == 1:
        return digits_multicrop(n_local)
    return image_multicrop(h, n_local, global_scale, local_scale)


def group_by_size(views):
    """Consecutive views of one shape, as index ranges ``[(start, stop), ...]``: DINO's
    ``MultiCropWrapper`` runs the backbone once per resolution (one batch per group)."""
    groups, start = [], 0
    for i in range(1, len(views) + 1):
        if i == len(views) or np.shape(views[i])[1:] != np.shape(views[start])[1:]:
            groups.append((start, i))
            start = i
    return groups


def encode_by_size(encoder, views, as_input):
    """``encoder`` applied to every view, one batch per run of same-size views (DINO's
    ``MultiCropWrapper``, SwAV's multi-resolution forward: the batch norms take their
    statistics over all the views of one resolution), the outputs concatenated in view order:
    (V B, D) for V views of B images. ``as_input`` makes an array a Tensor of the model."""
    xp = get_array_module(views[0])
    out = [encoder(as_input(xp.concatenate(views[a:b]))) for a, b in group_by_size(views)]
    return out[0] if len(out) == 1 else cat(out, dim=0)


def view_pairs(n_global, n_views):
    """The (target, view) index pairs the multi-crop losses sum over: every global view i
    (the first ``n_global``) with every view v but itself."""
    return [(i, v) for i in range(n_global) for v in range(n_views) if v != i]
