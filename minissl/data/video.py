"""A procedural video data set: one figure moving in a straight line, labelled by direction.

``moving_shapes()`` needs nothing: each clip draws one of the ``shapes`` figures (circle,
square, triangle, cross, ring, plus) in a random grey level on a random grey background and
moves it at a constant velocity in one of eight directions; the label is the direction. A
single frame tells nothing about the label (the figure is anywhere, at rest in that frame),
so a representation that classifies it has to have seen motion.
"""
from dataclasses import dataclass, field

import numpy as np

from .images import SHAPE_NAMES, render_shapes

# Counter-clockwise from "right" in steps of 45 degrees (rows grow downwards on screen).
DIRECTION_NAMES = ["right", "up-right", "up", "up-left", "left", "down-left", "down",
                   "down-right"]
_FIGURES = [SHAPE_NAMES.index(n) for n in ("circle", "square", "triangle", "cross", "ring",
                                           "plus")]


@dataclass(frozen=True, eq=False, repr=False)
class VideoDataset:
    """Labelled clips split into train and test: float32 (N, C, T, H, W) in [0, 1] (PyTorch's
    video layout, as ``nn.Conv3d`` takes it), int64 labels."""

    name: str                 # registry name, e.g. "moving_shapes"
    train_x: np.ndarray       # (N_train, C, T, H, W) float32 in [0, 1]
    train_y: np.ndarray       # (N_train,) int64 in [0, num_classes)
    test_x: np.ndarray        # (N_test, C, T, H, W) float32
    test_y: np.ndarray        # (N_test,) int64
    num_classes: int          # number of classes
    class_names: list = field(default_factory=list)   # one str per class

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if not (isinstance(x, np.ndarray) and x.ndim == 5 and x.dtype == np.float32):
                raise ValueError(f"VideoDataset {self.name!r}: {split}_x must be a float32 "
                                 f"(N, C, T, H, W) array, got {getattr(x, 'dtype', type(x))} "
                                 f"{getattr(x, 'shape', '')}")
            if not (isinstance(y, np.ndarray) and y.shape == (len(x),) and y.dtype == np.int64):
                raise ValueError(f"VideoDataset {self.name!r}: {split}_y must be an int64 array"
                                 f" of shape ({len(x)},)")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"VideoDataset {self.name!r}: train clips {self.train_x.shape[1:]}"
                             f" and test clips {self.test_x.shape[1:]} differ in shape")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"VideoDataset {self.name!r}: {len(self.class_names)} class names "
                             f"for {self.num_classes} classes")

    @property
    def video_shape(self):
        """(C, T, H, W) of one clip."""
        return tuple(self.train_x.shape[1:])

    def __repr__(self):
        return (f"VideoDataset(name={self.name!r}, train={len(self.train_x)}, "
                f"test={len(self.test_x)}, video_shape={self.video_shape}, "
                f"num_classes={self.num_classes})")


def _clips(n, frames, size, noise, rng):
    labels = rng.permutation(np.arange(n) % len(DIRECTION_NAMES))          # balanced
    figure = rng.choice(_FIGURES, n)
    radius = rng.uniform(0.15, 0.22, n) * size
    travel = rng.uniform(0.2, 0.4, n) * size          # distance covered over the clip
    theta = labels * (np.pi / 4)
    step = travel[:, None] / (frames - 1) * np.stack([-np.sin(theta), np.cos(theta)], 1)
    disp = step * (frames - 1)                         # (n, 2) as (row, column)
    # The start is uniform among the places from which the figure stays inside every frame.
    lo = radius[:, None] - np.minimum(disp, 0)
    hi = size - radius[:, None] - np.maximum(disp, 0)
    start = lo + rng.random((n, 2)) * (hi - lo)
    angle = np.deg2rad(rng.uniform(-15.0, 15.0, n))
    fg, bg = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    while True:                                        # the figure must be visible
        bad = np.flatnonzero(np.abs(fg - bg) < 0.4)
        if bad.size == 0:
            break
        fg[bad] = rng.uniform(0, 1, bad.size)
    t = np.arange(frames)
    center = start[:, None] + t[None, :, None] * step[:, None]            # (n, T, 2)
    rep = lambda a: np.repeat(a, frames, axis=0)                          # noqa: E731
    x = render_shapes(rep(figure), size, center.reshape(-1, 2), rep(radius), rep(angle),
                      rep(np.repeat(fg[:, None], 3, 1)), rep(np.repeat(bg[:, None], 3, 1)))
    x = x[:, :1].reshape(n, frames, 1, size, size).transpose(0, 2, 1, 3, 4)  # (n, 1, T, H, W)
    x = np.ascontiguousarray(x)
    if noise > 0:
        x += np.float32(noise) * rng.standard_normal(x.shape, dtype=np.float32)
        np.clip(x, 0.0, 1.0, out=x)
    return x, labels.astype(np.int64)


def moving_shapes(n_train=2000, n_test=500, frames=8, size=16, seed=0, noise=0.05):
    """Clips of a figure moving in one of 8 directions: a :class:`VideoDataset` of float32
    (N, 1, frames, size, size), labels the direction (``DIRECTION_NAMES``, counter-clockwise
    from "right").

    Each clip draws a figure (circle, square, triangle, cross, ring or plus) of radius 15-22 %
    of the frame, tilted within +-15 degrees, a grey level and a background grey level at
    least 0.4 apart, and a distance of 20-40 % of the frame covered at constant speed over the
    clip, starting where the figure stays entirely inside every frame; Gaussian pixel noise of
    std ``noise``, clipped to [0, 1]. Classes are balanced; train and test come from
    independent child seeds of ``seed``.
    """
    if int(size) != size or size < 8 or int(frames) != frames or frames < 2:
        raise ValueError(f"moving_shapes: need an integer size >= 8 and frames >= 2, got "
                         f"size={size}, frames={frames}")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"moving_shapes: n_train and n_test must be >= 0, got {n_train}, "
                         f"{n_test}")
    train_seed, test_seed = np.random.SeedSequence(seed).spawn(2)
    tx, ty = _clips(int(n_train), int(frames), int(size), noise,
                    np.random.default_rng(train_seed))
    vx, vy = _clips(int(n_test), int(frames), int(size), noise, np.random.default_rng(test_seed))
    return VideoDataset("moving_shapes", tx, ty, vx, vy, len(DIRECTION_NAMES),
                        list(DIRECTION_NAMES))
