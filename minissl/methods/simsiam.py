"""SimSiam: Siamese networks with a stop-gradient and no momentum encoder.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021 (arXiv:2011.10566);
official code facebookresearch/simsiam (projector: 3 layers with BN on the output; predictor:
a 2-layer bottleneck; loss D(p1, z2)/2 + D(p2, z1)/2 with D = -cos and z detached).

The paper's finding: the stop-gradient alone (no negatives, no EMA) prevents collapse.
"""
from dataclasses import dataclass

from .. import losses, nn
from .base import TwoViewMethod


@dataclass
class SimSiamConfig:
    proj_dim: int = 128        # projector width, hidden and output (paper: 2048)
    pred_hidden: int = 32      # predictor bottleneck (paper: 512 = proj_dim / 4)


class SimSiam(TwoViewMethod):
    name = "simsiam"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__(image_shape, encoder, feature_dim, transform)
        c = self.config = config or SimSiamConfig()
        self.projector = nn.MLP((self.feature_dim, c.proj_dim, c.proj_dim), last_bn=True)
        self.predictor = nn.MLP((c.proj_dim, c.pred_hidden, c.proj_dim))

    def training_step(self, x, rng):
        z1, z2 = self.embed_views(x, rng)                       # (B, proj_dim) each
        p1, p2 = self.predictor(z1), self.predictor(z2)         # (B, proj_dim) each
        # simsiam_loss detaches its target: the stop-gradient of the paper.
        loss = 0.5 * (losses.simsiam_loss(p1, z2) + losses.simsiam_loss(p2, z1))
        return loss, {}


def build(data, **overrides):
    return SimSiam(data.image_shape, SimSiamConfig(**overrides))
