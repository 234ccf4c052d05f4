"""Barlow Twins: redundancy reduction between the embeddings of two views.

Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021 (arXiv:2103.03230); official code facebookresearch/barlowtwins
(``main.py``: projector [Linear(no bias) - BN - ReLU] layers then Linear(no bias); the loss
standardises each feature over the batch, BatchNorm1d without affine, and pushes the
cross-correlation matrix towards the identity).

The two views go through the network as two batches, each with its own batch-norm statistics,
as the official ``forward(y1, y2)`` does. Differences (docs/faithful.md): the widths
(8192 x 3 there), the 1-hidden-layer projector.
"""
from dataclasses import dataclass

from .. import distributed as dist, losses
from .base import TwoViewMethod, encoder_args, projection_head


@dataclass
class BarlowTwinsConfig:
    lambd: float = 5e-3            # weight of the off-diagonal terms (paper: 5e-3)
    proj_dims: tuple = (512, 512)  # projector hidden and output widths (paper: 8192 x 3)


class BarlowTwins(TwoViewMethod):
    name = "barlow_twins"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__(image_shape, encoder, feature_dim, transform)
        c = self.config = config or BarlowTwinsConfig()
        self.projector = projection_head((self.feature_dim,) + tuple(c.proj_dims),
                                         hidden_bias=False, out_bias=False)

    def training_step(self, x, rng):
        z1, z2 = self.embed_views(x, rng)                       # (B, D) each
        z1, z2 = dist.all_gather(z1), dist.all_gather(z2)      # global-batch statistics
        return losses.barlow_twins_loss(z1, z2, lambd=self.config.lambd), {}


def build(data, encoder=None, feature_dim=None, **overrides):
    return BarlowTwins(data.image_shape, BarlowTwinsConfig(**overrides),
                       **encoder_args(encoder, feature_dim))
