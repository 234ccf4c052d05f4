"""SimCLR: contrastive learning by instance discrimination between two augmented views.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (arXiv:2002.05709); official code google-research/simclr.

Each image x gives two random views; the encoder f and the projector g map them to z1, z2.
NT-Xent (``losses.nt_xent``) makes each view pick out its partner among the 2N - 1 other
views of the batch. The features used downstream are f's output, before the projector (the
paper's finding: the projector throws away what the augmentations vary).
"""
from dataclasses import dataclass

from .. import augment, losses, nn
from .base import SSLMethod, default_augmentation, default_encoder


@dataclass
class SimCLRConfig:
    temperature: float = 0.5      # tau of NT-Xent; 0.5 suits small batches (paper: 0.1 - 1.0)
    proj_hidden: int = 256        # width of the projector's hidden layer
    proj_dim: int = 64            # output width of the projector (the paper uses 128)


class SimCLR(SSLMethod):
    name = "simclr"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__()
        self.config = config or SimCLRConfig()
        if encoder is None:
            encoder, feature_dim = default_encoder(image_shape)
        self.encoder = encoder                                   # f: x -> h (B, D)
        self.projector = nn.MLP((feature_dim, self.config.proj_hidden, self.config.proj_dim))
        self.transform = transform or default_augmentation(image_shape)

    def training_step(self, x, rng):
        v1, v2 = augment.two_views(x, self.transform, rng)      # (B, C, H, W) each
        z1 = self.projector(self.encoder(self.as_input(v1)))    # (B, proj_dim)
        z2 = self.projector(self.encoder(self.as_input(v2)))    # (B, proj_dim)
        loss = losses.nt_xent(z1, z2, temperature=self.config.temperature)
        return loss, {}


def build(data, **overrides):
    """SimCLR for an image ``Dataset``; ``overrides`` set fields of ``SimCLRConfig``."""
    return SimCLR(data.image_shape, SimCLRConfig(**overrides))
