"""Hand-edited and hostile checkpoints: fields of the wrong JSON type or range, entries of the
wrong dtype, and small files that promise gigabytes. Each is refused with a CheckpointError
(on the command line: exit 2, one line naming the file), before any large allocation."""
import json
import tracemalloc
import zipfile

import numpy as np
import pytest

import minissl.nn as nn
from minissl import checkpoint, cli, optim
from minissl.checkpoint import CheckpointError

from test_checkpoint import make_model, make_training, saved  # noqa: F401
from test_cli import QUICK, simclr_run  # noqa: F401


def arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def rewrite(path, out, **changes):
    """``path``'s entries with ``changes`` (name -> array, or None to drop), saved to ``out``."""
    a = arrays(path)
    for k, v in changes.items():
        if v is None:
            a.pop(k, None)
        else:
            a[k] = v
    np.savez(out, **a)
    return out


def text(value):
    return np.array(value if isinstance(value, str) else json.dumps(value))


def cli_error(argv, capsys):
    """cli.main in-process: exit 2 and exactly one error line (no traceback escapes)."""
    assert cli.main([str(a) for a in argv]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines()
             if ln and not ln.startswith("minissl: warning:")]
    assert len(lines) == 1 and lines[0].startswith("minissl: error: "), lines
    return lines[0]


# ----------------------------------------------------------------------------- case 4

@pytest.mark.parametrize("extra", ["[1, 2]", "null", '"simclr"', "3"])
def test_metadata_of_the_wrong_json_type(saved, tmp_path, extra):
    bad = rewrite(saved[0], tmp_path / "bad.npz", extra=text(extra))
    with pytest.raises(CheckpointError, match="'extra' is a JSON .* not an object"):
        checkpoint.load(bad)


@pytest.mark.parametrize("field,value", [
    ("epoch", "Infinity"), ("seed", "Infinity"), ("seed", "-1"), ("epoch", "2.5"),
    ("method", "null"), ("lr", "NaN"), ("batch_size", "true"), ("history", '["x"]'),
    ("epochs", "1")])
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_pretraining_metadata_out_of_type_or_range(simclr_run, tmp_path, capsys, field,
                                                   value, command):
    out = tmp_path / "run"
    out.mkdir()
    src = simclr_run[0] / "checkpoint.npz"
    meta = json.loads(str(arrays(src)["extra"][()]))
    body = json.dumps({**meta, field: "@"}).replace('"@"', value)
    rewrite(src, out / "checkpoint.npz", extra=np.array(body))
    argv = (["pretrain", "simclr", "--epochs", 3, "--out", out, "--resume", *QUICK]
            if command == "resume" else ["eval", "--checkpoint", out / "checkpoint.npz"])
    line = cli_error(argv, capsys)
    assert str(out / "checkpoint.npz") in line


@pytest.mark.parametrize("edit", [
    lambda m: m["param_groups"][0].pop("params"),
    lambda m: m["param_groups"][0].update(params="all"),
    lambda m: m["param_groups"][0].update(lr="fast"),
    lambda m: m["param_groups"][0].update(betas=[0.9]),
    lambda m: m.update(param_groups={}),
    lambda m: m.update(scalars=[1]),
    lambda m: m["scalars"].update({"0": {"step": -3}}),
], ids=["no params", "params str", "lr str", "short betas", "groups dict", "scalars list",
        "negative step"])
def test_malformed_optimizer_state(saved, tmp_path, edit):
    meta = json.loads(str(arrays(saved[0])["optim/meta"][()]))
    edit(meta)
    bad = rewrite(saved[0], tmp_path / "bad.npz", **{"optim/meta": text(meta)})
    model, opt, _ = make_training()
    with pytest.raises(CheckpointError, match="bad.npz"):
        checkpoint.load(bad, model, opt)


@pytest.mark.parametrize("state", ['{"last_step": Infinity}', '"later"', "null"])
def test_malformed_scheduler_state(saved, tmp_path, state):
    meta = json.loads(str(arrays(saved[0])["scheduler"][()]))
    body = json.dumps({**meta, "state": "@"}).replace('"@"', state)
    bad = rewrite(saved[0], tmp_path / "bad.npz", scheduler=np.array(body))
    model, opt, sched = make_training()
    with pytest.raises(CheckpointError, match="bad.npz: malformed scheduler state"):
        checkpoint.load(bad, model, opt, sched)


# ----------------------------------------------------------------------------- case 8: dtypes

@pytest.mark.parametrize("dtype", [np.int8, np.complex64, np.str_, np.bool_])
def test_weights_of_the_wrong_dtype_are_refused(saved, tmp_path, dtype):
    a = arrays(saved[0])
    w = a["model/0.weight"]
    bad = rewrite(saved[0], tmp_path / "bad.npz",
                  **{"model/0.weight": np.zeros(w.shape, dtype)})
    with pytest.raises(CheckpointError, match="0.weight.*dtype"):
        checkpoint.load(bad, make_model())
    with pytest.raises((TypeError, ValueError), match="0.weight.*dtype"):
        make_model().load_state_dict({**make_model().state_dict(),
                                      "0.weight": np.zeros(w.shape, dtype)})


def test_optimizer_state_of_the_wrong_dtype_or_shape(saved, tmp_path):
    key = next(k for k in arrays(saved[0]) if k.endswith("/exp_avg"))
    for bad_value, needle in [(np.zeros(3, np.float32), "shape"),
                              (np.zeros(arrays(saved[0])[key].shape, np.int16), "dtype")]:
        bad = rewrite(saved[0], tmp_path / "bad.npz", **{key: bad_value})
        model, opt, _ = make_training()
        with pytest.raises(CheckpointError, match=needle):
            checkpoint.load(bad, model, opt)


# ----------------------------------------------------------------------------- case 6

def _bomb(path, base, name, nbytes, shape=None, dtype="<f4"):
    """``base``'s archive plus entry ``name``: an .npy header then ``nbytes`` zero bytes,
    deflated (about 64 KB on disk per 64 MiB)."""
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            if info.filename != name + ".npy":
                dst.writestr(info, src.read(info))
        header = {"descr": dtype, "fortran_order": False,
                  "shape": shape or (nbytes // np.dtype(dtype).itemsize,)}
        info = zipfile.ZipInfo(name + ".npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with dst.open(info, "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            chunk = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                f.write(chunk)
    return path


def _peak_mb(fn):
    tracemalloc.start()
    try:
        try:
            fn()
        except CheckpointError as e:
            err = e
        else:
            err = None
        return tracemalloc.get_traced_memory()[1] / 2**20, err
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    model, opt, sched = make_training()
    base = d / "base.npz"
    checkpoint.save(base, model, opt, epoch=1)
    size = 64 << 20
    return {
        "weight": _bomb(d / "weight.npz", base, "model/0.weight", size),
        "unknown": _bomb(d / "unknown.npz", base, "junk", size),
        "extra": _bomb(d / "extra.npz", base, "extra", size, shape=(), dtype=f"<U{size // 4}"),
        "state": _bomb(d / "state.npz", base, "optim/state/0/exp_avg", size),
    }


def _deflated(path):
    with zipfile.ZipFile(path) as z:
        return max(i.file_size for i in z.infolist()) >= 64 << 20


@pytest.mark.parametrize("which", ["weight", "unknown", "extra", "state"])
def test_a_small_file_promising_gigabytes_is_not_inflated(bombs, which):
    path = bombs[which]
    assert _deflated(path)
    model, opt, _ = make_training()
    peak, err = _peak_mb(lambda: checkpoint.load(path, model, opt))
    assert peak < 16, f"{peak:.0f} MB allocated"
    if which == "unknown":
        assert err is None            # entries nobody asks for are skipped, never read
    else:
        assert err is not None and str(path) in str(err)


def test_a_header_promising_more_than_the_entry_holds(saved, tmp_path):
    a = arrays(saved[0])
    bad = tmp_path / "bad.npz"
    np.savez(bad, **a)
    with zipfile.ZipFile(bad) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": (6, 4000000)})
    entries["model/0.weight.npy"] = buf.getvalue() + a["model/0.weight"].tobytes()
    with zipfile.ZipFile(bad, "w") as z:
        for k, v in entries.items():
            z.writestr(k, v)
    with pytest.raises(CheckpointError, match="0.weight"):
        checkpoint.load(bad, make_model())
