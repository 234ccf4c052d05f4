"""benchmarks/bench_digits.py --mode times the digits recipe in bench_cpu.py's modes and writes
their report (one epoch, one round: this checks the harness, never a timing)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks", "bench_digits.py")
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch is not installed")


def bench(tmp_path, *args):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, BENCH, "--rounds", "1", "--epochs", "1",
                          "--json", str(out), *args], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    return json.loads(out.read_text()), run.stdout


def test_without_torch_the_recipe_is_timed_in_every_mode(tmp_path):
    report, stdout = bench(tmp_path, "--mode", "all", "--no-torch", "--method", "byol")
    assert set(report["modes"]) == {"fresh", "one-process"}
    for mode, mine in (("fresh", "minissl"), ("fresh", "minissl+tune"),
                       ("one-process", "minissl")):
        s = report["modes"][mode]["steps"][mine]["byol"]
        assert s["median_ms"] > 0 and len(s["rounds_ms"]) == 1 and s["roofline"] is None
        assert report["modes"][mode]["steps"]["torch"]["byol"]["median_ms"] is None
    assert report["modes"]["fresh"]["tuning"] is not None
    assert "digits byol recipe, 1 epochs" in stdout and "PyTorch not measured" in stdout


@needs_torch
def test_one_process_times_both_libraries_and_their_ratio(tmp_path):
    report, _ = bench(tmp_path, "--mode", "one-process")
    steps = report["modes"]["one-process"]["steps"]
    mine, theirs = steps["minissl"]["simclr"], steps["torch"]["simclr"]
    assert mine["median_ms"] > 0 and theirs["median_ms"] > 0
    r = report["modes"]["one-process"]["ratios"]["minissl vs torch"]["simclr"]
    assert r["median"] == pytest.approx(mine["median_ms"] / theirs["median_ms"])


@needs_torch
@pytest.mark.parametrize("config", ["minissl", "torch+heap"])
def test_each_fresh_worker_times_its_own_library_only(config):
    run = subprocess.run([sys.executable, BENCH, "--worker", config, "--epochs", "1",
                          "--rounds", "1", "--names", "simclr"],
                         capture_output=True, text=True, timeout=300)
    line, = [x for x in run.stdout.splitlines() if x.startswith("BENCH_RESULT ")]
    (timed,) = json.loads(line.split(" ", 1)[1])["rounds"]
    library = config.split("+")[0]
    assert set(timed) == {library, "levels"} and timed[library]["simclr"] > 0
    assert list(timed["levels"]) == [library] and min(timed["levels"][library]["simclr"]) > 0
