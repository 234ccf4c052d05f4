"""The labelled image data set container and the seeded, stratified index helpers.

Every image loader in :mod:`minissl.data` returns a :class:`Dataset`: images as float32
``(N, C, H, W)`` in [0, 1] and int64 labels, already split into train and test. The split
helpers here are plain NumPy (no scikit-learn) so that a split is a function of the labels and
a seed only, and reads in a few lines.
"""
import os
from dataclasses import dataclass, field

import numpy as np


def default_root():
    """Where the file-based loaders look for data: ``$MINISSL_DATA``, else ``~/.minissl/data``."""
    root = os.environ.get("MINISSL_DATA")
    if root:
        return os.path.expanduser(root)
    return os.path.join(os.path.expanduser("~"), ".minissl", "data")


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A labelled image data set, split into train and test.

    Frozen: the fields cannot be reassigned (the arrays themselves are ordinary writable
    arrays; the loaders build fresh ones on every call, so mutating them affects nobody else).
    """

    name: str                 # registry name, e.g. "digits"; used in logs and checkpoints
    train_x: np.ndarray       # (N_train, C, H, W) float32 images with values in [0, 1]
    train_y: np.ndarray       # (N_train,) int64 class indices in [0, num_classes)
    test_x: np.ndarray        # (N_test, C, H, W) float32, same C, H, W as train_x
    test_y: np.ndarray        # (N_test,) int64
    num_classes: int          # number of classes (labels need not all occur in a tiny split)
    class_names: list = field(default_factory=list)  # one str per class; CLIP makes captions

    def __post_init__(self):
        where = f"Dataset {self.name!r}"
        check_splits(self, where, "(N, C, H, W)")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"{where}: train images {self.train_x.shape[1:]} and test images "
                             f"{self.test_x.shape[1:]} differ in shape")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{where}: {len(self.class_names)} class names for "
                             f"{self.num_classes} classes")

    @property
    def image_shape(self):
        """(C, H, W) of one image."""
        return tuple(self.train_x.shape[1:])

    def __repr__(self):
        return (f"Dataset(name={self.name!r}, train={len(self.train_x)}, "
                f"test={len(self.test_x)}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes})")


def check_splits(d, where, layout):
    """The checks every labelled data set makes of its fields: ``train_x``/``test_x`` float32
    arrays of ``layout`` (its letters count the dimensions), ``train_y``/``test_y`` int64
    labels in [0, num_classes), one per example."""
    ndim = len(layout.strip("()").split(","))
    for split in ("train", "test"):
        x, y = getattr(d, f"{split}_x"), getattr(d, f"{split}_y")
        if not (isinstance(x, np.ndarray) and x.ndim == ndim and x.dtype == np.float32):
            raise ValueError(f"{where}: {split}_x must be a float32 {layout} array, got "
                             f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
        if not (isinstance(y, np.ndarray) and y.shape == (len(x),) and y.dtype == np.int64):
            raise ValueError(f"{where}: {split}_y must be an int64 array of shape "
                             f"({len(x)},), got {getattr(y, 'dtype', type(y))} "
                             f"{getattr(y, 'shape', '')}")
        if y.size and (y.min() < 0 or y.max() >= d.num_classes):
            raise ValueError(f"{where}: {split}_y has labels outside [0, {d.num_classes})")


def _check_labels(fn, labels):
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{fn}: labels must be a 1-D integer array, got {labels.dtype} "
                         f"{labels.shape}")
    return labels


def stratified_split(labels, test_fraction=0.3, seed=0):
    """Seeded stratified split: ``(train_idx, test_idx)``, sorted int64 index arrays.

    Each class c with n_c members puts ``round(test_fraction * n_c)`` of them, chosen at
    random, in the test set, so both sides keep the class proportions of the whole (up to one
    sample per class). The two index sets are disjoint and together cover ``range(N)``.
    """
    labels = _check_labels("stratified_split", labels)
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"stratified_split: test_fraction must be in [0, 1], got "
                         f"{test_fraction}")
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):  # sorted, so the draws happen in a fixed order
        members = np.flatnonzero(labels == c)
        n_test = int(round(test_fraction * len(members)))
        is_test[rng.choice(members, size=n_test, replace=False)] = True
    return np.flatnonzero(~is_test).astype(np.int64), np.flatnonzero(is_test).astype(np.int64)


def per_class_subset(labels, k, seed=0):
    """Indices of ``k`` random examples of every class (sorted int64), for few-label probes.

    Raises ValueError when a class has fewer than ``k`` examples.
    """
    labels = _check_labels("per_class_subset", labels)
    if k < 0:
        raise ValueError(f"per_class_subset: k must be >= 0, got {k}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            raise ValueError(f"per_class_subset: class {c} has {len(members)} examples, "
                             f"fewer than k={k}")
        chosen.append(rng.choice(members, size=k, replace=False))
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)
