"""VICReg: Variance-Invariance-Covariance Regularisation.

Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022 (arXiv:2105.04906); official code facebookresearch/vicreg
(``main_vicreg.py``: expander [Linear - BN - ReLU] layers then Linear(no bias); weights
25 / 25 / 1).

The two views go through the network as two batches, each with its own batch-norm statistics,
as the official ``forward(x, y)`` does. Differences (docs/faithful.md): the widths (8192 x 3
there), the 1-hidden-layer expander.

Invariance pulls the two views' embeddings together; the variance hinge keeps every dimension
spread over the batch (no collapse); the covariance term decorrelates dimensions.
"""
from dataclasses import dataclass

from .. import distributed as dist, losses
from .base import TwoViewMethod, encoder_args, projection_head


@dataclass
class VICRegConfig:
    sim_weight: float = 25.0        # invariance weight lambda (paper: 25)
    var_weight: float = 25.0        # variance weight mu (paper: 25)
    cov_weight: float = 1.0         # covariance weight nu (paper: 1)
    proj_dims: tuple = (512, 512)   # expander hidden and output widths (paper: 8192 x 3)


class VICReg(TwoViewMethod):
    name = "vicreg"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__(image_shape, encoder, feature_dim, transform)
        c = self.config = config or VICRegConfig()
        self.projector = projection_head((self.feature_dim,) + tuple(c.proj_dims),
                                         out_bias=False)

    def training_step(self, x, rng):
        z1, z2 = self.embed_views(x, rng)                       # (B, D) each
        z1, z2 = dist.all_gather(z1), dist.all_gather(z2)      # global-batch statistics
        c = self.config
        loss = losses.vicreg_loss(z1, z2, sim_weight=c.sim_weight, var_weight=c.var_weight,
                                  cov_weight=c.cov_weight)
        return loss, {}


def build(data, encoder=None, feature_dim=None, **overrides):
    return VICReg(data.image_shape, VICRegConfig(**overrides),
                  **encoder_args(encoder, feature_dim))
