"""minissl.checkpoint: round trips that resume training bit for bit, the archive layout, and
every way a checkpoint can be bad (corrupt, truncated, other version, other model, partial
writes)."""
import json
import os

import numpy as np
import pytest

import minissl as ms
import minissl.nn as nn
from minissl import checkpoint, optim
from minissl.checkpoint import CheckpointError


def make_model(seed=0):
    return nn.Sequential(nn.Linear(4, 6, rng=seed), nn.BatchNorm1d(6), nn.ReLU(),
                         nn.Linear(6, 2, rng=seed + 1))


def make_training(seed=0):
    model = make_model(seed)
    opt = optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    sched = optim.CosineWarmupSchedule(opt, warmup_steps=2, total_steps=8)
    return model, opt, sched


def batches(n):
    rng = np.random.default_rng(42)
    return [(rng.standard_normal((8, 4)).astype(np.float32),
             rng.standard_normal((8, 2)).astype(np.float32)) for _ in range(n)]


def train(model, opt, sched, data):
    for x, y in data:
        opt.zero_grad()
        loss = ((model(ms.tensor(x)) - ms.tensor(y)) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()


@pytest.fixture
def saved(tmp_path):
    model, opt, sched = make_training()
    train(model, opt, sched, batches(2))
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, model, opt, sched, epoch=3, note="hello")
    return path, model


# ----------------------------------------------------------------------------- round trip

def test_resume_continues_bit_for_bit(tmp_path):
    data = batches(5)
    ref_model, ref_opt, ref_sched = make_training()
    train(ref_model, ref_opt, ref_sched, data)             # five uninterrupted steps

    model, opt, sched = make_training()
    train(model, opt, sched, data[:3])
    path = tmp_path / "run" / "checkpoint.npz"
    path.parent.mkdir()
    assert checkpoint.save(path, model, opt, sched, epoch=3, history=[1.5, 0.5]) == str(path)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask    # an ordinary file's mode

    model2, opt2, sched2 = make_training(seed=9)             # different initial weights
    extra = checkpoint.load(path, model2, opt2, sched2)
    assert extra == {"epoch": 3, "history": [1.5, 0.5]}
    assert sched2.last_step == 3 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    train(model2, opt2, sched2, data[3:])
    for (n, a), b in zip(ref_model.state_dict().items(), model2.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=n)


def test_archive_layout_loads_without_pickle(saved):
    path, model = saved
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        assert int(z["__format_version__"]) == checkpoint.FORMAT_VERSION
        assert str(z["__model_signature__"]) == checkpoint.model_signature(model)
        np.testing.assert_array_equal(z["model/0.weight"], model[0].weight.data)
        assert z["model/1.num_batches_tracked"].dtype == np.int64
        meta = json.loads(str(z["optim/meta"]))
        assert meta["type"] == "Adam" and meta["scalars"]["0"] == {"step": 2}
        assert meta["param_groups"][0]["params"] == [0, 1, 2, 3, 4, 5]
        assert json.loads(str(z["scheduler"]))["state"]["last_step"] == 2
        assert json.loads(str(z["extra"])) == {"epoch": 3, "note": "hello"}
    assert {"optim/state/0/exp_avg", "optim/state/5/exp_avg_sq"} <= keys
    assert not any(k.startswith("optim/state/") and k.endswith("/step") for k in keys)


def test_model_only_and_partial_loads(tmp_path, saved):
    path, model = saved
    fresh = make_model(seed=5)
    assert checkpoint.load(path, fresh)["epoch"] == 3            # optimiser state ignored
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        np.testing.assert_array_equal(a, b)
    only = tmp_path / "model_only.npz"
    checkpoint.save(only, model)
    assert checkpoint.load(only, make_model()) == {}
    _, opt, sched = make_training()
    with pytest.raises(CheckpointError, match="no optimiser state"):
        checkpoint.load(only, optimizer=opt)
    with pytest.raises(CheckpointError, match="no scheduler state"):
        checkpoint.load(only, scheduler=sched)
    empty = tmp_path / "nothing.npz"
    checkpoint.save(empty, step=7)
    assert checkpoint.load(empty) == {"step": 7}
    with pytest.raises(CheckpointError, match="no model state"):
        checkpoint.load(empty, make_model())


# ----------------------------------------------------------------------------- bad files

def assert_untouched(model, before):
    for (n, a), b in zip(model.state_dict().items(), before.values()):
        np.testing.assert_array_equal(a, b, err_msg=n)


def test_corrupt_and_truncated_files(tmp_path, saved):
    path, _ = saved
    raw = path.read_bytes()
    model = make_model(seed=3)
    before = model.state_dict()
    cases = {
        "garbage.npz": os.urandom(2000),
        "empty.npz": b"",
        "truncated.npz": raw[: len(raw) // 2],
        "tail_cut.npz": raw[:-10],
    }
    # Flip bytes inside the stored array data (the zip directory stays intact: CRC check).
    flipped = bytearray(raw)
    start = raw.index(b"model/0.weight.npy") + 200
    flipped[start:start + 8] = bytes(b ^ 0xFF for b in flipped[start:start + 8])
    cases["flipped.npz"] = bytes(flipped)
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match="corrupt|truncated") as e:
            checkpoint.load(bad, model)
        assert name in str(e.value)
        assert_untouched(model, before)
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minissl checkpoint"):
        checkpoint.load(npy, model)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.npz", model)
    assert issubclass(CheckpointError, ValueError)


def test_wrong_format_version_and_foreign_npz(tmp_path, saved):
    path, model = saved
    with np.load(path) as z:
        arrays = dict(z)
    arrays["__format_version__"] = np.array(999)
    other = tmp_path / "future.npz"
    np.savez(other, **arrays)
    with pytest.raises(CheckpointError, match="version 999"):
        checkpoint.load(other, model)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minissl checkpoint"):
        checkpoint.load(foreign, model)
    # Model arrays edited so that they disagree with the stored signature.
    arrays["__format_version__"] = np.array(checkpoint.FORMAT_VERSION)
    arrays["model/0.weight"] = np.zeros((6, 5), np.float32)
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    with pytest.raises(CheckpointError, match="signature"):
        checkpoint.load(tampered, model)


def test_checkpoint_of_another_model(saved):
    path, _ = saved
    wider = nn.Sequential(nn.Linear(4, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 2))
    before = wider.state_dict()
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(path, wider)
    msg = str(e.value)
    assert "another model" in msg and "0.weight: checkpoint (6, 4), model (7, 4)" in msg
    assert_untouched(wider, before)
    deeper = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2),
                           nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="missing from the checkpoint: 4.weight, 4.bias"):
        checkpoint.load(path, deeper)
    with pytest.raises(CheckpointError, match="not in the model: 3.weight, 3.bias"):
        checkpoint.load(path, nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)))
    model, _, _ = make_training()
    with pytest.raises(CheckpointError, match="Adam, loaded into SGD"):
        checkpoint.load(path, model, optim.SGD(model.parameters(), lr=0.1))
    small = make_model()
    with pytest.raises(CheckpointError, match="parameters"):
        checkpoint.load(path, optimizer=optim.Adam(list(small.parameters())[:2]))


# ----------------------------------------------------------------------------- atomic writes

def test_interrupted_save_leaves_the_old_file(saved, monkeypatch):
    path, model = saved
    old = path.read_bytes()
    folder = path.parent
    before = sorted(os.listdir(folder))

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half of an archive")      # a partial write, then the crash
        raise OSError("No space left on device")
    monkeypatch.setattr(np, "savez", broken_savez)
    m2, o2, s2 = make_training(seed=4)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(path, m2, o2, s2, epoch=4)

    def interrupted(f, **arrays):
        f.write(b"PK")
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, m2, epoch=5)
    monkeypatch.undo()
    assert path.read_bytes() == old                    # the previous checkpoint is intact
    assert sorted(os.listdir(folder)) == before         # and no temporary file is left
    fresh = make_model(seed=8)
    assert checkpoint.load(path, fresh)["epoch"] == 3
    assert_untouched(fresh, model.state_dict())


def test_unserialisable_extra_writes_nothing(tmp_path):
    path = tmp_path / "x.npz"
    with pytest.raises(TypeError, match="extra metadata"):
        checkpoint.save(path, make_model(), when=object())
    assert os.listdir(tmp_path) == []
    checkpoint.save(path, make_model(), lr=np.float32(0.5), steps=np.int64(3))  # numpy scalars
    assert checkpoint.load(path) == {"lr": 0.5, "steps": 3}
