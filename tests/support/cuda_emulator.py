"""A CPU emulator of minissl's CUDA launches, for the kernel tests (tests/kernels/).

The CUDA source of every family (minissl/kernels/<family>/<family>.cu) is compiled with g++
for the CPU. Each ``__global__`` function becomes a C++ function launched block after block;
blocks that synchronise (``__syncthreads``) run one OS thread per CUDA thread behind a
``std::barrier``. Every pointer becomes a bounds-checked view and every shared array a
bounds-checked array, outputs start filled with NaN (so an element a kernel forgets to write
shows), and every launch argument is checked against the C signature (dtype of each array,
C-contiguity, the exact NumPy scalar type of each scalar) -- the mistakes that a GPU turns
into silent garbage. The emulator cannot check what only a GPU has (NVRTC's dialect, warp
scheduling, performance); the runs on a real GPU do.
"""
import ctypes
import hashlib
import importlib
import os
import re
import subprocess
import tempfile
import types

import numpy as np
from hypothesis import strategies as st

from minissl.kernels import cuda as K
from support.helpers import assert_close, make_array

DTYPES = [np.float32, np.float64]


def _functions(module_name):
    mods = [importlib.import_module(module_name.format(f)) for f in K.FAMILIES]
    return types.SimpleNamespace(**{name: getattr(m, name) for m in mods
                                    for name in dir(m) if not name.startswith("_")
                                    and callable(getattr(m, name))})


# The public kernel functions (they check, then send device arrays to the launchers) and the
# CUDA launchers themselves, by name.
PUBLIC = _functions("minissl.kernels.{}")
LAUNCHERS = _functions("minissl.kernels.{}.cuda")


_SHIM = r"""
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <thread>
#include <type_traits>
#include <vector>

struct emu_uint3 { unsigned int x, y, z; };
static thread_local emu_uint3 threadIdx, blockIdx;
static emu_uint3 blockDim, gridDim;
static thread_local std::barrier<>* emu_barrier = nullptr;
static std::atomic<int> emu_failed{0};
static char emu_message[512];

static void emu_fail(const char* what, long long index, long long size) {
    int expected = 0;
    if (emu_failed.compare_exchange_strong(expected, 1))
        snprintf(emu_message, sizeof emu_message,
                 "%s: index %lld outside [0, %lld) in block (%u, %u), thread %u",
                 what, index, size, blockIdx.x, blockIdx.y, threadIdx.x);
}

/* A bounds-checked pointer: base, number of elements, offset. */
template <class T> struct emu_ptr {
    T* base; long long size; long long off;
    emu_ptr(T* b, long long n, long long o = 0) : base(b), size(n), off(o) {}
    T& operator[](long long i) const {
        const long long k = off + i;
        if (k < 0 || k >= size) {
            emu_fail("memory access", k, size);
            static thread_local std::remove_const_t<T> dummy;
            dummy = std::remove_const_t<T>();
            return dummy;
        }
        return base[k];
    }
    emu_ptr operator+(long long i) const { return emu_ptr(base, size, off + i); }
};

/* A bounds-checked __shared__ array (one per kernel, shared by the threads of a block). */
template <class T, int N> struct emu_shared {
    T data[N];
    T& operator[](long long i) {
        if (i < 0 || i >= N) {
            emu_fail("shared memory access", i, N);
            static thread_local T dummy;
            return dummy;
        }
        return data[i];
    }
    operator emu_ptr<T>() { return emu_ptr<T>(data, N); }
};

static inline void __syncthreads() {
    if (!emu_barrier) {
        emu_fail("__syncthreads in a kernel launched as non-cooperative", 0, 0);
        return;
    }
    emu_barrier->arrive_and_wait();
}

using std::exp; using std::log; using std::sqrt; using std::erf;
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

template <class F> static void emu_run(unsigned gx, unsigned gy, unsigned bx, int coop, F&& f) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    for (unsigned by = 0; by < gy; ++by) {
        for (unsigned b = 0; b < gx; ++b) {
            if (!coop) {
                for (unsigned t = 0; t < bx; ++t) {
                    blockIdx = {b, by, 0}; threadIdx = {t, 0, 0}; emu_barrier = nullptr;
                    f();
                }
            } else {
                std::barrier<> bar(bx);
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < bx; ++t)
                    threads.emplace_back([&, t]() {
                        blockIdx = {b, by, 0}; threadIdx = {t, 0, 0}; emu_barrier = &bar;
                        f();
                    });
                for (auto& th : threads) th.join();
            }
        }
    }
}

extern "C" const char* emu_error() { return emu_message; }
"""

_PTR = re.compile(r"(const\s+)?\b(T|double|long long|int)\s*\*\s*(?:__restrict__\s+)?(\w+)")
_SHARED = re.compile(r"__shared__\s+(T|double|int)\s+(\w+)\[(\w+)\];")
_KERNEL = re.compile(r'extern "C" __global__ void (\w+)\((.*?)\)\s*\{', re.S)
_PARAM = re.compile(r"^(const\s+)?(T|double|long long|int)\s*(\*)?\s*(?:__restrict__\s+)?(\w+)$")


class _Param:
    def __init__(self, text):
        m = _PARAM.match(" ".join(text.split()))
        assert m, f"emulator cannot parse the kernel parameter {text!r}"
        self.const, self.type, self.pointer, self.name = bool(m[1]), m[2], bool(m[3]), m[4]


def _kernel_bodies(src):
    """name -> (parameters, body text) of every __global__ function of a source."""
    out = {}
    for m in _KERNEL.finditer(src):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(src[i], 0)
            i += 1
        params = [_Param(p) for p in m[2].split(",")]
        out[m[1]] = (params, src[m.end():i])
    return out


def _cooperative(body):
    """Whether a kernel synchronises its block (directly or through a block_* helper)."""
    return "__syncthreads" in body or re.search(r"\bblock_\w+\(", body) is not None


class _EmuXP:
    """numpy, whose ``empty`` fills floats with NaN and integers with a sentinel, so that an
    output element that a kernel forgets to write cannot pass for a right one."""

    ndarray = np.ndarray

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def _fill(a):
        a.fill(np.nan if a.dtype.kind == "f" else -(1 << 40))
        return a

    def empty(self, shape, dtype=float):
        return self._fill(np.empty(shape, dtype=dtype)).view(EmuArray)

    def empty_like(self, a, dtype=None):
        return self._fill(np.empty_like(a, dtype=dtype)).view(EmuArray)


class EmuArray(np.ndarray):
    """A NumPy array that the public kernel functions take for a device array while the
    emulator is the backend (``Runner.dev`` makes them), so that they send it to the CUDA
    launchers, as they would a CuPy array."""


class Emulator:
    """A launch backend for ``minissl.kernels.cuda`` that runs the CUDA source on the CPU.
    The launchers accept any NumPy array as a device array; the public functions route only
    ``EmuArray`` to them (a plain ndarray goes to the CPU kernels)."""

    name = "emulated"

    def __init__(self):
        self.xp = _EmuXP()
        self._libs = {}
        self.launches = 0

    @staticmethod
    def is_device_array(a):
        return isinstance(a, np.ndarray)

    def build(self, dtypes=DTYPES):
        """Compile the libraries of several dtypes at once (one g++ process each)."""
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(len(dtypes)) as pool:
            list(pool.map(self._lib, dtypes))

    def _lib(self, dtype):
        dtype = np.dtype(dtype)
        if dtype in self._libs:
            return self._libs[dtype]
        raw = "".join(K.family_source(f) for f in K.FAMILIES)
        kernels = _kernel_bodies(raw)
        body = f"typedef {K.ctype(dtype)} T;\n" + K.common_source() + raw
        body = _SHARED.sub(lambda m: f"static emu_shared<{m[1]}, {m[3]}> {m[2]};", body)
        body = _PTR.sub(lambda m: f"emu_ptr<{m[1] or ''}{m[2]}> {m[3]}", body)
        body = body.replace('extern "C" __global__', "static")
        body = body.replace("__device__ __forceinline__", "static inline")
        body = body.replace("__device__", "static")
        wrappers = []
        for name, (params, kbody) in kernels.items():
            decl, call = [], []
            for p in params:
                ctype = ("const " if p.const else "") + p.type
                if p.pointer:
                    decl.append(f"void* {p.name}_p, long long {p.name}_n")
                    call.append(f"emu_ptr<{ctype}>(({ctype}*){p.name}_p, {p.name}_n)")
                else:
                    decl.append(f"{p.type} {p.name}")
                    call.append(p.name)
            wrappers.append(
                f'extern "C" int emu_{name}(unsigned gx, unsigned gy, unsigned bx, int coop, '
                f'{", ".join(decl)}) {{\n    emu_failed = 0;\n'
                f'    emu_run(gx, gy, bx, coop, [&]() {{ {name}({", ".join(call)}); }});\n'
                f'    return emu_failed.load();\n}}\n')
        code = _SHIM + body + "\n" + "".join(wrappers)
        flags = ["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w"]
        key = hashlib.sha256((code + " ".join(flags)).encode()).hexdigest()[:20]
        so = os.path.join(tempfile.gettempdir(), f"minissl_cuda_emu_{key}.so")
        if not os.path.exists(so):
            with tempfile.TemporaryDirectory() as tmp:
                cpp = os.path.join(tmp, "kernels.cpp")
                with open(cpp, "w") as f:
                    f.write(code)
                out = subprocess.run(["g++", *flags, cpp, "-o", so + ".tmp"],
                                     capture_output=True, text=True)
                if out.returncode:
                    raise RuntimeError("emulator build failed:\n" + out.stderr[-4000:])
                os.replace(so + ".tmp", so)
        lib = ctypes.CDLL(so)
        lib.emu_error.restype = ctypes.c_char_p
        self._libs[dtype] = (lib, kernels)
        return self._libs[dtype]

    def kernel(self, family, name, dtype):
        assert name in K.kernel_names(family), f"{name} is not a kernel of family {family}"
        lib, kernels = self._lib(dtype)
        params, body = kernels[name]
        coop = _cooperative(body)
        fn = getattr(lib, f"emu_{name}")
        fn.restype = ctypes.c_int
        dtype = np.dtype(dtype)
        scalar_types = {"int": np.int32, "long long": np.int64, "double": np.float64,
                        "T": dtype.type}
        pointee = {"int": np.dtype(np.int32), "long long": np.dtype(np.int64),
                   "double": np.dtype(np.float64), "T": dtype}
        ctypes_of = {"int": ctypes.c_int, "long long": ctypes.c_longlong,
                     "double": ctypes.c_double,
                     "T": ctypes.c_float if dtype == np.float32 else ctypes.c_double}

        def launch(grid, block, args):
            assert len(args) == len(params), (
                f"{name}: {len(args)} arguments for {len(params)} parameters")
            grid = tuple(grid) + (1,) * (2 - len(grid))
            (bx,) = block
            assert grid[0] >= 1 and 1 <= grid[1] <= 65535 and 1 <= bx <= 1024, (grid, block)
            if coop:
                assert bx & (bx - 1) == 0 and bx <= 256, (
                    f"{name}: cooperative block of {bx} threads (power of two <= 256 needed)")
            cargs = []
            for p, a in zip(params, args):
                where = f"{name}: parameter {p.name}"
                if p.pointer:
                    assert isinstance(a, np.ndarray), f"{where} needs an array, got {type(a)}"
                    assert a.dtype == pointee[p.type], (
                        f"{where} is {p.type}*, got an array of {a.dtype}")
                    assert a.flags.c_contiguous, f"{where}: array is not C-contiguous"
                    assert p.const or a.flags.writeable, f"{where}: output is read-only"
                    cargs += [ctypes.c_void_p(a.ctypes.data), ctypes.c_longlong(a.size)]
                else:
                    want = scalar_types[p.type]
                    assert type(a) is want, (
                        f"{where} is {p.type}: pass {want.__name__}, got {type(a).__name__}")
                    cargs.append(ctypes_of[p.type](a.item()))
            self.launches += 1
            if fn(ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(bx),
                  ctypes.c_int(int(coop)), *cargs):
                raise AssertionError(f"{name}: {lib.emu_error().decode()}")
        return launch


# Small launch geometry for the emulator: every grid-stride loop, block-strided row loop and
# chunked reduction runs several rounds on small inputs.
SMALL = dict(THREADS=32, MAX_GRID=3, MAX_BLOCK=8, CHUNK_PER_THREAD=2, ROWS_PER_CHUNK=3)


class Runner:
    """One way of running the kernels: ``dev`` puts a host array on the backend's device,
    ``host`` brings one back."""

    def __init__(self, name, backend, config):
        self.name, self.backend, self.config = name, backend, config

    def __enter__(self):
        self._saved = {k: getattr(K, k) for k in self.config}
        for k, v in self.config.items():
            setattr(K, k, v)
        self._prev = K.set_backend(self.backend)
        return self

    def __exit__(self, *exc):
        K.set_backend(self._prev)
        for k, v in self._saved.items():
            setattr(K, k, v)

    def dev(self, a):
        if a is None:
            return a
        if self.name == "emulated":
            return a.view(EmuArray)
        import cupy
        return cupy.asarray(a)

    def host(self, a):
        if a is None:
            return a
        if self.name == "emulated":
            return np.asarray(a)
        return a.get()


def layouts(draw_rng, shape, dtype, scale=2.0):
    """A random array of ``shape`` in a random memory layout (contiguous, transposed view or
    strided slice): the launchers must make what they pass to a kernel contiguous."""
    kind = ["contiguous", "transposed", "sliced"][draw_rng.integers(3)]
    if (kind == "transposed" and len(shape) < 2) or (kind == "sliced" and len(shape) < 1):
        kind = "contiguous"
    return make_array(draw_rng, shape, dtype, kind, scale=scale)


def close(actual, expected, dtype, rtol32=3e-6, atol32=3e-6, exact=False):
    assert_close(actual, expected, dtype, rtol32, atol32, 1e-11, 1e-12, exact)


@st.composite
def windows(draw, pooling=False):
    """(N, C, H, W), kernel, stride, padding and output size of a valid window geometry
    (pooling: padding at most half the kernel, as PyTorch requires)."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph = draw(st.integers(0, kh // 2 if pooling else 2))
    pw = draw(st.integers(0, kw // 2 if pooling else 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return (n, c, h, w), (kh, kw), (sh, sw), (ph, pw), (oh, ow)
