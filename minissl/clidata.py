"""The data side of the command line: ``--data NAME|PATH`` and ``--data-root``, the held-out
loss that ``eval`` reports for text and series, and the arrays ``embed`` writes.

``--data`` is a registered data set (``minissl list``) or a path (``minissl.data.user``: a
folder of images, an ``.npy``/``.npz`` file, text, a folder of WAV files). A name wins over a
file of the same name in the working folder; write ``./NAME`` for the file.
"""
import os

import numpy as np

# The registered data sets read from local files, with the folder each looks in (under the
# root: --data-root, else $MINISSL_DATA, else ~/.minissl/data).
FILE_DATASETS = {
    "mnist": "mnist/ (or MNIST/raw/): the four IDX files, gzipped or not",
    "fashion_mnist": "fashion-mnist/ (or FashionMNIST/raw/): the four IDX files",
    "cifar10": "cifar-10-batches-bin/ or cifar-10-batches-py/ (also under cifar10/)",
}
LABELLED_KINDS = ("images", "audio", "video")   # kinds with labelled train and test splits


class DataError(ValueError):
    """Data the command cannot use: one line for the user."""


def is_path(name):
    from . import data
    return name not in data.DATASETS


def load(name, kind=None, method="this method", root=None, image_size=32):
    """The data ``--data name`` means, checked to be of ``kind`` ("images", "audio", "video",
    "text", "series"). A folder of WAV files is read as clips for "audio", as series otherwise."""
    from . import data, methods
    from .data import user
    if not is_path(name):
        kwargs = {"root": root} if root is not None and name in FILE_DATASETS else {}
        try:
            d = data.load(name, **kwargs)
        except ImportError as e:
            raise DataError(f"data set {name!r} needs a package: {e}") from None
        except FileNotFoundError as e:
            raise DataError(str(e)) from None
    elif not os.path.exists(os.path.expanduser(name)):
        raise DataError(f"--data {name}: not a data set of `minissl list` "
                        f"({', '.join(sorted(data.DATASETS))}) nor an existing file or folder")
    else:
        try:
            d = user.from_path(name, image_size=image_size,
                               audio="clips" if kind == "audio" else "series")
        except ImportError as e:
            raise DataError(str(e)) from None
    got = kind_of(d)
    if kind is not None and got != kind:
        takers = [m for m in methods.METHODS if methods.data_kind(m) == got]
        audio = (" (WAV audio: series of samples for the series methods, clips for the "
                 "audio methods)" if is_path(name) and user.kind_of_path(name) == "audio"
                 else "")
        raise DataError(f"{method} trains on {kind}, but {name!r} is {got}{audio}; the methods "
                        f"for {got}: {', '.join(takers) or 'none'}")
    return d


def kind_of(d):
    """The kind of data a loaded data object is: "images", "audio", "video", "text" or
    "series"."""
    from . import data
    return ("images" if isinstance(d, data.Dataset) else "audio"
            if isinstance(d, data.AudioDataset) else "video"
            if isinstance(d, data.VideoDataset) else "text"
            if isinstance(d, data.TextCorpus) else "series")


def is_labelled(kind):
    """Whether data of ``kind`` carries class labels (a probe or kNN can score it)."""
    return kind in LABELLED_KINDS


def describe_datasets():
    """The lines of ``minissl list`` about data: each set, and where the file-based ones look."""
    from . import data
    from .data import default_root
    lines = []
    for name in sorted(data.DATASETS):
        where = FILE_DATASETS.get(name)
        lines.append(f"  {name:13s} " + (f"needs files: {where}" if where else "built in"))
    lines.append(f"  files are looked for under --data-root DIR, else $MINISSL_DATA, else "
                 f"~/.minissl/data (now: {default_root()})")
    lines.append("  --data PATH: a folder of PNG/JPEG images (class subfolders = labels), a "
                 ".npy/.npz file, a .txt file or folder, a folder of .wav files (class subfolders = "
                 "labels)")
    return lines


def _heldout(method, d):
    """The held-out examples of text, series or audio data, as ``training_step`` takes them."""
    if method.data_kind == "text":
        import dataclasses
        return method.training_data(dataclasses.replace(d, train_ids=d.val_ids))
    if method.data_kind == "audio":
        return d.test_x
    test = getattr(d, "test_series", None)
    if test is None:   # the synthetic AR series: its last fifth
        test = d.series[len(d.series) - max(1, len(d.series) // 5):]
    return test


def heldout_loss(method, d, seed=0, batch_size=256):
    """Mean pretext loss over the held-out split (no gradient, eval mode): the one number a
    text or series model can be judged by without labels."""
    from .autograd import no_grad
    x = _heldout(method, d)
    if len(x) == 0:
        raise DataError(f"eval: the held-out split of {method.name}'s data is empty")
    rng = np.random.default_rng(seed)
    was = method.training
    method.eval()
    total, n = 0.0, 0
    with no_grad():
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size]
            total += method.training_step(batch, rng)[0].item() * len(batch)
            n += len(batch)
    method.train(was)
    return total / n, n


KNN_BANK, KNN_QUERIES = 5000, 1000   # a monitor costs a fraction of an epoch, not an eval


def knn_monitor(method, d, k=20):
    """The online monitor of ``--knn-every``: accuracy of a weighted cosine kNN (k = 20, as
    the InstDisc / MoCo monitors) classifying the held-out test split by the training split's
    features and labels; the first 5000 training and 1000 test images at most."""
    from .evaluate import knn_classify
    tr = method.features(d.train_x[:KNN_BANK])
    te = method.features(d.test_x[:KNN_QUERIES])
    return knn_classify(tr, d.train_y[:KNN_BANK], te, d.test_y[:KNN_QUERIES],
                        k=min(k, len(tr)))


def embed_arrays(method, d):
    """What ``embed`` writes: features of both splits, labels, and for files the file names."""
    if is_labelled(method.data_kind):
        out = {"train_features": method.features(d.train_x), "train_labels": d.train_y,
               "test_features": method.features(d.test_x), "test_labels": d.test_y}
    elif method.data_kind == "text":   # windows of block_size characters of each split
        out = {"train_features": method.features(_windows(method, d.train_ids)),
               "test_features": method.features(_windows(method, d.val_ids))}
    else:
        out = {"train_features": method.features(d.series),
               "test_features": method.features(_heldout(method, d))}
    for split in ("train", "test"):
        files = getattr(d, f"{split}_files", ())
        if len(files):
            out[f"{split}_files"] = np.asarray(files, dtype=str)
    return {k: (v.astype(np.float32) if k.endswith("features") else
                v.astype(np.int64) if k.endswith("labels") else v) for k, v in out.items()}


def _windows(method, ids):
    from .methods.autoregressive import text_windows
    return text_windows(ids, method.config.block_size)
