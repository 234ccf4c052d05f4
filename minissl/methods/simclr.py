"""SimCLR: contrastive learning by instance discrimination between two augmented views.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (arXiv:2002.05709); official code google-research/simclr.

Each image x gives two random views; the encoder f and the projector g map them to z1, z2.
NT-Xent (``losses.nt_xent``) makes each view pick out its partner among the 2N - 1 other
views of the batch. The features used downstream are f's output, before the projector (the
paper's finding: the projector throws away what the augmentations vary).
"""
from dataclasses import dataclass

from .. import distributed as dist, losses, nn
from .base import TwoViewMethod


@dataclass
class SimCLRConfig:
    temperature: float = 0.5      # tau of NT-Xent; 0.5 suits small batches (paper: 0.1 - 1.0)
    proj_hidden: int = 256        # width of the projector's hidden layer
    proj_dim: int = 64            # output width of the projector (the paper uses 128)


class SimCLR(TwoViewMethod):
    name = "simclr"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__(image_shape, encoder, feature_dim, transform)
        c = self.config = config or SimCLRConfig()
        self.projector = nn.MLP((self.feature_dim, c.proj_hidden, c.proj_dim))  # g

    def training_step(self, x, rng):
        z1, z2 = self.embed_views(x, rng)                       # (B, proj_dim) each
        z1, z2 = dist.all_gather(z1), dist.all_gather(z2)      # negatives from all ranks
        return losses.nt_xent(z1, z2, temperature=self.config.temperature), {}


def build(data, **overrides):
    """SimCLR for an image ``Dataset``; ``overrides`` set fields of ``SimCLRConfig``."""
    return SimCLR(data.image_shape, SimCLRConfig(**overrides))
