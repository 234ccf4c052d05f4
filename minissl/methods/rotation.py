"""Rotation prediction (RotNet): learn features by telling which way up an image is.

Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018 (arXiv:1803.07728); official code gidariss/FeatureLearningRotNet.

Every image x gives four inputs, x rotated by k * 90 degrees for k = 0, 1, 2, 3, and the
pseudo-label of each is its k. The encoder f and a small head c are trained to classify the
rotation with the 4-way cross-entropy

    loss = -1/(4B) sum_i sum_k log softmax(c(f(rot_k(x_i))))_k.

Which way is up can only be told from what the image shows (the paper's argument: to know
that a face is upside down one must find the eyes and the mouth), and rotations by multiples
of 90 degrees are exact permutations of the pixels, so no low-level artefact (interpolation,
borders) gives the answer away.

Checked against the official code (``dataloader.py``): all four rotations of every image go
into the same batch, image-major (the rows of image i are 4i .. 4i + 3, labels 0, 1, 2, 3),
so a batch of B images is 4B examples with exactly B of each label; rotation k is
counter-clockwise (its ``rotate_img(img, 90)`` = ``flipud(transpose(img))`` = ``np.rot90``),
which ``augment.rot90`` implements on the last two axes. Its CIFAR-10 loader augments each
image (random crop with 4 pixels of padding, horizontal flip) before making the four
rotations; ``default_rotation_augmentation`` is that, scaled to the image size. The official
recipe trains a Network-in-Network for 200 epochs with SGD; here the encoder is
``default_encoder`` and the training loop is the project's (Adam).

The head c: the paper finds the layers right below the rotation classifier the most specific
to the pretext task and the least useful downstream (its CIFAR-10 study of the feature
hierarchy: the second of 4-5 blocks is best), so c defaults to an MLP and f's output sits one
hidden layer away from the logits. (On the digits a linear head gives clearly worse
few-label probes; see ``RotNetConfig.head_hidden``.)
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import augment, distributed as dist, nn
from .. import functional as F
from ..backend import get_array_module
from .base import SSLMethod, default_encoder, encoder_args

__all__ = ["RotNetConfig", "RotNet", "all_rotations", "random_rotations",
           "default_rotation_augmentation", "build"]

NUM_ROTATIONS = 4   # 0, 90, 180 and 270 degrees


def _check_square(who, x):
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 4:
        raise ValueError(f"{who}: expected images (B, C, H, W), got "
                         f"{'shape ' + str(shape) if shape else type(x).__name__}")
    if shape[2] != shape[3]:
        raise ValueError(f"{who}: rotations by 90 degrees need square images, got shape "
                         f"{shape}")


def all_rotations(x):
    """The four rotations of every image, image-major, as the official data loader.

    x (B, C, H, W) with H = W -> (x4 (4B, C, H, W), k (4B,) int64) where
    ``x4[4 i + r] = rot90(x[i], r)`` (r quarter turns counter-clockwise) and ``k[4 i + r] = r``.
    The labels are a host array; x4 is on x's device.
    """
    _check_square("all_rotations", x)
    xp = get_array_module(x)
    k = np.tile(np.arange(NUM_ROTATIONS, dtype=np.int64), len(x))      # (4B,) 0 1 2 3 0 1 ...
    x4 = augment.rot90(xp.repeat(x, NUM_ROTATIONS, axis=0), k)         # (4B, C, H, W)
    return x4, k


def random_rotations(x, rng):
    """One random rotation per image: (rot90(x[i], k_i), k) with k_i uniform in {0..3}."""
    _check_square("random_rotations", x)
    k = rng.integers(0, NUM_ROTATIONS, len(x)).astype(np.int64)        # (B,)
    return augment.rot90(x, k), k


def default_rotation_augmentation(image_shape):
    """The official CIFAR-10 augmentation scaled to ``image_shape``: pad-and-crop (a random
    shift of up to max(1, H // 8) pixels; 4 on 32x32 as RandomCrop(32, padding=4)) and a
    horizontal flip with p = 0.5. Neither changes which way is up."""
    return augment.Compose([augment.RandomShift(max(1, image_shape[1] // 8)),
                            augment.RandomHorizontalFlip(0.5)])


@dataclass
class RotNetConfig:
    head_hidden: Optional[int] = 256  # rotation head c: None = a linear layer D -> 4; an int =
                                      # an MLP D-hidden-4 (Linear-BN-ReLU-Linear), which keeps
                                      # the most rotation-specific layer out of f's output
    all_four: bool = True             # four rotations of each image per batch (official code);
                                      # False: one random rotation per image (batch stays B)
    augment: bool = True              # augment each image before rotating it, as the official
                                      # CIFAR-10 loader (RandomCrop(32, padding=4), horizontal
                                      # flip): a random shift of up to H/8 pixels (at least 1,
                                      # so 1 on the 8x8 digits) and a flip with p = 0.5


class RotNet(SSLMethod):
    """Rotation prediction; features are the encoder's output (see the module docstring)."""

    name = "rotation"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3 or self.image_shape[1] != self.image_shape[2]:
            raise ValueError(f"RotNet: rotations by 90 degrees need square images (C, H, H), "
                             f"got image_shape {self.image_shape}")
        self.config = config or RotNetConfig()
        if encoder is None:
            encoder, feature_dim = default_encoder(self.image_shape)
        elif feature_dim is None:
            raise ValueError("RotNet: pass feature_dim with a custom encoder")
        self.encoder = encoder                                           # f: x -> h (B, D)
        h = self.config.head_hidden
        dims = (feature_dim, NUM_ROTATIONS) if h is None else (feature_dim, h, NUM_ROTATIONS)
        self.head = nn.MLP(dims)                                         # c: h -> logits (B, 4)
        if transform is None and self.config.augment:
            transform = default_rotation_augmentation(self.image_shape)
        self.transform = transform                                       # None: no augmentation

    def rotate(self, x, rng):
        """The (augmented, then) rotated batch and its labels, per the config."""
        if self.transform is not None:
            x = self.transform(x, rng)
        return all_rotations(x) if self.config.all_four else random_rotations(x, rng)

    def forward(self, x):
        """Rotation logits (B, 4) of the images x."""
        return self.head(self.encoder(self.as_input(x)))

    def training_step(self, x, rng):
        shape = tuple(getattr(x, "shape", ()))
        if shape[1:] != self.image_shape:
            raise ValueError(f"RotNet.training_step: expected images (B, "
                             f"{', '.join(map(str, self.image_shape))}), got shape {shape}")
        xr, k = self.rotate(x, rng)                                      # (4B, C, H, W), (4B,)
        xr, k = dist.shard(xr, k)                # data-parallel: this rank's rows
        logits = self(xr)                                                # (4B, 4)
        target = get_array_module(logits.data).asarray(k)
        loss = F.cross_entropy(logits, target)
        accuracy = float((logits.data.argmax(1) == target).mean())
        return loss, {"rotation_acc": accuracy}


def build(data, encoder=None, feature_dim=None, **overrides):
    """RotNet for an image ``Dataset`` (square images); ``overrides`` set ``RotNetConfig``."""
    return RotNet(data.image_shape, RotNetConfig(**overrides),
                  **encoder_args(encoder, feature_dim))
