"""Which version of a kernel runs: the NumPy reference, the compiled CPU kernel, or CUDA.

Every kernel family lives in one folder, ``minissl/kernels/<family>/``:

* ``reference.py``: the NumPy reference (``*_ref``), the readable specification; it is
  array-module generic, so it also runs on CuPy arrays;
* ``_cpu.pyx`` and ``<family>.h``: the Cython entry points and the C loops they call, built
  into ``minissl.kernels.<family>._cpu``;
* ``<family>.cu`` and ``cuda.py``: the CUDA source and its CuPy launchers;
* ``__init__.py``: the public functions, which check their arguments once and then ask this
  module which version to run.

``compiled(family, *arrays)`` is the compiled module when it is built and takes the arrays;
``on_device(a)`` tells whether an array lives on the GPU; ``gpu(family, name)`` is the CUDA
launcher of that name. ``MINISSL_REFERENCE=1`` forces the reference everywhere (read on
every call, so that a test can force it at run time). ``check_float`` and ``check_same`` are
the argument checks every family shares.

Nothing here loads a compiled kernel, OpenMP or CuPy on import: the compiled module of a
family is imported on its first call.
"""
import importlib
import os
import sys
import time
import warnings

import numpy as np

from . import cuda as _cuda

_warned = False


def reference_forced():
    return os.environ.get("MINISSL_REFERENCE", "") not in ("", "0")


def load(family):
    """The compiled module ``minissl.kernels.<family>._cpu``, or None (then use the reference)."""
    global _warned
    if reference_forced():
        return None
    try:
        module = importlib.import_module(f"minissl.kernels.{family}._cpu")
    except ImportError as e:
        if not _warned:
            _warned = True
            warnings.warn(f"minissl: compiled kernels unavailable ({e}); using the NumPy "
                          "reference kernels (slower). Reinstall with a C compiler and Cython "
                          "to build them.", RuntimeWarning, stacklevel=2)
        return None
    if hasattr(module, "set_num_threads"):
        get_num_threads()
        module.set_num_threads(_running)
    return module


_threads = None    # threads of the compiled kernels' parallel loops; None: not decided yet
_explicit = False  # set by set_num_threads: then the load guard below leaves it alone
_running = 1       # threads the parallel loops use now: _threads, or 1 while the cores are busy
_next_check = 0.0  # time.monotonic() of the load guard's next look at /proc/stat
_last_call = 0.0   # time.monotonic() of the last kernel lookup (``compiled``)
_deferred = False  # whether the guard's last look put its decision off (a pause before it)
LOAD_CHECK_SECONDS = 0.25
_cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
_cores = len(_cpus) if _cpus is not None else (os.cpu_count() or 1)


def _push(n):
    global _running
    _running = n
    for name, module in list(sys.modules.items()):
        if (name.startswith("minissl.kernels.") and name.endswith("._cpu")
                and hasattr(module, "set_num_threads")):
            module.set_num_threads(n)


_CPU_LINES = None if _cpus is None else {f"cpu{c}" for c in _cpus}   # their /proc/stat rows
try:
    _TICK = 1.0 / os.sysconf("SC_CLK_TCK")    # /proc/stat's unit
except (AttributeError, ValueError, OSError):
    _TICK = 0.01
_last = None  # the previous cpu_times() sample of the load guard


def cpu_times():
    """(wall, busy, own) seconds now: a monotonic clock, the CPU time the cores this process
    may run on have spent busy (user, nice, system, irq, softirq, steal in /proc/stat), and
    this process's own CPU time; None where /proc/stat cannot be read."""
    if _CPU_LINES is None:
        return None
    try:
        with open("/proc/stat") as f:
            rows = [line.split() for line in f]
        busy = 0
        for row in rows:
            if row and row[0] in _CPU_LINES:   # cpuN user nice system idle iowait irq softirq steal
                busy += sum(int(row[i]) for i in (1, 2, 3, 6, 7, 8))
    except (OSError, ValueError, IndexError):
        return None
    own = os.times()
    return time.monotonic(), busy * _TICK, own[0] + own[1]


NEIGHBOUR_CORES = 0.5   # others' average use of the cores the loops tolerate beside their own
PAUSE_SECONDS = 0.1     # no kernel call for this long: minissl paused (see _guard)
FRESH_SECONDS = 0.1     # after a pause the guard decides on a window this long (10 ticks
                        # of /proc/stat's 10 ms per core: the others' use to +-0.2 cores)


def _guard(sample=cpu_times, paused=False):
    """The load guard of the default thread count. A parallel loop's threads wait for each
    other at its end, spinning; when other processes want the cores too, a thread of the
    loop is descheduled and the others spin until it runs again: on 2 cores with 5 busy
    neighbours a 2-thread step ran 4-12x slower than a serial one (docs/performance.md). So,
    at most every LOAD_CHECK_SECONDS, the guard measures how many cores OTHER processes kept
    busy since its last look (the cores' busy time in /proc/stat minus this process's CPU
    time, over the wall time between): the loops go serial while that and minissl's threads
    exceed the cores by more than NEIGHBOUR_CORES, and back when they fit. An average, not
    an instant: a snapshot of the runnable tasks (/proc/loadavg, the first guard) caught
    brief blips (a shell, a monitor) and made a quiet machine's steps serial about a sixth
    of the time. After a pause (``paused``: no kernel call for PAUSE_SECONDS; a notebook
    between cells, another process's turn), what the others did while minissl had no thread
    running is history, not load: the guard keeps the threads, takes a new sample and decides
    on the FRESH_SECONDS after it (at most one such deferral between two decisions). Without
    this, a benchmark taking turns with PyTorch found minissl serial at the start of every
    turn (docs/performance.md). Only for the default (``set_num_threads`` fixes the count);
    results do not depend on it (the kernels give the same bits whatever the thread count,
    and the products' split does not change)."""
    global _next_check, _last, _deferred
    _next_check = time.monotonic() + LOAD_CHECK_SECONDS
    if _explicit or _threads is None or _threads == 1:
        return
    now = sample()
    previous, _last = _last, now
    if now is None or previous is None or now[0] <= previous[0]:
        return
    if paused and not _deferred:
        _deferred = True
        _next_check = time.monotonic() + FRESH_SECONDS
        return
    _deferred = False
    others = max(0.0, (now[1] - previous[1]) - (now[2] - previous[2])) / (now[0] - previous[0])
    want = _threads if others + _threads <= _cores + NEIGHBOUR_CORES else 1
    if want != _running:
        _push(want)


def set_num_threads(n):
    """Run the compiled kernels' parallel loops and matrix products on ``n`` threads, in every
    family loaded now or later; returns the previous number."""
    global _threads, _explicit
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be an integer >= 1, got {n!r}")
    previous, _threads, _explicit = get_num_threads(), n, True
    _push(n)
    return previous


def get_num_threads():
    """The number of threads the compiled kernels' parallel loops (and, where minissl runs
    them, the matrix products) run on. The default, decided on first use: as many as NumPy's
    BLAS uses when minissl runs the products on its own threads (minissl/kernels/gemm), so
    that one pool serves products and kernels; else 1, leaving the cores to BLAS's own pool,
    whose idle workers would spin against a second one (docs/performance.md). While other
    processes keep the cores busy, the default runs serially (``running_threads``)."""
    global _threads, _running
    if _threads is None:
        from . import gemm
        _threads = _running = gemm.pool_threads()
    return _threads


def running_threads():
    """The threads the parallel loops use now: ``get_num_threads()``, or 1 while the load
    guard (``_guard``) finds the cores busy."""
    get_num_threads()
    return _running


_modules = {}   # family -> the compiled module, or None when it is not built; filled on first use


def compiled(family, *arrays, contiguous=False):
    """The compiled module of ``family`` when every array is a NumPy float32 or float64 array
    (C-contiguous too, if ``contiguous``), else None: then the caller runs the NumPy reference,
    which also takes ndarray subclasses, other dtypes and strided views.

    The module is cached after the first lookup (``load`` imports it again on every call,
    microseconds that matter for small arrays).
    """
    global _last_call
    for a in arrays:
        if type(a) is not np.ndarray:
            return None
        if a.dtype != np.float32 and a.dtype != np.float64:
            return None
        if contiguous and not a.flags.c_contiguous:
            return None
    if reference_forced():
        return None
    if family not in _modules:
        _modules[family] = load(family)
    now = time.monotonic()
    if now >= _next_check:
        _guard(paused=now - _last_call > PAUSE_SECONDS)
    _last_call = now
    return _modules[family]


def on_device(a):
    """Whether ``a`` is an array of the GPU backend (a CuPy array), so the CUDA launchers run
    it. A plain NumPy array answers at once, without looking for CuPy."""
    return type(a) is not np.ndarray and _cuda.is_device_array(a)


def gpu(family, name):
    """The CUDA launcher ``minissl.kernels.<family>.cuda.<name>``; with MINISSL_REFERENCE=1 the
    reference ``<name>_ref`` instead (array-module generic, so it runs on the device too).
    Both have the public function's signature."""
    if reference_forced():
        return getattr(importlib.import_module(f"minissl.kernels.{family}.reference"),
                       name + "_ref")
    return getattr(importlib.import_module(f"minissl.kernels.{family}.cuda"), name)


def check_float(fn, name, a, ndim=None):
    """Raise unless ``a`` is a floating-point array (with ``ndim`` dimensions, if given); the
    messages name the public function ``fn`` and the argument ``name``."""
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{fn}: {name} must be an ndarray, got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{fn}: {name} must be a floating-point array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {tuple(a.shape)}")


def check_same(fn, names, arrays):
    """Raise unless the arrays have equal shapes and dtypes (the engine never mixes dtypes; a
    mix here is a caller bug); ``names`` name them in the messages."""
    a0 = arrays[0]
    for name, a in zip(names[1:], arrays[1:]):
        if a.shape != a0.shape:
            raise ValueError(f"{fn}: {names[0]} and {name} must have the same shape, got "
                             f"{tuple(a0.shape)} and {tuple(a.shape)}")
        if a.dtype != a0.dtype:
            raise TypeError(f"{fn}: {names[0]} and {name} must have the same dtype, got "
                            f"{a0.dtype} and {a.dtype}")
