"""Damaged and hostile data files: truncated or corrupt gzip, IDX headers that lie about the
size, CIFAR-10 pickles that are refused, truncated or empty, and empty binary batches. The
readers raise ValueError naming the file; the command line exits 2 with that one line; and no
reader inflates more than the header promises."""
import gzip
import os
import pickle
import tracemalloc

import numpy as np
import pytest

from minissl import cli, data

from test_checkpoint_faults import cli_error
from data.test_data import _idx_bytes, _write_cifar_bin, _write_cifar_py, _write_mnist, _Exploit


def _pretrain_on(name, root, monkeypatch, capsys):
    monkeypatch.setenv("MINISSL_DATA", str(root))
    return cli_error(["pretrain", "simclr", "--data", name, "--epochs", "1", "--out",
                      root / "run", "--no-progress", "--no-plots"], capsys)


@pytest.fixture
def mnist_gz(tmp_path, rng):
    _write_mnist(tmp_path / "mnist", rng)
    return tmp_path / "mnist" / "train-images-idx3-ubyte.gz"


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not gzip"])
def test_a_damaged_gzip_is_one_line_naming_the_file(mnist_gz, tmp_path, monkeypatch, capsys,
                                                    damage):
    raw = mnist_gz.read_bytes()
    if damage == "truncated":
        raw = raw[:len(raw) // 2]
    elif damage == "corrupt":
        raw = raw[:20] + bytes(b ^ 0x5A for b in raw[20:60]) + raw[60:]
    else:
        raw = b"plain text, not gzip" * 10
    mnist_gz.write_bytes(raw)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        data.read_idx(mnist_gz)
    line = _pretrain_on("mnist", tmp_path, monkeypatch, capsys)
    assert "train-images-idx3-ubyte.gz" in line
    assert not (tmp_path / "run").exists()


def _peak_mb(fn):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as e:
            fn()
        return tracemalloc.get_traced_memory()[1] / 2**20, str(e.value)
    finally:
        tracemalloc.stop()


def test_a_gzip_holding_more_than_its_header_promises_is_not_inflated(tmp_path):
    """A 250 KB .gz whose header promises 10 images but whose stream holds 256 MiB."""
    path = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(_idx_bytes(np.zeros((10, 28, 28))))
        chunk = bytes(1 << 20)
        for _ in range(256):
            f.write(chunk)
    assert os.path.getsize(path) < 1 << 20
    peak, msg = _peak_mb(lambda: data.read_idx(path))
    assert peak < 8 and "more data than its header" in msg and str(path) in msg


@pytest.mark.parametrize("gz", [True, False])
def test_a_header_promising_more_than_the_file_can_hold_is_refused_before_reading(tmp_path,
                                                                                  gz):
    header = _idx_bytes(np.zeros((0, 28, 28)))[:4] + (60000).to_bytes(4, "big") \
        + (28).to_bytes(4, "big") * 2
    path = tmp_path / ("liar-idx3-ubyte" + (".gz" if gz else ""))
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + bytes(100))
    peak, msg = _peak_mb(lambda: data.read_idx(path))
    assert peak < 8 and "(60000, 28, 28)" in msg


# ----------------------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("damage", ["refused", "truncated", "empty", "garbage"])
def test_a_bad_cifar_pickle_is_one_line_naming_the_file(tmp_path, rng, monkeypatch, capsys,
                                                        damage):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar_py(folder, rng)
    path = folder / "data_batch_2"
    raw = path.read_bytes()
    path.write_bytes({"refused": pickle.dumps({b"data": _Exploit(), b"labels": []}, 2),
                      "truncated": raw[:len(raw) // 2], "empty": b"",
                      "garbage": os.urandom(300)}[damage])
    with pytest.raises(ValueError, match="data_batch_2"):
        data.read_cifar_pickle(path)
    assert "data_batch_2" in _pretrain_on("cifar10", tmp_path, monkeypatch, capsys)


def test_an_empty_cifar_binary_batch_is_refused_not_skipped(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar_bin(folder, rng)
    (folder / "data_batch_4.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="data_batch_4.bin is empty"):
        data.cifar10(tmp_path)
