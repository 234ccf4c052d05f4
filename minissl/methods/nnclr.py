"""NNCLR: contrastive learning with nearest-neighbour positives from a support set.

Dwibedi, Aytar, Tompson, Sermanet & Zisserman, "With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021
(arXiv:2104.14548). There is no official code; this follows the two reference
re-implementations, solo-learn's ``solo/methods/nnclr.py`` (+ ``solo/losses/nnclr.py``) and
lightly's ``NNMemoryBankModule``.

SimCLR's positive for a view is the other view of the same image, so the augmentations alone
decide what counts as "the same". NNCLR replaces the positive of view 1's projection z1 by its
nearest neighbour NN(z1) in a support set Q of projections of earlier batches: a different
image that the network already finds similar, which gives semantic variation no augmentation
makes. The neighbour must then pick out the prediction p2 of the other view among the batch's
predictions (``losses.nnclr_loss``), symmetrised:

    z_v = g(f(view_v))   (B, d)      p_v = q(z_v)   (B, d)      Q   (K, d), unit rows
    loss = ( nnclr_loss(NN(z1, Q), p2) + nnclr_loss(NN(z2, Q), p1) ) / 2
    Q <- Q with the normalised z1 of this batch enqueued (after the loss), oldest out

No gradient flows through the neighbour (it is a stored vector), only through p.

As solo-learn: a 3-layer projector (Linear - BN - ReLU twice, then Linear - BN), a 2-layer
predictor (Linear - BN - ReLU - Linear), each view its own batch through the networks (its
own batch-norm statistics), the support set initialised with random unit rows and fed the
normalised z1. Differences (docs/faithful.md): the widths and the support-set size (scaled to
the digits; paper: 98304), temperature 0.2 (paper 0.1; solo-learn's CIFAR recipe 0.2), the
ring buffer wraps around where solo-learn asserts K % B == 0, Adam instead of LARS.

Data-parallel: z and p are gathered from all ranks, every rank computes the loss of the global
batch and enqueues the same rows, so the support sets stay identical (as solo-learn gathers p
and the enqueued z).
"""
from dataclasses import dataclass

import numpy as np

from .. import distributed as dist, losses, nn
from .. import functional as F
from ..autograd import Tensor, no_grad
from .base import TwoViewMethod, encoder_args, enqueue, projection_head, unit_rows


@dataclass
class NNCLRConfig:
    temperature: float = 0.2   # T of the loss (paper: 0.1; solo-learn CIFAR: 0.2)
    queue_size: int = 1024     # K, projections kept in the support set (paper: 98304)
    proj_hidden: int = 256     # projector hidden width (paper: 2048)
    proj_dim: int = 64         # projection / prediction width (paper: 256)
    pred_hidden: int = 256     # predictor hidden width (paper: 4096)


class NNCLR(TwoViewMethod):
    name = "nnclr"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None, rng=None):
        super().__init__(image_shape, encoder, feature_dim, transform)
        c = self.config = config or NNCLRConfig()
        if c.queue_size < 1 or not c.temperature > 0:
            raise ValueError(f"NNCLR: queue_size must be at least 1 and temperature positive, "
                             f"got {c.queue_size} and {c.temperature}")
        self.projector = projection_head((self.feature_dim, c.proj_hidden, c.proj_hidden,
                                          c.proj_dim), out_bn="affine")           # g
        self.predictor = projection_head((c.proj_dim, c.pred_hidden, c.proj_dim))  # q
        rng = rng or nn.default_generator()
        self.register_buffer("queue", unit_rows(rng, c.queue_size, c.proj_dim))   # (K, d)
        self.register_buffer("queue_ptr", np.zeros(1, dtype=np.int64))
        self._support_rows = None   # this step's normalised z1, enqueued after backward

    def training_step(self, x, rng):
        """Draws from ``rng``: the two views, nothing else."""
        z1, z2 = self.embed_views(x, rng)                                 # (B/N, d) each
        p1, p2 = self.predictor(z1), self.predictor(z2)                   # (B/N, d) each
        z1, z2, p1, p2 = (dist.all_gather(t) for t in (z1, z2, p1, p2))  # (B, d): all ranks
        support = Tensor(self.queue.data)                                 # (K, d), constant
        nn1 = losses.nearest_neighbours(z1, support)                      # (B, d), no grad
        nn2 = losses.nearest_neighbours(z2, support)
        t = self.config.temperature
        loss = (losses.nnclr_loss(nn1, p2, t) + losses.nnclr_loss(nn2, p1, t)) * 0.5
        with no_grad():
            u1 = F.normalize(z1.detach(), dim=1)                          # (B, d)
            # Diagnostic: how close the neighbours are (1: the support set holds z1 itself).
            nn_cos = float((u1 * F.normalize(nn1, dim=1)).sum(dim=1).mean().item())
        self._support_rows = u1.data
        return loss, {"nn_cos": nn_cos}

    def on_step_end(self, step, total_steps):
        # After backward: the loss read the queue (its neighbours), so it changes only now.
        if self._support_rows is not None:
            enqueue(self.queue, self.queue_ptr, self._support_rows)
            self._support_rows = None


def build(data, encoder=None, feature_dim=None, **overrides):
    """NNCLR for an image ``Dataset``; ``overrides`` set fields of ``NNCLRConfig``;
    ``encoder``: any ``nn.Module`` mapping images to (B, feature_dim) (see ``encoder_args``)."""
    return NNCLR(data.image_shape, NNCLRConfig(**overrides),
                 **encoder_args(encoder, feature_dim))
