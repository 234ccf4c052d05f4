"""The GPU backend: every CUDA kernel against its NumPy reference, ops and a SimCLR step on
"cuda", no device-to-host copy inside a training step, and no CuPy import by ``import minissl``.

The kernel checks run on two launch backends, through the very same Python wrappers of
``minissl.kernels.cuda``:

* ``"cuda"``: CuPy on a real GPU (skipped without CuPy and a device);
* ``"emulated"``: the CUDA source compiled with g++ for the CPU (skipped without g++). Each
  ``__global__`` function becomes a C++ function launched block after block; blocks that
  synchronise (``__syncthreads``) run one OS thread per CUDA thread behind a
  ``std::barrier``. Every pointer becomes a bounds-checked view and every shared array a
  bounds-checked array, outputs start filled with NaN (so an element a kernel forgets to write
  shows), and every launch argument is checked against the C signature (dtype of each array,
  C-contiguity, the exact NumPy scalar type of each scalar) -- the mistakes that a GPU turns
  into silent garbage. The emulator cannot check what only a GPU has (NVRTC's dialect, warp
  scheduling, performance); the "cuda" runs do.
"""
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minissl as ms
from minissl.backend import is_cuda_available
from minissl.kernels import cuda as K
from minissl.kernels.activation import gelu_backward_ref, gelu_forward_ref
from minissl.kernels.embedding import embedding_backward_ref
from minissl.kernels.im2col import col2im_ref, im2col_ref
from minissl.kernels.norm import (batch_norm_backward_ref, batch_norm_forward_ref,
                                  layer_norm_backward_ref, layer_norm_forward_ref)
from minissl.kernels.optim import adam_step_ref, sgd_step_ref
from minissl.kernels.pool import (avg_pool2d_backward_ref, avg_pool2d_forward_ref,
                                  max_pool2d_backward_ref, max_pool2d_forward_ref)
from minissl.kernels.softmax import (cross_entropy_backward_ref, cross_entropy_forward_ref,
                                     log_softmax_backward_ref, log_softmax_forward_ref,
                                     softmax_backward_ref, softmax_forward_ref)

CUDA = is_cuda_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CuPy or a CUDA GPU is not available")
DTYPES = [np.float32, np.float64]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# =============================================================================== the emulator

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
        return self._fill(np.empty(shape, dtype=dtype))

    def empty_like(self, a, dtype=None):
        return self._fill(np.empty_like(a, dtype=dtype))


class Emulator:
    """A launch backend for ``minissl.kernels.cuda`` that runs the CUDA source on the CPU."""

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
        raw = "".join(K._SOURCES[f] for f in K.FAMILIES)
        kernels = _kernel_bodies(raw)
        body = f"typedef {K._ctype(dtype)} T;\n" + K._COMMON + raw
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
_SMALL = dict(_THREADS=32, _MAX_GRID=3, _MAX_BLOCK=8, _CHUNK_PER_THREAD=2, _ROWS_PER_CHUNK=3)


@pytest.fixture(scope="session")
def emulator():
    if shutil.which("g++") is None:
        pytest.skip("g++ is not available to build the CUDA emulator")
    emu = Emulator()
    try:
        emu.build()
    except RuntimeError as e:
        pytest.fail(str(e))
    return emu


class Runner:
    """One way of running the kernels: ``dev`` puts a host array on the backend's device,
    ``host`` brings one back."""

    def __init__(self, name, backend, config):
        self.name, self.backend, self.config = name, backend, config

    def __enter__(self):
        self._saved = {k: getattr(K, k) for k in self.config}
        for k, v in self.config.items():
            setattr(K, k, v)
        self._prev = K._set_backend(self.backend)
        return self

    def __exit__(self, *exc):
        K._set_backend(self._prev)
        for k, v in self._saved.items():
            setattr(K, k, v)

    def dev(self, a):
        if a is None or self.name == "emulated":
            return a
        import cupy
        return cupy.asarray(a)

    def host(self, a):
        if a is None or self.name == "emulated":
            return a
        return a.get()


@pytest.fixture(scope="session", params=["emulated", "cuda", "cuda-small"])
def runner(request):
    """The emulator with the small geometry; the GPU with the production geometry and with
    the small one. (The emulator runs the production geometry in
    test_production_geometry_on_the_emulator: 256 OS threads per block are slow.)"""
    if request.param.startswith("cuda"):
        if not CUDA:
            pytest.skip("CuPy or a CUDA GPU is not available")
        return Runner("cuda", K._CupyBackend(), _SMALL if request.param == "cuda-small" else {})
    return Runner("emulated", request.getfixturevalue("emulator"), _SMALL)


def layouts(draw_rng, shape, dtype, scale=2.0):
    """A random array of ``shape`` in a random memory layout (contiguous, transposed view or
    strided slice): the wrappers must make what they pass to a kernel contiguous."""
    kind = draw_rng.integers(3)
    if kind == 1 and len(shape) >= 2:
        return (scale * draw_rng.standard_normal(shape[::-1])).astype(dtype).T
    if kind == 2 and len(shape) >= 1:
        big = (scale * draw_rng.standard_normal(shape[:-1] + (2 * shape[-1],))).astype(dtype)
        return big[..., ::2]
    return (scale * draw_rng.standard_normal(shape)).astype(dtype)


def close(actual, expected, dtype, rtol32=3e-6, atol32=3e-6, exact=False):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    if exact:
        np.testing.assert_array_equal(actual, expected)
    elif dtype == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=1e-11, atol=1e-12)
    else:
        np.testing.assert_allclose(actual, expected, rtol=rtol32, atol=atol32)


# ============================================================================ kernel cross-checks

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


@given(g=windows(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_im2col_col2im_match_reference(runner, g, dtype, seed):
    xs, ks, st_, pad, (oh, ow) = g
    rng = np.random.default_rng(seed)
    x = layouts(rng, xs, dtype)
    cols_shape = (xs[0] * oh * ow, xs[1] * ks[0] * ks[1])
    cols = layouts(rng, cols_shape, dtype)
    with runner as r:
        got = r.host(K.im2col(r.dev(x), ks, st_, pad))
        back = r.host(K.col2im(r.dev(cols), xs, ks, st_, pad))
    close(got, im2col_ref(x, ks, st_, pad), dtype, exact=True)
    # A gather in the reference's (i, j) order: the same sums, bit for bit.
    close(back, col2im_ref(cols, xs, ks, st_, pad), dtype, exact=True)


@given(g=windows(pooling=True), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       values=st.sampled_from(["normal", "ties", "special"]))
def test_pooling_matches_reference(runner, g, dtype, seed, values):
    xs, ks, st_, pad, (oh, ow) = g
    rng = np.random.default_rng(seed)
    x = layouts(rng, xs, dtype)
    if values == "ties":                       # repeated maxima: the first one wins
        x = np.round(x / 2).astype(dtype)
    elif values == "special":                  # all--inf windows and NaNs
        x = np.where(rng.random(xs) < 0.6, -np.inf, x).astype(dtype)
        x[rng.random(xs) < 0.1] = np.nan
    g_out = layouts(rng, (xs[0], xs[1], oh, ow), dtype)
    ref_out, ref_arg = max_pool2d_forward_ref(x, ks, st_, pad)
    with runner as r:
        out, arg = K.max_pool2d_forward(r.dev(x), ks, st_, pad)
        out, arg = r.host(out), r.host(arg)
        gx = r.host(K.max_pool2d_backward(r.dev(g_out), r.dev(ref_arg), xs, ks, st_, pad))
        avg = r.host(K.avg_pool2d_forward(r.dev(x), ks, st_, pad))
        gavg = r.host(K.avg_pool2d_backward(r.dev(g_out), xs, ks, st_, pad))
    close(out, ref_out, dtype, exact=True)
    close(arg, ref_arg, np.int64, exact=True)
    close(gx, max_pool2d_backward_ref(g_out, ref_arg, xs, ks, st_, pad), dtype, exact=True)
    close(avg, avg_pool2d_forward_ref(x, ks, st_, pad), dtype, exact=True)
    close(gavg, avg_pool2d_backward_ref(g_out, xs, ks, st_, pad), dtype, exact=True)


rows = st.tuples(st.integers(1, 9), st.integers(1, 70))


@given(shape=rows, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1.0, 30.0, 1e4]))
def test_softmax_family_matches_reference(runner, shape, dtype, seed, scale):
    rng = np.random.default_rng(seed)
    x = layouts(rng, shape, dtype, scale)
    if shape[1] > 2:
        x[0, 1] = -np.inf                     # a masked entry (self-similarity in NT-Xent)
    g = layouts(rng, shape, dtype)
    y_ref, ylog_ref = softmax_forward_ref(x), log_softmax_forward_ref(x)
    with runner as r:
        y = r.host(K.softmax_forward(r.dev(x)))
        ylog = r.host(K.log_softmax_forward(r.dev(x)))
        dy = r.host(K.softmax_backward(r.dev(g), r.dev(y_ref)))
        dylog = r.host(K.log_softmax_backward(r.dev(g), r.dev(ylog_ref)))
    close(y, y_ref, dtype)
    close(ylog, ylog_ref, dtype, atol32=2e-5 * max(1.0, scale / 100))
    close(dy, softmax_backward_ref(g, y_ref), dtype, atol32=1e-5)
    close(dylog, log_softmax_backward_ref(g, ylog_ref), dtype, atol32=1e-5)


@given(shape=rows, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1.0, 1e4]), ignore_index=st.sampled_from([-100, 0, 3]))
def test_cross_entropy_matches_reference(runner, shape, dtype, seed, scale, ignore_index):
    n, c = shape
    rng = np.random.default_rng(seed)
    x = layouts(rng, shape, dtype, scale)
    t = rng.integers(0, c, n)
    t[rng.random(n) < 0.3] = ignore_index
    g = rng.standard_normal(n).astype(dtype)
    loss_ref, lse_ref = cross_entropy_forward_ref(x, t, ignore_index)
    with runner as r:
        loss, lse = K.cross_entropy_forward(r.dev(x), r.dev(t), ignore_index)
        loss, lse = r.host(loss), r.host(lse)
        grad = r.host(K.cross_entropy_backward(r.dev(g), r.dev(x), r.dev(t), r.dev(lse_ref),
                                               ignore_index))
    assert lse.dtype == np.float64
    np.testing.assert_allclose(lse, lse_ref, rtol=1e-12 if dtype == np.float64 else 1e-6)
    close(loss, loss_ref, dtype, rtol32=2e-5, atol32=2e-5 * max(1.0, scale / 1e3))
    close(grad, cross_entropy_backward_ref(g, x, t, lse_ref, ignore_index), dtype, atol32=1e-6)


def test_cross_entropy_bad_target_gives_nan_not_a_crash(runner):
    """The GPU cannot raise on a target value without a device-to-host copy: a target outside
    [0, C) that is not ignore_index marks its row with NaN instead (documented)."""
    x = np.zeros((3, 4), np.float32)
    t = np.array([1, 4, -1])                  # 4 and -1 are out of range, ignore_index=-100
    with runner as r:
        loss, lse = K.cross_entropy_forward(r.dev(x), r.dev(t))
        grad = K.cross_entropy_backward(r.dev(np.ones(3, np.float32)), r.dev(x), r.dev(t), lse)
        loss, grad = r.host(loss), r.host(grad)
    assert np.isfinite(loss[0]) and np.isnan(loss[1:]).all()
    assert np.isfinite(grad[0]).all() and np.isnan(grad[1:]).all()


@given(shape=st.tuples(st.integers(1, 12), st.integers(1, 40)), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31), affine=st.booleans(), offset=st.sampled_from([0.0, 1e3]))
def test_layer_norm_matches_reference(runner, shape, dtype, seed, affine, offset):
    rng = np.random.default_rng(seed)
    x = layouts(rng, shape, dtype) + dtype(offset)   # |mean| >> std: the two-pass variance
    g = layouts(rng, shape, dtype)
    w = rng.standard_normal(shape[1]).astype(dtype) if affine else None
    b = rng.standard_normal(shape[1]).astype(dtype) if affine else None
    y_ref, mean_ref, rstd_ref = layer_norm_forward_ref(x, w, b)
    with runner as r:
        y, mean, rstd = (r.host(a) for a in K.layer_norm_forward(r.dev(x), r.dev(w), r.dev(b)))
        dx, dw, db = (r.host(a) for a in K.layer_norm_backward(
            r.dev(g), r.dev(x), r.dev(mean_ref), r.dev(rstd_ref), r.dev(w)))
    tol = dict(rtol32=1e-5, atol32=1e-5 * max(1.0, offset / 10))
    close(y, y_ref, dtype, **tol)
    close(mean, mean_ref, dtype)
    close(rstd, rstd_ref, dtype, **tol)
    dx_ref, dw_ref, db_ref = layer_norm_backward_ref(g, x, mean_ref, rstd_ref, w)
    close(dx, dx_ref, dtype, rtol32=1e-4, atol32=1e-4)
    close(db, db_ref, dtype, rtol32=1e-5, atol32=1e-5)
    assert (dw is None) == (w is None)
    if w is not None:
        close(dw, dw_ref, dtype, rtol32=1e-4, atol32=1e-4)


@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 30)),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31), affine=st.booleans(),
       offset=st.sampled_from([0.0, 1e3]))
def test_batch_norm_matches_reference(runner, shape, dtype, seed, affine, offset):
    rng = np.random.default_rng(seed)
    x = layouts(rng, shape, dtype) + dtype(offset)
    g = layouts(rng, shape, dtype)
    c = shape[1]
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    y_ref, mean_ref, var_ref, rstd_ref = batch_norm_forward_ref(x, w, b)
    with runner as r:
        y, mean, var, rstd = (r.host(a) for a in K.batch_norm_forward(r.dev(x), r.dev(w),
                                                                      r.dev(b)))
        dx, dw, db = (r.host(a) for a in K.batch_norm_backward(
            r.dev(g), r.dev(x), r.dev(mean_ref), r.dev(rstd_ref), r.dev(w)))
    if shape[0] * shape[2] == 1:              # one value: var 0, rstd 1/sqrt(eps)
        tol = dict(rtol32=1e-5, atol32=1e-3)
    else:
        tol = dict(rtol32=1e-5, atol32=1e-5 * max(1.0, offset / 10))
    close(y, y_ref, dtype, **tol)
    close(mean, mean_ref, dtype)
    close(var, var_ref, dtype, rtol32=1e-5, atol32=1e-5)
    close(rstd, rstd_ref, dtype, **tol)
    dx_ref, dw_ref, db_ref = batch_norm_backward_ref(g, x, mean_ref, rstd_ref, w)
    close(dx, dx_ref, dtype, rtol32=1e-4, atol32=1e-4 * max(1.0, float(np.abs(dx_ref).max())))
    close(db, db_ref, dtype, rtol32=1e-5, atol32=1e-5)
    assert (dw is None) == (w is None)
    if w is not None:
        close(dw, dw_ref, dtype, rtol32=1e-4, atol32=1e-4)


@given(shape=st.lists(st.integers(0, 7), min_size=0, max_size=3),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_gelu_matches_reference(runner, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    x = np.asarray(3 * rng.standard_normal(shape), dtype=dtype)    # 0-d stays an array
    g = np.asarray(rng.standard_normal(shape), dtype=dtype)
    with runner as r:
        y = r.host(K.gelu_forward(r.dev(x)))
        dx = r.host(K.gelu_backward(r.dev(g), r.dev(x)))
    close(np.asarray(y), np.asarray(gelu_forward_ref(x)), dtype, rtol32=1e-6, atol32=1e-6)
    close(np.asarray(dx), np.asarray(gelu_backward_ref(g, x)), dtype, rtol32=1e-6,
          atol32=1e-6)


@given(idx_shape=st.lists(st.integers(0, 6), min_size=1, max_size=2), v=st.integers(0, 12),
       d=st.integers(0, 20), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_embedding_backward_matches_reference(runner, idx_shape, v, d, dtype, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, max(v, 1), tuple(idx_shape)) if v else \
        np.zeros(tuple(idx_shape), np.int64)
    if v == 0 and idx.size:
        v = 1
    g = layouts(rng, tuple(idx_shape) + (d,), dtype)
    with runner as r:
        got = r.host(K.embedding_backward(r.dev(idx), r.dev(g), v))
    # Summed in position order, like np.add.at: equal bit for bit.
    close(got, embedding_backward_ref(idx, g, v), dtype, exact=True)


def test_embedding_backward_repeated_token_across_tiles(runner):
    """One token at many positions, spread over several tiles of the block scan."""
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 3, 300)
    g = rng.standard_normal((300, 5)).astype(np.float32)
    with runner as r:
        got = r.host(K.embedding_backward(r.dev(idx), r.dev(g), 4))
    close(got, embedding_backward_ref(idx, g, 4), np.float32, exact=True)
    assert (got[3] == 0).all()


@given(n=st.integers(0, 200), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       momentum=st.sampled_from([0.0, 0.9]), nesterov=st.booleans(),
       weight_decay=st.sampled_from([0.0, 1e-2]), dampening=st.sampled_from([0.0, 0.1]))
def test_sgd_step_matches_reference(runner, n, dtype, seed, momentum, nesterov, weight_decay,
                                    dampening):
    if nesterov and (momentum == 0 or dampening != 0):
        nesterov = False
    rng = np.random.default_rng(seed)
    p, grad, buf = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    p_ref, buf_ref = p.copy(), buf.copy()
    for first in (True, False):
        sgd_step_ref(p_ref, grad, buf_ref, 0.1, momentum, dampening, weight_decay, nesterov,
                     first)
    with runner as r:
        dp, dbuf = r.dev(p), r.dev(buf)
        for first in (True, False):
            K.sgd_step(dp, r.dev(grad), dbuf, 0.1, momentum, dampening, weight_decay,
                       nesterov, first)
        p, buf = r.host(dp), r.host(dbuf)
    close(p, p_ref, dtype, rtol32=1e-6, atol32=1e-7)
    if momentum:
        close(buf, buf_ref, dtype, rtol32=1e-6, atol32=1e-7)


@given(n=st.integers(0, 200), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       weight_decay=st.sampled_from([0.0, 1e-2]), decoupled=st.booleans())
def test_adam_step_matches_reference(runner, n, dtype, seed, weight_decay, decoupled):
    rng = np.random.default_rng(seed)
    p, grad = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    p_ref, m_ref, v_ref = p.copy(), m.copy(), v.copy()
    for step in (1, 2, 3):
        adam_step_ref(p_ref, grad, m_ref, v_ref, step, 1e-2, 0.9, 0.999, 1e-8, weight_decay,
                      decoupled)
    with runner as r:
        dp, dm, dv = r.dev(p), r.dev(m), r.dev(v)
        for step in (1, 2, 3):
            K.adam_step(dp, r.dev(grad), dm, dv, step, 1e-2, 0.9, 0.999, 1e-8, weight_decay,
                        decoupled)
        p, m, v = r.host(dp), r.host(dm), r.host(dv)
    for a, b in ((p, p_ref), (m, m_ref), (v, v_ref)):
        close(a, b, dtype, rtol32=1e-6, atol32=1e-7)


def test_optimizer_views_update_in_place(runner):
    """A strided param view takes the reference path, which updates the view in place."""
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = base.copy()
    expected[:, ::2] -= 0.5
    grad = np.ones((3, 2), np.float32)
    with runner as r:
        dbase = r.dev(base)
        K.sgd_step(dbase[:, ::2], r.dev(grad), None, 0.5, 0, 0, 0, False, True)
        out = r.host(dbase)
    np.testing.assert_array_equal(out, expected)


# ----------------------------------------------------------------------------- the emulator itself

def test_emulator_catches_launch_mistakes(emulator):
    """The emulator is only worth its passes if it fails on the mistakes a GPU hides."""
    x = np.zeros((1, 1, 3, 3), np.float32)
    cols = np.zeros((4, 4), np.float32)
    k = emulator.kernel("im2col", "im2col_kernel", np.float32)
    i = np.int32
    good = [x, cols, *map(i, (1, 3, 3, 2, 2, 1, 1, 0, 0, 2, 2)), i(16)]
    k((1,), (32,), good)
    np.testing.assert_array_equal(cols, im2col_ref(x, (2, 2), (1, 1), (0, 0)))
    with pytest.raises(AssertionError, match=r"memory access: index \d+ outside"):
        k((1,), (32,), good[:-1] + [i(17)])
    with pytest.raises(AssertionError, match="pass int32, got int64"):  # Python-int-sized
        k((1,), (32,), good[:-1] + [np.int64(16)])
    with pytest.raises(AssertionError, match="is T\\*, got an array of float64"):
        k((1,), (32,), [x.astype(np.float64)] + good[1:])
    with pytest.raises(AssertionError, match="not C-contiguous"):
        k((1,), (32,), [np.zeros((1, 1, 3, 6), np.float32)[..., ::2]] + good[1:])
    coop = emulator.kernel("softmax", "softmax_fwd_kernel", np.float32)
    y = np.zeros((2, 3), np.float32)
    with pytest.raises(AssertionError, match="power of two"):
        coop((2,), (24,), [y, y, i(3), np.float32(-np.inf)])
    with pytest.raises(AssertionError, match="power of two <= 256"):
        coop((2,), (512,), [y, y, i(3), np.float32(-np.inf)])
    # Past that guard (called raw), 512 threads overrun the 256-entry shared buffer.
    lib, _ = emulator._lib(np.float32)
    ptr = (ctypes.c_void_p(y.ctypes.data), ctypes.c_longlong(y.size))
    assert lib.emu_softmax_fwd_kernel(1, 1, 512, 1, *ptr, *ptr, 3, ctypes.c_float(-np.inf))
    # One OS thread per CUDA thread: whichever of threads 256..511 gets there first reports.
    err = lib.emu_error().decode()
    assert re.search(r"index (\d+) outside \[0, 256\)", err), err
    assert 256 <= int(re.search(r"index (\d+) outside", err).group(1)) < 512, err
    # An output the kernel never writes is NaN, so it cannot pass for a right one.
    assert np.isnan(emulator.xp.empty(3)).all()


def test_production_geometry_on_the_emulator(emulator):
    """The production launch geometry (256-thread blocks, 16 values per thread per chunk, 32
    rows per partial) on a few shapes large enough to use several blocks and chunks."""
    rng = np.random.default_rng(3)
    with Runner("emulated", emulator, dict(_MAX_GRID=5)):
        x = rng.standard_normal((3, 700)).astype(np.float32)
        close(K.softmax_forward(x), softmax_forward_ref(x), np.float32)
        t = rng.integers(0, 700, 3)
        loss, lse = K.cross_entropy_forward(x, t)
        close(loss, cross_entropy_forward_ref(x, t)[0], np.float32, rtol32=1e-5)
        xb = rng.standard_normal((9, 2, 500)).astype(np.float32)   # 4500 values: 2 chunks
        got = K.batch_norm_forward(xb)
        for a, b in zip(got, batch_norm_forward_ref(xb)):
            close(a, b, np.float32, rtol32=1e-5, atol32=1e-5)
        xl = rng.standard_normal((70, 40)).astype(np.float32)      # 3 partials of 32 rows
        gl = rng.standard_normal((70, 40)).astype(np.float32)
        w = rng.standard_normal(40).astype(np.float32)
        _, mean, rstd = layer_norm_forward_ref(xl, w)
        for a, b in zip(K.layer_norm_backward(gl, xl, mean, rstd, w),
                        layer_norm_backward_ref(gl, xl, mean, rstd, w)):
            close(a, b, np.float32, rtol32=1e-4, atol32=1e-4)
        idx = rng.integers(0, 5, 600)
        ge = rng.standard_normal((600, 300)).astype(np.float32)    # 3 tiles, 2 column blocks
        close(K.embedding_backward(idx, ge, 5), embedding_backward_ref(idx, ge, 5),
              np.float32, exact=True)
        xe = rng.standard_normal(20000).astype(np.float32)         # grid-stride rounds
        close(K.gelu_forward(xe), gelu_forward_ref(xe), np.float32, rtol32=1e-6, atol32=1e-6)


def _nvrtc():
    """The NVRTC library (CUDA's run-time compiler, the one CuPy uses), or None. It needs no
    GPU: ``pip install nvidia-cuda-nvrtc`` on any Linux machine, or MINISSL_NVRTC=path."""
    import ctypes.util
    import glob
    import importlib.util
    paths = [os.environ.get("MINISSL_NVRTC", "")]
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        paths += sorted(glob.glob(os.path.join(root, "*", "lib", "libnvrtc.so*")))
    paths.append(ctypes.util.find_library("nvrtc") or "")
    for path in filter(None, paths):
        if "builtins" in path:
            continue
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def test_kernels_compile_with_nvrtc():
    """Every kernel family, float32 and float64, compiles with NVRTC to PTX that has one entry
    per kernel -- checked without a GPU wherever the NVRTC library is installed."""
    lib = _nvrtc()
    if lib is None:
        pytest.skip("NVRTC is not installed (pip install nvidia-cuda-nvrtc)")
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    for family in K.FAMILIES:
        for dtype in DTYPES:
            prog = ctypes.c_void_p()
            assert lib.nvrtcCreateProgram(ctypes.byref(prog), K._source(family, dtype).encode(),
                                          f"{family}.cu".encode(), 0, None, None) == 0
            opts = (ctypes.c_char_p * 1)(b"--gpu-architecture=compute_80")
            rc = lib.nvrtcCompileProgram(prog, 1, opts)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            assert rc == 0, f"{family} ({np.dtype(dtype)}): {log.value.decode()}"
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            ptx = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, ptx)
            lib.nvrtcDestroyProgram(ctypes.byref(prog))
            entries = re.findall(r"\.entry\s+(\w+)", ptx.value.decode())
            assert sorted(entries) == sorted(K.kernel_names(family)), (family, entries)


# ----------------------------------------------------------------------------- validation

def test_wrappers_validate_like_the_cpu_functions(runner):
    x4 = np.zeros((1, 1, 4, 4), np.float32)
    with runner as r:
        with pytest.raises(ValueError, match="im2col: x must have 4 dimensions"):
            K.im2col(r.dev(np.zeros((4, 4), np.float32)), 2, 1, 0)
        with pytest.raises(ValueError, match="col2im: cols has shape"):
            K.col2im(r.dev(np.zeros((3, 3), np.float32)), (1, 1, 4, 4), 2, 1, 0)
        with pytest.raises(ValueError, match="max_pool2d_forward: padding"):
            K.max_pool2d_forward(r.dev(x4), 2, 1, 2)
        with pytest.raises(TypeError, match="argmax must be int64"):
            K.max_pool2d_backward(r.dev(np.zeros((1, 1, 3, 3), np.float32)),
                                  r.dev(np.zeros((1, 1, 3, 3), np.int32)), (1, 1, 4, 4), 2, 1,
                                  0)
        with pytest.raises(ValueError, match="softmax_forward: x must be 2-D"):
            K.softmax_forward(r.dev(np.zeros(3, np.float32)))
        with pytest.raises(TypeError, match="softmax_backward: grad_y and y must have the "
                                            "same dtype"):
            K.softmax_backward(r.dev(np.zeros((2, 3), np.float32)),
                               r.dev(np.zeros((2, 3), np.float64)))
        with pytest.raises(ValueError, match=r"cross_entropy_forward: target must have shape"):
            K.cross_entropy_forward(r.dev(np.zeros((2, 3), np.float32)), r.dev(np.zeros(3, int)))
        with pytest.raises(TypeError, match="target must be an integer array"):
            K.cross_entropy_forward(r.dev(np.zeros((2, 3), np.float32)),
                                    r.dev(np.zeros(2, np.float32)))
        with pytest.raises(ValueError, match="layer_norm_forward: weight must have shape"):
            K.layer_norm_forward(r.dev(np.zeros((2, 3), np.float32)),
                                 r.dev(np.zeros(4, np.float32)))
        with pytest.raises(ValueError, match="batch_norm_forward: batch statistics"):
            K.batch_norm_forward(r.dev(np.zeros((0, 3, 2), np.float32)))
        with pytest.raises(ValueError, match="gelu_backward: grad_y and x must have the same "
                                             "shape"):
            K.gelu_backward(r.dev(np.zeros(3, np.float32)), r.dev(np.zeros(4, np.float32)))
        with pytest.raises(ValueError, match=r"embedding_backward: grad_out must have shape"):
            K.embedding_backward(r.dev(np.zeros(3, np.int64)), r.dev(np.zeros((2, 4),
                                                                                np.float32)), 5)
        with pytest.raises(ValueError, match="adam_step: step counts updates from 1"):
            z = r.dev(np.zeros(3, np.float32))
            K.adam_step(z, z, z, z, 0, 1e-3, 0.9, 0.999, 1e-8, 0, False)
        with pytest.raises(ValueError, match="sgd_step: momentum = 0.9 needs a momentum_buf"):
            z = r.dev(np.zeros(3, np.float32))
            K.sgd_step(z, z, None, 0.1, 0.9, 0, 0, False, True)


def test_float16_and_empty_inputs_take_the_reference(runner):
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float16)
    with runner as r:
        y = r.host(K.softmax_forward(r.dev(x)))
        e = r.host(K.softmax_forward(r.dev(np.zeros((0, 4), np.float32))))
        ln = K.layer_norm_forward(r.dev(np.zeros((2, 0), np.float32)))
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), softmax_forward_ref(x).astype(np.float32),
                               rtol=1e-3)
    assert e.shape == (0, 4)
    assert ln[0].shape == (2, 0) and ln[1].shape == (2,)


def test_kernels_reject_host_arrays_on_the_gpu():
    """With the CuPy backend a NumPy array is a caller bug, reported by name."""
    if not CUDA:
        pytest.skip("CuPy or a CUDA GPU is not available")
    prev = K._set_backend(K._CupyBackend())
    try:
        with pytest.raises(TypeError, match="im2col: x must be a CuPy array"):
            K.im2col(np.zeros((1, 1, 4, 4), np.float32), 2, 1, 0)
    finally:
        K._set_backend(prev)


def test_importing_the_kernels_does_not_import_cupy():
    """``import minissl`` (and the CUDA kernel module) must not import CuPy: it is imported
    on the first use of a "cuda" tensor only."""
    code = ("import sys, minissl, minissl.kernels.cuda, minissl.nn, minissl.optim, "
            "minissl.functional; import minissl.methods; "
            "print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ============================================================================ on the "cuda" device

def _pair(rng, shape, dtype=np.float64):
    a = rng.standard_normal(shape).astype(dtype)
    return (ms.tensor(a, requires_grad=True),
            ms.tensor(a, requires_grad=True, device="cuda"))


def _ops():
    import minissl.functional as F
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, 6)
    target[1] = -100
    idx = rng.integers(0, 7, (3, 4))
    return {
        "conv2d": (lambda x, w: F.conv2d(x, w, stride=2, padding=1), [(2, 3, 7, 6), (4, 3, 3, 2)]),
        "conv_transpose2d": (lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1),
                             [(2, 3, 4, 4), (3, 2, 3, 3)]),
        "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2, 1), [(2, 3, 7, 7)]),
        "avg_pool2d": (lambda x: F.avg_pool2d(x, (2, 3), 2, (1, 1)), [(2, 2, 6, 7)]),
        "softmax": (lambda x: F.softmax(x, dim=1), [(4, 9)]),
        "log_softmax": (lambda x: F.log_softmax(x, dim=-1), [(3, 4, 5)]),
        "cross_entropy": (lambda x: F.cross_entropy(x, ms.tensor(target, device=x.device)),
                          [(6, 5)]),
        "layer_norm": (lambda x, w, b: F.layer_norm(x, (8,), w, b), [(5, 8), (8,), (8,)]),
        "batch_norm": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                       [(6, 3, 4), (3,), (3,)]),
        "gelu": (lambda x: F.gelu(x), [(4, 6)]),
        "embedding": (lambda w: F.embedding(ms.tensor(idx, device=w.device), w), [(7, 5)]),
        "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                      [(2, 5, 4), (2, 5, 4), (2, 5, 3)]),
    }


@needs_cuda
@pytest.mark.parametrize("name", sorted(_ops()))
def test_ops_on_cuda_match_cpu_and_gradcheck(name):
    """Each op on "cuda": forward and gradients equal the CPU's (float64), and a gradient check
    (random projection: two forward passes) passes on the device."""
    fn, shapes = _ops()[name]
    rng = np.random.default_rng(1)
    pairs = [_pair(rng, s) for s in shapes]
    cpu = [p[0] for p in pairs]
    gpu = [p[1] for p in pairs]
    y_cpu, y_gpu = fn(*cpu), fn(*gpu)
    assert y_gpu.device == "cuda"
    np.testing.assert_allclose(y_gpu.numpy(), y_cpu.numpy(), rtol=1e-10, atol=1e-12)
    cot = rng.standard_normal(y_cpu.shape)
    y_cpu.backward(cot)
    y_gpu.backward(ms.tensor(cot, device="cuda"))
    for c, g in zip(cpu, gpu):
        assert type(g.grad).__module__.startswith("cupy")
        np.testing.assert_allclose(g.grad.get(), c.grad, rtol=1e-9, atol=1e-11)
    fresh = [ms.tensor(t.numpy(), requires_grad=True, device="cuda") for t in gpu]
    assert ms.gradcheck(fn, fresh, mode="projection", atol=1e-6, rtol=1e-4)


def _simclr(device, seed=0):
    from minissl import data
    from minissl.methods import simclr
    from minissl.train import make_optimizer
    ms.manual_seed(seed)
    d = data.digits()
    method = simclr.build(d)
    method.to(device)
    opt = make_optimizer(method, "adam", lr=1e-3)
    x = d.train_x[:64]
    if device == "cuda":
        import cupy
        x = cupy.asarray(x)
    return method, opt, x


@needs_cuda
def test_simclr_step_on_cuda_matches_cpu():
    """Three SimCLR training steps on digits with the module on "cuda" and the batch on the GPU:
    the same losses as on the CPU (same weights, same host-drawn augmentations), gradients and
    parameters stay on the device."""
    pytest.importorskip("sklearn")
    losses = {}
    for device in ("cpu", "cuda"):
        method, opt, x = _simclr(device)
        rng = np.random.default_rng(0)
        losses[device] = []
        for _ in range(3):
            opt.zero_grad()
            loss, _ = method.training_step(x, rng)
            loss.backward()
            opt.step()
            losses[device].append(loss.item())
        if device == "cuda":
            for p in method.parameters():
                assert p.device == "cuda" and type(p.grad).__module__.startswith("cupy")
    # The first loss differs by float32 rounding only; Adam's normalised steps may then
    # flip the sign of a few near-zero updates, so the later losses get a looser tolerance.
    np.testing.assert_allclose(losses["cuda"][0], losses["cpu"][0], rtol=1e-5)
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-3)
    assert np.isfinite(losses["cuda"]).all()


class _NoDeviceToHost:
    """Within this context any device-to-host copy raises: CuPy's synchronisation detector
    (``cupy._core.syncdetect``, which every ``ndarray.get`` calls) is switched on, and
    ``cupy.ndarray.get`` and ``cupy.asnumpy`` are wrapped as well in case a later CuPy drops
    the detector. (``numpy.asarray`` of a CuPy array already raises TypeError in CuPy.)"""

    def __enter__(self):
        import cupy
        self.cupy = cupy
        self.saved = []

        def forbid(*args, **kwargs):
            raise AssertionError("device-to-host copy inside a training step")

        syncdetect = getattr(getattr(cupy, "_core", None), "syncdetect", None)
        if syncdetect is not None and hasattr(syncdetect, "_declare_synchronize"):
            self.saved.append((syncdetect, "_declare_synchronize",
                               syncdetect._declare_synchronize))
            syncdetect._declare_synchronize = forbid
        for owner, name in ((cupy.ndarray, "get"), (cupy, "asnumpy")):
            self.saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, forbid)
        return self

    def __exit__(self, *exc):
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)
        return False


@needs_cuda
def test_guard_catches_a_device_to_host_copy():
    """The guard itself works (or the next test could not fail)."""
    import cupy
    a = cupy.arange(3)
    with pytest.raises(AssertionError, match="device-to-host"):
        with _NoDeviceToHost():
            float(a.sum())
    with pytest.raises(AssertionError, match="device-to-host"):
        with _NoDeviceToHost():
            a.get()
    assert float(a.sum()) == 3.0               # restored afterwards


@needs_cuda
def test_no_device_to_host_copy_inside_a_training_step():
    """forward + loss + backward + optimiser step of SimCLR on "cuda" never copies to the host
    (each copy stalls the GPU pipeline). Host-to-device copies are allowed: the augmentation
    parameters are drawn on the host by design (see minissl.augment)."""
    pytest.importorskip("sklearn")
    method, opt, x = _simclr("cuda")
    rng = np.random.default_rng(0)
    for _ in range(2):                          # the first step compiles kernels, allocates
        with _NoDeviceToHost():
            opt.zero_grad()
            loss, _ = method.training_step(x, rng)
            loss.backward()
            opt.step()
        assert np.isfinite(loss.item())


@needs_cuda
def test_public_kernel_functions_dispatch_to_the_cuda_kernels():
    """The kernel-family modules send CuPy arrays to ``minissl.kernels.cuda`` (not to the
    array-generic reference): counted by the launches of the backend."""
    import cupy

    from minissl.kernels import activation, im2col, norm, pool, softmax
    launched = []
    be = K._CupyBackend()

    class Counting:
        xp = be.xp
        is_device_array = staticmethod(be.is_device_array)

        def kernel(self, family, name, dtype):
            k = be.kernel(family, name, dtype)

            def run(grid, block, args):
                launched.append(name)
                k(grid, block, args)
            return run
    prev = K._set_backend(Counting())
    try:
        x = cupy.ones((2, 3, 4, 4), cupy.float32)
        checks = [
            ("im2col_kernel", lambda: im2col.im2col(x, 2, 1, 0)),
            ("max_pool_fwd_kernel", lambda: pool.max_pool2d_forward(x, 2, 2, 0)),
            ("softmax_fwd_kernel", lambda: softmax.softmax_forward(x.reshape(6, 16))),
            ("layer_norm_fwd_kernel", lambda: norm.layer_norm_forward(x.reshape(6, 16))),
            ("gelu_fwd_kernel", lambda: activation.gelu_forward(x)),
        ]
        for name, call in checks:
            call()
            assert name in launched, f"{name} was not launched: the dispatch is missing"
    finally:
        K._set_backend(prev)
