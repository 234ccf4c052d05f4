"""Tests of minissl.data: the data sets, the file readers, the splits and the mini-batching."""
import dataclasses
import gzip
import os
import pickle
import struct
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl import data
from minissl.data import (ARSeries, DataLoader, Dataset, TextCorpus, batches, per_class_subset,
                          stratified_split)


# ------------------------------------------------------------------------------- registry

def test_load_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'.*digits.*shapes"):
        data.load("imagenet")


def test_load_dispatches_with_kwargs():
    ds = data.load("shapes", n_train=20, n_test=10, size=8)
    assert isinstance(ds, Dataset) and ds.name == "shapes"
    assert ds.train_x.shape == (20, 3, 8, 8) and ds.test_x.shape == (10, 3, 8, 8)
    assert isinstance(data.load("ar", n_series=2, length=10), ARSeries)
    assert {"digits", "shapes", "mnist", "cifar10", "text", "ar"} <= set(data.DATASETS)


# -------------------------------------------------------------------------------- Dataset

def _tiny_dataset(**overrides):
    fields = dict(name="tiny", train_x=np.zeros((4, 1, 2, 2), np.float32),
                  train_y=np.array([0, 1, 0, 1]), test_x=np.zeros((2, 1, 2, 2), np.float32),
                  test_y=np.array([1, 0]), num_classes=2, class_names=["a", "b"])
    fields.update(overrides)
    return Dataset(**fields)


def test_dataset_fields_and_validation():
    ds = _tiny_dataset()
    assert ds.image_shape == (1, 2, 2)
    assert "train=4" in repr(ds) and "image_shape=(1, 2, 2)" in repr(ds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"
    with pytest.raises(ValueError, match="train_x must be a float32"):
        _tiny_dataset(train_x=np.zeros((4, 1, 2, 2), np.float64))
    with pytest.raises(ValueError, match="test_y must be an int64 array of shape"):
        _tiny_dataset(test_y=np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="labels outside"):
        _tiny_dataset(train_y=np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="differ in shape"):
        _tiny_dataset(test_x=np.zeros((2, 1, 3, 2), np.float32))
    with pytest.raises(ValueError, match="1 class names for 2 classes"):
        _tiny_dataset(class_names=["a"])


# ---------------------------------------------------------------------------------- splits

@given(st.lists(st.integers(0, 4), max_size=60), st.floats(0.0, 1.0), st.integers(0, 3))
def test_stratified_split_partitions_each_class(labels, fraction, seed):
    labels = np.array(labels, dtype=np.int64)
    train, test = stratified_split(labels, fraction, seed)
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    for c in np.unique(labels):
        n_c = np.sum(labels == c)
        assert np.sum(labels[test] == c) == round(fraction * n_c)
    again = stratified_split(labels, fraction, seed)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


def test_stratified_split_depends_on_seed_and_checks_input():
    labels = np.repeat(np.arange(3), 20)
    assert not np.array_equal(stratified_split(labels, 0.3, 0)[1],
                              stratified_split(labels, 0.3, 1)[1])
    with pytest.raises(ValueError, match="stratified_split: labels must be a 1-D integer"):
        stratified_split(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, 1.5)


def test_per_class_subset():
    labels = np.repeat(np.arange(4), [5, 6, 7, 8])
    idx = per_class_subset(labels, 3, seed=0)
    assert np.array_equal(np.bincount(labels[idx]), [3, 3, 3, 3])
    assert len(np.unique(idx)) == len(idx)
    assert np.array_equal(idx, per_class_subset(labels, 3, seed=0))
    with pytest.raises(ValueError, match="class 0 has 5 examples, fewer than k=6"):
        per_class_subset(labels, 6)


# ---------------------------------------------------------------------------------- digits

def test_digits_split_is_fixed_stratified_and_complete():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    ds = data.digits()
    assert ds.name == "digits" and ds.image_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.class_names[0] == "zero" and ds.class_names[9] == "nine"
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int64
    assert len(ds.train_x) + len(ds.test_x) == 1797
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0  # pixels count 0..16
    # Stratified 70/30: every class keeps its proportion up to rounding.
    counts = np.bincount(np.concatenate([ds.train_y, ds.test_y]))
    assert np.array_equal(np.bincount(ds.test_y), np.round(0.3 * counts).astype(int))
    # The two splits are exactly the bundled images, each once.
    raw = sklearn_datasets.load_digits()
    train, test = stratified_split(raw.target, 0.3, 0)
    assert np.array_equal(ds.test_x[:, 0] * 16, raw.images[test])
    assert np.array_equal(ds.train_y, raw.target[train])
    again = data.digits()
    assert np.array_equal(again.train_x, ds.train_x) and np.array_equal(again.test_y, ds.test_y)


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        data.digits()


# ---------------------------------------------------------------------------------- shapes

def test_shapes_shapes_range_balance_and_determinism():
    ds = data.shapes(n_train=200, n_test=50, size=16, seed=3)
    assert ds.train_x.shape == (200, 3, 16, 16) and ds.test_x.shape == (50, 3, 16, 16)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int64
    assert ds.train_x.min() >= 0.0 and ds.train_x.max() <= 1.0
    assert np.array_equal(np.bincount(ds.train_y), [20] * 10)
    assert np.array_equal(np.bincount(ds.test_y), [5] * 10)
    assert ds.class_names == data.SHAPE_NAMES and len(set(ds.class_names)) == 10
    again = data.shapes(n_train=200, n_test=50, size=16, seed=3)
    assert np.array_equal(again.train_x, ds.train_x) and np.array_equal(again.test_y, ds.test_y)
    other = data.shapes(n_train=200, n_test=50, size=16, seed=4)
    assert not np.array_equal(other.train_x, ds.train_x)
    # The training set does not depend on the size of the test set.
    more_test = data.shapes(n_train=200, n_test=80, size=16, seed=3)
    assert np.array_equal(more_test.train_x, ds.train_x)


def test_shapes_sizes():
    assert data.shapes(n_train=10, n_test=0, size=8).train_x.shape == (10, 3, 8, 8)
    assert data.shapes(n_train=10, n_test=10, size=37).test_x.shape == (10, 3, 37, 37)
    with pytest.raises(ValueError, match="size must be an integer >= 8"):
        data.shapes(size=7)


def _render_centred(size=32, phase=0.0):
    n = len(data.SHAPE_NAMES)
    return data.render_shapes(np.arange(n), size, np.full((n, 2), size / 2), np.full(n, 12.0),
                              np.zeros(n), np.ones((n, 3)), np.zeros((n, 3)), np.full(n, phase))


def test_shapes_figures_are_what_they_are_called():
    masks = _render_centred()[:, 0] > 0.5  # white on black, one per class
    name = dict(zip(data.SHAPE_NAMES, masks))
    flat = masks.reshape(len(masks), -1)
    assert all(np.any(flat[i] != flat[j]) for i in range(10) for j in range(i))  # distinct
    assert abs(name["circle"].sum() / (np.pi * 12**2) - 1) < 0.05
    assert abs(name["ring"].sum() / (np.pi * 12**2 * (1 - 0.55**2)) - 1) < 0.08
    assert not name["ring"][16, 16] and name["circle"][16, 16]
    # The grid is symmetric about the centre (16, 16) in pixel-centre coordinates, so these
    # symmetries are exact.
    for symmetric in ("circle", "square", "ring", "plus", "cross"):
        assert np.array_equal(name[symmetric], np.rot90(name[symmetric]))
    assert np.array_equal(name["horizontal bars"].T, name["vertical bars"])
    assert np.array_equal(name["triangle"], name["triangle"][:, ::-1])  # apex up, upright
    assert name["triangle"][:16].sum() < name["triangle"][16:].sum()
    assert np.array_equal(name["diagonal stripes"], name["diagonal stripes"].T)


def test_shapes_are_learnable_but_not_from_raw_pixels():
    """Translation-invariant features (the Fourier magnitude of the colour-normalised figure)
    separate the classes almost perfectly with a linear classifier; raw pixels do not, since
    position and colours are random."""
    ds = data.shapes(n_train=2000, n_test=500, size=16, seed=0)

    def ridge_accuracy(features):
        f_train, f_test = features(ds.train_x), features(ds.test_x)
        targets = np.eye(10)[ds.train_y]
        w = np.linalg.solve(f_train.T @ f_train + np.eye(f_train.shape[1]), f_train.T @ targets)
        return np.mean((f_test @ w).argmax(axis=1) == ds.test_y)

    def spectrum(x):
        figure = np.abs(x - x[:, :, :1, :1]).sum(axis=1)  # distance to the corner colour
        figure /= figure.max(axis=(1, 2), keepdims=True) + 1e-6
        mag = np.abs(np.fft.rfft2(figure)).reshape(len(x), -1)
        return np.concatenate([mag, np.ones((len(x), 1))], axis=1)

    assert ridge_accuracy(spectrum) > 0.8
    assert ridge_accuracy(lambda x: x.reshape(len(x), -1)) < 0.4


# ----------------------------------------------------------------------------- MNIST (IDX)

def _idx_bytes(array):
    array = np.asarray(array, dtype=np.uint8)
    return (bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.tobytes())


def _write_mnist(folder, rng, n_train=5, n_test=3, gz=True):
    os.makedirs(folder, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for i, (name, array) in enumerate(arrays.items()):
        if gz and i % 2 == 0:  # a mix of gzipped and plain files, as mirrors have
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(_idx_bytes(array))
        else:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(_idx_bytes(array))
    return arrays


def test_mnist_reads_idx_files(tmp_path, rng):
    arrays = _write_mnist(tmp_path / "mnist", rng)
    ds = data.mnist(tmp_path)
    assert ds.name == "mnist" and ds.image_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int64
    np.testing.assert_allclose(ds.train_x[:, 0] * 255, arrays["train-images-idx3-ubyte"],
                               atol=1e-4)
    np.testing.assert_allclose(ds.test_x[:, 0] * 255, arrays["t10k-images-idx3-ubyte"],
                               atol=1e-4)
    assert np.array_equal(ds.train_y, arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(ds.test_y, arrays["t10k-labels-idx1-ubyte"])


def test_mnist_layouts_and_default_root(tmp_path, rng, monkeypatch):
    arrays = _write_mnist(tmp_path / "MNIST" / "raw", rng, gz=False)  # torchvision's layout
    monkeypatch.setenv("MINISSL_DATA", str(tmp_path))
    assert np.array_equal(data.mnist().test_y, arrays["t10k-labels-idx1-ubyte"])
    fashion = _write_mnist(tmp_path / "fashion-mnist", rng)
    ds = data.fashion_mnist(tmp_path)
    assert np.array_equal(ds.train_y, fashion["train-labels-idx1-ubyte"])
    assert ds.class_names[9] == "ankle boot"


def test_mnist_missing_or_corrupt_files(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="does not download.*mnist"):
        data.mnist(tmp_path)
    folder = tmp_path / "mnist"
    _write_mnist(folder, rng, gz=False)
    os.remove(folder / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.mnist(tmp_path)
    with open(folder / "t10k-labels-idx1-ubyte", "wb") as f:  # 4 labels for 3 images
        f.write(_idx_bytes(np.zeros(4)))
    with pytest.raises(ValueError, match="do not match"):
        data.mnist(tmp_path)
    with open(folder / "t10k-labels-idx1-ubyte", "wb") as f:
        f.write(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad magic"):
        data.mnist(tmp_path)
    with open(folder / "t10k-labels-idx1-ubyte", "wb") as f:
        f.write(_idx_bytes(np.zeros(3))[:-1])
    with pytest.raises(ValueError, match="header says"):
        data.mnist(tmp_path)


# -------------------------------------------------------------------------------- CIFAR-10

def _cifar_records(rng, n):
    return rng.integers(0, 256, (n, 3072)).astype(np.uint8), rng.integers(0, 10, n)


def _write_cifar_bin(folder, rng, n=2):
    os.makedirs(folder, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        images, labels = _cifar_records(rng, n)
        records = np.concatenate([labels[:, None].astype(np.uint8), images], axis=1)
        records.tofile(os.path.join(folder, name))
        written[name] = (images, labels)
    return written


def _py2_pickle(images, labels):
    """A CIFAR-10 batch exactly as Python 2's cPickle wrote the originals (protocol 2, byte
    strings, the array rebuilt by numpy.core.multiarray._reconstruct)."""
    def string(b):  # SHORT_BINSTRING or BINSTRING: a Python 2 str
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def integer(i):  # BININT1 or BININT
        return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)

    out = b"\x80\x02}("  # PROTO 2, EMPTY_DICT, MARK
    out += string(b"batch_label") + string(b"testing batch 1 of 1")
    out += string(b"labels") + b"](" + b"".join(integer(int(i)) for i in labels) + b"e"
    out += string(b"data") + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    out += integer(0) + b"\x85" + string(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
    out += b"(" + integer(1) + integer(len(images)) + integer(3072) + b"\x86"  # state: shape
    out += b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R"
    out += b"(" + integer(3) + string(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0)
    out += b"tb"  # dtype.__setstate__
    out += b"\x89" + string(images.tobytes()) + b"tb"  # not Fortran, the bytes; array state
    return out + b"u."  # SETITEMS, STOP


def _write_cifar_py(folder, rng, n=2, writer=_py2_pickle):
    os.makedirs(folder, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images, labels = _cifar_records(rng, n)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(writer(images, labels))
        written[name] = (images, labels)
    return written


def _check_cifar(ds, written, train_names, test_name):
    assert ds.name == "cifar10" and ds.image_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.class_names[0] == "airplane" and ds.train_x.dtype == np.float32
    train_images = np.concatenate([written[n][0] for n in train_names])
    np.testing.assert_allclose(ds.train_x.reshape(len(ds.train_x), -1) * 255, train_images,
                               atol=1e-4)
    assert np.array_equal(ds.train_y, np.concatenate([written[n][1] for n in train_names]))
    np.testing.assert_allclose(ds.test_x.reshape(len(ds.test_x), -1) * 255,
                               written[test_name][0], atol=1e-4)
    assert np.array_equal(ds.test_y, written[test_name][1])


def test_cifar10_binary_version(tmp_path, rng):
    written = _write_cifar_bin(tmp_path / "cifar-10-batches-bin", rng)
    ds = data.cifar10(tmp_path)
    _check_cifar(ds, written, [f"data_batch_{i}.bin" for i in range(1, 6)], "test_batch.bin")
    # The layout of a record: label byte, then the red, green and blue 32x32 planes.
    images, _ = written["test_batch.bin"]
    assert ds.test_x[0, 1, 0, 0] * 255 == pytest.approx(images[0, 1024])


def test_cifar10_python_version_as_originally_pickled(tmp_path, rng):
    written = _write_cifar_py(tmp_path / "cifar10" / "cifar-10-batches-py", rng)
    ds = data.cifar10(tmp_path)
    _check_cifar(ds, written, [f"data_batch_{i}" for i in range(1, 6)], "test_batch")


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_python_version_repickled_by_python3(tmp_path, rng, protocol):
    def writer(images, labels):
        return pickle.dumps({b"data": images, b"labels": [int(i) for i in labels]},
                            protocol=protocol)
    written = _write_cifar_py(tmp_path / "cifar-10-batches-py", rng, writer=writer)
    _check_cifar(data.cifar10(tmp_path), written, [f"data_batch_{i}" for i in range(1, 6)],
                 "test_batch")


class _Exploit:
    def __reduce__(self):
        return (os.mkdir, ("/tmp/minissl-pickle-exploit-ran",))


def test_cifar10_pickle_reader_refuses_code(tmp_path):
    marker = "/tmp/minissl-pickle-exploit-ran"
    if os.path.exists(marker):
        os.rmdir(marker)
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(ValueError, match="only NumPy arrays"):
        data.read_cifar_pickle(path)
    assert not os.path.exists(marker)


def test_cifar10_missing_or_corrupt(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="does not download.*cifar-10-batches-bin"):
        data.cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar_bin(folder, rng)
    os.remove(folder / "data_batch_3.bin")
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin"):
        data.cifar10(tmp_path)
    (folder / "data_batch_3.bin").write_bytes(b"\x00" * 3074)
    with pytest.raises(ValueError, match="not a multiple"):
        data.cifar10(tmp_path)


# ------------------------------------------------------------------------------------ text

def test_text_corpus_from_file(tmp_path, rng):
    content = "héllo wörld, ∑ 1 + 1 = 2\n" * 40
    path = tmp_path / "a.txt"
    path.write_text(content, encoding="utf-8")
    corpus = data.text(path)
    assert isinstance(corpus, TextCorpus) and corpus.text == content
    assert corpus.chars == sorted(set(content)) and corpus.vocab_size == len(set(content))
    assert all(corpus.itos[corpus.stoi[c]] == c for c in corpus.chars)
    ids = corpus.encode(content)
    assert ids.dtype == np.int64 and np.array_equal(ids, [corpus.stoi[c] for c in content])
    assert corpus.decode(ids) == content and corpus.decode(list(ids[:5])) == content[:5]
    assert len(corpus.train_ids) == round(0.9 * len(content))
    assert np.array_equal(np.concatenate([corpus.train_ids, corpus.val_ids]), ids)
    with pytest.raises(ValueError, match="character 'z' is not in the vocabulary"):
        corpus.encode("hél z")
    with pytest.raises(ValueError, match="decode: ids must be in"):
        corpus.decode([corpus.vocab_size])
    x, y = corpus.windows("train", 4, 7, rng)
    assert x.shape == y.shape == (4, 7) and x.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    # Each window is a contiguous piece of the training ids, y its continuation.
    text_train = corpus.decode(corpus.train_ids)
    assert all(corpus.decode(np.append(x[b], y[b, -1])) in text_train for b in range(4))
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        corpus.windows("test", 1, 2, rng)


def test_text_folders_lists_limits_and_errors(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bbb", encoding="utf-8")
    (tmp_path / "sub" / "c.txt").write_text("ccc", encoding="utf-8")
    (tmp_path / "a.md").write_text("aaa", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("hhh", encoding="utf-8")
    assert data.text(tmp_path, pattern="*.txt").text == "bbb\nccc"
    assert data.text(tmp_path).text == "aaa\nbbb\nccc"
    assert data.text([tmp_path / "sub" / "c.txt", tmp_path / "a.md"]).text == "ccc\naaa"
    assert data.text(tmp_path, max_chars=5).text == "aaa\nb"
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="bad.txt is not UTF-8"):
        data.text(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        data.text(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="no files matching"):
        data.text(tmp_path, pattern="*.rst")


def test_text_default_corpus_is_the_stdlib():
    corpus = data.text(max_chars=30_000)
    assert len(corpus.text) == 30_000
    first = data.stdlib_files()[0]
    assert os.path.dirname(first) == os.path.dirname(os.__file__)
    assert all("site-packages" not in f for f in data.stdlib_files())
    with open(first, encoding="utf-8") as f:
        head = f.read()[:1000]
    assert corpus.text.startswith(head)
    assert data.text(max_chars=30_000).text == corpus.text


# -------------------------------------------------------------------------------------- AR

def test_ar_shapes_and_determinism():
    s = data.ar(n_series=3, length=50, seed=1)
    assert s.series.shape == (3, 50) and s.series.dtype == np.float32
    assert np.array_equal(s.coefficients, [0.6, -0.3, 0.2]) and s.order == 3
    assert np.array_equal(data.ar(n_series=3, length=50, seed=1).series, s.series)
    assert not np.array_equal(data.ar(n_series=3, length=50, seed=2).series, s.series)


def test_ar_least_squares_recovers_the_coefficients():
    s = data.ar(n_series=64, length=512, seed=0)
    x, y = s.lagged()
    assert x.shape == (64 * 509, 3)
    # Column k-1 holds x_{t-k}: check one row by hand.
    assert np.array_equal(x[0], s.series[0, [2, 1, 0]]) and y[0] == s.series[0, 3]
    estimate, *_ = np.linalg.lstsq(x, y, rcond=None)
    np.testing.assert_allclose(estimate, s.coefficients, atol=0.03)  # std error ~0.006
    residual = y - x @ estimate
    assert abs(residual.std() - s.noise_std) < 0.03


def test_ar1_has_the_stationary_variance():
    # Var x = noise^2 / (1 - a^2) for AR(1); burn-in makes the very first kept value
    # stationary too.
    s = data.ar(n_series=400, length=200, coefficients=[0.8], noise_std=0.5, seed=0)
    expected = 0.25 / (1 - 0.64)
    assert abs(s.series.var() / expected - 1) < 0.05
    assert abs(s.series[:, 0].var() / expected - 1) < 0.2


def test_ar_rejects_non_stationary_coefficients():
    assert data.is_stationary([0.6, -0.3, 0.2]) and data.is_stationary([-0.99])
    assert not data.is_stationary([1.0]) and not data.is_stationary([0.5, 0.6])
    with pytest.raises(ValueError, match="not stationary"):
        data.ar(coefficients=[0.5, 0.6])
    with pytest.raises(ValueError, match="at least one coefficient"):
        data.ar(coefficients=[])


# ------------------------------------------------------------------------------- batching

@given(st.integers(0, 50), st.integers(1, 12), st.booleans(), st.booleans(), st.integers(0, 5))
def test_batches_cover_each_index_once(n, batch_size, shuffle, drop_last, epoch):
    out = list(batches(n, batch_size, shuffle=shuffle, seed=7, drop_last=drop_last,
                       epoch=epoch))
    assert all(b.dtype == np.int64 for b in out)
    sizes = [len(b) for b in out]
    if drop_last:
        assert sizes == [batch_size] * (n // batch_size)
    else:
        assert sum(sizes) == n and all(s == batch_size for s in sizes[:-1])
        assert np.array_equal(np.sort(np.concatenate(out)) if out else [], np.arange(n))
    flat = np.concatenate(out) if out else np.zeros(0, np.int64)
    assert len(np.unique(flat)) == len(flat)
    if not shuffle:
        assert np.array_equal(flat, np.arange(len(flat)))
    again = list(batches(n, batch_size, shuffle=shuffle, seed=7, drop_last=drop_last,
                         epoch=epoch))
    assert all(np.array_equal(a, b) for a, b in zip(out, again))


def test_batches_reshuffle_per_epoch_and_seed():
    order = lambda seed, epoch: np.concatenate(list(batches(100, 32, seed=seed, epoch=epoch)))
    assert np.array_equal(order(0, 0), order(0, 0))
    assert not np.array_equal(order(0, 0), order(0, 1))
    assert not np.array_equal(order(0, 0), order(1, 0))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        list(batches(10, 0))
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        list(batches(-1, 4))


def test_data_loader_epochs_and_resume():
    x = np.arange(10)[:, None] * np.ones((1, 3))
    y = np.arange(10)
    loader = DataLoader(x, y, batch_size=4, seed=1)
    assert len(loader) == 3 and len(DataLoader(x, batch_size=4, drop_last=True)) == 2
    epoch0 = list(loader)
    assert [len(b[1]) for b in epoch0] == [4, 4, 2]
    assert all(isinstance(b, tuple) and np.array_equal(b[0][:, 0], b[1]) for b in epoch0)
    assert np.array_equal(np.sort(np.concatenate([b[1] for b in epoch0])), y)
    epoch1 = list(loader)
    assert loader.epoch == 2
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(epoch0, epoch1))
    # A new loader resumed at epoch 1 reproduces the original run's epoch 1.
    resumed = DataLoader(x, y, batch_size=4, seed=1)
    resumed.set_epoch(1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(list(resumed), epoch1))
    (single,) = next(iter(DataLoader(y, batch_size=3, shuffle=False)))
    assert np.array_equal(single, [0, 1, 2])
    with pytest.raises(ValueError, match="different lengths"):
        DataLoader(x, y[:5], batch_size=2)
    with pytest.raises(ValueError, match="at least one array"):
        DataLoader(batch_size=2)
