"""Faults and hostile input on the command line: diverged runs, damaged or hand-edited
files, leftovers of killed runs, two runs on one folder. Each test is a case a careless or
hostile user hit: exit 2 with one line, nothing lost, nothing silently wrong."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from minissl import checkpoint, cli
from minissl.methods import base

from test_cli import QUICK, ROOT, assert_usage_error, run_cli, simclr_run  # noqa: F401


def strict_json_lines(path):
    """Each line parsed as strict JSON (NaN and Infinity are not JSON)."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    with open(path) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def copy_run(simclr_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(simclr_run[0], out)
    return out


# ----------------------------------------------------------------------------- case 3

def test_a_diverged_run_stops_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch,
                                                                   capsys):
    """A weight turns NaN in epoch 2 (the loss is still finite at that step): the run stops
    at once with exit 2, and epoch 1's checkpoint and log stay as they were."""
    real = base.SSLMethod.on_step_end

    def blow_up(self, step, total_steps):
        real(self, step, total_steps)
        if step == 2:   # the first step of epoch 2 (two steps an epoch)
            next(iter(self.parameters())).data[0] = np.nan
    monkeypatch.setattr(base.SSLMethod, "on_step_end", blow_up)
    out = tmp_path / "run"
    assert cli.main(["pretrain", "simclr", "--epochs", "3", "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "epoch 2" in err and "keeps epoch 1" in err
    meta = checkpoint.load(out / "checkpoint.npz")
    assert meta["epoch"] == 1
    assert [r["epoch"] for r in strict_json_lines(out / "metrics.jsonl")] == [1]


def test_metrics_are_strict_json_with_null_for_non_finite_values(tmp_path, monkeypatch,
                                                                  capsys):
    from minissl import evaluate
    monkeypatch.setattr(evaluate, "embedding_std", lambda z: float("nan"))
    out = tmp_path / "run"
    assert cli.main(["pretrain", "simclr", "--epochs", "1", "--out", str(out), *QUICK]) == 0
    (record,) = strict_json_lines(out / "metrics.jsonl")
    assert record["embedding_std"] is None
    assert checkpoint.load(out / "checkpoint.npz")["history"][0]["embedding_std"] is None


@pytest.mark.parametrize("command", ["eval", "embed"])
def test_eval_and_embed_refuse_a_checkpoint_with_non_finite_weights(simclr_run, tmp_path,
                                                                    command):
    out = copy_run(simclr_run, tmp_path)
    path = out / "checkpoint.npz"
    method, _, meta = cli._restore(str(path))
    next(iter(method.encoder.parameters())).data.flat[3] = np.inf
    checkpoint.save(path, method, **meta)
    extra = ["--out", tmp_path / "emb.npz"] if command == "embed" else []
    proc = run_cli(command, "--checkpoint", path, *extra)
    assert_usage_error(proc, str(path), "NaN or infinity")
    assert not (tmp_path / "emb.npz").exists()


def test_a_fresh_run_that_diverges_at_once_leaves_no_folder(tmp_path):
    out = tmp_path / "new" / "run"
    proc = run_cli("pretrain", "simclr", "--epochs", "2", "--lr", "1e30", "--optimizer", "sgd",
                   "--out", out, *QUICK)
    assert_usage_error(proc, "lower the learning rate", "no checkpoint was written")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- case 7

def test_a_failed_fresh_run_keeps_the_previous_runs_checkpoint_and_metrics(simclr_run,
                                                                            tmp_path):
    out = copy_run(simclr_run, tmp_path)
    before = {n: (out / n).read_bytes() for n in ("checkpoint.npz", "metrics.jsonl")}
    proc = run_cli("pretrain", "simclr", "--epochs", "2", "--lr", "1e30", "--optimizer", "sgd",
                   "--out", out, *QUICK)
    assert proc.returncode == 2, proc.stderr
    assert {n: (out / n).read_bytes() for n in before} == before


def test_stale_temporary_files_are_swept(simclr_run, tmp_path):
    out = copy_run(simclr_run, tmp_path)
    stale = [".checkpoint.npz.k2j3_x.tmp", "metrics.jsonl.4242.tmp", ".minissl.lock.77.tmp"]
    for name in stale:
        (out / name).write_bytes(b"PK\x03\x04 half")
    (out / "notes.tmp").write_text("mine")   # not minissl's: left alone
    proc = run_cli("pretrain", "simclr", "--epochs", "3", "--out", out, "--resume", *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert not [n for n in os.listdir(out) if n in stale] and (out / "notes.tmp").exists()


def test_sigterm_while_saving_leaves_no_temporary_file(simclr_run, tmp_path):
    """SIGTERM (what a job scheduler or ``kill`` sends) cleans up as Ctrl-C does."""
    out = copy_run(simclr_run, tmp_path)
    before = (out / "checkpoint.npz").read_bytes()
    script = f"""
import os, signal, sys
import numpy as np
from minissl import cli
def savez_then_sigterm(file, *a, **k):
    file.write(b"PK\\x03\\x04 half a zip archive")
    os.kill(os.getpid(), signal.SIGTERM)
np.savez = savez_then_sigterm
sys.exit(cli.main(["pretrain", "simclr", "--epochs", "3", "--out", {str(out)!r},
                   "--resume", *{QUICK!r}]))
"""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "terminated" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(out)) == sorted(os.listdir(simclr_run[0]))
    assert (out / "checkpoint.npz").read_bytes() == before


def test_a_second_writer_on_one_folder_is_refused(simclr_run, tmp_path):
    out = copy_run(simclr_run, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".minissl.lock").write_text(f"{holder.pid}\n")
        before = (out / "metrics.jsonl").read_text()
        proc = run_cli("pretrain", "simclr", "--epochs", "3", "--out", out, "--resume", *QUICK)
        assert_usage_error(proc, f"pid {holder.pid}", "another --out")
        assert (out / "metrics.jsonl").read_text() == before
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_does_not_block(simclr_run, tmp_path):
    out = copy_run(simclr_run, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".minissl.lock").write_text(f"{dead.pid}\n")
    proc = run_cli("pretrain", "simclr", "--epochs", "3", "--out", out, "--resume", *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert not (out / ".minissl.lock").exists()
