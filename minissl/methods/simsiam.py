"""SimSiam: Siamese networks with a stop-gradient and no momentum encoder.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021 (arXiv:2011.10566);
official code facebookresearch/simsiam (``simsiam/builder.py``; loss D(p1, z2)/2 + D(p2, z1)/2
with D = -cos and z detached).

The paper's finding: the stop-gradient alone (no negatives, no EMA) prevents collapse.

Heads, as the official builder writes them:

* projector: [Linear(no bias) - BN - ReLU] per hidden layer, then Linear whose bias is never
  trained (``fc[6].bias.requires_grad = False``), then ``BatchNorm1d(dim, affine=False)``.
  The ImageNet builder has 3 layers; the paper's CIFAR-10 variant (Appendix D) has 2. The
  default here is the 2-layer CIFAR variant, the one meant for small images and small
  networks like the digits MLP (``proj_layers=3`` gives the ImageNet one).
* predictor: Linear(no bias) - BN - ReLU - Linear, a bottleneck of width dim / 4.

The two views go through the network as two batches (each its own BN statistics), as the
official ``forward(x1, x2)`` does. Differences (docs/faithful.md): the widths.
"""
from dataclasses import dataclass

from .. import losses
from .base import TwoViewMethod, encoder_args, projection_head


@dataclass
class SimSiamConfig:
    proj_dim: int = 128        # projector width, hidden and output (paper: 2048)
    pred_hidden: int = 32      # predictor bottleneck (paper: 512 = proj_dim / 4)
    proj_layers: int = 2       # projector Linears (official ImageNet builder: 3; CIFAR: 2)


class SimSiam(TwoViewMethod):
    name = "simsiam"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__(image_shape, encoder, feature_dim, transform)
        c = self.config = config or SimSiamConfig()
        if c.proj_layers < 1:
            raise ValueError(f"SimSiam: proj_layers must be >= 1, got {c.proj_layers}")
        dims = (self.feature_dim,) + (c.proj_dim,) * c.proj_layers
        self.projector = projection_head(dims, hidden_bias=False, out_bias="frozen",
                                         out_bn="plain")                           # g
        self.predictor = projection_head((c.proj_dim, c.pred_hidden, c.proj_dim),
                                         hidden_bias=False)                        # h

    def training_step(self, x, rng):
        z1, z2 = self.embed_views(x, rng)                       # (B, proj_dim) each
        p1, p2 = self.predictor(z1), self.predictor(z2)         # (B, proj_dim) each
        # simsiam_loss detaches its target: the stop-gradient of the paper.
        loss = 0.5 * (losses.simsiam_loss(p1, z2) + losses.simsiam_loss(p2, z1))
        return loss, {}


def build(data, encoder=None, feature_dim=None, **overrides):
    return SimSiam(data.image_shape, SimSiamConfig(**overrides),
                   **encoder_args(encoder, feature_dim))
