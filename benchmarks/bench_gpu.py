"""The three workloads of bench_cpu.py on device="cuda", beside PyTorch CUDA eager.

    python benchmarks/bench_gpu.py [--reps 20] [--only NAME] [--no-torch] [--graph] [--json F]

Each workload is one full training step (forward, loss, backward, optimiser step) built by
``minissl_workloads.py``'s builders (imported, not copied) and moved to the GPU. Times are
medians of ``--reps`` steps after 3 warm-up steps, each step followed by a stream
synchronisation (the same protocol as ``torch_workloads.py``, the workloads in PyTorch, which
this script runs with ``cuda`` in the same invocation). Ratios below 1.0 mean minissl is faster.

``--graph`` also captures one whole training step in a CUDA graph (CuPy stream capture) and
times its replays: the GPU work of a step launched with one call, without Python, autograd
or kernel-launch overhead. A captured step is only correct if, during the step,

* no device-to-host copy or synchronisation happens (``.item()``, ``float(x)``, ``int(x)``,
  ``cupy.asnumpy``, a stream synchronise): these are illegal during capture;
* no host data is copied to the device (``cupy.asarray(numpy_array)``): the graph would
  replay the copy from a staging buffer that CuPy has since reused;
* the inputs live in static buffers: a replay reads the addresses captured, so new data must
  be copied into the same arrays (``x.data[...] = batch``);
* every allocation happens in a private memory pool kept alive with the graph, so that no
  other array is given memory the graph writes to (done here with ``cupy.cuda.using_allocator``);
* host-side state is frozen at its captured value: the learning rate, Adam's step count (so
  its bias correction), any host random draw. Replays repeat the captured step's values;
  for timing that is immaterial, for training it would need those scalars in device memory.

Before capturing, the script runs one eager step under detectors for the first two points and
falls back to eager timing, saying why, if the step is not capture-safe. After capturing, it
checks one replay against one eager step from the same state (loss and parameters).
"""
import argparse
import contextlib
import inspect
import json
import os
import re
import subprocess
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import minissl as ms  # noqa: E402
from minissl import nn, optim  # noqa: E402
from minissl.autograd import Tensor  # noqa: E402
from minissl.backend import is_cuda_available, to_device  # noqa: E402

import minissl_workloads  # noqa: E402  (the workload builders)


# ----------------------------------------------------------------------------- building

def build_on_cuda(builder, rng):
    """A workload of minissl_workloads built on the GPU: ``(step, flops, objects)``.

    A builder that takes ``device`` is given ``device="cuda"``. The current builders make
    their modules, parameters and inputs on the CPU and close over them, so the step's closure
    is moved instead: modules with ``Module.to`` (in place), Tensors by moving their ``.data``
    in place (so the optimiser keeps the very same Parameter objects), NumPy arrays by
    replacing them with device copies. ``objects`` are the closure's values (for --graph).
    """
    if "device" in inspect.signature(builder).parameters:
        step, flops = builder(rng, device="cuda")
    else:
        step, flops = builder(rng)
        for cell in step.__closure__ or ():
            v = cell.cell_contents
            if isinstance(v, nn.Module):
                v.to("cuda")
            elif isinstance(v, Tensor):
                v.data = to_device(v.data, "cuda")
                v.grad = None
            elif isinstance(v, np.ndarray):
                cell.cell_contents = to_device(v, "cuda")
    objects = [c.cell_contents for c in step.__closure__ or ()]
    return step, flops, objects


def _sync():
    import cupy
    cupy.cuda.get_current_stream().synchronize()


def time_steps(run, reps, warmup=3, sync=_sync):
    """(median, min) seconds of ``run()``, each followed by ``sync()`` (by default, of the
    current stream)."""
    for _ in range(warmup):
        run()
    sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        sync()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2], ts[0]


# ----------------------------------------------------------------------------- CUDA graphs

class NotCaptureSafe(Exception):
    """The step does something a CUDA graph cannot replay (see the module docstring)."""


@contextlib.contextmanager
def capture_safety_probe():
    """Raise NotCaptureSafe, with the caller's line, on a device-to-host copy (CuPy's
    synchronisation detector, every ``ndarray.get``) or on a copy of host data to the device
    (``cupy.asarray``/``cupy.array`` of anything but a CuPy array or a scalar, which CuPy
    turns into a fill kernel)."""
    import cupy

    def where():
        frames = [f for f in traceback.extract_stack()[:-2]
                  if "cupy" not in f.filename and "bench_gpu" not in f.filename]
        f = frames[-1] if frames else None
        return f"{f.filename}:{f.lineno} ({f.line})" if f else "?"

    def no_sync(*args, **kwargs):
        raise NotCaptureSafe(f"device-to-host copy at {where()}")

    saved = []
    syncdetect = getattr(getattr(cupy, "_core", None), "syncdetect", None)
    if syncdetect is not None and hasattr(syncdetect, "_declare_synchronize"):
        saved.append((syncdetect, "_declare_synchronize", syncdetect._declare_synchronize))
        syncdetect._declare_synchronize = no_sync
    for name in ("asarray", "array"):
        orig = getattr(cupy, name)

        def guarded(obj, *args, _orig=orig, **kwargs):
            if not isinstance(obj, cupy.ndarray) and np.ndim(obj) > 0:
                raise NotCaptureSafe(f"host-to-device copy at {where()}")
            return _orig(obj, *args, **kwargs)
        saved.append((cupy, name, orig))
        setattr(cupy, name, guarded)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def _state_arrays(objects):
    """Every persistent device array a step reads or writes: parameters, buffers, optimiser
    state (to snapshot and restore around the replay-versus-eager check)."""
    arrays, seen = [], set()

    def add(a):
        if hasattr(a, "shape") and hasattr(a, "dtype") and id(a) not in seen:
            seen.add(id(a))
            arrays.append(a)
    for o in objects:
        if isinstance(o, nn.Module):
            for t in list(o.parameters()) + list(o.buffers()):
                add(t.data)
        elif isinstance(o, Tensor):
            add(o.data)
        elif isinstance(o, optim.Optimizer):
            for g in o.param_groups:
                for p in g["params"]:
                    add(p.data)
            for st in o.state.values():
                for v in st.values():
                    add(v)
    return arrays


def capture(step, objects):
    """Capture ``step`` in a CUDA graph: ``(replay, loss_array, check)``, or raise
    NotCaptureSafe. ``replay()`` launches the graph; ``check()`` compares one replay with one
    eager step from the same state and returns (loss relative error, max parameter error)."""
    import cupy
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(3):                      # compile kernels, create optimiser state
            step()
        stream.synchronize()
        with capture_safety_probe():
            step()
        stream.synchronize()
        pool = cupy.cuda.MemoryPool()           # the graph's private memory
        with cupy.cuda.using_allocator(pool.malloc):
            stream.begin_capture()
            try:
                loss = step()
            except Exception as e:
                with contextlib.suppress(Exception):
                    stream.end_capture()
                raise NotCaptureSafe(f"capture failed: {type(e).__name__}: {e}") from None
            graph = stream.end_capture()
    opts = [o for o in objects if isinstance(o, optim.Optimizer)]
    captured_steps = [(st, st["step"]) for o in opts for st in o.state.values() if "step" in st]

    def replay():
        graph.launch(stream)

    def check():
        state = _state_arrays(objects)
        with stream:
            saved = [a.copy() for a in state]
            stream.synchronize()
            replay()
            stream.synchronize()
            loss_graph = float(loss.data)
            after_graph = [a.copy() for a in state]
            for a, s in zip(state, saved):
                a[...] = s
            for st, k in captured_steps:        # the eager step counts to the captured k
                st["step"] = k - 1
            eager_loss = float(step().data)
            stream.synchronize()
        rel = abs(loss_graph - eager_loss) / max(abs(eager_loss), 1e-30)
        err = max((float(abs(a - b).max()) for a, b in zip(state, after_graph) if a.size
                   and a.dtype.kind == "f"), default=0.0)
        return rel, err

    replay.keep = (graph, pool, stream, loss)   # alive as long as replay is
    replay.sync = stream.synchronize
    return replay, loss, check


# ----------------------------------------------------------------------------- PyTorch

def torch_times(reps):
    """Median ms/step of each workload of torch_workloads.py on "cuda", in its own process."""
    try:
        import torch
        if not torch.cuda.is_available():
            return {}, "torch has no CUDA device"
    except ImportError:
        return {}, "torch is not installed"
    script = os.path.join(HERE, "torch_workloads.py")
    out = subprocess.run([sys.executable, script, "cuda", str(reps)],
                         capture_output=True, text=True, check=False)
    found = dict((m.group(1), float(m.group(2))) for m in
                 re.finditer(r"^(\w+)\s+cuda median ([\d.]+) ms", out.stdout, re.M))
    return found, None if found else out.stderr.strip()[-500:]


# ----------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--only", choices=sorted(minissl_workloads.WORKLOADS))
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--graph", action="store_true",
                    help="also time replays of the step captured in a CUDA graph")
    ap.add_argument("--json", help="also write the table to this JSON file")
    args = ap.parse_args(argv)
    if not is_cuda_available():
        print("bench_gpu: CuPy or a CUDA GPU is not available", file=sys.stderr)
        return 2
    import cupy
    dev = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = dev["name"].decode() if isinstance(dev["name"], bytes) else dev["name"]
    names = [args.only] if args.only else list(minissl_workloads.WORKLOADS)
    rows = {}
    for wl in names:
        ms.random.manual_seed(0)
        step, flops, objects = build_on_cuda(minissl_workloads.WORKLOADS[wl],
                                             np.random.default_rng(0))
        row = rows[wl] = {"gflop": flops / 1e9}
        try:
            med, best = time_steps(step, args.reps)
            row.update(minissl_ms=1e3 * med, minissl_min_ms=1e3 * best)
        except Exception as e:                   # report and go on with the next workload
            row["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            continue
        if args.graph:
            try:
                replay, _, check = capture(step, objects)
                rel, err = check()
                med, best = time_steps(replay, args.reps, sync=replay.sync)
                row.update(graph_ms=1e3 * med, graph_min_ms=1e3 * best,
                           graph_vs_eager_loss_rel=rel, graph_vs_eager_param_err=err)
            except NotCaptureSafe as e:
                row["graph_fallback"] = str(e)
        cupy.get_default_memory_pool().free_all_blocks()
    ref, why = ({}, "--no-torch") if args.no_torch else torch_times(args.reps)
    print(f"device: {name}   (median of {args.reps} steps after 3 warm-up, synchronised)")
    head = f"{'workload':12s} {'minissl ms':>11s} {'torch ms':>9s} {'ratio':>6s}"
    if args.graph:
        head += f" {'graph ms':>9s} {'ratio':>6s}"
    print(head)
    for wl, r in rows.items():
        t = ref.get(wl)
        r["torch_ms"] = t
        if "error" in r:
            print(f"{wl:12s} failed: {r['error']}")
            continue
        r["ratio"] = r["minissl_ms"] / t if t else None
        line = (f"{wl:12s} {r['minissl_ms']:11.2f} {t if t else float('nan'):9.2f} "
                f"{r['ratio'] if t else float('nan'):6.2f}")
        if args.graph:
            g = r.get("graph_ms")
            r["graph_ratio"] = g / t if (g and t) else None
            line += (f" {g if g else float('nan'):9.2f} "
                     f"{r['graph_ratio'] if r['graph_ratio'] else float('nan'):6.2f}")
        print(line)
    for wl, r in rows.items():
        if "graph_fallback" in r:
            print(f"  {wl}: not captured, eager only ({r['graph_fallback']})")
        elif "graph_ms" in r:
            print(f"  {wl}: graph replay vs eager step: loss rel. diff "
                  f"{r['graph_vs_eager_loss_rel']:.1e}, max param diff "
                  f"{r['graph_vs_eager_param_err']:.1e}")
    if why:
        print(f"(PyTorch not measured: {why})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "workloads": rows}, f, indent=1)
    return 1 if any("error" in r for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
