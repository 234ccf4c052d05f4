"""Barlow Twins: redundancy reduction between the embeddings of two views.

Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021 (arXiv:2103.03230); official code facebookresearch/barlowtwins
(projector Linear-BN-ReLU layers then Linear; the loss standardises each feature over the
batch and pushes the cross-correlation matrix towards the identity).
"""
from dataclasses import dataclass

from .. import augment, losses, nn
from .base import SSLMethod, default_augmentation, default_encoder


@dataclass
class BarlowTwinsConfig:
    lambd: float = 5e-3            # weight of the off-diagonal terms (paper: 5e-3)
    proj_dims: tuple = (512, 512)  # projector hidden and output widths (paper: 8192 x 3)


class BarlowTwins(SSLMethod):
    name = "barlow_twins"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__()
        c = self.config = config or BarlowTwinsConfig()
        if encoder is None:
            encoder, feature_dim = default_encoder(image_shape)
        self.encoder = encoder
        self.projector = nn.MLP((feature_dim,) + tuple(c.proj_dims))
        self.transform = transform or default_augmentation(image_shape)

    def training_step(self, x, rng):
        v1, v2 = augment.two_views(x, self.transform, rng)
        z1 = self.projector(self.encoder(self.as_input(v1)))           # (B, D)
        z2 = self.projector(self.encoder(self.as_input(v2)))           # (B, D)
        return losses.barlow_twins_loss(z1, z2, lambd=self.config.lambd), {}


def build(data, **overrides):
    return BarlowTwins(data.image_shape, BarlowTwinsConfig(**overrides))
