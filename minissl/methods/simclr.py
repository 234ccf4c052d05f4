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

Multi-crop (``multi_crop=K`` local views, ``minissl.multicrop``; not in the SimCLR paper, as
SwAV's section 4 applies it to SimCLR): the 2 usual views are the global ones, and the loss is
the mean of NT-Xent over the global pair and every (global, local) pair, so a local view only
ever meets a global view of its image as its positive.

Data-parallel (``minissl.distributed``): each rank encodes its B/N rows of each view as one
batch of 2B/N, SyncBatchNorm takes the statistics over all 2B views (the official code's
cross-replica ``global_bn``), and z1, z2 are gathered so that NT-Xent's negatives come from
every rank.
"""
from dataclasses import dataclass

from .. import distributed as dist, losses, multicrop
from .base import TwoViewMethod, encoder_args, projection_head


@dataclass
class SimCLRConfig:
    temperature: float = 0.5      # tau of NT-Xent; 0.5 suits small batches (paper: 0.1 - 1.0)
    proj_hidden: int = 256        # width of the projector's hidden layer
    proj_dim: int = 64            # output width of the projector (the paper uses 128)
    joint_batch: bool = True      # both views as one 2N batch (official), else per view
    multi_crop: int = 0           # local views per image besides the 2 global ones (0: off)


class SimCLR(TwoViewMethod):
    name = "simclr"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__(image_shape, encoder, feature_dim, transform)
        c = self.config = config or SimCLRConfig()
        self.projector = projection_head((self.feature_dim, c.proj_hidden, c.proj_dim),
                                         hidden_bias=False, out_bias=False, out_bn="scale")
        if c.multi_crop:
            self.transform = multicrop.MultiCrop(
                self.transform, multicrop.local_transform(image_shape), 2, c.multi_crop)

    def training_step(self, x, rng):
        if self.config.multi_crop:
            return self._multi_crop_step(x, rng)
        z1, z2 = self.embed_views(x, rng, joint=self.config.joint_batch)  # (B/N, proj_dim) each
        z1, z2 = dist.all_gather(z1), dist.all_gather(z2)      # (B, proj_dim): all ranks' rows
        return losses.nt_xent(z1, z2, temperature=self.config.temperature), {}

    def _multi_crop_step(self, x, rng):
        """NT-Xent of the global pair and of every (global, local) pair, averaged: a local
        view's positive is a global view of its image and its negatives are the other images'
        views of that pair; two local views are never compared. The encoder sees one batch
        per resolution (joint) or per view, the projector all views at once (joint)."""
        views = list(dist.shard(*self.transform(x, rng)))   # 2 global, then K local (B/N, ...)
        b = len(views[0])
        if self.config.joint_batch:
            z = self.projector(multicrop.encode_by_size(self.encoder, views, self.as_input))
            z = [z[i * b:(i + 1) * b] for i in range(len(views))]          # V x (B/N, D)
        else:
            z = [self.projector(self.encoder(self.as_input(v))) for v in views]
        z = [dist.all_gather(v) for v in z]                               # V x (B, D)
        pairs = [(0, 1)] + [(i, v) for v in range(2, len(z)) for i in (0, 1)]
        t = self.config.temperature
        return sum(losses.nt_xent(z[i], z[v], t) for i, v in pairs) * (1.0 / len(pairs)), {}


def build(data, encoder=None, feature_dim=None, **overrides):
    """SimCLR for an image ``Dataset``; ``overrides`` set fields of ``SimCLRConfig``;
    ``encoder``: any ``nn.Module`` mapping images to (B, feature_dim) (see ``encoder_args``)."""
    return SimCLR(data.image_shape, SimCLRConfig(**overrides),
                  **encoder_args(encoder, feature_dim))
