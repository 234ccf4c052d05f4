"""minissl against PyTorch on the three CPU workloads, measured the way users run code.

    python benchmarks/bench_cpu.py [--mode fresh|one-process|paired|all|ops] [--rounds 3]
                                   [--reps 10] [--only NAME] [--no-torch] [--json FILE]
                                   [--top 12]

The workloads (one full training step each) are built in benchmarks/minissl_workloads.py and,
with the same architectures, shapes, optimisers and loss, in benchmarks/torch_workloads.py.
Every timing runs in a child process started for it, so nothing this script imports or sets
leaks into what is measured:

``fresh``  Each library in its own fresh process, a new one per library per round; the
           libraries take turns within a round. The minissl processes import NumPy before
           minissl (the usual order in a script) and run once as a user would and once after
           ``minissl.runtime.tune()`` (as the command line calls it); PyTorch runs once with
           its default settings and once with minissl's heap settings given through glibc's
           environment (``HEAP_TUNABLES``).
``one-process``  Both libraries in ONE process, PyTorch imported first (a user porting a
           model and comparing), taking turns each round; no ``tune()``.
``paired``  The fresh mode's main comparison, minissl as a user runs it against PyTorch with
           minissl's heap settings, measured so that the machine's drift cancels: per round
           one fresh process per library, both alive at once, taking turns of about 0.25 s of
           timed steps while the other process waits on its pipe; each turn opens with 0.6 s
           of untimed steps (``LEAD_SECONDS``: the process's threads awake and its data back
           in the caches, as in a training loop). The turns alternate which library goes
           first, so both see the same seconds of the machine; each round's ratio is the
           median of minissl's timed steps over the median of PyTorch's.
``all``    The three above (the default).
``ops``    Where each library's step time goes (not part of ``all``): each library in its own
           fresh process profiles ``--reps`` steps after 3 warm-up, minissl with
           ``minissl.profiler`` (self time per op and phase), PyTorch, with minissl's heap
           settings, with ``torch.profiler`` (self CPU time per aten op); the ``--top``
           longest rows of each, side by side, in ms per step. Both profilers add a little
           time per op: compare the rows' shares, not the walls with the other modes'.

For each configuration the tables give the median step time over the rounds (each round: the
median of ``--reps`` steps after 3 warm-up), the spread across rounds (min-max), and the share
of numpy's sgemm rate, measured in the same round, that the step's matrix products reach. A
ratio is minissl / PyTorch within one round (below 1.0: minissl is faster); the median and
every round's ratio are shown. Every timing process also gauges the machine's speed just
before and after each workload's timing (``machine_level``); a fresh or one-process round
whose two timings found the machine at different speeds is marked ``*``, and the median of
the unmarked rounds is printed beneath. The machine's speed drifts by 10-30 % over minutes:
read the per-round ratios and the spread, never one number. Without torch, minissl's columns still
print and PyTorch's say n/a. The environment is passed to every child unchanged (apart from
the heap settings of ``torch+heap``); the header lists the settings in it that matter.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ("mlp_simclr", "conv_simclr", "gpt_char")
# minissl.runtime's heap settings (M_TRIM_THRESHOLD 1 GiB, M_MMAP_MAX 0) as glibc tunables.
HEAP_TUNABLES = "glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_max=0"
# Settings in the environment that change either library's speed (printed in the header).
SETTINGS = ("OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS",
            "OMP_WAIT_POLICY", "GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_",
            "MALLOC_MMAP_THRESHOLD_", "MINISSL_RUNTIME", "MINISSL_REFERENCE")
# Fresh-process configurations in their order within a round (the libraries alternate; the
# main comparison, minissl as users run it against PyTorch with equal heap settings, next to
# each other in time), and the comparisons of the ratio table.
FRESH = ("minissl", "torch+heap", "minissl+tune", "torch")
FRESH_RATIOS = (("minissl", "torch"), ("minissl", "torch+heap"),
                ("minissl+tune", "torch"), ("minissl+tune", "torch+heap"))
RESULT = "BENCH_RESULT "   # prefix of a worker's one line of JSON on stdout
# The machine's speed level, taken by every timing worker just before and just after each
# workload's timed steps. On the shared virtual machines these figures come from, what two
# cores exchange (a cache line, data one wrote and the other reads) is 3-5x slower for
# seconds to minutes at a time, while each core alone keeps its speed (docs/performance.md,
# "What the slow level is"); a step's time moves with it (minissl's mlp_simclr 21 or 27 ms,
# PyTorch's 23 or 25). NumPy's 512 x 512 float32 product on BLAS's own threads, which share
# packed panels, is a sensitive gauge of it (1.3 or 1.85 ms there). A ratio of two processes
# whose gauges differ by more than LEVEL_TOLERANCE compares two speeds of the machine, not
# two libraries: the tables mark it.
LEVEL_N = 512
LEVEL_TOLERANCE = 0.10


# ----------------------------------------------------------------------------- in a worker

def time_step(step, reps, warmup=3, sync=None):
    """(median, min) seconds of ``reps`` calls of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    if sync:
        sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        if sync:
            sync()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2], ts[0]


def _product_seconds(n, reps):
    """Seconds of each of ``reps`` numpy products of an n x n float32 matrix with itself (on
    BLAS's own threads), after one untimed."""
    import numpy as np
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ a
        ts.append(time.perf_counter() - t)
    return ts


def sgemm_gflops(n=1024, reps=10):
    """numpy's sgemm rate, GFLOP/s over ``reps`` n x n products: the roofline's reference."""
    return 2 * n ** 3 * reps / sum(_product_seconds(n, reps)) / 1e9


def machine_level(n=LEVEL_N, reps=15, rest=0.2):
    """The machine's speed level now: GFLOP/s of the median of ``reps`` of numpy's n x n
    float32 products on BLAS's own threads; then ``rest`` s of sleep, as BLAS's threads spin
    for about 0.1 s after a product and would take the cores from what is timed next. (A
    PyTorch process has NumPy loaded already: ``import torch`` imports it.)"""
    ts = _product_seconds(n, reps)
    time.sleep(rest)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


def build_step(library, name):
    """(step, FLOPs or None) of workload ``name`` in ``library`` ("minissl" or "torch"), each
    library seeded with 0."""
    if library == "minissl":
        import numpy as np
        import minissl as ms
        import minissl_workloads
        ms.random.manual_seed(0)
        return minissl_workloads.WORKLOADS[name](np.random.default_rng(0))
    import torch
    import torch_workloads
    torch.manual_seed(0)
    return torch_workloads.WORKLOADS[name](), None


def time_gauged(step, reps):
    """(median ms of ``step``, [the machine's level just before, just after])."""
    before = machine_level()
    ms = 1e3 * time_step(step, reps)[0]
    return ms, [before, machine_level()]


def time_minissl(names, reps):
    """{name: median ms}, {name: matrix-product FLOPs}, numpy's sgemm GFLOP/s, {name: the
    machine's levels around that workload's timing}."""
    ms_times, flops, levels = {}, {}, {}
    for name in names:
        step, flops[name] = build_step("minissl", name)
        ms_times[name], levels[name] = time_gauged(step, reps)
    return ms_times, flops, sgemm_gflops(), levels


def time_torch(names, reps):
    """{name: median ms}, {name: the machine's levels around that workload's timing}."""
    times, levels = {}, {}
    for name in names:
        times[name], levels[name] = time_gauged(build_step("torch", name)[0], reps)
    return times, levels


def profile_minissl(names, reps):
    """{name: {"wall_ms", "rows": [[op.phase, calls, ms], ...]}} per step, longest first
    (what no op accounts for is ``wall_ms`` minus the rows)."""
    from minissl import profiler
    out = {}
    for name in names:
        step, _ = build_step("minissl", name)
        for _ in range(3):
            step()
        with profiler.profile() as prof:
            for _ in range(reps):
                step()
        rows = [[f"{r.name}.{r.phase}", r.calls / reps, 1e3 * r.seconds / reps]
                for r in prof.rows()]
        out[name] = {"wall_ms": 1e3 * prof.wall / reps, "rows": rows}
    return out


def profile_torch(names, reps):
    """As ``profile_minissl``, with torch.profiler's self CPU time per aten op."""
    from torch.profiler import ProfilerActivity, profile
    out = {}
    for name in names:
        step, _ = build_step("torch", name)
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]):   # the profiler's own start-up
            step()
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                step()
        wall = time.perf_counter() - start
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        rows = [[e.key, e.count / reps, e.self_cpu_time_total / 1e3 / reps] for e in events
                if e.self_cpu_time_total > 0]
        out[name] = {"wall_ms": 1e3 * wall / reps, "rows": rows}
    return out


def serve(library):
    """The worker of ``paired``: read requests on stdin, one a line, and answer each with one
    ``RESULT`` line, until stdin closes. ``build NAME``: build the workload, run 3 warm-up
    steps, answer the last one's seconds (and the FLOPs); ``run N LEAD``: untimed steps for
    LEAD seconds (one at least), then N timed ones, answer their seconds; ``sgemm``: numpy's
    sgemm GFLOP/s."""
    if library == "torch":
        import torch  # noqa: F401
    else:
        import numpy  # noqa: F401  (NumPy before minissl, as a script usually has it)
        import minissl  # noqa: F401
    step = None
    for line in sys.stdin:
        what, _, arg = line.strip().partition(" ")
        if what == "build":
            step, flops = build_step(library, arg)
            for _ in range(3):
                t = time.perf_counter()
                step()
                last = time.perf_counter() - t
            answer = {"step_s": last, "flops": flops}
        elif what == "run" and step is None:
            answer = {"error": "run before build"}
        elif what == "run":
            count, lead = arg.split()
            start = time.perf_counter()
            step()
            while time.perf_counter() - start < float(lead):
                step()
            times = []
            for _ in range(int(count)):
                t = time.perf_counter()
                step()
                times.append(time.perf_counter() - t)
            answer = {"times": times}
        elif what == "sgemm":
            answer = {"sgemm_gflops": sgemm_gflops()}
        else:
            answer = {"error": f"unknown request {line.strip()!r}"}
        print(RESULT + json.dumps(answer), flush=True)


def worker(kind, names, reps, rounds, with_torch=True):
    """Run in a child process: time one configuration (``fresh``: one round) and print the
    result as one JSON line. The imports below are the measured process's import order."""
    sys.path.insert(0, HERE)
    if kind in ("ops-minissl", "ops-torch"):
        if kind == "ops-minissl":
            import numpy  # noqa: F401
        profiled = (profile_minissl if kind == "ops-minissl" else profile_torch)(names, reps)
        print(RESULT + json.dumps({"ops": profiled}), flush=True)
        return
    if kind.startswith("serve-"):
        return serve(kind[len("serve-"):])
    library = kind.split("+")[0]        # "torch+heap" times PyTorch, "minissl+tune" minissl
    with_torch = with_torch and library in ("torch", "one-process")
    with_minissl = library in ("minissl", "one-process")
    if with_torch:
        import torch  # noqa: F401  (PyTorch first, then NumPy, then minissl)
    if with_minissl:
        import numpy  # noqa: F401  (NumPy before minissl, as a script usually has it)
        import minissl
    tuning = minissl.runtime.tune()._asdict() if kind == "minissl+tune" else None
    result = {"tuning": tuning, "rounds": []}
    for _ in range(rounds):
        r = {"levels": {}}
        if with_minissl:
            (r["minissl"], result["flops"], r["sgemm_gflops"],
             r["levels"]["minissl"]) = time_minissl(names, reps)
        if with_torch:
            r["torch"], r["levels"]["torch"] = time_torch(names, reps)
        result["rounds"].append(r)
    print(RESULT + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- in the parent

def run_worker(kind, args, names, rounds=1, env=None, with_torch=True, script=__file__,
               extra=()):
    """The parsed result of a worker process (``script --worker kind ...``, which prints
    one ``RESULT`` line), or {"error": why}."""
    cmd = [sys.executable, os.path.abspath(script), "--worker", kind, "--reps",
           str(args.reps), "--rounds", str(rounds), "--names", ",".join(names), *extra]
    cmd += [] if with_torch else ["--no-torch"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         env={**os.environ, **(env or {})})
    for line in out.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = (out.stderr.strip() or out.stdout.strip() or f"exit {out.returncode}")
    return {"error": f"{kind} worker failed: {tail.splitlines()[-1]}"}


def measure_fresh(args, names, with_torch, **worker):
    """Per configuration, per round: {name: ms}; plus the rounds' sgemm rates and FLOPs.
    ``worker``: ``script`` and ``extra`` arguments of ``run_worker``."""
    runs = {c: [] for c in FRESH}
    levels = {c: [] for c in FRESH}
    sgemm, flops, tuning, errors = [], {}, None, []
    for _ in range(args.rounds):
        rates = []
        for config in FRESH:
            if config.startswith("torch") and not with_torch:
                runs[config].append({})
                levels[config].append({})
                continue
            env = {"GLIBC_TUNABLES": HEAP_TUNABLES} if config == "torch+heap" else None
            res = run_worker(config, args, names, env=env, **worker)
            if "error" in res:
                errors.append(res["error"])
                runs[config].append({})
                levels[config].append({})
                continue
            r = res["rounds"][0]
            library = config.split("+")[0]
            runs[config].append(r[library])
            levels[config].append(r.get("levels", {}).get(library, {}))
            if "sgemm_gflops" in r:
                rates.append(r["sgemm_gflops"])
                flops = res["flops"]
            tuning = res["tuning"] or tuning
        sgemm.append(statistics.median(rates) if rates else None)
    return {"runs": runs, "sgemm_gflops": sgemm, "flops": flops, "tuning": tuning,
            "errors": errors, "levels": levels}


def measure_one_process(args, names, with_torch, **worker):
    """Both libraries in one worker (minissl alone without torch), all rounds in it."""
    res = run_worker("one-process", args, names, rounds=args.rounds, with_torch=with_torch,
                     **worker)
    if "error" in res:
        res = {"rounds": [{}] * args.rounds, "flops": {}, "errors": [res["error"]]}
    rounds = res["rounds"]
    libraries = ("minissl", "torch")
    return {"runs": {lib: [r.get(lib, {}) for r in rounds] for lib in libraries},
            "sgemm_gflops": [r.get("sgemm_gflops") for r in rounds], "flops": res["flops"],
            "tuning": None, "errors": res.get("errors", []),
            "levels": {lib: [r.get("levels", {}).get(lib, {}) for r in rounds]
                       for lib in libraries}}


class Served:
    """A worker process (``--worker serve-LIBRARY``) that builds and runs steps on request."""

    def __init__(self, library, env=None):
        self.library = library
        self.errors = tempfile.TemporaryFile(mode="w+")   # never a full pipe to block on
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"serve-{library}",
               "--reps", "1", "--names", "-"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errors, text=True,
                                     env={**os.environ, **(env or {})})

    def ask(self, request):
        try:
            self.proc.stdin.write(request + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass                  # it has ended: the loop below finds no answer
        for line in self.proc.stdout:
            if line.startswith(RESULT):
                answer = json.loads(line[len(RESULT):])
                if "error" in answer:
                    raise RuntimeError(f"{self.library} worker: {answer['error']}")
                return answer
        self.proc.wait()
        self.errors.seek(0)
        tail = self.errors.read().strip().splitlines() or [f"exit {self.proc.returncode}"]
        raise RuntimeError(f"{self.library} worker failed: {tail[-1]}")

    def close(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.errors.close()


# Paired mode: the timed steps of one turn take about TURN_SECONDS, after LEAD_SECONDS of
# untimed ones, so that each turn is timed in its process's steady state (threads awake, its
# own data back in the caches), as a user's training loop runs; both libraries get the same.
# (The first version had one untimed step and turns of 0.1 s, and found minissl 1.57x
# PyTorch's mlp_simclr step: minissl's load guard counted PyTorch's turn as a neighbour's
# load and ran the next turn serially. The guard now puts its decision off after a pause:
# minissl/kernels/_dispatch.py.)
TURN_SECONDS = 0.25
LEAD_SECONDS = 0.6


def paired_round(workers, names, reps):
    """One round of ``paired``: {config: {name: median ms}} and the FLOPs. Both libraries
    take the same number of turns (the slower step sets it), alternating who goes first."""
    steps, flops = {c: {} for c in workers}, {}
    for name in names:
        built = {c: w.ask(f"build {name}") for c, w in workers.items()}
        if built["minissl"]["flops"]:
            flops[name] = built["minissl"]["flops"]
        turns = max(-(-reps // max(1, round(TURN_SECONDS / b["step_s"])))
                    for b in built.values())
        per_turn = -(-reps // turns)
        times = {c: [] for c in workers}
        order = list(workers)
        for turn in range(turns):
            for c in order if turn % 2 == 0 else order[::-1]:
                times[c] += workers[c].ask(f"run {per_turn} {LEAD_SECONDS}")["times"]
        for c in workers:
            steps[c][name] = 1e3 * statistics.median(times[c])
    return steps, flops


def measure_paired(args, names, with_torch):
    """Per round, fresh minissl and PyTorch (+ heap settings) processes taking turns."""
    runs = {"minissl": [], "torch+heap": []}
    sgemm, flops, errors = [], {}, []
    for _ in range(args.rounds):
        workers = {"minissl": Served("minissl")}
        if with_torch:
            workers["torch+heap"] = Served("torch", {"GLIBC_TUNABLES": HEAP_TUNABLES})
        try:
            steps, flops = paired_round(workers, names, args.reps)
            sgemm.append(workers["minissl"].ask("sgemm")["sgemm_gflops"])
        except RuntimeError as e:
            errors.append(str(e))
            steps = {}
            sgemm.append(None)
        finally:
            for w in workers.values():
                w.close()
        for config in runs:
            runs[config].append(steps.get(config, {}))
    return {"runs": runs, "sgemm_gflops": sgemm, "flops": flops, "tuning": None,
            "errors": errors}


def summarise(m, names, ratios):
    """The tables' numbers: per configuration and workload, and per ratio and workload."""
    table = {}
    for config, per_round in m["runs"].items():
        table[config] = {}
        for name in names:
            times = [r.get(name) for r in per_round]
            ok = [t for t in times if t is not None]
            roof = [m["flops"][name] / 1e9 / gf / (t / 1e3)
                    for t, gf in zip(times, m["sgemm_gflops"]) if t and gf and m["flops"]]
            table[config][name] = {
                "median_ms": statistics.median(ok) if ok else None,
                "min_ms": min(ok, default=None), "max_ms": max(ok, default=None),
                "rounds_ms": times,
                "roofline": statistics.median(roof) if roof else None}
    ratio_table = {}
    levels = m.get("levels", {})   # none in the paired mode, whose turns share the machine
    for mine, theirs in ratios:
        key = f"{mine} vs {theirs}"
        ratio_table[key] = {}
        for name in names:
            per = [a[name] / b[name] if a.get(name) and b.get(name) else None for a, b in
                   zip(m["runs"].get(mine, []), m["runs"].get(theirs, []))]
            ok = [p for p in per if p is not None]
            apart = [bool(p is not None and la.get(name) and lb.get(name)
                          and spread(la[name] + lb[name]) > LEVEL_TOLERANCE)
                     for p, la, lb in zip(per, levels.get(mine, [{}] * len(per)),
                                          levels.get(theirs, [{}] * len(per)))]
            same = [p for p, a in zip(per, apart) if p is not None and not a]
            ratio_table[key][name] = {
                "median": statistics.median(ok) if ok else None, "rounds": per,
                "levels_apart": apart,
                "median_same_level": statistics.median(same) if same else None}
    return table, ratio_table


def spread(xs):
    """max / min - 1 of the numbers in ``xs`` (None ignored)."""
    ok = [x for x in xs if x is not None]
    return max(ok) / min(ok) - 1


def _fmt(x, spec, width):
    return format(x, spec).rjust(width) if x is not None else "n/a".rjust(width)


def print_table(columns, names, cell, width=30):
    """One row per workload, one column per key of ``columns``: ``cell(columns[key][name])``,
    right-aligned in columns of ``width`` or wider, two spaces apart at the least."""
    cells = {name: [cell(col[name]) for col in columns.values()] for name in names}
    width = max([width] + [len(c) + 2 for row in cells.values() for c in row]
                + [len(key) + 2 for key in columns])
    print(f"{'workload':12s}" + "".join(f"{key:>{width}s}" for key in columns))
    for name in names:
        print(f"{name:12s}" + "".join(c.rjust(width) for c in cells[name]))


def print_mode(title, m, table, ratio_table, names, args, note=None):
    print(f"\n== {title}")
    rates = [g for g in m["sgemm_gflops"] if g]
    roofline = (f" and % of numpy's sgemm rate (median {statistics.median(rates):.0f} "
                "GFLOP/s)" if rates else "")
    print(f"step ms: median of {args.rounds} rounds [min-max across rounds]{roofline}; "
          + (note or getattr(args, "steps_note", f"each round the median of {args.reps} "
                                                  "steps after 3 warm-up")))
    if m["tuning"]:
        print(f"minissl.runtime.tune() applied: {m['tuning']}")

    def step_cell(s):
        if s["median_ms"] is None:
            return "n/a"
        roof = s["roofline"] and 100 * s["roofline"]
        return (f"{s['median_ms']:8.1f} [{s['min_ms']:.1f}-{s['max_ms']:.1f}]"
                + (f" {_fmt(roof, '.0f', 3)}%" if rates else ""))

    def ratio_cell(r):
        apart = r.get("levels_apart") or [False] * len(r["rounds"])
        each = " ".join(_fmt(p, ".2f", 0) + ("*" if a else "")
                        for p, a in zip(r["rounds"], apart))
        return f"{_fmt(r['median'], '.2f', 4)} ({each})"

    print_table(table, names, step_cell)
    if len(rates) > 1:
        # The machine's own speed, sampled once a round: a step time spreads with it.
        mine = {f"{c} {n}": spread(table[c][n]["rounds_ms"]) for c in table
                if c.startswith("minissl") for n in names if table[c][n]["median_ms"]}
        print(f"spread across rounds (max/min - 1): numpy's sgemm rate {spread(rates):.0%} "
              f"({' '.join(f'{g:.0f}' for g in rates)} GFLOP/s); "
              + ", ".join(f"{k} {v:.0%}" for k, v in mine.items()))
    print("ratio minissl / PyTorch: median (each round)")
    print_table(ratio_table, names, ratio_cell)
    marked = {f"{key} {name}": r["median_same_level"] for key, col in ratio_table.items()
              for name, r in col.items() if any(r.get("levels_apart") or ())}
    if marked:
        print(f"* the two processes found the machine at different speeds (numpy's "
              f"{LEVEL_N} x {LEVEL_N} product on BLAS's threads, taken before and after each "
              f"workload's timing, more than {LEVEL_TOLERANCE:.0%} apart): such a ratio "
              "compares the machine's speeds more than the libraries. Median of the other "
              "rounds: "
              + ", ".join(f"{k} {_fmt(v, '.2f', 0)}" for k, v in marked.items()))
    for e in dict.fromkeys(m["errors"]):
        print(f"(PyTorch or a worker not measured: {e})")


def measure_ops(args, names, with_torch):
    """{library: {name: profile}} from one fresh process per library, or {library: error}."""
    found = {}
    for library in ("minissl", "torch") if with_torch else ("minissl",):
        env = {"GLIBC_TUNABLES": HEAP_TUNABLES} if library == "torch" else None
        res = run_worker(f"ops-{library}", args, names, env=env)
        found[library] = res.get("ops", res.get("error"))
    return found


def print_ops(found, names, top):
    """Per workload, each library's ``top`` longest ops side by side (ms per step)."""
    titles = {"minissl": "minissl (minissl.profiler, self time)",
              "torch": "PyTorch + heap settings (torch.profiler, self CPU time)"}
    for name in names:
        columns = []
        for library, ops in found.items():
            if isinstance(ops, str):
                columns.append([titles[library], f"(not measured: {ops})"])
                continue
            rows, wall = ops[name]["rows"], ops[name]["wall_ms"]
            shown = rows[:top]
            lines = [titles[library]]
            for label, calls, ms in shown:
                lines.append(f"{label[:44] + f' x{calls:g}':52s}{ms:9.2f}")
            if rows[top:]:
                rest = sum(r[2] for r in rows[top:])
                lines.append(f"{f'({len(rows) - top} more ops)':52s}{rest:9.2f}")
            outside = wall - sum(r[2] for r in rows)
            lines.append(f"{'(outside the ops)':52s}{outside:9.2f}")
            lines.append(f"{'(wall per step, profiled)':52s}{wall:9.2f}")
            columns.append(lines)
        print(f"\n== where a {name} step's time goes, ms per step")
        depth = max(len(c) for c in columns)
        for i in range(depth):
            print("   ".join(f"{(c[i] if i < len(c) else ''):61s}" for c in columns).rstrip())


ALL = ("fresh", "one-process", "paired")   # what --mode all runs


def run_modes(args, names, with_torch, all_modes=ALL, **worker):
    """Measure and print every mode ``args.mode`` names (``all``: ``all_modes``; ``worker``:
    see ``measure_fresh``); the report ``--json`` writes."""
    env = {k: os.environ[k] for k in SETTINGS if k in os.environ}
    print(f"minissl vs PyTorch, CPU; environment: {env or 'none of ' + ', '.join(SETTINGS)}")
    if not with_torch:
        print("(PyTorch not measured: " + ("--no-torch)" if args.no_torch else
                                           "torch is not installed: pip install torch)"))
    modes = all_modes if args.mode == "all" else (args.mode,)
    report = {"rounds": args.rounds, "reps": args.reps, "environment": env, "modes": {}}
    for mode in modes:
        if mode == "ops":
            found = measure_ops(args, names, with_torch)
            print_ops(found, names, args.top)
            report["modes"]["ops"] = found
            continue
        note = None
        if mode == "fresh":
            m = measure_fresh(args, names, with_torch, **worker)
            title = ("fresh processes: one per library per round, in the order "
                     f"{', '.join(FRESH)}; `import numpy` before `import minissl`")
            ratios = FRESH_RATIOS
        elif mode == "paired":
            m = measure_paired(args, names, with_torch)
            title = ("paired: per round a fresh minissl and a fresh PyTorch + heap process, "
                     "alive together, taking turns")
            ratios = (("minissl", "torch+heap"),)
            note = (f"each round the median of {args.reps} or more steps after 3 warm-up, in "
                    f"turns of about {TURN_SECONDS:g} s, each opened by {LEAD_SECONDS:g} s of "
                    "untimed steps")
        else:
            m = measure_one_process(args, names, with_torch, **worker)
            title = "one process: `import torch`, then numpy, then minissl; no tune()"
            ratios = (("minissl", "torch"),)
        table, ratio_table = summarise(m, names, ratios)
        print_mode(title, m, table, ratio_table, names, args, note)
        report["modes"][mode] = {"steps": table, "ratios": ratio_table,
                                 "sgemm_gflops": m["sgemm_gflops"], "gflop": m["flops"],
                                 "tuning": m["tuning"], "errors": m["errors"]}
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=ALL + ("all", "ops"), default="all")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of alternating libraries")
    ap.add_argument("--reps", type=int, default=10, help="timed steps per workload and round")
    ap.add_argument("--only", choices=NAMES)
    ap.add_argument("--no-torch", action="store_true", help="time minissl only")
    ap.add_argument("--json", help="also write every table, with each round, to this file")
    ap.add_argument("--top", type=int, default=12, help="--mode ops: rows per library")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--names", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.reps < 1:
        ap.error("--rounds and --reps must be at least 1")
    if args.worker:
        return worker(args.worker, args.names.split(","), args.reps, args.rounds,
                      with_torch=not args.no_torch)
    names = [args.only] if args.only else list(NAMES)
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    report = run_modes(args, names, with_torch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
