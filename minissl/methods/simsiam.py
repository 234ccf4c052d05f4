"""SimSiam: Siamese networks with a stop-gradient and no momentum encoder.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021 (arXiv:2011.10566);
official code facebookresearch/simsiam (projector: 3 layers with BN on the output; predictor:
a 2-layer bottleneck; loss D(p1, z2)/2 + D(p2, z1)/2 with D = -cos and z detached).

The paper's finding: the stop-gradient alone (no negatives, no EMA) prevents collapse.
"""
from dataclasses import dataclass

from .. import augment, losses, nn
from .base import SSLMethod, default_augmentation, default_encoder


@dataclass
class SimSiamConfig:
    proj_dim: int = 128        # projector width, hidden and output (paper: 2048)
    pred_hidden: int = 32      # predictor bottleneck (paper: 512 = proj_dim / 4)


class SimSiam(SSLMethod):
    name = "simsiam"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__()
        c = self.config = config or SimSiamConfig()
        if encoder is None:
            encoder, feature_dim = default_encoder(image_shape)
        self.encoder = encoder
        self.projector = nn.MLP((feature_dim, c.proj_dim, c.proj_dim), last_bn=True)
        self.predictor = nn.MLP((c.proj_dim, c.pred_hidden, c.proj_dim))
        self.transform = transform or default_augmentation(image_shape)

    def training_step(self, x, rng):
        v1, v2 = augment.two_views(x, self.transform, rng)
        z1 = self.projector(self.encoder(self.as_input(v1)))           # (B, proj_dim)
        z2 = self.projector(self.encoder(self.as_input(v2)))
        p1, p2 = self.predictor(z1), self.predictor(z2)                 # (B, proj_dim)
        # simsiam_loss detaches its target: the stop-gradient of the paper.
        loss = 0.5 * (losses.simsiam_loss(p1, z2) + losses.simsiam_loss(p2, z1))
        return loss, {}


def build(data, **overrides):
    return SimSiam(data.image_shape, SimSiamConfig(**overrides))
