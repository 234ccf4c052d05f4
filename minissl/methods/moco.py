"""MoCo: Momentum Contrast, instance discrimination against a queue of past keys.

He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020 (arXiv:1911.05722), with the MLP head and temperature 0.2 of MoCo v2 (Chen,
Fan, Girshick & He 2020, arXiv:2003.04297); official code facebookresearch/moco (builder.py:
momentum update of the key encoder before the keys are computed, keys under no_grad,
``_dequeue_and_enqueue`` after the logits, queue initialised with normalised noise).

The query encoder f_q is trained by InfoNCE: the query must pick its key (the same image under
another augmentation, from the key encoder f_k) among the K keys of previous batches kept in a
queue. f_k is an exponential moving average of f_q (no gradient), so the queued keys stay
consistent while f_q moves.

Shuffling BN (section 3.3): batch norm statistics computed over the whole batch let a query
find its key through the statistics they share, a shortcut that hurts the representation. The
official code computes BN per GPU and feeds the key encoder a batch shuffled across GPUs
(``_batch_shuffle_ddp``), unshuffling the keys after. On one device the authors split the
batch into simulated GPUs (facebookresearch/moco issue 47, and the single-GPU CIFAR-10 demo:
``SplitBatchNorm`` with 8 splits in both encoders, ``_batch_shuffle_single_gpu`` /
``_batch_unshuffle_single_gpu``; lightly's ``batch_shuffle`` / ``batch_unshuffle`` do the
same). So here: the default encoder's BatchNorms are ``nn.SplitBatchNorm1d`` with
``bn_splits`` slices (evaluation uses the ordinary running statistics), and the key batch is
permuted by a draw from the step's ``rng`` before the key encoder and the keys are put back in
order after it. A custom ``encoder`` is used as given (``nn.convert_split_batchnorm`` makes it
split); ``bn_splits=1`` gives batch-wide statistics (the official "SyncBN" analogue). The
query and key views are two batches through two networks, as in the official ``forward``.

Data-parallel (``minissl.distributed``), one design with the above: the ``bn_splits`` = S
groups are groups of the GLOBAL batch, whatever the number of ranks N, and each rank computes
S/N whole groups (``dist.shard(..., groups=S)``; its BatchNorms become
``SyncSplitBatchNorm``, running statistics averaged over ranks). The key batch is permuted
across ranks by the shared draw, each rank encodes its groups of the shuffled batch, and the
keys are gathered and unshuffled (``dist.shuffled_forward``): the real cross-process shuffle
BN, which with S = N is exactly the official ``_batch_shuffle_ddp`` (one group per GPU), and
N ranks compute exactly what one process computes. S must be a multiple of N (or 1: then one
group spans the ranks, a SyncBatchNorm). The queue gets the keys of all ranks.

Where this differs from the official code (all in docs/faithful.md): the sizes in
``MoCoConfig`` (scaled to the digits), the EMA also copies BN buffers (they never reach the
features), and the loss is asymmetric as in the main repository (the CIFAR demo also offers a
symmetric one).
"""
from dataclasses import dataclass

import numpy as np

from .. import augment, distributed as dist, losses, nn
from .. import functional as F
from ..autograd import no_grad
from .base import (SSLMethod, default_augmentation, default_encoder, ema_update, enqueue,
                   encoder_args, frozen_copy, unit_rows)


@dataclass
class MoCoConfig:
    queue_size: int = 1024     # K, number of negative keys kept (paper: 65536)
    momentum: float = 0.99     # m of the key encoder's EMA (paper: 0.999, for ~10^5+ steps)
    temperature: float = 0.2   # tau of InfoNCE (MoCo v2: 0.2; v1: 0.07)
    proj_hidden: int = 256     # MLP head hidden width (v2: 2048)
    proj_dim: int = 64         # key/query width (paper: 128)
    bn_splits: int = 8         # simulated GPUs of shuffling BN (official CIFAR demo: 8)


class MoCo(SSLMethod):
    name = "moco"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None, rng=None):
        super().__init__()
        c = self.config = config or MoCoConfig()
        if encoder is None:
            encoder, feature_dim = default_encoder(image_shape)
            encoder = nn.convert_split_batchnorm(encoder, c.bn_splits)
        # The batch must split into the encoder's simulated devices (split batch norms).
        self._splits = max((getattr(m, "num_splits", 1) for m in encoder.modules()), default=1)
        self.encoder = encoder                                            # f_q backbone
        self.projector = nn.MLP((feature_dim, c.proj_hidden, c.proj_dim), batch_norm=False)
        self.key_encoder = frozen_copy(self.encoder)                      # f_k (EMA)
        self.key_projector = frozen_copy(self.projector)
        rng = rng or nn.default_generator()
        self.register_buffer("queue", unit_rows(rng, c.queue_size, c.proj_dim))  # (K, D)
        self.register_buffer("queue_ptr", np.zeros(1, dtype=np.int64))
        self.transform = transform or default_augmentation(image_shape)
        self._keys = None   # keys of the current step, enqueued once backward is done

    def training_step(self, x, rng):
        """Draws from ``rng``, in order: the two views (query, key), then the key batch's
        permutation ``rng.permutation(B)``."""
        S = self._splits
        if len(x) % S:
            raise ValueError(f"MoCo: a batch of {len(x)} images does not split into "
                             f"bn_splits={S} simulated devices; use a batch size divisible by "
                             f"{S} or another bn_splits")
        if len(x) < 2 * S:
            raise ValueError(f"MoCo: a batch of {len(x)} images leaves {len(x) // S} image per "
                             f"simulated device (bn_splits={S}), and batch norm needs two; use "
                             f"a batch size of at least {2 * S} or a smaller bn_splits")
        v1, v2 = augment.two_views(x, self.transform, rng)
        # Queries: this rank's bn_splits groups of the global batch (all of it in one process).
        q = self.projector(self.encoder(self.as_input(dist.shard(v1, groups=S))))  # (B, D)
        perm = rng.permutation(len(v2))                                   # shuffling BN
        with no_grad():
            ema_update(self.key_encoder, self.encoder, self.config.momentum)
            ema_update(self.key_projector, self.projector, self.config.momentum)
            key = lambda v: self.key_projector(self.key_encoder(self.as_input(v)))  # noqa: E731
            k = F.normalize(dist.shuffled_forward(key, v2, perm, S), dim=1)  # (B, D) in order
        loss = losses.info_nce(q, dist.shard(k, groups=S), self.queue,
                               temperature=self.config.temperature)
        self._keys = k.data                                               # (B, D)
        return loss, {}

    def on_step_end(self, step, total_steps):
        # After backward: the loss's graph read the queue, so it must not change before.
        if self._keys is not None:
            self.enqueue(self._keys)
            self._keys = None

    @no_grad()
    def enqueue(self, keys):
        """Overwrite the oldest B keys of the ring buffer with ``keys`` (B, D); wraps around."""
        enqueue(self.queue, self.queue_ptr, keys)


def build(data, encoder=None, feature_dim=None, **overrides):
    return MoCo(data.image_shape, MoCoConfig(**overrides), **encoder_args(encoder, feature_dim))
