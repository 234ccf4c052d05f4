"""The GPU side shared by every kernel family: the CuPy launch backend and its helpers.

Each family keeps its CUDA source as a real file, ``minissl/kernels/<family>/<family>.cu``, and
its launchers beside it in ``<family>/cuda.py``: every launcher has exactly the signature and
the semantics of its NumPy reference (read the math there), takes and returns CuPy arrays, and
is called by the family's public function after that function has checked the arguments (the
launchers check only what is GPU-specific: that every array is on the device).

How the kernels are built
-------------------------
* One CUDA source per kernel family, written against an element type ``T``.
  ``source(family, dtype)`` prepends ``typedef float T;`` or ``typedef double T;`` and the
  shared helpers (``common.cuh``); ``cupy.RawModule`` compiles it with NVRTC on the first
  call that needs it, and the module is kept (CuPy also caches the binary on disk), so
  importing this file imports nothing from CuPy and costs nothing on a CPU-only machine.
* Launches go through one small backend object (``backend()``): CuPy's ``RawKernel`` in
  normal use. Every scalar argument is passed as a NumPy scalar of the C parameter's exact
  type (``np.int32`` for ``int``, ``np.int64`` for ``long long``, ``dtype.type`` for ``T``,
  ``np.float64`` for ``double``): RawKernel copies arguments by their size, so a Python int
  (sent as 8 bytes) for an ``int`` parameter would be silently wrong. The tests swap in a CPU
  emulator of the same launches (tests/support/cuda_emulator.py), which checks every
  argument against the C signature and runs the very same CUDA source on host threads, and
  compile every family with NVRTC wherever its library is installed, GPU or not.
* Only ``RawKernel``: one mechanism, explicit launch geometry, and reductions whose order is
  fixed by the code, not by a library.

Determinism and reductions
--------------------------
No kernel uses floating-point atomics, so every result is the same bit for bit on every run.
Adjoints that add many contributions into one place are written as gathers, one thread per
output element summing what reaches it in a fixed order: col2im and the pooling backwards sum
the windows covering a pixel in (i, j) order, which is exactly the order of the NumPy
reference, so they agree with it bit for bit; the embedding backward sums the gradient rows of
the positions holding a token in position order (``np.add.at``'s order) by compacting the
matches of each tile of positions with a block-wide prefix sum. Row reductions (softmax,
layer norm) use one block per row and a shared-memory tree; per-channel batch-norm statistics
and the column sums of the layer-norm weight gradient use a fixed split into chunks, one
partial per chunk, combined in chunk order by a second kernel (Welford/Chan's parallel
variance for the batch statistics, numerically stable in one pass: Chan, Golub & LeVeque,
"Algorithms for computing the sample variance", 1983). Accumulators follow the reference:
float64 where it sums in float64 (log-sum-exp, norm statistics and their adjoints), the
element type where it sums in the element type (softmax and its backward).

What differs from the CPU functions
-----------------------------------
Checks of *values* would need a device-to-host copy and a stall of the GPU in every step, so
they are not done; the kernels instead guard every memory access: a cross-entropy target
outside [0, C) that is not ``ignore_index`` gives a NaN loss and a NaN gradient row (where
the CPU raises ValueError), and an embedding index outside [0, num_embeddings) contributes
nothing to the gradient. All checks of shapes and dtypes are the public functions' own.
Arrays of more than 2**30 elements, and dtypes other than float32/float64, take the
array-module-generic NumPy reference (correct, slower): the kernels index with 32-bit ints.
"""
import functools
import os
import re
import sys

import numpy as np

__all__ = ["source", "kernel_names", "warmup", "is_device_array", "FAMILIES"]

# ---------------------------------------------------------------------------------- launches
# Module attributes read at every launch, so that the tests can shrink them and make every
# grid-stride loop, every block-strided row loop and every chunked reduction run more than
# one round.
THREADS = 256           # threads per block of the elementwise kernels
MAX_GRID = 1 << 20      # at most this many blocks; grid-stride loops cover the rest
MAX_BLOCK = 256         # threads per block of the cooperative kernels (power of 2, <= 256)
CHUNK_PER_THREAD = 16   # batch-norm statistics: values per thread of a chunk
ROWS_PER_CHUNK = 32     # layer-norm weight gradient: rows summed by one partial
MAX_ELEMENTS = 1 << 30  # larger arrays take the reference (32-bit indexing in the kernels)

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# ------------------------------------------------------------------------------ CUDA sources

_HERE = os.path.dirname(os.path.abspath(__file__))
# Every folder with a <family>.cu (so that a new family needs no line here).
FAMILIES = tuple(sorted(d for d in os.listdir(_HERE)
                        if os.path.isfile(os.path.join(_HERE, d, d + ".cu"))))


@functools.lru_cache(maxsize=None)
def _read(path):
    with open(os.path.join(_HERE, path), encoding="utf-8") as f:
        return f.read()


def family_source(family):
    """The text of ``<family>/<family>.cu``, as written (no typedef, no common helpers)."""
    return _read(os.path.join(family, family + ".cu"))


def ctype(dtype):
    return {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]


def common_source():
    """The device helpers every family shares (``common.cuh``)."""
    return _read("common.cuh")


def source(family, dtype):
    """The complete CUDA source of a kernel family for an element dtype (float32/float64)."""
    return f"typedef {ctype(dtype)} T;\n" + common_source() + family_source(family)


# ----------------------------------------------------------------------------- the backend

class _CupyBackend:
    """Compiles kernel families lazily with NVRTC (``cupy.RawModule``) and launches them on the
    current CUDA device and stream (so launches are captured by CUDA-graph stream capture)."""

    name = "cupy"

    def __init__(self):
        from ..backend import cupy
        self.xp = cupy()
        self._modules = {}
        self._functions = {}

    def is_device_array(self, a):
        return isinstance(a, self.xp.ndarray)

    def module(self, family, dtype):
        key = (family, np.dtype(dtype))
        mod = self._modules.get(key)
        if mod is None:
            mod = self._modules[key] = self.xp.RawModule(code=source(family, dtype))
        return mod

    def kernel(self, family, name, dtype):
        """The ``cupy.RawKernel`` ``name``, called as ``k(grid, block, args)``."""
        key = (family, name, np.dtype(dtype))
        fn = self._functions.get(key)
        if fn is None:
            fn = self._functions[key] = self.module(family, dtype).get_function(name)
        return fn


_BACKEND = None


def backend():
    global _BACKEND
    if _BACKEND is None:
        _BACKEND = _CupyBackend()
    return _BACKEND


def set_backend(new):
    """Swap the launch backend (the tests' CPU emulator); returns the previous one."""
    global _BACKEND
    prev, _BACKEND = _BACKEND, new
    return prev


def is_device_array(a):
    """Whether ``a`` is an array of the launch backend: a CuPy array, without importing CuPy
    when nothing has (then no array can be one)."""
    if _BACKEND is not None:
        return _BACKEND.is_device_array(a)
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(a, cp.ndarray)


def kernel_names(family):
    """The names of the ``__global__`` functions of a kernel family."""
    return re.findall(r"__global__\s+void\s+(\w+)\s*\(", family_source(family))


def warmup(families=FAMILIES, dtypes=(np.float32,)):
    """Compile and load every kernel of the given families now (e.g. before capturing a CUDA
    graph, so that no module is compiled or loaded during the capture)."""
    be = backend()
    for fam in families:
        for dt in dtypes:
            for name in kernel_names(fam):
                be.kernel(fam, name, dt)


# ----------------------------------------------------------------------------- helpers

def i32(v):
    return np.int32(v)


def i64(v):
    return np.int64(v)


def f64(v):
    return np.float64(v)


def grid(n):
    """Blocks for n elements with THREADS threads each (the kernels loop over the rest)."""
    return (max(1, min(-(-n // THREADS), MAX_GRID)),)


def coop_block(work):
    """Threads of a cooperative block for ``work`` items per block: a power of two, at least
    a warp (or MAX_BLOCK when smaller), at most MAX_BLOCK."""
    b = min(32, MAX_BLOCK)
    while b < work and b < MAX_BLOCK:
        b *= 2
    return b


def device_backend(fname, **arrays):
    """The backend, after checking that every array is a device array of it."""
    be = backend()
    for name, a in arrays.items():
        if a is not None and not be.is_device_array(a):
            raise TypeError(f"{fname}: {name} must be a CuPy array (this is the GPU kernel), "
                            f"got {type(a).__module__}.{type(a).__name__}")
    return be


def kernel_ok(*arrays):
    """Whether the CUDA kernels apply: one float32/float64 dtype, sizes that fit int32."""
    dt = arrays[0].dtype
    return (dt in _KERNEL_DTYPES and all(a.dtype == dt for a in arrays)
            and all(a.size <= MAX_ELEMENTS for a in arrays))


def contig(xp, a, dtype=None):
    """``a`` as a C-contiguous array (of ``dtype``), with its shape: ``ascontiguousarray``
    alone turns a 0-d array into a 1-d one, in NumPy and in CuPy."""
    return xp.ascontiguousarray(a, dtype=dtype).reshape(a.shape)
