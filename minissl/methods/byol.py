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

Multi-crop (``multi_crop=K`` local views, ``minissl.multicrop``; not in the BYOL paper): the
target network sees only the 2 global views, and every view's prediction regresses each
global target but its own view's (as DINO pairs its views), scaled so that with K = 0 it is
the usual loss.
"""
from dataclasses import dataclass

from .. import augment, distributed as dist, losses, multicrop, nn
from ..autograd import no_grad
from .base import (SSLMethod, cosine_tau, default_augmentation, default_encoder, ema_update,
                   encoder_args, frozen_copy)


@dataclass
class BYOLConfig:
    base_tau: float = 0.99     # EMA rate at step 0, rising to 1 by a cosine (paper: 0.996;
                               # 0.99 for a few hundred steps on small data)
    proj_hidden: int = 256     # projector/predictor hidden width (paper: 4096)
    proj_dim: int = 64         # projection width (paper: 256)
    multi_crop: int = 0        # local views per image besides the 2 global ones (0: off)


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
        if c.multi_crop:
            self.transform = multicrop.MultiCrop(
                self.transform, multicrop.local_transform(image_shape), 2, c.multi_crop)
        self.tau = c.base_tau

    def training_step(self, x, rng):
        if self.config.multi_crop:
            return self._multi_crop_step(x, rng)
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

    def _multi_crop_step(self, x, rng):
        """The target sees the 2 global views only; the prediction of every view regresses
        each global target but its own view's: pairs (i, v), i in {0, 1}, v != i. Scaled by
        2 / pairs, so that with no local view this is the usual two-term sum."""
        views = [self.as_input(v) for v in dist.shard(*self.transform(x, rng))]  # 2 + K
        p = [self.predictor(self.projector(self.encoder(v))) for v in views]     # (B, D) each
        with no_grad():
            t = [self.target_projector(self.target_encoder(v)) for v in views[:2]]
        pairs = multicrop.view_pairs(2, len(views))
        loss = sum(losses.byol_loss(p[v], t[i]) for i, v in pairs) * (2.0 / len(pairs))
        return loss, {"tau": self.tau}

    def on_step_end(self, step, total_steps):
        self.tau = cosine_tau(self.config.base_tau, step, total_steps)
        ema_update(self.target_encoder, self.encoder, self.tau)
        ema_update(self.target_projector, self.projector, self.tau)


def build(data, encoder=None, feature_dim=None, **overrides):
    return BYOL(data.image_shape, BYOLConfig(**overrides), **encoder_args(encoder, feature_dim))
