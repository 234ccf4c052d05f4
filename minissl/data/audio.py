"""Labelled audio clips: a procedural data set that needs nothing, and the clip container.

``audio()`` synthesises ten classes of short sounds, each a family of signals a listener (and
a spectrogram) tells apart at once but a linear model of the raw samples cannot: every clip
has a random onset, length, speed, loudness, starting phase and base pitch, and sits in white
noise at a random signal-to-noise ratio, so no class has a fixed waveform. The classes:

=================  ==========================================================================
steady tone        a sine at a fixed pitch f0
rising chirp       a sine whose pitch glides up an octave (linear in log frequency)
falling chirp      the same gliding down
harmonic stack     f0 and its harmonics 2..6 at amplitudes 1/k (a buzzy, sawtooth-like tone)
tremolo            a sine with its amplitude modulated at 12-30 Hz (AM)
vibrato            a sine with its frequency modulated by +-8 % at 8-20 Hz (FM)
noise burst        band-pass noise (white noise through a random band of one octave)
click train        a train of short decaying clicks at 20-60 per second
two-tone           two alternating pitches a fifth apart, switching 8-16 times per second
rise-fall          a pitch contour that goes up an octave and back down (an arch)
=================  ==========================================================================

``AudioDataset`` holds waveforms (N, L) float32 in [-1, 1] with labels, split into train and
test, and its sample rate; ``minissl.data.user.wav_clips`` reads one from a folder of WAV files
(class subfolders = labels).
"""
from dataclasses import dataclass, field

import numpy as np

from .dataset import check_splits, stratified_split

SOUND_NAMES = ["steady tone", "rising chirp", "falling chirp", "harmonic stack", "tremolo",
               "vibrato", "noise burst", "click train", "two-tone", "rise-fall"]


@dataclass(frozen=True, eq=False, repr=False)
class AudioDataset:
    """Labelled mono clips of one length and one sample rate, split into train and test."""

    name: str                 # registry name ("audio") or the folder the clips came from
    train_x: np.ndarray       # (N_train, L) float32 waveforms in [-1, 1]
    train_y: np.ndarray       # (N_train,) int64 class indices in [0, num_classes)
    test_x: np.ndarray        # (N_test, L) float32, same L
    test_y: np.ndarray        # (N_test,) int64
    num_classes: int
    class_names: list = field(default_factory=list)
    sample_rate: int = 8000   # samples per second, for writing WAV files and for plots
    train_files: tuple = ()   # the file of each clip, when read from files
    test_files: tuple = ()
    labelled: bool = True     # False: a folder without class subfolders (labels all 0)

    def __post_init__(self):
        where = f"AudioDataset {self.name!r}"
        check_splits(self, where, "(N, L)")
        if self.train_x.shape[1] != self.test_x.shape[1]:
            raise ValueError(f"{where}: train clips of {self.train_x.shape[1]} samples and test "
                             f"clips of {self.test_x.shape[1]} differ in length")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{where}: {len(self.class_names)} class names for "
                             f"{self.num_classes} classes")
        if self.sample_rate < 1:
            raise ValueError(f"{where}: sample_rate must be positive, got {self.sample_rate}")

    @property
    def clip_length(self):
        """L, the samples of one clip."""
        return int(self.train_x.shape[1])

    def __repr__(self):
        return (f"AudioDataset(name={self.name!r}, train={len(self.train_x)}, "
                f"test={len(self.test_x)}, clip_length={self.clip_length}, "
                f"sample_rate={self.sample_rate}, num_classes={self.num_classes})")


# ------------------------------------------------------------------------------ synthesis
#
# Each sound is written as a phase function: a sine of phase 2 pi * integral of the pitch f(t).
# Sums over time are cumulative sums of f / rate, which is exact for a piecewise-constant pitch
# and keeps every contour continuous (no clicks where the pitch changes).

def _sine_of(freq, rate, phase0):
    """sin(phase0 + 2 pi sum_{s<=t} f(s) / rate) for pitches ``freq`` (n, T) in Hz."""
    return np.sin(phase0 + 2 * np.pi * np.cumsum(freq, axis=1) / rate)


def _band_noise(rng, n, T, rate, lo, hi):
    """White noise filtered to the band [lo, hi] Hz (per row) in the frequency domain."""
    spec = np.fft.rfft(rng.standard_normal((n, T)), axis=1)
    f = np.fft.rfftfreq(T, 1.0 / rate)[None]
    spec *= (f >= lo) & (f <= hi)
    out = np.fft.irfft(spec, n=T, axis=1)
    return out / (np.abs(out).max(axis=1, keepdims=True) + 1e-12)


def _sound(label, rng, n, T, rate, speed):
    """``n`` clean sounds (n, T) of class ``label``, peak about 1, filling the whole T samples
    (the caller places them in time). ``speed`` (n, 1) scales every rate of change."""
    t = np.arange(T)[None] / rate                                   # (1, T) seconds
    u = t / (T / rate)                                              # (1, T) 0 -> 1 over the sound
    f0 = 200.0 * 2.0 ** rng.uniform(0, 2, (n, 1))                   # 200 - 800 Hz base pitch
    phase0 = rng.uniform(0, 2 * np.pi, (n, 1))
    name = SOUND_NAMES[label]
    if name == "steady tone":
        return _sine_of(np.broadcast_to(f0, (n, T)), rate, phase0)
    if name in ("rising chirp", "falling chirp"):
        octave = u if name == "rising chirp" else 1.0 - u
        return _sine_of(f0 * 2.0 ** octave, rate, phase0)
    if name == "harmonic stack":
        # Harmonics 1..6 at 1/k, those at or above Nyquist left out (they would alias).
        x = sum(np.sin(k * (phase0 + 2 * np.pi * f0 * t)) / k * (k * f0 < rate / 2)
                for k in range(1, 7))
        return x / 2.45                                             # sum 1/k over k <= 6
    if name == "tremolo":
        fm = rng.uniform(12, 30, (n, 1)) * speed
        env = 0.5 * (1 + np.sin(2 * np.pi * fm * t + rng.uniform(0, 2 * np.pi, (n, 1))))
        return env * _sine_of(np.broadcast_to(f0, (n, T)), rate, phase0)
    if name == "vibrato":
        fm = rng.uniform(8, 20, (n, 1)) * speed
        return _sine_of(f0 * (1 + 0.08 * np.sin(2 * np.pi * fm * t)), rate, phase0)
    if name == "noise burst":
        lo = f0 * 1.5
        return np.concatenate([_band_noise(rng, 1, T, rate, lo[i, 0], 2 * lo[i, 0])
                               for i in range(n)])
    if name == "click train":
        per_second = rng.uniform(20, 60, (n, 1)) * speed
        since = np.mod(t * per_second + rng.uniform(0, 1, (n, 1)), 1.0) / per_second  # s
        return np.exp(-since * 800.0) * np.sin(2 * np.pi * 2 * f0 * since)
    if name == "two-tone":
        switches = rng.uniform(8, 16, (n, 1)) * speed
        high = np.mod(np.floor(t * switches + rng.uniform(0, 1, (n, 1))), 2.0)
        return _sine_of(f0 * 1.5 ** high, rate, phase0)
    if name == "rise-fall":
        return _sine_of(f0 * 2.0 ** (1.0 - np.abs(2 * u - 1)), rate, phase0)
    raise ValueError(f"audio: no sound class {label}")


def render_sounds(labels, rng, clip_length=2048, sample_rate=8000, snr_db=(5.0, 30.0)):
    """Clips (N, clip_length) float32 in [-1, 1] of the classes ``labels`` (N,).

    Each sound lasts 40-90 % of the clip at a random onset, is faded in and out over 5 ms,
    scaled to a peak of 0.3-0.9, and white noise is added at a signal-to-noise ratio drawn
    uniformly in ``snr_db`` (dB, relative to the sound's power while it sounds).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n, T = len(labels), int(clip_length)
    x = np.zeros((n, T))
    length = np.maximum((rng.uniform(0.4, 0.9, n) * T).astype(int), 8)
    onset = (rng.uniform(0, 1, n) * (T - length + 1)).astype(int)
    speed = rng.uniform(0.7, 1.4, (n, 1))
    peak = rng.uniform(0.3, 0.9, n)
    snr = rng.uniform(*snr_db, n)
    fade = max(1, int(0.005 * sample_rate))
    for c in np.unique(labels):
        for i in np.flatnonzero(labels == c):
            s = _sound(int(c), rng, 1, length[i], sample_rate, speed[i:i + 1])[0]
            ramp = np.minimum(1.0, np.minimum(np.arange(length[i]) + 1,
                                              length[i] - np.arange(length[i])) / fade)
            s = s * ramp
            s = s * peak[i] / (np.abs(s).max() + 1e-12)
            power = np.mean(s ** 2)
            x[i, onset[i]:onset[i] + length[i]] = s
            x[i] += rng.standard_normal(T) * np.sqrt(power / 10 ** (snr[i] / 10))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def audio(n_per_class=100, clip_length=2048, sample_rate=8000, test_fraction=0.2, seed=0):
    """The procedural sound classes (module docstring) as an :class:`AudioDataset`.

    ``n_per_class`` clips of each of the 10 classes, ``clip_length`` samples at
    ``sample_rate`` Hz (default 2048 at 8 kHz: 0.256 s), a seeded stratified split; the same
    seed gives the same clips on every machine.
    """
    if n_per_class < 2 or clip_length < 64 or sample_rate < 5000:
        # The highest frequency drawn is 2.4 kHz (a noise band): below 4.8 kHz it would alias.
        raise ValueError(f"audio: need n_per_class >= 2, clip_length >= 64 and sample_rate >= "
                         f"5000, got {n_per_class}, {clip_length}, {sample_rate}")
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(SOUND_NAMES)), int(n_per_class))
    x = render_sounds(y, rng, clip_length, sample_rate)
    tr, te = stratified_split(y, test_fraction, seed)
    return AudioDataset("audio", x[tr], y[tr], x[te], y[te], len(SOUND_NAMES),
                        list(SOUND_NAMES), int(sample_rate))


def log_spectrogram(x, n_fft=256, hop=128, eps=1e-6):
    """log(eps + |STFT|^2) of clips ``x`` (N, L): (N, frames, n_fft // 2 + 1) float32, Hann
    window, frames starting every ``hop`` samples (no padding: frames = 1 + (L - n_fft) //
    hop). The classic hand-made audio feature, and the baseline the learned ones must beat."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < n_fft or hop < 1:
        raise ValueError(f"log_spectrogram: expected clips (N, L) with L >= n_fft = {n_fft} "
                         f"and hop >= 1, got shape {x.shape}, hop {hop}")
    starts = np.arange(0, x.shape[1] - n_fft + 1, hop)
    frames = x[:, starts[:, None] + np.arange(n_fft)[None]]           # (N, F, n_fft)
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)) ** 2
    return np.log(eps + power).astype(np.float32)
