"""benchmarks/make_spoken_digits.py, run against a fake espeak-ng on PATH (a tone per word):
the folder it writes is what the WAV-folder loader reads, seeded, and every failure is one
line and exit status 2 with nothing half-written."""
import os
import subprocess
import sys
import wave

import numpy as np
import pytest

from minissl.data.user import from_path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "make_spoken_digits.py")

# espeak-ng's command line as the script calls it: -v VOICE -s WPM -p PITCH -w FILE WORD;
# writes 22050 Hz mono 16-bit like the real one, silence around a tone of the word's pitch.
FAKE = """#!{python}
import math, sys, wave
args = sys.argv[1:]
if {fail}:
    print("fake espeak-ng: voice not found", file=sys.stderr)
    sys.exit(1)
opt = dict(zip(args[:-1:2], args[1:-1:2]))
word, rate = args[-1], 22050
freq = 150.0 + 40.0 * (sum(map(ord, word)) % 17) + int(opt["-p"])
n = int(rate * 0.3 * 175 / int(opt["-s"]))
pad = [0] * 2000
tone = [int(12000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)]
with wave.open(opt["-w"], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate)
    w.writeframes(b"".join(v.to_bytes(2, "little", signed=True) for v in pad + tone + pad))
"""


def _fake_path(tmp_path, fail=False):
    bin_dir = tmp_path / ("bad_bin" if fail else "bin")
    bin_dir.mkdir()
    exe = bin_dir / "espeak-ng"
    exe.write_text(FAKE.format(python=sys.executable, fail=fail))
    exe.chmod(0o755)
    return str(bin_dir)


def _run(args, path):
    env = dict(os.environ, PATH=path)
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          env=env)


@pytest.fixture
def fake_espeak(tmp_path):
    if os.name != "posix":
        pytest.skip("the fake espeak-ng is a script with a #! line")
    return _fake_path(tmp_path)


def test_writes_a_folder_the_loader_reads(tmp_path, fake_espeak):
    out = tmp_path / "digits"
    run = _run(["--out", str(out), "--per-digit", "3", "--length", "2048"], fake_espeak)
    assert run.returncode == 0, run.stderr
    d = from_path(str(out), audio="clips")          # as `minissl pretrain --data DIR` reads it
    assert sorted(d.class_names) == sorted(["zero", "one", "two", "three", "four", "five",
                                            "six", "seven", "eight", "nine"])
    assert d.num_classes == 10 and d.sample_rate == 8000 and d.clip_length == 2048
    assert len(d.train_x) + len(d.test_x) == 30
    assert np.bincount(np.concatenate([d.train_y, d.test_y])).tolist() == [3] * 10
    with wave.open(str(out / "seven" / "seven_0002.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
    # every clip holds its word: louder than the noise floor somewhere, and under full scale
    x = np.concatenate([d.train_x, d.test_x])
    assert (np.abs(x).max(axis=1) > 0.25).all() and np.abs(x).max() <= 1.0
    assert len((out / "voices.csv").read_text().splitlines()) == 31     # a header, a clip a row
    assert sorted(os.listdir(tmp_path)) == ["bin", "digits"]      # no temporary folder left


def test_seeded(tmp_path, fake_espeak):
    def clips(name, seed):
        out = tmp_path / name
        assert _run(["--out", str(out), "--per-digit", "1", "--length", "1024",
                     "--seed", str(seed)], fake_espeak).returncode == 0
        return (out / "two" / "two_0000.wav").read_bytes()
    first = clips("a", 0)
    assert clips("b", 0) == first and clips("c", 1) != first


def test_without_espeak_ng_one_line_and_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = _run(["--out", str(tmp_path / "digits")], str(empty))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "espeak-ng is not installed" in run.stderr
    assert "apt-get install espeak-ng" in run.stderr
    assert not (tmp_path / "digits").exists()


def test_failures_leave_nothing_half_written(tmp_path, fake_espeak):
    out = tmp_path / "digits"
    out.mkdir()
    run = _run(["--out", str(out)], fake_espeak)
    assert run.returncode == 2 and "exists already" in run.stderr
    assert run.stderr.count("\n") == 1
    bad = _fake_path(tmp_path, fail=True)
    run = _run(["--out", str(tmp_path / "new"), "--per-digit", "2"], bad)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "espeak-ng failed" in run.stderr and "voice not found" in run.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad_bin", "bin", "digits"]
