"""The command line, run for real (``python -m minissl`` in a subprocess) on tiny runs.

Each pretraining run uses ``--limit`` (the first N training images) so that an epoch is one
or two steps. The resume tests compare final checkpoints array by array, bitwise. A few tests
run ``cli.main`` in-process where they must interrupt it at a chosen point (a kill after an
epoch's checkpoint, a crash while a file is being written).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minissl import checkpoint, cli, data, methods, random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Two steps of 128 per epoch: the smallest run that still shuffles, batches and checkpoints.
TINY = ["--batch-size", "128", "--limit", "256", "--no-progress", "--seed", "3"]
QUICK = TINY + ["--no-plots"]    # for the runs whose plots no test looks at

try:
    import matplotlib  # noqa: F401
    HAVE_MPL = True
except ImportError:
    HAVE_MPL = False


def run_cli(*args, cwd=None):
    """``python -m minissl *args``; returns the CompletedProcess (text mode)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.pop("MINISSL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "minissl", *map(str, args)], cwd=cwd or ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def assert_usage_error(proc, *needles):
    """Exit status 2, one error line on stderr (warnings aside), no traceback, and the line
    says what is wrong."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines()
             if ln.strip() and not ln.startswith("minissl: warning:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("minissl: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def arrays_of(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_same_state(a_path, b_path):
    """Every array of two checkpoints (model, optimiser state) bitwise equal."""
    a, b = arrays_of(a_path), arrays_of(b_path)
    assert sorted(a) == sorted(b)
    for k in a:
        if k == "extra":   # JSON metadata; holds wall-clock timings
            continue
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), f"{k} differs"


def losses_of(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory):
    """A 2-epoch SimCLR run on 256 digits, made once for the tests that read it."""
    out = tmp_path_factory.mktemp("simclr") / "run"
    proc = run_cli("pretrain", "simclr", "--data", "digits", "--epochs", 2, "--out", out, *TINY)
    assert proc.returncode == 0, proc.stderr
    return out, proc


# ----------------------------------------------------------------------------- list / help

def test_list_names_every_method_and_data_set():
    proc = run_cli("list")
    assert proc.returncode == 0, proc.stderr
    for name in list(methods.METHODS) + list(data.DATASETS):
        assert f"  {name}" in proc.stdout, name


def test_pretrain_help_documents_limit():
    proc = run_cli("pretrain", "--help")
    assert proc.returncode == 0
    assert "--limit" in proc.stdout and "--resume" in proc.stdout


def test_no_command_prints_help_and_fails():
    proc = run_cli()
    assert proc.returncode == 2
    assert "pretrain" in proc.stdout


# ----------------------------------------------------------------------------- pretrain

def test_pretrain_writes_checkpoint_metrics_and_plots(simclr_run):
    out, proc = simclr_run
    assert "epoch 2/2" in proc.stdout
    meta = checkpoint.load(out / "checkpoint.npz")
    assert meta["method"] == "simclr" and meta["data"] == "digits" and meta["epoch"] == 2
    assert meta["seed"] == 3 and meta["batch_size"] == 128 and meta["limit"] == 256
    with open(out / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        for key in ("loss", "lr", "embedding_std"):
            assert isinstance(r[key], float) and np.isfinite(r[key]), (key, r)
        assert r["lr"] == 1e-3
        assert 0 < r["embedding_std"] < 1
    assert records == meta["history"]
    if HAVE_MPL:
        for name in ("loss.png", "pca.png"):
            with open(out / name, "rb") as f:
                assert f.read(8) == PNG_MAGIC, name
    # Nothing half-written left behind.
    assert not [p for p in os.listdir(out) if "tmp" in p]


def test_the_checkpoint_restores_the_trained_model(simclr_run):
    out, _ = simclr_run
    d = data.digits()
    random.manual_seed(12345)                      # other initial weights than the run's
    m = methods.build("simclr", d)
    checkpoint.load(out / "checkpoint.npz", m)
    z = arrays_of(out / "checkpoint.npz")
    for name, a in m.state_dict().items():
        np.testing.assert_array_equal(a, z["model/" + name])


def test_resume_is_bitwise_an_uninterrupted_run(simclr_run, tmp_path):
    two, _ = simclr_run
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    shutil.copytree(two, resumed)
    proc = run_cli("pretrain", "simclr", "--epochs", 3, "--out", resumed, "--resume", *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 3/3" in proc.stdout and "epoch 1/3" not in proc.stdout
    proc = run_cli("pretrain", "simclr", "--epochs", 3, "--out", straight, *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert_same_state(resumed / "checkpoint.npz", straight / "checkpoint.npz")
    assert losses_of(resumed) == losses_of(straight)        # exact floats, 3 lines each


def test_resume_of_a_finished_run_does_nothing(simclr_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(simclr_run[0], out)
    before = (out / "checkpoint.npz").read_bytes()
    proc = run_cli("pretrain", "simclr", "--epochs", 2, "--out", out, "--resume", *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    assert (out / "checkpoint.npz").read_bytes() == before


@pytest.mark.parametrize("change,flag", [(["--seed", "4"], "--seed"),
                                         (["--optimizer", "sgd"], "--optimizer"),
                                         (["--lr", "0.01"], "--lr"),
                                         (["--limit", "128"], "--limit")])
def test_resume_with_other_options_is_refused(simclr_run, tmp_path, change, flag):
    out = tmp_path / "run"
    shutil.copytree(simclr_run[0], out)
    before = (out / "checkpoint.npz").read_bytes()
    proc = run_cli("pretrain", "simclr", "--epochs", 3, "--out", out, "--resume", *QUICK,
                   *change)                                # the last value of a flag wins
    assert_usage_error(proc, flag, "same value")
    assert (out / "checkpoint.npz").read_bytes() == before


def _interrupted_then_resumed(method, tmp_path, monkeypatch, epochs=2, kill_after=1,
                              extra=()):
    """Run ``method`` for ``epochs`` in-process, killed (KeyboardInterrupt) right after the
    checkpoint of epoch ``kill_after``, then resumed; and the same run uninterrupted."""
    args = ["pretrain", method, "--epochs", str(epochs), *QUICK, *extra]
    real_save = checkpoint.save
    calls = []

    def save_then_die(*a, **k):
        path = real_save(*a, **k)
        calls.append(k["epoch"])
        if k["epoch"] == kill_after:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    assert cli.main(args + ["--out", str(tmp_path / "resumed")]) == 130
    assert calls == list(range(1, kill_after + 1))
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert checkpoint.load(tmp_path / "resumed" / "checkpoint.npz")["epoch"] == kill_after
    assert cli.main(args + ["--out", str(tmp_path / "resumed"), "--resume"]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "straight")]) == 0
    return tmp_path / "resumed", tmp_path / "straight"


TEXT = ["--data", "text", "--batch-size", "16", "--limit", "32"]


@pytest.mark.parametrize("method,extra", [
    ("byol", []), ("moco", []), ("gpt", TEXT), ("mlm", TEXT),
    ("ar", ["--data", "ar", "--batch-size", "32", "--limit", "64"])],
    ids=["byol", "moco", "gpt", "mlm", "ar"])
def test_killed_run_resumes_bitwise(method, extra, tmp_path, monkeypatch, capsys):
    """BYOL's EMA rate follows a schedule over all the run's steps, MoCo keeps a queue of
    keys and a pointer (buffers), the text and series methods cut their data into windows
    and mask at random: all must continue exactly where the kill left them."""
    resumed, straight = _interrupted_then_resumed(method, tmp_path, monkeypatch,
                                                  extra=extra)
    assert_same_state(resumed / "checkpoint.npz", straight / "checkpoint.npz")
    assert losses_of(resumed) == losses_of(straight)


def test_killed_run_resumes_the_global_random_stream(tmp_path, monkeypatch, capsys):
    """Dropout draws from minissl's default generator: a resumed run must restore its state
    (saved with each checkpoint), or its masks, and so its weights, would differ."""
    from minissl import nn
    from minissl.methods import simclr

    def build_with_dropout(d, **overrides):
        encoder = nn.Sequential(nn.MLPEncoder(64, (256, 256)), nn.Dropout(0.3))
        return simclr.SimCLR(d.image_shape, simclr.SimCLRConfig(**overrides),
                             encoder=encoder, feature_dim=256)

    monkeypatch.setattr(simclr, "build_with_dropout", build_with_dropout, raising=False)
    monkeypatch.setitem(methods.METHODS, "dropclr",
                        ("simclr", "build_with_dropout", "test", "images"))
    resumed, straight = _interrupted_then_resumed("dropclr", tmp_path, monkeypatch)
    assert_same_state(resumed / "checkpoint.npz", straight / "checkpoint.npz")


def test_a_log_line_after_the_last_checkpoint_is_rewritten_on_resume(simclr_run, tmp_path):
    """A kill between the checkpoint and the log line of an epoch, or after a log line whose
    checkpoint never landed: the resumed run's metrics.jsonl is the checkpoint's history."""
    out = tmp_path / "run"
    shutil.copytree(simclr_run[0], out)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "loss": -1.0}) + "\n")
    proc = run_cli("pretrain", "simclr", "--epochs", 3, "--out", out, "--resume", *QUICK)
    assert proc.returncode == 0, proc.stderr
    with open(out / "metrics.jsonl") as f:
        epochs = [json.loads(line)["epoch"] for line in f]
    assert epochs == [1, 2, 3]
    assert -1.0 not in losses_of(out)


def test_a_new_run_replaces_an_old_log(simclr_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(simclr_run[0], out)
    proc = run_cli("pretrain", "simclr", "--epochs", 1, "--out", out, *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert len(losses_of(out)) == 1


# ----------------------------------------------------------------------------- atomic writes

def _fail_while_writing(monkeypatch):
    """Make np.savez write some bytes, then die as a killed process would."""
    def broken_savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip archive")
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", broken_savez)


def test_a_run_killed_while_saving_keeps_the_previous_checkpoint(simclr_run, tmp_path,
                                                                  monkeypatch, capsys):
    out = tmp_path / "run"
    shutil.copytree(simclr_run[0], out)
    before = (out / "checkpoint.npz").read_bytes()
    log_before = (out / "metrics.jsonl").read_text()
    _fail_while_writing(monkeypatch)
    code = cli.main(["pretrain", "simclr", "--epochs", "3", "--out", str(out), "--resume",
                     *QUICK])
    assert code == 130
    assert (out / "checkpoint.npz").read_bytes() == before
    assert checkpoint.load(out / "checkpoint.npz")["epoch"] == 2
    assert (out / "metrics.jsonl").read_text() == log_before    # no line for a lost epoch
    assert sorted(os.listdir(out)) == sorted(os.listdir(simclr_run[0]))   # no temp file


def test_embed_killed_while_writing_leaves_no_file(simclr_run, tmp_path, monkeypatch, capsys):
    target = tmp_path / "emb.npz"
    _fail_while_writing(monkeypatch)
    assert cli.main(["embed", "--checkpoint", str(simclr_run[0] / "checkpoint.npz"),
                     "--out", str(target)]) == 130
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- eval / embed

@pytest.mark.parametrize("protocol", ["linear", "knn", "finetune"])
def test_eval_prints_one_json_line(simclr_run, protocol):
    ckpt = simclr_run[0] / "checkpoint.npz"
    proc = run_cli("eval", "--checkpoint", ckpt, "--protocol", protocol,
                   "--labels-per-class", 3, "--draws", 2)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    r = json.loads(lines[0])
    assert r["protocol"] == protocol and r["labels_per_class"] == 3
    assert r["method"] == "simclr" and r["data"] == "digits" and r["epoch"] == 2
    # Ten classes: a trained encoder is far above chance even with 3 labels per class.
    assert 0.3 < r["accuracy"] <= 1.0


def test_embed_writes_features_and_labels_of_both_splits(simclr_run, tmp_path):
    target = tmp_path / "emb.npz"
    proc = run_cli("embed", "--checkpoint", simclr_run[0] / "checkpoint.npz", "--out", target)
    assert proc.returncode == 0, proc.stderr
    z = arrays_of(target)
    assert sorted(z) == ["test_features", "test_labels", "train_features", "train_labels"]
    d = data.digits()
    for split, x, y in (("train", d.train_x, d.train_y), ("test", d.test_x, d.test_y)):
        f, labels = z[f"{split}_features"], z[f"{split}_labels"]
        assert f.dtype == np.float32 and f.shape == (len(x), 256)
        assert labels.dtype == np.int64 and labels.shape == (len(x),)
        np.testing.assert_array_equal(labels, y)
        assert np.isfinite(f).all()
    # The features are the checkpoint's encoder's.
    m = methods.build("simclr", d)
    checkpoint.load(simclr_run[0] / "checkpoint.npz", m)
    np.testing.assert_array_equal(m.features(d.test_x), z["test_features"])


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, simclr_run):
    """Broken checkpoints, and a BYOL run directory (a checkpoint of another model)."""
    root = tmp_path_factory.mktemp("bad")
    good = (simclr_run[0] / "checkpoint.npz").read_bytes()
    (root / "random.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "truncated.npz").write_bytes(good[:len(good) // 2])
    (root / "empty.npz").write_bytes(b"")
    d = data.digits()
    byol = methods.build("byol", d)
    meta = dict(method="byol", data="digits", epoch=1, seed=3, batch_size=128, limit=256,
                history=[])
    (root / "byol").mkdir()
    checkpoint.save(root / "byol" / "checkpoint.npz", byol, **meta)
    gpt = methods.build("gpt", data.load("text"))
    checkpoint.save(root / "gpt.npz", gpt, **{**meta, "method": "gpt", "data": "text"})
    # The BYOL model under a SimCLR label: caught by the model check, not the metadata.
    (root / "mislabelled").mkdir()
    checkpoint.save(root / "mislabelled" / "checkpoint.npz", byol, **{**meta,
                                                                     "method": "simclr"})
    return root


BAD_ARGS = [
    (["pretrain", "nosuch"], ["unknown method 'nosuch'"]),
    (["pretrain", "simclr", "--data", "nosuch"], ["--data nosuch", "not a data set",
                                                  "nor an existing file"]),
    (["pretrain", "gpt", "--data", "digits"], ["gpt trains on text", "images"]),
    (["pretrain", "simclr", "--epochs", "-1"], ["--epochs", "> 0"]),
    (["pretrain", "simclr", "--epochs", "abc"], ["--epochs", "not a number"]),
    (["pretrain", "simclr", "--epochs", "2.5"], ["--epochs"]),
    (["pretrain", "simclr", "--batch-size", "0"], ["--batch-size"]),
    (["pretrain", "simclr", "--lr", "inf"], ["--lr", "finite"]),
    (["pretrain", "simclr", "--lr", "nan"], ["--lr"]),
    (["pretrain", "simclr", "--seed", "-3"], ["--seed"]),
    (["pretrain", "simclr", "--optimizer", "rmsprop"], ["--optimizer"]),
    (["pretrain", "simclr", "--device", "tpu"], ["--device"]),
    (["eval", "--protocol", "linear"], ["--checkpoint"]),
    (["eval", "--checkpoint", "{bad}/missing.npz"], ["not found"]),
    (["eval", "--checkpoint", "{bad}"], ["not a file"]),
    (["eval", "--checkpoint", "{bad}/random.npz"], ["corrupt"]),
    (["eval", "--checkpoint", "{bad}/truncated.npz"], ["corrupt"]),
    (["eval", "--checkpoint", "{bad}/empty.npz"], ["corrupt"]),
    (["eval", "--checkpoint", "{bad}/mislabelled/checkpoint.npz"], ["another model"]),
    (["eval", "--checkpoint", "{good}", "--data", "shapes"], ["does not fit", "shapes"]),
    (["eval", "--checkpoint", "{good}", "--labels-per-class", "1000"], ["fewer than"]),
    (["eval", "--checkpoint", "{bad}/gpt.npz", "--data", "digits"], ["gpt trains on text",
                                                                     "'digits' is images"]),
    (["embed", "--checkpoint", "{bad}/random.npz", "--out", "{bad}/e.npz"], ["corrupt"]),
    (["embed", "--checkpoint", "{good}", "--out", "{bad}/no/such/dir/e.npz"], ["folder"]),
    (["embed", "--checkpoint", "{good}", "--out", "{bad}/e.txt"], [".npz"]),
    (["pretrain", "simclr", "--resume", "--out", "{bad}/nodir", *QUICK], ["no checkpoint"]),
    (["pretrain", "simclr", "--resume", "--out", "{bad}/byol", "--epochs", "2", *QUICK],
     ["holds byol", "not simclr"]),
    (["pretrain", "simclr", "--resume", "--out", "{bad}/mislabelled", "--epochs", "2", *QUICK],
     ["another model"]),
    (["frobnicate"], ["invalid choice"]),
]


@pytest.mark.parametrize("argv,needles", BAD_ARGS,
                         ids=[" ".join(a[:3]) + ("..." if len(a) > 3 else "")
                              for a, _ in BAD_ARGS])
def test_bad_input_exits_2_with_one_line(argv, needles, bad_files, simclr_run):
    good = str(simclr_run[0] / "checkpoint.npz")
    argv = [a.format(bad=bad_files, good=good) for a in argv]
    before = sorted(os.listdir(bad_files))
    assert_usage_error(run_cli(*argv, cwd=bad_files), *needles)
    assert sorted(os.listdir(bad_files)) == before      # nothing written on failure


def test_cuda_without_cupy_is_a_usage_error(tmp_path):
    from minissl.backend import is_cuda_available
    if is_cuda_available():
        pytest.skip("a CUDA GPU is available here")
    proc = run_cli("pretrain", "simclr", "--device", "cuda", "--out", tmp_path / "r", *QUICK)
    assert_usage_error(proc, "cuda")
    assert not (tmp_path / "r").exists()


def test_long_error_messages_are_cut_to_one_short_line(monkeypatch, capsys):
    """A library error with a huge or multi-line message still gives one short line."""
    def boom(args):
        raise ValueError("x" * 5000 + "\nsecond line")
    parser = cli.make_parser()

    class OneCommand:
        def parse_args(self, argv):
            args = parser.parse_args(["list"])
            args.fn = boom
            return args
    monkeypatch.setattr(cli, "make_parser", OneCommand)
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minissl: error: xxx")
    assert len(err) <= len("minissl: error: ") + cli.MAX_MESSAGE + 1


# ----------------------------------------------------------------------------- demo

def test_demo_prints_the_comparison_table(tmp_path, capsys):
    """``minissl demo`` end to end at toy size (one epoch, one draw, 1 label per class)."""
    from minissl.demo import run_demo
    assert run_demo(out=str(tmp_path), epochs=1, labels=(1,), draws=1, progress=False) == 0
    out = capsys.readouterr().out
    rows = {}
    for name in ("SimCLR encoder", "raw pixels", "random-init encoder"):
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        rows[name] = float(line.split()[-1])
        assert 0.0 <= rows[name] <= 1.0
    assert rows["raw pixels"] > 0.3                  # well above chance (0.1) with 10 labels
    assert "1/class" in out and str(tmp_path) in out
    meta = checkpoint.load(tmp_path / "checkpoint.npz")
    assert meta["method"] == "simclr" and meta["epoch"] == 1
    if HAVE_MPL:
        assert (tmp_path / "loss.png").read_bytes()[:8] == PNG_MAGIC
