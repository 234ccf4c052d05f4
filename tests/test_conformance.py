"""The conformance vectors (tests/conformance/*.npz): this minissl reproduces the stored set,
the files follow the documented format, regenerating them gives the same files, and
``examples/port_check.py`` passes for the PyTorch port (and minissl's harness) and fails for a
port with a wrong formula, a missing stop-gradient or its own masking noise."""
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
    from minissl.methods import METHODS
    cases = conformance._cases()
    steps = [f"{m}_training_step" for m in METHODS]
    assert sorted(NAMES) == sorted([c[0] for c in cases] + steps)
    assert sum(os.path.getsize(p) for p in FILES) < 1_500_000
    ops = {c[1] for c in cases}
    assert set(conformance.DATA_OPS) <= ops
    # Every loss of docs/api.md and every deterministic op of minissl.functional has a case.
    from minissl import functional as F
    assert {"nt_xent", "info_nce", "clip_loss", "byol_loss", "simsiam_loss",
            "barlow_twins_loss", "vicreg_loss", "kl_normal", "mae_loss"} <= ops
    assert set(F.__all__) - {"dropout"} <= ops


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_minissl_reproduces_the_stored_vector(path):
    errors = conformance.check_vector(path)
    assert any(k == "out" or k.startswith("out_") for k in errors)
    assert all(np.isfinite(e) for e in errors.values())


OPS = [p for p in FILES if not p.endswith("_training_step.npz")]
STEPS = [p for p in FILES if p.endswith("_training_step.npz")]


@pytest.mark.parametrize("path", OPS, ids=[os.path.basename(p)[:-4] for p in OPS])
def test_file_format_is_as_documented(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    assert meta["format"] == conformance.FORMAT
    assert set(meta["args"]) <= set(meta["inputs"])
    expected = {f"in_{k}" for k in meta["inputs"]}
    if meta["op"] in conformance.DATA_OPS:
        assert set(meta) == {"op", "args", "kwargs", "inputs", "outputs", "format"}
        assert set(arrays) == expected | {f"out_{k}" for k in meta["outputs"]}
        return
    assert set(meta) == {"op", "args", "kwargs", "inputs", "differentiable", "stop_gradient",
                         "format"}
    assert len(meta["differentiable"]) == len(meta["inputs"])
    assert meta["args"][0] == meta["inputs"][0]
    expected |= {"out", "grad_out"}
    for k, d in zip(meta["inputs"], meta["differentiable"]):
        x = arrays[f"in_{k}"]
        assert x.dtype in (np.float64, np.int64), (k, x.dtype)
        if d:
            assert x.dtype == np.float64
            expected.add(f"grad_{k}")
            assert arrays[f"grad_{k}"].shape == x.shape
            assert arrays[f"grad_{k}"].dtype == np.float64
    for k in meta["stop_gradient"]:      # stored as zeros: a port must detach these
        assert not arrays[f"grad_{k}"].any()
    after = {k for k in arrays if k.startswith("after_")}
    if meta["op"] == "batch_norm" and meta["kwargs"].get("training"):
        assert after == {"after_running_mean", "after_running_var"}
    else:
        assert not after
    assert set(arrays) == expected | after
    assert arrays["out"].dtype == np.float64
    assert arrays["grad_out"].shape == arrays["out"].shape
    assert all(np.isfinite(a).all() for a in arrays.values())


def test_stop_gradients_are_stored():
    ops = {json.loads(str(np.load(p)["meta"]))["op"]: p for p in OPS}
    for op, names in (("byol_loss", ["target"]), ("simsiam_loss", ["target"]),
                      ("info_nce", ["negatives"])):
        meta, arrays = conformance.read_vector(ops[op])
        assert meta["stop_gradient"] == names


@pytest.mark.parametrize("path", STEPS, ids=[os.path.basename(p)[:-4] for p in STEPS])
def test_training_step_format(path):
    meta, arrays = conformance.read_vector(path)
    method = os.path.basename(path)[:-len("_training_step.npz")]
    assert meta["op"] == f"{method}.training_step"
    assert {f"init_{k}" for k in meta["state"]} == {k for k in arrays if k.startswith("init_")}
    assert {f"after_{k}" for k in meta["state"]} == {k for k in arrays
                                                     if k.startswith("after_")}
    assert {f"grad_{k}" for k in meta["trained"]} == {k for k in arrays
                                                      if k.startswith("grad_")}
    assert len(meta["draws"]) == sum(k.startswith("draw_") for k in arrays)
    assert meta["views"] == sum(k.startswith("view_") for k in arrays)
    assert np.isfinite(arrays["out"]) and arrays["out"].shape == ()
    # The step moved every trained parameter that has a gradient (a bias right before a
    # batch norm has exactly none), by -lr * grad; SwAV's prototypes from their rows
    # normalised to unit length, which its step does first.
    lr = meta["kwargs"]["lr"]
    for k in meta["trained"]:
        g, start = arrays[f"grad_{k}"], arrays[f"init_{k}"]
        if method == "swav" and k == "prototypes.weight":
            start = start / np.linalg.norm(start, axis=1, keepdims=True)
        np.testing.assert_allclose(arrays[f"after_{k}"] - start, -lr * g, atol=1e-12, err_msg=k)
    assert sum(arrays[f"grad_{k}"].any() for k in meta["trained"]) > len(meta["trained"]) / 2


def test_training_step_replay_catches_a_wrong_draw(tmp_path):
    path = os.path.join(STORED, "mae_training_step.npz")
    meta, arrays = conformance.read_vector(path)
    arrays["draw_0"] = arrays["draw_0"][:, ::-1].copy()      # other noise: other patches kept
    bad = str(tmp_path / "mae_training_step.npz")
    conformance._write_npz(bad, {"meta": np.array(json.dumps(meta)), **arrays})
    with pytest.raises(AssertionError, match="mae_training_step.npz: after_|: out"):
        conformance.check_vector(bad)


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
            if k.startswith(("in_", "init_", "view_", "draw_")) or k == "grad_out" or (
                    stored[k].dtype.kind in "iu"):
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
    assert "NOT a port" in out.splitlines()[0]
    assert f"{len(FILES)}/{len(FILES)} cases agree" in out


def _summary(out):
    return [ln for ln in out.splitlines() if "cases agree" in ln][0]


def test_port_check_passes_for_pytorch(capsys):
    pytest.importorskip("torch")
    port_check = load_port_check()
    assert port_check.main(["--vectors", STORED]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "not checked" not in out
    from minissl.methods import METHODS
    for name in METHODS:                                  # every method's step, ported
        assert f"ok   {name}_training_step" in out
    assert _summary(out).startswith(f"{len(FILES)}/{len(FILES)} cases agree")


def test_port_check_never_counts_an_unported_method(monkeypatch, capsys):
    port_check = load_port_check()
    real = port_check.minissl_port

    def without_moco():
        port = real()
        return port._replace(step=lambda meta: None if meta["op"].startswith("moco.")
                             else port.step(meta))

    monkeypatch.setattr(port_check, "minissl_port", without_moco)
    assert port_check.main(["--vectors", STORED, "--framework", "minissl"]) == 0
    out = capsys.readouterr().out
    assert "moco_training_step" in out and "not checked: the port has no moco.training_step" in out
    n = len(FILES) - 1
    assert _summary(out).startswith(f"{n}/{n} cases agree")
    assert _summary(out).endswith("1 not checked (no port of: moco)")


@pytest.mark.parametrize("mutation, prefix", [("byol_no_stop_gradient", "byol_loss"),
                                              ("mae_own_noise", "random_masking")])
def test_port_check_fails_a_port_with_a_known_bug(mutation, prefix, capsys):
    """A BYOL loss without the stop-gradient fails on grad_target (stored zeros); MAE's
    masking drawing its own noise fails on the kept indices and the mask."""
    pytest.importorskip("torch")
    port_check = load_port_check()
    assert port_check.main(["--vectors", STORED, "--mutate", mutation]) == 1
    failed = [ln.split()[1] for ln in capsys.readouterr().out.splitlines()
              if ln.strip().startswith("FAIL")]
    assert failed and all(name.startswith(prefix) for name in failed)
    assert len(failed) == sum(n.startswith(prefix) for n in NAMES)


def test_port_check_without_torch_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)          # import torch -> ImportError
    port_check = load_port_check()
    assert port_check.main(["--vectors", STORED]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "PyTorch is not installed" in captured.err


def test_port_check_reports_a_wrong_port(monkeypatch, capsys):
    """A port whose NT-Xent ignores the temperature fails those cases and only those."""
    port_check = load_port_check()
    real = port_check.minissl_port

    def broken_port():
        port = real()

        def broken(name):
            fn = port.op(name)
            if name != "nt_xent":
                return fn
            return lambda z1, z2, temperature: fn(z1, z2, temperature=1.0)
        return port._replace(op=broken)

    monkeypatch.setattr(port_check, "minissl_port", broken_port)
    assert port_check.main(["--vectors", STORED, "--framework", "minissl"]) == 1
    failed = [ln.split()[1] for ln in capsys.readouterr().out.splitlines()
              if ln.strip().startswith("FAIL")]
    assert failed and all(name.startswith("nt_xent") for name in failed)
    assert len(failed) == sum(n.startswith("nt_xent") for n in NAMES)
