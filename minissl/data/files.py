"""MNIST, Fashion-MNIST and CIFAR-10 read from their standard files in a local folder.

minissl never downloads anything. Put the files where these loaders look (``root`` defaults to
``$MINISSL_DATA``, else ``~/.minissl/data``):

- MNIST: ``root/mnist/`` (or ``root/MNIST/raw/``, torchvision's layout, or ``root`` itself)
  holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
  and ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``), as distributed by
  http://yann.lecun.com/exdb/mnist/ (mirrors: the torchvision and Kaggle copies).
- Fashion-MNIST: the same four names in ``root/fashion-mnist/`` (or ``root/FashionMNIST/raw/``).
- CIFAR-10: ``root/cifar-10-batches-bin/`` (the "binary version": ``data_batch_1.bin`` ..
  ``data_batch_5.bin``, ``test_batch.bin``) or ``root/cifar-10-batches-py/`` (the "python
  version": ``data_batch_1`` .. ``data_batch_5``, ``test_batch``), from
  https://www.cs.toronto.edu/~kriz/cifar.html; ``root/cifar10/`` may hold either folder.
"""
import gzip
import math
import os
import pickle
import zlib

import numpy as np

from .dataset import Dataset, default_root

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]

FASHION_MNIST_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                       "sneaker", "bag", "ankle boot"]

MNIST_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


# ----------------------------------------------------------------------------------- IDX files

# Deflate cannot expand one byte into more than 1032: a .gz whose IDX header promises more
# than this times the file's size is lying, and is refused before anything is inflated.
_MAX_GZIP_RATIO = 1032


def read_idx(path):
    """Read an IDX file (MNIST's format), gzipped or not, into a uint8 ndarray.

    Format (big-endian): two zero bytes, a type code (0x08 = unsigned byte, the only one
    MNIST uses), the number of dimensions d, then d uint32 sizes, then the data in C order.
    The header is read first and bounds everything after it: no more than the promised bytes
    are ever inflated, and a promise the file cannot hold is refused before reading data.
    A truncated or corrupt file raises ValueError naming it.
    """
    path = os.fspath(path)
    gz = path.endswith(".gz")
    on_disk = os.path.getsize(path)
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise ValueError(f"read_idx: {path} is not an IDX file (bad magic number)")
            if head[2] != 0x08:
                raise ValueError(f"read_idx: {path} has element type 0x{head[2]:02x}; only "
                                 f"unsigned bytes (0x08) are supported")
            dims = f.read(4 * head[3])
            if len(dims) < 4 * head[3]:
                raise ValueError(f"read_idx: {path} is truncated (header)")
            shape = tuple(int(s) for s in np.frombuffer(dims, dtype=">u4"))
            size = math.prod(shape)
            room = _MAX_GZIP_RATIO * on_disk if gz else on_disk - 4 - len(dims)
            if size > room or (not gz and size != room):
                raise ValueError(f"read_idx: {path} holds {on_disk} bytes but its header "
                                 f"says {shape} = {size} data bytes")
            out = np.empty(size, dtype=np.uint8)
            got = 0
            while got < size:
                n = f.readinto(memoryview(out)[got:])
                if not n:
                    raise ValueError(f"read_idx: {path} is truncated: {got} of the {size} "
                                     f"data bytes its header {shape} promises")
                got += n
            if f.read(1):
                raise ValueError(f"read_idx: {path} holds more data than its header {shape} "
                                 f"says")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"read_idx: {path} is corrupt or truncated "
                         f"({type(e).__name__}: {e})") from None
    return out.reshape(shape)


def _find_idx(folder, stem):
    # The official names use "-idx3-ubyte"; some mirrors write "train-images.idx3-ubyte".
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            path = os.path.join(folder, name + suffix)
            if os.path.isfile(path):
                return path
    return None


_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_dataset(fn, name, root, subfolders, class_names):
    root = default_root() if root is None else os.path.expanduser(str(root))
    candidates = [os.path.join(root, *sub) for sub in subfolders] + [root]
    folder = next((d for d in candidates if _find_idx(d, _IDX_STEMS[0])), None)
    if folder is None:
        raise FileNotFoundError(
            f"{fn}: no {_IDX_STEMS[0]}[.gz] found in any of {candidates}. minissl does not "
            f"download data: put the four IDX files ({', '.join(_IDX_STEMS)}, gzipped or not) "
            f"in {candidates[0]} or pass root=DIR (on the command line: --data-root DIR), "
            f"or set MINISSL_DATA")
    arrays = []
    for stem in _IDX_STEMS:
        path = _find_idx(folder, stem)
        if path is None:
            raise FileNotFoundError(f"{fn}: {stem}[.gz] is missing from {folder}")
        arrays.append(read_idx(path))
    out = []
    for images, labels, split in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{fn}: {split} images {images.shape} and labels {labels.shape} "
                             f"in {folder} do not match")
        out += [(images.astype(np.float32) / np.float32(255.0))[:, None],
                labels.astype(np.int64)]
    return Dataset(name, *out, num_classes=10, class_names=list(class_names))


def mnist(root=None):
    """MNIST (LeCun et al. 1998) from its IDX files: 60000/10000 images ``(N, 1, 28, 28)``.

    Images are float32 ``bytes / 255``; see the module docstring for where the files go.
    """
    return _idx_dataset("mnist", "mnist", root, [("mnist",), ("MNIST", "raw")], MNIST_NAMES)


def fashion_mnist(root=None):
    """Fashion-MNIST (Xiao et al. 2017) from its IDX files, laid out like MNIST's."""
    return _idx_dataset("fashion_mnist", "fashion_mnist", root,
                        [("fashion-mnist",), ("FashionMNIST", "raw")], FASHION_MNIST_NAMES)


# ------------------------------------------------------------------------------------ CIFAR-10

_CIFAR_RECORD = 1 + 3 * 32 * 32  # binary version: one label byte, then R, G, B planes of 32x32


def read_cifar_bin(path):
    """One file of CIFAR-10's binary version: ``(images uint8 (N, 3, 32, 32), labels (N,))``."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise ValueError(f"read_cifar_bin: {path} is empty")
    if raw.size % _CIFAR_RECORD:
        raise ValueError(f"read_cifar_bin: {path} has {raw.size} bytes, not a multiple of the "
                         f"{_CIFAR_RECORD}-byte record")
    records = raw.reshape(-1, _CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), records[:, 0].astype(np.int64)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild NumPy arrays and nothing else.

    A pickle can name any importable callable and call it, so loading one from the internet is
    running its author's code. CIFAR-10's python batches are plain dicts of bytes, lists and
    one uint8 array; this class refuses every global except the three NumPy needs to rebuild an
    array, so a tampered file fails with an UnpicklingError instead of executing.
    """

    # The original batches (Python 2, protocol 2) need _reconstruct, ndarray and dtype; the
    # others let a batch re-saved by Python 3 (codecs.encode makes bytes under protocol 2,
    # _frombuffer rebuilds arrays under protocol 5) load too. All of them only build data.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}; only "
                                         f"NumPy arrays are allowed")
        if module.startswith("numpy.core."):  # NumPy >= 2 renamed numpy.core to numpy._core
            module = module.replace("numpy.core.", "numpy._core.", 1)
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):  # pragma: no cover - NumPy 1.x has no _core
            return super().find_class(module.replace("numpy._core.", "numpy.core.", 1), name)


def read_cifar_pickle(path):
    """One batch of CIFAR-10's python version: ``(images uint8 (N, 3, 32, 32), labels (N,))``.

    The batches were written by Python 2's cPickle as dicts with byte-string keys
    (``b"data"``: uint8 (N, 3072), ``b"labels"``: list of int). This is the one place minissl
    reads a pickle, with ``encoding="bytes"`` as the data set's authors prescribe, and through
    :class:`_CifarUnpickler`, which allows NumPy arrays only.
    """
    with open(path, "rb") as f:
        try:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        except Exception as e:   # refused global, truncated, empty, garbage: all decoding
            raise ValueError(f"read_cifar_pickle: {path} is not a readable CIFAR-10 batch "
                             f"({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"read_cifar_pickle: {path} is not a CIFAR-10 batch (a dict with "
                         f"b'data' and b'labels')")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"read_cifar_pickle: {path} holds data {data.shape} and "
                         f"{len(labels)} labels; expected (N, 3072) and N")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_files(root):
    """(folder, reader, train file names, test file name) of the first layout found, or None."""
    for base in (root, os.path.join(root, "cifar10")):
        folder = os.path.join(base, "cifar-10-batches-bin")
        if os.path.isfile(os.path.join(folder, "test_batch.bin")):
            return (folder, read_cifar_bin, [f"data_batch_{i}.bin" for i in range(1, 6)],
                    "test_batch.bin")
        folder = os.path.join(base, "cifar-10-batches-py")
        if os.path.isfile(os.path.join(folder, "test_batch")):
            return (folder, read_cifar_pickle, [f"data_batch_{i}" for i in range(1, 6)],
                    "test_batch")
    return None


def cifar10(root=None):
    """CIFAR-10 (Krizhevsky 2009): 50000/10000 RGB images ``(N, 3, 32, 32)``, float32 / 255.

    Reads the binary version when present (no pickle involved), else the python version; see
    the module docstring for where the files go.
    """
    root = default_root() if root is None else os.path.expanduser(str(root))
    found = _cifar_files(root)
    if found is None:
        raise FileNotFoundError(
            f"cifar10: no CIFAR-10 batches found under {root}. minissl does not download data: "
            f"extract cifar-10-binary.tar.gz (or cifar-10-python.tar.gz) so that "
            f"{os.path.join(root, 'cifar-10-batches-bin')} (or cifar-10-batches-py) holds "
            f"data_batch_1..5 and test_batch, or pass root=DIR (on the command line: "
            f"--data-root DIR), or set MINISSL_DATA")
    folder, reader, train_names, test_name = found
    splits = []
    for names in (train_names, [test_name]):
        parts = []
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"cifar10: {name} is missing from {folder}")
            parts.append(reader(path))
        images = np.concatenate([p[0] for p in parts])
        splits += [images.astype(np.float32) / np.float32(255.0),
                   np.concatenate([p[1] for p in parts])]
    return Dataset("cifar10", *splits, num_classes=10, class_names=list(CIFAR10_NAMES))
