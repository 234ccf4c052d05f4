"""SimCLR: contrastive learning by instance discrimination between two augmented views.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (arXiv:2002.05709); official code google-research/simclr.

Each image x gives two random views; the encoder f and the projector g map them to z1, z2.
NT-Xent (``losses.nt_xent``) makes each view pick out its partner among the 2N - 1 other
views of the batch. The features used downstream are f's output, before the projector (the
paper's finding: the projector throws away what the augmentations vary).

As the official code (``tf2/model.py``: the views are concatenated along the batch before the
ResNet; ``ProjectionHead`` with ``LinearLayer(use_bn=True)`` on every layer):

* both views go through f and g as ONE batch of 2N, so every batch norm takes its statistics
  over both views (``joint_batch=False`` gives the per-view variant);
* the projection head has BN on every layer: hidden layers Linear(no bias) - BN - ReLU, the
  output layer Linear(no bias) - BN with a scale but no centre (TensorFlow's
  ``center=False``: here BN's bias is kept at 0 and never trained).

Differences (docs/faithful.md): the widths, 2 projector layers (the SimCLR paper's head;
the official code's default ``num_proj_layers=3`` is SimCLRv2's), temperature 0.5.

Data-parallel (``minissl.distributed``): each rank encodes its B/N rows of each view as one
batch of 2B/N, SyncBatchNorm takes the statistics over all 2B views (the official code's
cross-replica ``global_bn``), and z1, z2 are gathered so that NT-Xent's negatives come from
every rank.
"""
from dataclasses import dataclass

from .. import distributed as dist, losses
from .base import TwoViewMethod, encoder_args, projection_head


@dataclass
class SimCLRConfig:
    temperature: float = 0.5      # tau of NT-Xent; 0.5 suits small batches (paper: 0.1 - 1.0)
    proj_hidden: int = 256        # width of the projector's hidden layer
    proj_dim: int = 64            # output width of the projector (the paper uses 128)
    joint_batch: bool = True      # both views as one 2N batch (official), else per view


class SimCLR(TwoViewMethod):
    name = "simclr"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__(image_shape, encoder, feature_dim, transform)
        c = self.config = config or SimCLRConfig()
        self.projector = projection_head((self.feature_dim, c.proj_hidden, c.proj_dim),
                                         hidden_bias=False, out_bias=False, out_bn="scale")

    def training_step(self, x, rng):
        z1, z2 = self.embed_views(x, rng, joint=self.config.joint_batch)  # (B/N, proj_dim) each
        z1, z2 = dist.all_gather(z1), dist.all_gather(z2)      # (B, proj_dim): all ranks' rows
        return losses.nt_xent(z1, z2, temperature=self.config.temperature), {}


def build(data, encoder=None, feature_dim=None, **overrides):
    """SimCLR for an image ``Dataset``; ``overrides`` set fields of ``SimCLRConfig``;
    ``encoder``: any ``nn.Module`` mapping images to (B, feature_dim) (see ``encoder_args``)."""
    return SimCLR(data.image_shape, SimCLRConfig(**overrides),
                  **encoder_args(encoder, feature_dim))
