"""Contrastive predictive coding of raw audio (CPC / wav2vec): predict the future frames' codes.

van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive Coding",
arXiv:1807.03748, 2018 (section 2, audio in section 3.1); Schneider, Baevski, Collobert, Auli,
"wav2vec: Unsupervised Pre-training for Speech Recognition", Interspeech 2019, official code
facebookresearch/fairseq ``fairseq/models/wav2vec/wav2vec.py`` (``ConvFeatureExtractionModel``,
``ConvAggegator``, ``Wav2VecPredictionsModel``), which this follows in its parts:

    z = f(x)     (B, C, T)  feature encoder: strided Conv1d-ChannelNorm-ReLU layers on the raw
                            waveform (B, 1, L); kernels (10, 8, 4), strides (5, 4, 2): one
                            frame per 40 samples (5 ms at 8 kHz; wav2vec and CPC_audio: 5
                            layers, 10 ms at 16 kHz). ChannelNorm normalises each frame over
                            its channels (CPC_audio's default ``normMode="layerNorm"``)
    c = g(z)     (B, C, T)  context network: causal Conv1d(C, C, 3)-ReLU layers with residual
                            connections (wav2vec's aggregator); c_t sees z_1 .. z_t only
    p = W c      (B, T, K, C) one affine map W_k per step k = 1..K (wav2vec's
                            ``project_to_steps``, a ConvTranspose2d of kernel (1, K))
    loss = losses.cpc_loss(p / C, z):  for each k, softmax of the scores p_{b,t,k} . z_{b',t'} / C
                            over every frame of the batch, the positive z_{b,t+k} (InfoNCE, CPC
                            eq. 4); the score is CPC_audio's mean over channels (``score="sum"``:
                            wav2vec's dot product, whose init scores collapse the loss to log(BT)
                            in the first steps at Adam 3e-3; docs/faithful.md)

``training_step`` logs, for each k, the top-1 accuracy of the positive among those candidates
(``top1_k1`` ..), CPC_audio's ``locAcc``.

The features (for the probe) are z averaged over time (``features="encoder"``); CPC and wav2vec
feed c to their downstream models (``features="context"``). Measured on the procedural sounds
(docs/faithful.md): the time-averaged z improves with training (0.315 at init, 0.475 after 400
steps, seed 0), the time-averaged c gets worse (0.350 to 0.260).

Differences: wav2vec samples 10 negatives per anchor from the same sequence and scores them
with a binary cross-entropy (logistic loss, its eq. 1); here every frame of the batch, same
sequence and others, is a negative in a softmax (CPC's InfoNCE; fairseq's ``infonce`` option;
CPC_audio draws 128 of them from the batch). CPC's context network is a GRU and its encoder
has five layers of 512 channels; wav2vec's layers have group normalisation (one group, over
channels and time) and dropout, and a ``log_compression`` and ``skip_connections`` option of
the aggregator; none of those here: three encoder layers with CPC_audio's ChannelNorm
(facebookresearch/CPC_audio ``cpc/model.py``; biased variance here, ``torch.var``'s unbiased
one there) and ``context_layers`` residual causal layers of ``channels`` channels, sized for
8 kHz clips of 0.25 s on one CPU core. ``norm="none"`` is the plain Conv1d-ReLU encoder, whose
scale is free; the probe varies with the seed as much with the norm as without it
(docs/faithful.md has the measurements).
"""
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from ..backend import get_array_module
from .. import distributed as dist, losses, nn
from .base import AudioMethod

__all__ = ["CPCConfig", "CPC", "ChannelNorm", "build"]

KERNELS, STRIDES = (10, 8, 4), (5, 4, 2)       # the encoder: 40 samples per frame


@dataclass
class CPCConfig:
    channels: int = 64            # C, width of every layer (wav2vec: 512)
    context_layers: int = 4       # causal residual Conv1d(C, C, 3) layers (wav2vec: 9)
    prediction_steps: int = 6     # K, future frames predicted (wav2vec: 12; CPC audio: 12)
    norm: str = "channel"         # after each encoder conv: "channel" (CPC_audio) or "none"
    negatives: str = "batch"      # "batch": every frame of the batch; "sequence": the clip's own
    features: str = "encoder"     # what the probe reads, averaged over time: z or "context" c
    score: str = "mean"           # p . z / C (CPC_audio) or "sum", p . z (wav2vec)


class ChannelNorm(nn.Module):
    """Layer normalisation over the channels of each frame of (B, C, T), affine per channel:
    CPC_audio's ``ChannelNorm`` (its encoder's default ``normMode="layerNorm"``)."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class CPC(AudioMethod):
    """CPC / wav2vec on raw waveforms (see the module docstring)."""

    name = "cpc"

    def __init__(self, config=None):
        super().__init__()
        self.config = c = config or CPCConfig()
        if min(c.channels, c.context_layers, c.prediction_steps) < 1:
            raise ValueError(f"CPC: channels, context_layers and prediction_steps must be >= 1, "
                             f"got {c}")
        if c.norm not in ("channel", "none"):
            raise ValueError(f"CPC: norm must be 'channel' or 'none', got {c.norm!r}")
        if c.negatives not in ("batch", "sequence"):
            raise ValueError(f"CPC: negatives must be 'batch' or 'sequence', got "
                             f"{c.negatives!r}")
        if c.score not in ("mean", "sum"):
            raise ValueError(f"CPC: score must be 'mean' or 'sum', got {c.score!r}")
        if c.features not in ("encoder", "context"):
            raise ValueError(f"CPC: features must be 'encoder' or 'context', got "
                             f"{c.features!r}")
        C, K = c.channels, c.prediction_steps
        enc = []
        for i, (k, s) in enumerate(zip(KERNELS, STRIDES)):
            enc += [nn.Conv1d(1 if i == 0 else C, C, k, stride=s)]
            enc += [ChannelNorm(C)] if c.norm == "channel" else []
            enc += [nn.ReLU()]
        self.encoder = nn.Sequential(*enc)                         # (B, 1, L) -> (B, C, T)
        self.context = nn.ModuleList([nn.Conv1d(C, C, 3) for _ in range(c.context_layers)])
        self.predict = nn.Conv1d(C, K * C, 1)                      # W_1 .. W_K, stacked

    def frames(self, length):
        """T, the frames of a clip of ``length`` samples."""
        for k, s in zip(KERNELS, STRIDES):
            length = (length - k) // s + 1
        return length

    def encode_frames(self, x):
        """z (B, C, T) of clips x (B, L)."""
        return self.encoder(self.as_clips(x, min_length=self.min_length()))

    def min_length(self):
        """The shortest clip with K + 1 frames (a future frame for every step)."""
        n = self.config.prediction_steps + 1
        for k, s in zip(KERNELS[::-1], STRIDES[::-1]):             # invert each layer
            n = (n - 1) * s + k
        return n

    def aggregate(self, z):
        """c (B, C, T) of z (B, C, T): causal (left-padded kernel-3) residual layers."""
        c = z
        for conv in self.context:
            c = c + F.relu(conv(F.pad(c, (2, 0))))
        return c

    def encode(self, x):
        """The frames the probe reads: z, or c with ``features="context"``."""
        z = self.encode_frames(x)
        return z if self.config.features == "encoder" else self.aggregate(z)

    def training_step(self, x, rng=None):
        C, K = self.config.channels, self.config.prediction_steps
        z = self.encode_frames(dist.shard(x))                      # (B, C, T), this rank's
        c = self.aggregate(z)                                      # (B, C, T)
        B, _, T = z.shape
        p = self.predict(c).reshape(B, K, C, T).permute(0, 3, 1, 2)   # (B, T, K, C)
        if self.config.score == "mean":        # p . z / C: CPC_audio's ``.mean(dim=3)``
            p = p * (1.0 / C)
        own = z.transpose(1, 2)                                    # (B, T, C)
        if self.config.negatives == "sequence":
            # wav2vec's candidates: the T frames of the anchor's own clip, one clip at a time
            loss = sum(losses.cpc_loss(p[b:b + 1], own[b:b + 1]) for b in range(B)) / B
            hits = sum(top1_hits(p.data[b:b + 1], own.data[b:b + 1]) for b in range(B))
        else:
            # Data-parallel: every rank's frames are candidates, as in one process.
            everyone = dist.all_gather(own)                        # (B N, T, C)
            loss = losses.cpc_loss(p, everyone, offset=dist.rank() * B)
            hits = top1_hits(p.data, everyone.data, offset=dist.rank() * B)
        return loss, {f"top1_k{k}": hits[k - 1] / (B * (T - k)) for k in range(1, K + 1)}


def top1_hits(p, z, offset=0):
    """For each step k, how many anchors (b, t) of ``p`` (B, T, K, C) score their positive
    z[offset + b, t + k] highest among all frames of ``z`` (M, T, C) (arrays): InfoNCE's
    top-1, logged per k. Chance is 1 / (M T)."""
    xp = get_array_module(z)
    B, T, K, C = p.shape
    flat = z.reshape(-1, C)
    hits = []
    for k in range(1, K + 1):
        best = (p[:, :T - k, k - 1] @ flat.T).argmax(axis=-1)     # (B, T - k)
        target = (offset + xp.arange(B))[:, None] * T + xp.arange(k, T)[None]
        hits.append(int((best == target).sum()))
    return np.array(hits)


def build(data, **overrides):
    """A ``CPC`` for an ``AudioDataset``; ``overrides`` set ``CPCConfig``."""
    return CPC(CPCConfig(**overrides))
