"""benchmarks/bench_cpu.py runs in each mode and writes a complete JSON report (one tiny
workload, one round of one step: this checks the harness, never a timing)."""
import importlib.util
import json
import os
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks", "bench_cpu.py")
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")


def bench(tmp_path, *args):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, BENCH, "--rounds", "1", "--reps", "1",
                          "--only", "mlp_simclr", "--json", str(out), *args],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(out.read_text()), run.stdout


def step(report, mode, config):
    return report["modes"][mode]["steps"][config]["mlp_simclr"]


def ratio(report, mode, key):
    return report["modes"][mode]["ratios"][key]["mlp_simclr"]


def test_without_torch_minissl_is_timed_and_the_ratios_are_n_a(tmp_path):
    report, stdout = bench(tmp_path, "--mode", "all", "--no-torch")
    assert set(report["modes"]) == {"fresh", "one-process", "paired"}
    for mode, mine, theirs in (("fresh", "minissl", "torch"), ("fresh", "minissl+tune", "torch"),
                               ("one-process", "minissl", "torch"),
                               ("paired", "minissl", "torch+heap")):
        s = step(report, mode, mine)
        assert s["median_ms"] > 0 and len(s["rounds_ms"]) == 1 and 0 < s["roofline"]
        assert step(report, mode, theirs)["median_ms"] is None
        assert ratio(report, mode, f"{mine} vs {theirs}") == {
            "median": None, "rounds": [None], "levels_apart": [False], "median_same_level": None}
    assert report["modes"]["fresh"]["tuning"]["heap"] in (True, False)
    assert "n/a" in stdout and "PyTorch not measured: --no-torch" in stdout


@needs_torch
@pytest.mark.parametrize("mode", ["fresh", "one-process", "paired"])
def test_each_mode_times_both_libraries_and_their_ratio(tmp_path, mode):
    report, stdout = bench(tmp_path, "--mode", mode)
    assert list(report["modes"]) == [mode]
    configs = {"fresh": ["minissl", "torch+heap", "minissl+tune", "torch"],
               "one-process": ["minissl", "torch"], "paired": ["minissl", "torch+heap"]}[mode]
    assert list(report["modes"][mode]["steps"]) == configs
    for config in configs:
        assert step(report, mode, config)["median_ms"] > 0
    other = configs[1]
    r = ratio(report, mode, f"minissl vs {other}")
    mine, theirs = step(report, mode, "minissl"), step(report, mode, other)
    assert r["median"] == pytest.approx(mine["median_ms"] / theirs["median_ms"])
    assert report["modes"][mode]["errors"] == [] and "n/a" not in stdout


def _optimizer(step):
    """The optimiser a workload's step closure steps (it holds the model's parameters)."""
    found = [c.cell_contents for c in step.__closure__
             if hasattr(c.cell_contents, "param_groups")]
    assert len(found) == 1
    return found[0]


@needs_torch
@pytest.mark.parametrize("name", ["mlp_simclr", "conv_simclr", "gpt_char"])
def test_the_torch_workloads_train_the_same_parameters_with_the_same_optimiser(name):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import numpy as np
        import minissl_workloads
        import torch_workloads
    finally:
        sys.path.pop(0)
    mine = _optimizer(minissl_workloads.WORKLOADS[name](np.random.default_rng(0))[0])
    theirs = _optimizer(torch_workloads.WORKLOADS[name]())
    assert type(mine).__name__ == type(theirs).__name__
    (g1,), (g2,) = mine.param_groups, theirs.param_groups
    assert sorted(p.shape for p in g1["params"]) == sorted(tuple(p.shape) for p in g2["params"])
    for key in ("lr", "momentum", "dampening", "nesterov", "betas", "eps", "weight_decay"):
        if key in g1 or key in g2:
            assert np.allclose(g1[key], g2[key]), (key, g1[key], g2[key])


@needs_torch
@pytest.mark.parametrize("config", ["minissl", "minissl+tune", "torch", "torch+heap"])
def test_each_fresh_worker_times_its_own_library_only(config):
    run = subprocess.run([sys.executable, BENCH, "--worker", config, "--reps", "1", "--rounds",
                          "1", "--names", "mlp_simclr"], capture_output=True, text=True,
                         timeout=300)
    line, = [x for x in run.stdout.splitlines() if x.startswith("BENCH_RESULT ")]
    (timed,) = json.loads(line.split(" ", 1)[1])["rounds"]
    library = config.split("+")[0]
    assert set(timed) - {"sgemm_gflops", "levels"} == {library}
    before, after = timed["levels"][library]["mlp_simclr"]
    assert set(timed["levels"]) == {library} and before > 0 and after > 0


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_cpu", BENCH)
    bench_cpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_cpu)
    return bench_cpu


class FakeWorker:
    """Answers ``paired_round``'s requests as a served worker would, with fixed step times,
    and logs them (into a log shared by both workers, to see the turns' order)."""

    def __init__(self, name, step_s, log):
        self.name, self.step_s, self.log, self.step = name, step_s, log, 0

    def ask(self, request):
        self.log.append((self.name, request))
        what, _, arg = request.partition(" ")
        if what == "build":
            return {"step_s": self.step_s, "flops": 7 if self.name == "minissl" else None}
        count, lead = arg.split()
        self.step += int(count)     # step k takes k ms: the median shows which were timed
        return {"times": [k / 1e3 for k in range(self.step - int(count) + 1, self.step + 1)]}


def test_paired_turns_alternate_and_both_libraries_take_the_same_number():
    bench_cpu = _bench_module()
    log = []
    workers = {"minissl": FakeWorker("minissl", 0.02, log),
               "torch+heap": FakeWorker("torch+heap", 0.1, log)}
    steps, flops = bench_cpu.paired_round(workers, ["w"], reps=10)
    runs = [(who, r) for who, r in log if r.startswith("run")]
    # The slower step sets the turns: 0.25 s holds 2 of PyTorch's 0.1 s steps -> 5 turns,
    # and minissl takes 10 / 5 = 2 timed steps a turn too (never more turns than PyTorch).
    assert [who for who, _ in runs] == ["minissl", "torch+heap", "torch+heap", "minissl"] * 2 \
        + ["minissl", "torch+heap"]
    assert {r for _, r in runs} == {f"run 2 {bench_cpu.LEAD_SECONDS}"}
    assert steps == {"minissl": {"w": 5.5}, "torch+heap": {"w": 5.5}} and flops == {"w": 7}


def test_a_served_worker_names_a_bad_request():
    served = _bench_module().Served("minissl")
    try:
        with pytest.raises(RuntimeError, match="minissl worker: unknown request 'fly'"):
            served.ask("fly")
        with pytest.raises(RuntimeError, match="minissl worker: run before build"):
            served.ask("run 1 0")
        with pytest.raises(RuntimeError, match="minissl worker failed: .*KeyError"):
            served.ask("build no_such_workload")
    finally:
        served.close()


def test_tables_keep_their_columns_apart_with_many_rounds(capsys):
    """A ratio cell lists every round: with 5 rounds it is wider than the default column,
    and the columns must still be separated (the table widens, it does not run together)."""
    bench_cpu = _bench_module()
    rounds = [1.11, 1.24, 1.06, 0.80, 1.03]
    cell = {"median": 1.06, "rounds": rounds}
    columns = {"minissl vs torch": {"w": cell}, "minissl+tune vs torch+heap": {"w": cell}}
    bench_cpu.print_table(columns, ["w"],
                          lambda r: f"{r['median']:.2f} ({' '.join(map(str, r['rounds']))})")
    header, row = capsys.readouterr().out.splitlines()
    assert ")  " in row and row.count("(") == 2
    assert row.index("(", row.index(")")) > header.index("minissl vs torch") + len("minissl vs torch")


def test_ops_mode_lists_where_minissls_step_goes(tmp_path):
    report, stdout = bench(tmp_path, "--mode", "ops", "--no-torch", "--top", "3")
    ops = report["modes"]["ops"]["minissl"]["mlp_simclr"]
    labels = [row[0] for row in ops["rows"]]
    assert "Linear.forward" in labels and "Linear.backward" in labels
    assert 0 < sum(row[2] for row in ops["rows"]) <= ops["wall_ms"]
    assert [row[2] for row in ops["rows"]] == sorted((row[2] for row in ops["rows"]),
                                                     reverse=True)
    assert "where a mlp_simclr step's time goes" in stdout and "more ops)" in stdout
    assert "(outside the ops)" in stdout


@needs_torch
def test_ops_mode_profiles_pytorch_beside_minissl(tmp_path):
    report, stdout = bench(tmp_path, "--mode", "ops")
    theirs = report["modes"]["ops"]["torch"]["mlp_simclr"]
    assert any(row[0] == "aten::mm" for row in theirs["rows"]) and theirs["wall_ms"] > 0
    assert "torch.profiler" in stdout and "minissl.profiler" in stdout


def test_each_mode_prints_the_machines_spread_beside_minissls(capsys):
    """With several rounds the report shows how much numpy's sgemm rate moved between rounds
    next to how much minissl's step times did (max/min - 1), so that a spread can be read
    against the machine's own."""
    bench_cpu = _bench_module()
    m = {"runs": {"minissl": [{"w": 10.0}, {"w": 12.0}, {"w": 11.0}],
                  "torch+heap": [{"w": 20.0}, {"w": 20.0}, {"w": 30.0}]},
         "sgemm_gflops": [100.0, 150.0, None], "flops": {"w": 1e9}, "tuning": None,
         "errors": []}
    table, ratios = bench_cpu.summarise(m, ["w"], (("minissl", "torch+heap"),))
    args = type("Args", (), {"rounds": 3, "reps": 5})()
    bench_cpu.print_mode("t", m, table, ratios, ["w"], args)
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("spread")]
    assert line == ["spread across rounds (max/min - 1): numpy's sgemm rate 50% (100 150 "
                    "GFLOP/s); minissl w 20%"]
    assert bench_cpu.spread([3.0, None, 4.0]) == pytest.approx(1 / 3)


def test_a_ratio_across_the_machines_speed_levels_is_marked(capsys):
    """Each timing process gauges the machine's speed before and after each workload; a
    round whose two processes' gauges (all four) are more than LEVEL_TOLERANCE apart is
    starred, and the median of the other rounds is printed (a round without a gauge, as in
    the paired mode, is not marked)."""
    bench_cpu = _bench_module()
    m = {"runs": {"minissl": [{"w": 10.0}, {"w": 13.0}, {"w": 10.0}, {"w": 11.0}],
                  "torch+heap": [{"w": 11.0}, {"w": 11.0}, {"w": 12.0}, {"w": 12.0}]},
         "levels": {"minissl": [{"w": [200.0, 198.0]}, {"w": [140.0, 142.0]},
                                {"w": [200.0, 201.0]}, {}],
                    "torch+heap": [{"w": [195.0, 200.0]}, {"w": [200.0, 199.0]},
                                   {"w": [200.0, 178.0]}, {"w": [150.0, 150.0]}]},
         "sgemm_gflops": [200.0] * 4, "flops": {"w": 1e9}, "tuning": None, "errors": []}
    table, ratios = bench_cpu.summarise(m, ["w"], (("minissl", "torch+heap"),))
    r = ratios["minissl vs torch+heap"]["w"]
    assert r["levels_apart"] == [False, True, True, False]   # round 3: PyTorch's changed
    assert r["median_same_level"] == pytest.approx(statistics.median([10 / 11, 11 / 12]))
    args = type("Args", (), {"rounds": 4, "reps": 5})()
    bench_cpu.print_mode("t", m, table, ratios, ["w"], args)
    out = capsys.readouterr().out
    assert "(0.91 1.18* 0.83* 0.92)" in out
    note = [x for x in out.splitlines() if x.startswith("*")]
    assert len(note) == 1 and note[0].endswith("minissl vs torch+heap w 0.91")
    del m["levels"]
    table, ratios = bench_cpu.summarise(m, ["w"], (("minissl", "torch+heap"),))
    assert ratios["minissl vs torch+heap"]["w"]["levels_apart"] == [False] * 4
    bench_cpu.print_mode("t", m, table, ratios, ["w"], args)
    assert "*" not in capsys.readouterr().out


def test_the_machine_level_gauge_is_a_rate():
    bench_cpu = _bench_module()
    gflops = bench_cpu.machine_level(n=64, reps=3, rest=0)
    assert 0 < gflops < 1e5
