"""MoCo: Momentum Contrast, instance discrimination against a queue of past keys.

He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020 (arXiv:1911.05722), with the MLP head and temperature 0.2 of MoCo v2 (Chen,
Fan, Girshick & He 2020, arXiv:2003.04297); official code facebookresearch/moco (builder.py:
momentum update of the key encoder before the keys are computed, keys under no_grad,
``_dequeue_and_enqueue`` after the logits, queue initialised with normalised noise).

The query encoder f_q is trained by InfoNCE: the query must pick its key (the same image under
another augmentation, from the key encoder f_k) among the K keys of previous batches kept in a
queue. f_k is an exponential moving average of f_q (no gradient), so the queued keys stay
consistent while f_q moves. Shuffled BN (the paper's multi-GPU trick against BN leakage) does
not apply on one device: each view is normalised with its own batch statistics here. Under
data-parallel training (``minissl.distributed``) the key encoder does use it: per-rank
BatchNorm over a shared permutation of the global key batch (``shuffled_forward``).
"""
from dataclasses import dataclass

import numpy as np

from .. import augment, distributed as dist, losses, nn
from .. import functional as F
from ..autograd import no_grad
from ..backend import get_array_module
from .base import SSLMethod, default_augmentation, default_encoder, ema_update, frozen_copy


@dataclass
class MoCoConfig:
    queue_size: int = 1024     # K, number of negative keys kept (paper: 65536)
    momentum: float = 0.99     # m of the key encoder's EMA (paper: 0.999, for ~10^5+ steps)
    temperature: float = 0.2   # tau of InfoNCE (MoCo v2: 0.2; v1: 0.07)
    proj_hidden: int = 256     # MLP head hidden width (v2: 2048)
    proj_dim: int = 64         # key/query width (paper: 128)


class MoCo(SSLMethod):
    name = "moco"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None, rng=None):
        super().__init__()
        c = self.config = config or MoCoConfig()
        if encoder is None:
            encoder, feature_dim = default_encoder(image_shape)
        self.encoder = encoder                                            # f_q backbone
        self.projector = nn.MLP((feature_dim, c.proj_hidden, c.proj_dim), batch_norm=False)
        self.key_encoder = frozen_copy(self.encoder)                      # f_k (EMA)
        self.key_projector = frozen_copy(self.projector)
        rng = rng or nn.default_generator()
        q = rng.standard_normal((c.queue_size, c.proj_dim)).astype(np.float32)
        self.register_buffer("queue", q / np.linalg.norm(q, axis=1, keepdims=True))  # (K, D)
        self.register_buffer("queue_ptr", np.zeros(1, dtype=np.int64))
        self.transform = transform or default_augmentation(image_shape)
        self._keys = None   # keys of the current step, enqueued once backward is done

    def training_step(self, x, rng):
        v1, v2 = augment.two_views(x, self.transform, rng)
        q = self.projector(self.encoder(self.as_input(dist.shard(v1))))  # (B, D) queries
        with no_grad():
            ema_update(self.key_encoder, self.encoder, self.config.momentum)
            ema_update(self.key_projector, self.projector, self.config.momentum)
            k = F.normalize(self._key_embeddings(v2, rng), dim=1)
        loss = losses.info_nce(q, dist.shard(k), self.queue, temperature=self.config.temperature)
        self._keys = k.data                                               # (B, D)
        return loss, {}

    # Data-parallel: the key encoder keeps per-rank BatchNorm and sees the key batch shuffled
    # across ranks (the paper's shuffle BN); ``key_bn_groups = k`` makes one process compute
    # what k ranks compute (the tests' reference). Queries use SyncBatchNorm.
    local_batchnorm = ("key_encoder", "key_projector")
    key_bn_groups = None

    def _key_embeddings(self, v2, rng):
        """Keys of the whole global key batch v2 (B, D), identical on every rank."""
        key = lambda v: self.key_projector(self.key_encoder(self.as_input(v)))  # noqa: E731
        if dist.world_size() == 1 and self.key_bn_groups is None:
            return key(v2)
        return dist.shuffled_forward(key, v2, rng, self.key_bn_groups)

    def on_step_end(self, step, total_steps):
        # After backward: the loss's graph read the queue, so it must not change before.
        if self._keys is not None:
            self.enqueue(self._keys)
            self._keys = None

    @no_grad()
    def enqueue(self, keys):
        """Overwrite the oldest B keys of the ring buffer with ``keys`` (B, D); wraps around."""
        xp = get_array_module(self.queue.data)
        K = self.queue.shape[0]
        ptr = int(self.queue_ptr.data[0])
        b = min(len(keys), K)
        idx = (ptr + xp.arange(b)) % K
        self.queue.data[idx] = keys[:b].astype(self.queue.dtype, copy=False)
        self.queue_ptr.data[0] = (ptr + b) % K


def build(data, **overrides):
    return MoCo(data.image_shape, MoCoConfig(**overrides))
