"""Your own data and settings from the command line: ``--data PATH``, ``--set``, ``--config``,
``--data-root``, ``minissl list METHOD``, the learning-rate schedule and weight decay.

A folder of PNGs in class subfolders, an .npz file, a text file and a folder of WAVs are made
here and each is pretrained on, evaluated and embedded, for real (``python -m minissl``), in
runs of one epoch on a few dozen examples.
"""
import json
import os
import shlex
import sys
import wave

import numpy as np
import pytest

from minissl import cli, clidata
from minissl.data import user

from test_cli import (ROOT, _interrupted_then_resumed, arrays_of, assert_same_state,
                      assert_usage_error, run_cli)

FAST = ["--epochs", "1", "--batch-size", "8", "--no-progress", "--no-plots"]


def write_pngs(folder, classes=("cat", "dog"), n=6, size=(12, 10)):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(folder / c, exist_ok=True)
        for i in range(n):
            pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{i}.png")


def write_wav(path, samples, rate=8000, channels=1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, "<i2").tobytes())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("owndata")
    rng = np.random.default_rng(1)
    np.savez(root / "images.npz", x=(rng.random((24, 8, 8)) * 255).astype(np.uint8),
             y=np.arange(24) % 3)
    (root / "story.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    (root / "wavs").mkdir()
    for i in range(2):
        write_wav(root / "wavs" / f"clip{i}.wav", rng.standard_normal(1200) * 3000)
    for c in ("hum", "hiss"):   # labelled clips of different lengths, for the audio methods
        (root / "sounds" / c).mkdir(parents=True)
        for i in range(5):
            write_wav(root / "sounds" / c / f"{i}.wav", rng.standard_normal(300 + 20 * i) * 3000)
    return root


KINDS = {   # --data, method, extra pretrain arguments, eval arguments
    "pngs": ("pngs", "simclr", ["--image-size", "8", "--set", "proj_dim=16"],
             ["--protocol", "knn", "--labels-per-class", "2"]),
    "npz": ("images.npz", "autoencoder", [], ["--labels-per-class", "2", "--draws", "1"]),
    "text": ("story.txt", "gpt", ["--set", "n_layer=1", "--set", "n_embd=16",
                                  "--set", "block_size=8"], []),
    "wav": ("wavs", "ar", ["--set", "order=2"], []),
    "wavclips": ("sounds", "denoising_audio", ["--set", "channels=4", "--set", "max_snr_db=5.0"],
                 ["--labels-per-class", "2", "--draws", "1"]),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_pretrain_eval_embed_on_each_kind_of_file(kind, files, tmp_path):
    name, method, extra, ev = KINDS[kind]
    if kind == "pngs":
        pytest.importorskip("PIL")
        if not (files / "pngs").exists():
            write_pngs(files / "pngs")
    ckpt = tmp_path / "run" / "checkpoint.npz"
    proc = run_cli("pretrain", method, "--data", files / name, "--out", tmp_path / "run",
                   *FAST, *extra)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("eval", "--checkpoint", ckpt, *ev)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["data"] == str(files / name) and result["method"] == method
    for pair in extra[1::2]:   # the settings used are shown, with the defaults
        if "=" in pair:
            key, value = pair.split("=")
            assert str(result["settings"][key]) == value
    assert np.isfinite(result["accuracy" if "accuracy" in result else "loss"])
    out = tmp_path / "e.npz"
    proc = run_cli("embed", "--checkpoint", ckpt, "--out", out)
    assert proc.returncode == 0, proc.stderr
    z = arrays_of(out)
    assert z["train_features"].ndim == 2 and len(z["test_features"]) > 0
    if kind == "pngs":   # the file of each feature row, with its class
        assert len(z["train_files"]) == len(z["train_features"]) == 10
        for f, label in zip(z["test_files"], z["test_labels"]):
            assert os.path.basename(os.path.dirname(f)) == ["cat", "dog"][label]
    if kind == "wavclips":   # one clip per file, its class and the method's own figures
        assert len(z["train_features"]) == 8 and z["train_features"].shape[1] == 4
        for f, label in zip(z["test_files"], z["test_labels"]):
            assert os.path.basename(os.path.dirname(f)) == ["hiss", "hum"][label]
        assert result["snr_in"] == pytest.approx(5.0, abs=0.5) and "snr_out" in result
    if kind == "wav":   # windows of 256 samples: four per 1200-sample clip
        assert len(z["train_files"]) + len(z["test_files"]) == 8
        assert str(z["train_files"][0]).startswith(str(files / "wavs" / "clip"))


def test_settings_are_stored_and_a_resume_must_repeat_them(files, tmp_path):
    cfg = tmp_path / "simclr.json"
    cfg.write_text(json.dumps({"temperature": 0.3, "proj_dim": 8}))
    args = ["pretrain", "simclr", "--data", "digits", "--limit", "32", *FAST,
            "--out", tmp_path / "run", "--config", cfg, "--set", "proj_dim=12"]
    assert run_cli(*args).returncode == 0
    meta = json.loads(str(np.load(tmp_path / "run" / "checkpoint.npz")["extra"]))
    assert meta["config"]["temperature"] == 0.3 and meta["config"]["proj_dim"] == 12
    assert meta["settings"] == {"temperature": 0.3, "proj_dim": 12}
    ev = run_cli("eval", "--checkpoint", tmp_path / "run" / "checkpoint.npz",
                 "--protocol", "knn", "--labels-per-class", "2")
    assert ev.returncode == 0 and json.loads(ev.stdout)["settings"]["proj_dim"] == 12
    again = [a for a in args if a not in ("--set", "proj_dim=12")]
    again[again.index("1")] = "2"   # --epochs 2
    assert_usage_error(run_cli(*again, "--resume"), "proj_dim=12", "proj_dim=8",
                       "same settings")


def test_toml_config(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text("temperature = 0.25\njoint_batch = false\n")
    from minissl import settings
    from minissl.methods.simclr import SimCLRConfig
    assert settings.parse(SimCLRConfig, ["temperature=0.1"], str(cfg)) == {
        "temperature": 0.1, "joint_batch": False}


BAD = [   # arguments, words the one error line must hold
    (["pretrain", "simclr", "--set", "temprature=0.1"], ["unknown setting 'temprature'",
                                                        "temperature"]),
    (["pretrain", "simclr", "--set", "proj_dim=1.5"], ["proj_dim='1.5'", "not int"]),
    (["pretrain", "simclr", "--set", "joint_batch=maybe"], ["joint_batch", "not bool"]),
    (["pretrain", "simclr", "--set", "temperature=nan"], ["temperature", "not finite"]),
    (["pretrain", "simclr", "--set", "temperature"], ["expected KEY=VALUE"]),
    (["pretrain", "simclr", "--config", "{d}/bad.json"], ["bad.json", "not valid JSON"]),
    (["pretrain", "simclr", "--config", "{d}/list.json"], ["list.json", "one table"]),
    (["pretrain", "simclr", "--config", "{d}/typo.json"], ["typo.json", "unknown setting"]),
    (["pretrain", "simclr", "--config", "{d}/wrongtype.json"], ["wrongtype.json",
                                                                "temperature='hot'"]),
    (["pretrain", "simclr", "--config", "{d}/none.json"], ["none.json", "no such file"]),
    (["pretrain", "simclr", "--data", "{d}/empty"], ["empty", "no image"]),
    (["pretrain", "simclr", "--data", "{d}/mixed"], ["mixed", "keep one kind"]),
    (["pretrain", "simclr", "--data", "{d}/badpng"], ["broken.png", "not a readable image"]),
    (["pretrain", "ar", "--data", "{d}/badwav"], ["broken.wav", "not a readable WAV"]),
    (["pretrain", "ar", "--data", "{d}/shortwav"], ["short.wav", "truncated"]),
    (["pretrain", "autoencoder", "--data", "{d}/broken.npy"], ["broken.npy",
                                                               "not a readable NumPy"]),
    (["pretrain", "autoencoder", "--data", "{d}/nox.npz"], ["nox.npz", "needs an array 'x'"]),
    (["pretrain", "autoencoder", "--data", "{d}/floats.npy"], ["floats.npy", "[0, 1]"]),
    (["pretrain", "autoencoder", "--data", "{d}/notes.csv"], ["notes.csv", "not a data file"]),
    (["pretrain", "simclr", "--data", "{d}/bad.txt"], ["simclr trains on images",
                                                      "is text", "gpt, mlm"]),
    (["pretrain", "simclr", "--data", "{w}"], ["is series", "WAV", "methods for series"]),
    (["pretrain", "simclr", "--data", "mnist", "--data-root", "{d}/empty"],
     ["--data-root DIR", "MINISSL_DATA"]),
    (["pretrain", "simclr", "--schedule", "constant", "--warmup-epochs", "1", "--data",
      "digits"], ["--warmup-epochs needs --schedule cosine"]),
    (["list", "nosuch"], ["unknown method 'nosuch'"]),
]


@pytest.fixture(scope="module")
def bad_dir(files):
    d = files / "bad"
    d.mkdir()
    (d / "bad.json").write_text("{temperature: 0.1")
    (d / "list.json").write_text("[1, 2]")
    (d / "typo.json").write_text('{"temprature": 0.1}')
    (d / "wrongtype.json").write_text('{"temperature": "hot"}')
    (d / "empty").mkdir()
    (d / "mixed").mkdir()
    (d / "mixed" / "a.png").write_bytes(b"x")
    (d / "mixed" / "b.txt").write_text("x")
    (d / "badpng").mkdir()
    (d / "badpng" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "badwav").mkdir()
    (d / "badwav" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    (d / "shortwav").mkdir()
    write_wav(d / "shortwav" / "short.wav", np.zeros(600))
    raw = (d / "shortwav" / "short.wav").read_bytes()
    (d / "shortwav" / "short.wav").write_bytes(raw[:len(raw) // 2])
    (d / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    np.savez(d / "nox.npz", images=np.zeros((4, 8, 8)))
    np.save(d / "floats.npy", np.full((4, 8, 8), 3.0))
    (d / "notes.csv").write_text("1,2\n")
    (d / "bad.txt").write_text("some text " * 50)
    return d


@pytest.mark.parametrize("argv,needles", BAD, ids=[" ".join(a[1:4]) for a, _ in BAD])
def test_bad_settings_and_files_exit_2_with_one_line(argv, needles, bad_dir, files):
    if "badpng" in " ".join(argv):
        pytest.importorskip("PIL")
    argv = [a.format(d=bad_dir, w=files / "wavs") for a in argv]
    quick = FAST[:2] if argv[0] == "pretrain" else []
    assert_usage_error(run_cli(*argv, *quick), *needles)


def test_without_pillow_an_image_folder_is_refused_in_one_line(files, monkeypatch, capsys):
    (files / "nopil").mkdir(exist_ok=True)
    (files / "nopil" / "a.png").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "PIL", None)     # import PIL raises ImportError
    assert cli.main(["pretrain", "simclr", "--data", str(files / "nopil"), "--out",
                     str(files / "nopil-run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs Pillow" in err[0] and "minissl[images]" in err[0]


def test_list_shows_a_methods_settings_and_where_data_files_go():
    proc = run_cli("list", "simclr")
    assert proc.returncode == 0
    assert "temperature = 0.5" in proc.stdout and "tau of NT-Xent" in proc.stdout
    proc = run_cli("list")
    assert "mnist" in proc.stdout and "needs files" in proc.stdout
    assert "--data-root" in proc.stdout and "MINISSL_DATA" in proc.stdout


def write_idx(path, array):
    array = np.asarray(array, np.uint8)
    head = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    path.write_bytes(head + array.tobytes())


def test_data_root_finds_mnist_before_the_variable(tmp_path, monkeypatch):
    folder = tmp_path / "mine" / "mnist"
    folder.mkdir(parents=True)
    for split, n in (("train", 6), ("t10k", 4)):
        write_idx(folder / f"{split}-images-idx3-ubyte", np.full((n, 28, 28), 255))
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    monkeypatch.setenv("MINISSL_DATA", str(tmp_path / "elsewhere"))
    d = clidata.load("mnist", "images", root=str(tmp_path / "mine"))
    assert d.train_x.shape == (6, 1, 28, 28) and d.train_x.max() == 1.0


def test_an_unlabelled_image_folder_embeds_but_does_not_evaluate(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image
    for i in range(6):   # greyscale, no subfolders: one channel, no labels
        Image.fromarray(np.full((9, 14), 20 * i, np.uint8)).save(tmp_path / f"{i}.jpg")
    d = user.from_path(tmp_path, image_size=6)
    assert d.image_shape == (1, 6, 6) and not d.labelled
    assert len(d.train_files) + len(d.test_files) == 6
    # centre crop: a 14-wide image scaled to height 6 keeps its middle columns
    assert np.allclose(d.train_x[0], d.train_x[0].mean(), atol=1e-6)


def test_cosine_schedule_and_weight_decay(tmp_path):
    proc = run_cli("pretrain", "simclr", "--data", "digits", "--limit", "32", "--epochs", "2",
                   "--batch-size", "16", "--no-progress", "--no-plots", "--out", tmp_path,
                   "--schedule", "cosine", "--warmup-epochs", "1", "--lr", "0.01",
                   "--optimizer", "adamw", "--weight-decay", "0")
    assert proc.returncode == 0, proc.stderr
    lrs = [json.loads(line)["lr"] for line in open(tmp_path / "metrics.jsonl")]
    assert lrs == [pytest.approx(0.01), 0.0]   # warm-up ends at the peak; cosine ends at 0
    meta = json.loads(str(np.load(tmp_path / "checkpoint.npz")["extra"]))
    assert meta["weight_decay"] == 0.0 and meta["schedule"] == "cosine"


def test_adamw_takes_a_weight_decay_of_zero():
    from minissl import data, methods
    from minissl.train import make_optimizer
    m = methods.build("simclr", data.digits())
    assert make_optimizer(m, "adamw", weight_decay=0.0).param_groups[0]["weight_decay"] == 0
    assert make_optimizer(m, "adamw").param_groups[0]["weight_decay"] == 1e-2


def readme_commands():
    """The commands of the README's "Your own data" section, one per line."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("## Your own data"):]
    block = section[section.index("```sh\n") + 6:section.index("```", section.index("```sh") + 5)]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_readmes_own_data_commands_run(tmp_path):
    """Each command of the README section, on small files of the names it uses, with the
    epochs cut to one (and the warm-up with them)."""
    pytest.importorskip("PIL")
    write_pngs(tmp_path / "photos")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "arrays.npz", x=rng.random((20, 1, 8, 8)).astype(np.float32),
             y=np.arange(20) % 2)
    (tmp_path / "ae.json").write_text('{"recon_loss": "mse"}')
    (tmp_path / "notes.txt").write_text("notes on self-supervised learning. " * 30)
    (tmp_path / "recordings").mkdir()
    write_wav(tmp_path / "recordings" / "a.wav", rng.standard_normal(2048) * 1000)
    for c in ("bark", "meow"):
        (tmp_path / "sounds" / c).mkdir(parents=True)
        for i in range(5):
            write_wav(tmp_path / "sounds" / c / f"{i}.wav", rng.standard_normal(512) * 1000)
    folder = tmp_path / "datasets" / "mnist"
    folder.mkdir(parents=True)
    for split, n in (("train", 8), ("t10k", 4)):
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    commands = readme_commands()
    assert len(commands) >= 8
    for argv in commands:
        assert argv[0] == "minissl", argv
        argv = argv[1:]
        for flag in ("--epochs", "--warmup-epochs"):
            if flag in argv:
                argv[argv.index(flag) + 1] = "1"
        if argv[0] == "pretrain":
            argv += ["--batch-size", "8", "--no-progress", "--no-plots"]
        proc = run_cli(*argv, cwd=tmp_path)
        assert proc.returncode == 0, (argv, proc.stderr)
    assert set(arrays_of(tmp_path / "photos.npz")) >= {"train_features", "train_files"}


def test_knn_monitor_in_the_log_the_line_the_plot_and_the_bar(files, tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    if not (files / "pngs").exists():
        write_pngs(files / "pngs")
    proc = run_cli("pretrain", "simclr", "--data", files / "pngs", "--image-size", "8",
                   "--epochs", "2", "--batch-size", "8", "--no-progress", "--knn-every", "2",
                   "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    log = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert "knn_acc" not in log[0] and 0.0 <= log[1]["knn_acc"] <= 1.0
    assert "epoch 2/2" in proc.stdout and "knn_acc=" in proc.stdout
    pytest.importorskip("matplotlib")
    assert (tmp_path / "run" / "monitor.png").is_file()
    # The bar of the epoch after a monitor shows its value beside the loss.
    from minissl import data, methods, train
    shown, seen = {}, []

    class Bar(list):
        def set_postfix(self, **kv):
            seen.append(kv)

    monkeypatch.setattr(train, "_progress", lambda it, *a: Bar(it))
    m = methods.build("simclr", data.digits())
    train.pretrain(m, data.digits().train_x[:16], 2, 8, postfix=shown,
                   on_epoch_end=lambda e, r: shown.update(knn="0.5"))
    assert "knn" not in seen[0] and seen[-1]["knn"] == "0.5"


def test_monitors_need_labelled_images(tmp_path, files):
    np.save(tmp_path / "x.npy", np.zeros((10, 1, 8, 8), np.uint8))
    assert_usage_error(run_cli("pretrain", "simclr", "--data", tmp_path / "x.npy",
                               "--knn-every", "1", "--out", tmp_path / "run", *FAST),
                       "--knn-every", "no labels")
    assert_usage_error(run_cli("pretrain", "gpt", "--data", files / "story.txt",
                               "--probe-every", "1", "--out", tmp_path / "run", *FAST),
                       "--probe-every", "gpt trains on text")


def test_a_built_in_encoder_chosen_from_the_cli_is_rebuilt_by_eval(tmp_path):
    args = ["pretrain", "simclr", "--data", "digits", "--limit", "32", *FAST, "--out",
            tmp_path, "--encoder", "resnet", "--widths", "4,8"]
    assert run_cli(*args).returncode == 0
    weights = arrays_of(tmp_path / "checkpoint.npz")
    assert weights["model/encoder.blocks.1.conv2.weight"].shape == (8, 8, 3, 3)
    ev = run_cli("eval", "--checkpoint", tmp_path / "checkpoint.npz", "--protocol", "knn",
                 "--labels-per-class", "2")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["encoder"] == "resnet"
    again = args[:args.index("4,8")] + ["4,16", "--resume"]
    again[again.index("1")] = "2"
    assert_usage_error(run_cli(*again), "--widths", "[4, 8]")


@pytest.mark.parametrize("argv,needles", [
    (["pretrain", "mae", "--encoder", "mlp"], ["--encoder", "mae has its own network"]),
    (["pretrain", "simclr", "--widths", "8,16"], ["--widths needs --encoder"]),
    (["pretrain", "simclr", "--encoder", "mlp", "--widths", "8,0"], ["--widths", "1..65536"]),
    (["pretrain", "simclr", "--encoder", "vgg"], ["--encoder", "invalid choice"]),
])
def test_bad_encoder_options(argv, needles):
    assert_usage_error(run_cli(*argv), *needles)


def test_any_module_as_the_encoder_from_python():
    from minissl import data, methods, nn
    from minissl.train import pretrain
    d = data.digits()
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU())
    for name in ("byol", "rotation", "autoencoder"):
        m = methods.build(name, d, encoder=encoder, feature_dim=24)
        assert m.encoder is encoder
        pretrain(m, d.train_x[:16], 1, 8, progress=False)
        assert m.features(d.test_x[:5]).shape == (5, 24)
    mlp = nn.MLPEncoder(64, (32, 16))       # out_dim gives the feature width
    assert methods.build("simclr", d, encoder=mlp).feature_dim == 16
    with pytest.raises(ValueError, match="needs feature_dim"):
        methods.build("simclr", d, encoder=nn.Sequential(nn.Flatten()))


def test_a_cosine_schedule_resumes_exactly_and_keeps_its_length(tmp_path, monkeypatch):
    extra = ["--schedule", "cosine", "--warmup-epochs", "1", "--weight-decay", "1e-4",
             "--limit", "32", "--batch-size", "16"]
    resumed, straight = _interrupted_then_resumed("simclr", tmp_path, monkeypatch, epochs=3,
                                                  extra=extra)
    assert_same_state(resumed / "checkpoint.npz", straight / "checkpoint.npz")
    assert_usage_error(run_cli("pretrain", "simclr", "--epochs", "4", "--no-progress",
                               "--no-plots", "--seed", "3", *extra, "--out", straight,
                               "--resume"), "--schedule cosine", "whole run")


def test_a_setting_the_data_decides_is_refused(files, tmp_path):
    assert_usage_error(run_cli("pretrain", "gpt", "--data", files / "story.txt", *FAST,
                               "--set", "vocab_size=10", "--out", tmp_path),
                       "vocab_size is set from the data")


def test_too_few_examples_to_hold_out_a_test_split(tmp_path):
    np.save(tmp_path / "two.npy", np.zeros((2, 16), np.float32))
    assert_usage_error(run_cli("pretrain", "ar", "--data", tmp_path / "two.npy", *FAST,
                               "--out", tmp_path / "run"), "two.npy", "too few")


def test_no_unbounded_read(tmp_path, monkeypatch):
    """A compressed .npz that inflates past the limit, and a folder of WAVs past it, are
    refused by their sizes, before they are read."""
    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros((100, 1, 8, 8), np.float32))
    (tmp_path / "wavs").mkdir()
    write_wav(tmp_path / "wavs" / "a.wav", np.zeros(800))
    monkeypatch.setattr(user, "MAX_TOTAL_BYTES", 4000)
    assert (tmp_path / "bomb.npz").stat().st_size < 4000
    with pytest.raises(ValueError, match="bomb.npz: its arrays inflate to"):
        user.from_path(tmp_path / "bomb.npz")
    with pytest.raises(ValueError, match="bytes of audio, more than"):
        user.from_path(tmp_path / "wavs")


@pytest.mark.parametrize("meta,needles", [
    ({"settings": {"temprature": 0.1}}, ["settings", "unknown setting 'temprature'"]),
    ({"settings": {"temperature": "hot"}}, ["settings", "temperature='hot'"]),
    ({"settings": [1]}, ["'settings' is not a table"]),
    ({"encoder": "vgg"}, ["encoder='vgg'", "not a built-in encoder"]),
    ({"encoder": "resnet", "widths": [4, -1]}, ["widths=[4, -1]"]),
])
def test_a_hand_edited_checkpoint_is_refused_by_eval(meta, needles, tmp_path):
    from minissl import checkpoint, data, methods
    m = methods.build("simclr", data.digits())
    path = tmp_path / "c.npz"
    checkpoint.save(path, m, method="simclr", data="digits", epoch=1, **meta)
    assert_usage_error(run_cli("eval", "--checkpoint", path), str(path), *needles)
