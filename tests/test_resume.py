"""Resume, for every method of ``minissl list``: what a changed ``--epochs`` means, and crash
safety under random SIGKILLs.

The contract: a resumed run equals, bit for bit, the uninterrupted run with the options it is
resumed with, or it is refused with exit 2 and a line saying what to do. Everything but the
total number of epochs must be the checkpoint's (seed, batch size, data, optimiser, lr, the
method's settings); the total may change except for BYOL, whose EMA rate follows a cosine over
the whole run's steps. Runs are tiny (two steps an epoch) and in-process where possible.
"""
import os
import random as pyrandom
import shutil
import signal
import subprocess
import sys
import time

import pytest

from minissl import checkpoint, cli, methods

from test_cli import ROOT, assert_same_state, assert_usage_error, losses_of, run_cli

IMAGES = ["--batch-size", "64", "--limit", "128"]
SETTINGS = {"images": IMAGES,
            "text": ["--data", "text", "--batch-size", "16", "--limit", "32"],
            "series": ["--data", "ar", "--batch-size", "32", "--limit", "64"],
            "video": ["--data", "moving_shapes", "--batch-size", "16", "--limit", "32",
                      "--set", "depth=1", "--set", "decoder_depth=1"],
            "audio": ["--data", "audio", "--batch-size", "4", "--limit", "8"]}
# Methods whose data differs from their kind's default (digits for images): RGB, small.
OWN_SETTINGS = {"colorization": ["--data", "shapes", "--batch-size", "16", "--limit", "32",
                                 "--set", "widths=4,8"]}
COMMON = ["--no-progress", "--no-plots", "--seed", "5"]
ALL = list(methods.METHODS)
TOTAL_DEPENDENT = ["byol", "dino", "mocov3"]   # schedules over the whole run: a new --epochs is refused


def args_for(method, epochs, out, *extra):
    return ["pretrain", method, "--epochs", str(epochs), "--out", str(out),
            *OWN_SETTINGS.get(method, SETTINGS[methods.data_kind(method)]), *COMMON, *extra]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """``straight(method, epochs)``: the folder of an uninterrupted run, made once."""
    cache = {}

    def get(method, epochs):
        if (method, epochs) not in cache:
            out = tmp_path_factory.mktemp(f"{method}{epochs}") / "run"
            assert cli.main(args_for(method, epochs, out)) == 0
            cache[method, epochs] = out
        return cache[method, epochs]
    return get


def test_every_method_is_covered():
    assert TOTAL_DEPENDENT == [m for m in ALL if _built(m).uses_total_steps]


def _built(name):
    from minissl import data
    if name == "colorization":
        return methods.build(name, data.shapes(n_train=4, n_test=0))
    return methods.build(name, data.load({"images": "digits", "text": "text", "series": "ar",
                                          "video": "moving_shapes", "audio": "audio"}[methods.data_kind(name)]))


@pytest.mark.parametrize("method", [m for m in ALL if m not in TOTAL_DEPENDENT])
def test_resume_to_more_epochs_equals_the_longer_run(method, straight, tmp_path, capsys):
    """1 epoch, then --resume --epochs 2: bitwise the 2-epoch run (weights, optimiser state,
    buffers such as MoCo's queue, and the logged losses)."""
    out = tmp_path / "run"
    assert cli.main(args_for(method, 1, out)) == 0
    assert cli.main(args_for(method, 2, out, "--resume")) == 0
    assert_same_state(out / "checkpoint.npz", straight(method, 2) / "checkpoint.npz")
    assert losses_of(out) == losses_of(straight(method, 2))
    assert checkpoint.load(out / "checkpoint.npz")["epochs"] == 2


@pytest.mark.parametrize("method", TOTAL_DEPENDENT)
def test_resume_to_other_epochs_is_refused_when_the_schedule_spans_the_run(method, straight,
                                                                           tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight(method, 1), out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "loss": 0.5}\n')     # a line the checkpoint does not hold
    before = {n: (out / n).read_bytes() for n in ("checkpoint.npz", "metrics.jsonl")}
    proc = run_cli(*args_for(method, 2, out, "--resume"))
    assert_usage_error(proc, "--epochs 1", "new run")
    assert {n: (out / n).read_bytes() for n in before} == before     # a refusal writes nothing


def test_resume_with_other_method_settings_is_refused(straight, tmp_path, monkeypatch, capsys):
    """A MoCo queue of another size (or an EMA of another momentum) is another schedule."""
    out = tmp_path / "run"
    shutil.copytree(straight("moco", 1), out)
    from minissl.methods import moco
    monkeypatch.setattr(moco, "build_small_queue",
                        lambda d, **o: moco.build(d, queue_size=256, **o), raising=False)
    monkeypatch.setitem(methods.METHODS, "moco", ("moco", "build_small_queue",
                                                  *methods.METHODS["moco"][2:]))
    assert cli.main(args_for("moco", 2, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "queue_size=1024" in err and "queue_size=256" in err and "same settings" in err


# ----------------------------------------------------------------------------- SIGKILL

def _popen(args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return subprocess.Popen([sys.executable, "-m", "minissl", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_and_resume(method, epochs, kills, out, rng):
    """Run, SIGKILL at a random moment (import, training or saving), check that whatever
    checkpoint is there loads, and go on, ``kills`` times; then finish with --resume."""
    for _ in range(kills):
        has_ckpt = (out / "checkpoint.npz").exists()
        proc = _popen(args_for(method, epochs, out, *(["--resume"] if has_ckpt else [])))
        time.sleep(rng.uniform(0.3, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (out / "checkpoint.npz").exists():
            meta = checkpoint.load(out / "checkpoint.npz")      # never half-written
            assert 1 <= meta["epoch"] <= epochs
    has_ckpt = (out / "checkpoint.npz").exists()
    proc = run_cli(*args_for(method, epochs, out, *(["--resume"] if has_ckpt else [])))
    assert proc.returncode == 0, proc.stderr
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.endswith(".tmp") or n == ".minissl.lock"], names


@pytest.mark.parametrize("method", ALL)
def test_random_sigkills_then_resume_equal_the_uninterrupted_run(method, straight, tmp_path):
    rng = pyrandom.Random(f"{method}-ci")
    out = tmp_path / "run"
    _kill_and_resume(method, 3, 1, out, rng)
    assert_same_state(out / "checkpoint.npz", straight(method, 3) / "checkpoint.npz")
    assert losses_of(out) == losses_of(straight(method, 3))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("method", ALL)
def test_many_random_sigkills(method, seed, straight, tmp_path):
    rng = pyrandom.Random(f"{method}-{seed}")
    out = tmp_path / "run"
    _kill_and_resume(method, 3, 4, out, rng)
    assert_same_state(out / "checkpoint.npz", straight(method, 3) / "checkpoint.npz")
