"""The denoising autoencoder on raw audio: add noise to a waveform, learn to take it away.

Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust Features with
Denoising Autoencoders", ICML 2008 (and JMLR 2010, section 4.2, for additive Gaussian
corruption): corrupt x into x~ and train g(f(x~)) to give back the clean x. On waveforms the
natural network is fully convolutional, as in Rethage, Pons & Serra, "A Wavenet for Speech
Denoising", ICASSP 2018 (official code: drethage/speech-denoising-wavenet): a stack of
non-causal dilated convolutions with residual connections that maps the noisy waveform to the
clean one sample for sample, trained with a regression loss. Here:

    x~ = x + n,   n ~ N(0, sigma^2 I),  sigma^2 = mean(x^2) / 10^(snr / 10),
    snr ~ U(min_snr_db, max_snr_db) drawn per clip
    h  = f(x~)   (B, C, L): Conv1d(1, C, 9) - ReLU, then per dilation d in ``dilations``
                 h <- h + ReLU(Conv1d(C, C, 3, dilation d, "same" padding)(h))
    x^ = x~ - g(h)  g: Conv1d(C, 1, 1), a linear read-out of the noise (audio is signed: no
                 sigmoid); subtracting it from the input is the residual learning of DnCNN
                 (Zhang et al., IEEE TIP 2017); g starts at zero, so an untrained model is
                 the identity
    L  = mean (x^ - x)^2   (the Gaussian decoder of the JMLR paper; Rethage et al. use L1)

Differences from the papers: Vincent et al.'s autoencoders are one-hidden-layer MLPs on image
patches with tied weights; Rethage et al. condition on a speaker id, predict a target field
of many samples per pass, subtract the predicted noise too (a two-term loss) and train on
speech with recorded noise. This is the plain DAE with their network's shape, on the
procedural sound classes with white noise. Features (for the probe) are the last residual
activations f(x) of the *clean* clip averaged over time, as ``AudioMethod`` does for all.

The figure is the signal-to-noise ratio on the test split (``snr_in_out``): the SNR of the
noisy clips and of their denoised versions, 10 log10(sum x^2 / sum (x - y)^2) per clip.
"""
from dataclasses import dataclass

import numpy as np

from .. import distributed as dist, nn
from .. import functional as F
from ..backend import get_array_module
from .base import AudioMethod

__all__ = ["DenoisingAudioConfig", "DenoisingAudioAutoencoder", "add_noise", "snr_db",
           "build"]


@dataclass
class DenoisingAudioConfig:
    channels: int = 32            # C, the width of every convolution
    dilations: tuple = (1, 2, 4, 8, 16, 32)   # one residual block each: a receptive field of
                                  # 1 + 8 + 2 * 63 = 135 samples (17 ms at 8 kHz)
    min_snr_db: float = 0.0       # the corruption's SNR is drawn per clip in [min, max] dB
    max_snr_db: float = 10.0      # (Rethage et al. train on 2.5 - 17.5 dB noisy speech)


def add_noise(x, snr, rng):
    """x + white Gaussian noise of power mean(x^2) / 10^(snr / 10) per clip: clips (B, L) on
    any device, ``snr`` (B,) dB; the noise is drawn on the host from ``rng``."""
    xp = get_array_module(x)
    power = (x.astype(np.float64) ** 2).mean(axis=1, keepdims=True)         # (B, 1)
    std = xp.sqrt(power / 10.0 ** (xp.asarray(snr, dtype=np.float64).reshape(-1, 1) / 10.0))
    return (x + xp.asarray(rng.standard_normal(x.shape)) * std).astype(x.dtype)


def snr_db(clean, other):
    """10 log10(sum clean^2 / sum (clean - other)^2) per clip (N,), float64 dB."""
    clean, other = np.asarray(clean, np.float64), np.asarray(other, np.float64)
    signal = np.sum(clean ** 2, axis=1)
    error = np.maximum(np.sum((clean - other) ** 2, axis=1), 1e-20)
    return 10.0 * np.log10(np.maximum(signal, 1e-20) / error)


class DenoisingAudioAutoencoder(AudioMethod):
    """Denoising autoencoder of waveforms (see the module docstring)."""

    name = "denoising_audio"

    def __init__(self, config=None):
        super().__init__()
        self.config = c = config or DenoisingAudioConfig()
        if c.channels < 1 or not c.dilations or min(c.dilations) < 1 \
                or not c.min_snr_db <= c.max_snr_db:
            raise ValueError(f"DenoisingAudioAutoencoder: need channels >= 1, dilations >= 1 "
                             f"and min_snr_db <= max_snr_db, got {c}")
        C = int(c.channels)
        self.stem = nn.Conv1d(1, C, 9, padding=4)                  # (B, 1, L) -> (B, C, L)
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv1d(C, C, 3, padding=int(d), dilation=int(d)), nn.ReLU())
            for d in c.dilations])
        self.out = nn.Conv1d(C, 1, 1)                              # (B, C, L) -> (B, 1, L)
        self.out.weight.data[...] = 0          # the identity at the start: no noise found yet
        self.out.bias.data[...] = 0

    def encode(self, x):
        h = F.relu(self.stem(self.as_clips(x)))                    # (B, C, L)
        for block in self.blocks:
            h = h + block(h)                                       # residual, same length
        return h

    def forward(self, x):
        """The denoised clips (B, L) of noisy clips x (B, L), a Tensor: x minus the noise the
        network finds in it (residual learning, so that an untrained model is the identity)."""
        noise = self.out(self.encode(x)).reshape(x.shape[0], x.shape[1])     # (B, L)
        return self.as_input(x) - noise

    def corrupt(self, x, rng):
        """x plus white noise at an SNR drawn per clip in [min_snr_db, max_snr_db]."""
        snr = rng.uniform(self.config.min_snr_db, self.config.max_snr_db, len(x))
        return add_noise(x, snr, rng)

    def training_step(self, x, rng):
        self.as_clips(x)                   # checked
        noisy, x = dist.shard(self.corrupt(x, rng), x)             # this rank's rows
        loss = F.mse_loss(self(noisy), self.as_input(x))
        return loss, {}

    def denoise(self, noisy, batch_size=256):
        """Denoised clips (N, L), float32 host array, in eval mode."""
        return self.map_batches(self, noisy, batch_size)

    def snr_in_out(self, x, snr=5.0, seed=0):
        """Mean SNR (dB) of the clips ``x`` (N, L) with noise at ``snr`` dB, and of their
        denoised versions: (snr_in, snr_out). The noise is seeded: the same for every model."""
        noisy = add_noise(np.asarray(x, np.float32), np.full(len(x), float(snr)),
                          np.random.default_rng(seed))
        return float(snr_db(x, noisy).mean()), float(snr_db(x, self.denoise(noisy)).mean())

    def test_metrics(self, data):
        """SNR (dB) of the test clips with noise at 5 dB, and after denoising."""
        snr_in, snr_out = self.snr_in_out(data.test_x)
        return {"snr_in": snr_in, "snr_out": snr_out}

    def save_examples(self, out, data):
        """Test clips, their noisy versions (5 dB) and the denoised ones: a picture."""
        import os

        from ..plots import waveforms
        x = data.test_x[:4]
        noisy = add_noise(x, np.full(len(x), 5.0), np.random.default_rng(0))
        return [waveforms([x, noisy, self.denoise(noisy)],
                          os.path.join(out, "denoised.png"),
                          f"{self.name}: test clips, with noise at 5 dB, denoised",
                          ["clean", "noisy", "denoised"], data.sample_rate)]


def build(data, **overrides):
    """A ``DenoisingAudioAutoencoder`` for an ``AudioDataset``; ``overrides`` set
    ``DenoisingAudioConfig``."""
    return DenoisingAudioAutoencoder(DenoisingAudioConfig(**overrides))
