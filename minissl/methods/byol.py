"""BYOL: Bootstrap Your Own Latent, a non-contrastive method with a momentum target.

Grill, Strub, Altché, Tallec, Richemond et al., "Bootstrap your own latent: A new approach to
self-supervised learning", NeurIPS 2020 (arXiv:2006.07733); official code deepmind-research/byol
(loss ``regression_loss`` = 2 - 2 cos, target updated as an EMA with the cosine schedule of tau).

The online network (encoder f, projector g, predictor q) predicts the target network's
projection of the other view; the target (f', g') is an exponential moving average of the
online weights and gets no gradient. Without negatives, the predictor and the slowly moving
target are what keeps the representation from collapsing.

The two views go through the online and the target network as two batches, each with its own
batch-norm statistics, as the official ``byol_experiment.py`` calls ``forward`` once per view.
Differences (docs/faithful.md): the widths, base_tau 0.99, Adam instead of LARS.
"""
from dataclasses import dataclass

from .. import augment, distributed as dist, losses, nn
from ..autograd import no_grad
from .base import (SSLMethod, cosine_tau, default_augmentation, default_encoder, ema_update,
                   encoder_args, frozen_copy)


@dataclass
class BYOLConfig:
    base_tau: float = 0.99     # EMA rate at step 0, rising to 1 by a cosine (paper: 0.996;
                               # 0.99 for a few hundred steps on small data)
    proj_hidden: int = 256     # projector/predictor hidden width (paper: 4096)
    proj_dim: int = 64         # projection width (paper: 256)


class BYOL(SSLMethod):
    name = "byol"
    uses_total_steps = True    # tau's cosine spans the whole run

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__()
        c = self.config = config or BYOLConfig()
        if encoder is None:
            encoder, feature_dim = default_encoder(image_shape)
        self.encoder = encoder                                            # f
        self.projector = nn.MLP((feature_dim, c.proj_hidden, c.proj_dim))  # g
        self.predictor = nn.MLP((c.proj_dim, c.proj_hidden, c.proj_dim))   # q
        self.target_encoder = frozen_copy(self.encoder)                   # f' (EMA of f)
        self.target_projector = frozen_copy(self.projector)               # g' (EMA of g)
        self.transform = transform or default_augmentation(image_shape)
        self.tau = c.base_tau

    def training_step(self, x, rng):
        v1, v2 = dist.shard(*augment.two_views(x, self.transform, rng))   # this rank's rows
        v1, v2 = self.as_input(v1), self.as_input(v2)
        p1 = self.predictor(self.projector(self.encoder(v1)))            # (B, proj_dim)
        p2 = self.predictor(self.projector(self.encoder(v2)))            # (B, proj_dim)
        with no_grad():
            t1 = self.target_projector(self.target_encoder(v1))          # (B, proj_dim)
            t2 = self.target_projector(self.target_encoder(v2))
        # Symmetrised: each view's prediction regresses the other view's target.
        loss = losses.byol_loss(p1, t2) + losses.byol_loss(p2, t1)
        return loss, {"tau": self.tau}

    def on_step_end(self, step, total_steps):
        self.tau = cosine_tau(self.config.base_tau, step, total_steps)
        ema_update(self.target_encoder, self.encoder, self.tau)
        ema_update(self.target_projector, self.projector, self.tau)


def build(data, encoder=None, feature_dim=None, **overrides):
    return BYOL(data.image_shape, BYOLConfig(**overrides), **encoder_args(encoder, feature_dim))
