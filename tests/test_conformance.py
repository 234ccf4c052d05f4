"""The conformance vectors (tests/conformance/*.npz): this minissl reproduces the stored set,
the files follow the documented format, regenerating them gives the same files, and
``examples/port_check.py`` (a port checking itself) passes for minissl and PyTorch and fails
for a port with a wrong formula."""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minissl import conformance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORED = os.path.join(ROOT, "tests", "conformance")
FILES = sorted(glob.glob(os.path.join(STORED, "*.npz")))
NAMES = [os.path.basename(p)[:-4] for p in FILES]


def load_port_check():
    spec = importlib.util.spec_from_file_location(
        "port_check", os.path.join(ROOT, "examples", "port_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    """The vectors written again through the command line."""
    out = tmp_path_factory.mktemp("conformance")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "minissl", "conformance", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {len(FILES)} conformance files" in proc.stdout
    return out


def test_the_stored_set_is_complete_and_small():
    cases = conformance._cases()
    assert sorted(NAMES) == sorted(c[0] for c in cases)
    assert sum(os.path.getsize(p) for p in FILES) < 500_000
    ops = {c[1] for c in cases}
    # Every loss of docs/api.md and every deterministic op of minissl.functional has a case.
    from minissl import functional as F
    assert {"nt_xent", "info_nce", "clip_loss", "byol_loss", "simsiam_loss",
            "barlow_twins_loss", "vicreg_loss", "kl_normal", "mae_loss"} <= ops
    assert set(F.__all__) - {"dropout"} <= ops


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_minissl_reproduces_the_stored_vector(path):
    errors = conformance.check_vector(path)
    assert "out" in errors and all(np.isfinite(e) for e in errors.values())


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_file_format_is_as_documented(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    assert set(meta) == {"op", "args", "kwargs", "inputs", "differentiable", "format"}
    assert meta["format"] == conformance.FORMAT
    assert len(meta["differentiable"]) == len(meta["inputs"])
    assert set(meta["args"]) <= set(meta["inputs"]) and meta["args"][0] == meta["inputs"][0]
    expected = {"out", "grad_out"} | {f"in_{k}" for k in meta["inputs"]}
    for k, d in zip(meta["inputs"], meta["differentiable"]):
        x = arrays[f"in_{k}"]
        assert x.dtype in (np.float64, np.int64), (k, x.dtype)
        if d:
            assert x.dtype == np.float64
            expected.add(f"grad_{k}")
            assert arrays[f"grad_{k}"].shape == x.shape
            assert arrays[f"grad_{k}"].dtype == np.float64
    after = {k for k in arrays if k.startswith("after_")}
    if meta["op"] == "batch_norm" and meta["kwargs"].get("training"):
        assert after == {"after_running_mean", "after_running_var"}
    else:
        assert not after
    assert set(arrays) == expected | after
    assert arrays["out"].dtype == np.float64
    assert arrays["grad_out"].shape == arrays["out"].shape
    assert all(np.isfinite(a).all() for a in arrays.values())


def test_regenerating_gives_the_same_files(regenerated, tmp_path):
    names = sorted(os.listdir(regenerated))
    assert names == sorted(os.path.basename(p) for p in FILES)
    # The writer is deterministic: the same minissl writes the same bytes.
    conformance.write_vectors(tmp_path)
    for name in names:
        with open(regenerated / name, "rb") as a, open(tmp_path / name, "rb") as b:
            assert a.read() == b.read(), name
    # Against the committed set: the same meta, inputs and cotangents exactly; the results
    # to rounding (another BLAS or the reference kernels may round differently).
    for path in FILES:
        stored_meta, stored = conformance.read_vector(path)
        meta, new = conformance.read_vector(regenerated / os.path.basename(path))
        assert meta == stored_meta
        assert sorted(new) == sorted(stored)
        for k in stored:
            if k.startswith("in_") or k == "grad_out":
                assert stored[k].dtype == new[k].dtype
                np.testing.assert_array_equal(new[k], stored[k], err_msg=k)
            else:
                np.testing.assert_allclose(new[k], stored[k], rtol=1e-10, atol=1e-12,
                                           err_msg=k)


@pytest.mark.parametrize("key", ["out", "grad_input", "after_running_var"])
def test_check_vector_catches_a_wrong_value(key, tmp_path):
    path = os.path.join(STORED, "batch_norm_2x3x6x5.npz")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    conformance.check_vector(path)
    arrays[key] = arrays[key].copy()
    arrays[key].flat[-1] *= 1 + 1e-7
    bad = str(tmp_path / "bad.npz")
    conformance._write_npz(bad, arrays)
    with pytest.raises(AssertionError, match=key):
        conformance.check_vector(bad)


def test_port_check_passes_for_minissl(capsys):
    port_check = load_port_check()
    assert port_check.main(["--vectors", STORED, "--framework", "minissl"]) == 0
    out = capsys.readouterr().out
    assert f"{len(FILES)}/{len(FILES)} cases agree" in out


def test_port_check_passes_for_pytorch(capsys):
    pytest.importorskip("torch")
    port_check = load_port_check()
    assert port_check.main(["--vectors", STORED, "--framework", "torch"]) == 0
    out = capsys.readouterr().out
    assert f"{len(FILES)}/{len(FILES)} cases agree" in out
    assert "FAIL" not in out


def test_port_check_reports_a_wrong_port(monkeypatch, capsys):
    """A port whose NT-Xent ignores the temperature fails those cases and only those."""
    port_check = load_port_check()
    real = port_check.minissl_port

    def broken_port():
        op, *rest = real()

        def broken(name):
            fn = op(name)
            if name != "nt_xent":
                return fn
            return lambda z1, z2, temperature: fn(z1, z2, temperature=1.0)
        return (broken, *rest)

    monkeypatch.setattr(port_check, "minissl_port", broken_port)
    assert port_check.main(["--vectors", STORED, "--framework", "minissl"]) == 1
    failed = [ln.split()[1] for ln in capsys.readouterr().out.splitlines()
              if ln.strip().startswith("FAIL")]
    assert failed and all(name.startswith("nt_xent") for name in failed)
    assert len(failed) == sum(n.startswith("nt_xent") for n in NAMES)
