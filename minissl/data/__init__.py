"""Data sets and mini-batching. Nothing here downloads anything, ever.

Image data sets (a :class:`Dataset`: float32 ``(N, C, H, W)`` images in [0, 1], int64 labels,
a train/test split, class names):

- ``digits()``: scikit-learn's bundled 8x8 handwritten digits (needs scikit-learn).
- ``shapes()``: ten procedural figure classes, RGB, any size >= 8 (needs nothing).
- ``mnist(root)``, ``fashion_mnist(root)``, ``cifar10(root)``: the standard files, read from a
  local folder (``$MINISSL_DATA`` or ``~/.minissl/data``; see :mod:`minissl.data.files`).

Video: ``moving_shapes()`` is a :class:`VideoDataset` (float32 ``(N, C, T, H, W)`` clips) of a
figure moving in one of eight directions, labelled by the direction (needs nothing).

Sequence data: ``text(path)`` is a character-level :class:`TextCorpus` (default: Python's
standard-library sources); ``ar()`` is an :class:`ARSeries` of a known AR(p) process.

Audio: ``audio()`` is an :class:`AudioDataset` of ten procedural classes of sounds (labelled
(N, L) waveforms at 8 kHz, a train/test split; see :mod:`minissl.data.audio`).

``load(name, **kwargs)`` calls the loader registered under ``name`` in ``DATASETS``.
``batches`` and :class:`DataLoader` cut an epoch into seeded, resumable mini-batches.

Your own data: ``from_path(path, image_size=32)`` reads a folder of images, an ``.npy``/``.npz``
file, a ``.txt`` file or folder, or a folder of WAV files (class subfolders = labels; see :mod:`minissl.data.user`).
"""
from .audio import SOUND_NAMES, AudioDataset, audio, log_spectrogram, render_sounds
from .corpus import TextCorpus, stdlib_files, text
from .dataset import Dataset, default_root, per_class_subset, stratified_split
from .files import cifar10, fashion_mnist, mnist, read_cifar_bin, read_cifar_pickle, read_idx
from .images import SHAPE_NAMES, digits, render_shapes, shapes
from .loader import DataLoader, batches, epoch_order
from .series import ARSeries, ar, companion_matrix, is_stationary
from .user import FileDataset, Series, from_path
from .video import DIRECTION_NAMES, VideoDataset, moving_shapes

# name -> loader. Image loaders return a Dataset, "moving_shapes" a VideoDataset, "text" a
# TextCorpus, "ar" an ARSeries, "audio" an AudioDataset.
DATASETS = {
    "digits": digits,
    "shapes": shapes,
    "mnist": mnist,
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
    "moving_shapes": moving_shapes,
    "text": text,
    "ar": ar,
    "audio": audio,
}


def load(name, **kwargs):
    """The data set registered as ``name`` in ``DATASETS``, built with ``kwargs``."""
    try:
        loader = DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}") \
            from None
    return loader(**kwargs)


__all__ = [
    "Dataset", "VideoDataset", "TextCorpus", "ARSeries", "AudioDataset", "DATASETS", "load",
    "digits", "shapes", "mnist", "fashion_mnist", "cifar10", "moving_shapes", "text", "ar",
    "audio", "batches", "epoch_order", "DataLoader",
    "stratified_split", "per_class_subset", "default_root",
    "read_idx", "read_cifar_bin", "read_cifar_pickle", "render_shapes", "SHAPE_NAMES",
    "stdlib_files", "companion_matrix", "is_stationary", "render_sounds", "SOUND_NAMES",
    "log_spectrogram", "from_path", "FileDataset", "Series", "DIRECTION_NAMES",
]
