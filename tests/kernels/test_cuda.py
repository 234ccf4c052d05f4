"""The GPU backend as a whole: the emulator itself, the production launch geometry, NVRTC,
validation on device arrays, ops and a SimCLR step on "cuda", no device-to-host copy inside a
training step, and no CuPy import by ``import minissl``. (Each kernel family's CUDA kernels
against its NumPy reference: tests/kernels/test_<family>.py.)

The checks run through the public kernel functions (which check the arguments and send
device arrays to the CUDA launchers) on two launch backends:

* ``"cuda"``: CuPy on a real GPU (skipped without CuPy and a device);
* ``"emulated"``: the CUDA source compiled with g++ for the CPU (skipped without g++), see
  tests/support/cuda_emulator.py.
"""
import ctypes
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import minissl as ms
from minissl.backend import is_cuda_available
from minissl.kernels import cuda as K
from minissl.kernels.activation import gelu_forward_ref
from minissl.kernels.embedding import embedding_backward_ref
from minissl.kernels.im2col import im2col_ref
from minissl.kernels.norm import (batch_norm_forward_ref, layer_norm_backward_ref,
                                  layer_norm_forward_ref)
from minissl.kernels.softmax import cross_entropy_forward_ref, softmax_forward_ref
from support.cuda_emulator import DTYPES, LAUNCHERS as L, PUBLIC as P, Runner, close

CUDA = is_cuda_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CuPy or a CUDA GPU is not available")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------- the emulator itself

def test_emulator_catches_launch_mistakes(emulator):
    """The emulator is only worth its passes if it fails on the mistakes a GPU hides."""
    x = np.zeros((1, 1, 3, 3), np.float32)
    cols = np.zeros((4, 4), np.float32)
    k = emulator.kernel("im2col", "im2col_kernel", np.float32)
    i = np.int32
    good = [x, cols, *map(i, (1, 3, 3, 2, 2, 1, 1, 0, 0, 1, 1, 2, 2)), i(16)]
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
        coop((2,), (24,), [y, y, i(3), np.float32(-np.inf), np.float32(1), i(0)])
    with pytest.raises(AssertionError, match="power of two <= 256"):
        coop((2,), (512,), [y, y, i(3), np.float32(-np.inf), np.float32(1), i(0)])
    # Past that guard (called raw), 512 threads overrun the 256-entry shared buffer.
    lib, _ = emulator._lib(np.float32)
    ptr = (ctypes.c_void_p(y.ctypes.data), ctypes.c_longlong(y.size))
    assert lib.emu_softmax_fwd_kernel(1, 1, 512, 1, *ptr, *ptr, 3, ctypes.c_float(-np.inf),
                                      ctypes.c_float(1), 0)
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
    with Runner("emulated", emulator, dict(MAX_GRID=5)):
        x = rng.standard_normal((3, 700)).astype(np.float32)
        close(L.softmax_forward(x), softmax_forward_ref(x), np.float32)
        t = rng.integers(0, 700, 3)
        loss, lse = L.cross_entropy_forward(x, t)
        close(loss, cross_entropy_forward_ref(x, t)[0], np.float32, rtol32=1e-5)
        xb = rng.standard_normal((9, 2, 500)).astype(np.float32)   # 4500 values: 2 chunks
        got = L.batch_norm_forward(xb)
        for a, b in zip(got, batch_norm_forward_ref(xb)):
            close(a, b, np.float32, rtol32=1e-5, atol32=1e-5)
        xl = rng.standard_normal((70, 40)).astype(np.float32)      # 3 partials of 32 rows
        gl = rng.standard_normal((70, 40)).astype(np.float32)
        w = rng.standard_normal(40).astype(np.float32)
        _, mean, rstd = layer_norm_forward_ref(xl, w)
        for a, b in zip(L.layer_norm_backward(gl, xl, mean, rstd, w),
                        layer_norm_backward_ref(gl, xl, mean, rstd, w)):
            close(a, b, np.float32, rtol32=1e-4, atol32=1e-4)
        idx = rng.integers(0, 5, 600)
        ge = rng.standard_normal((600, 300)).astype(np.float32)    # 3 tiles, 2 column blocks
        close(L.embedding_backward(idx, ge, 5), embedding_backward_ref(idx, ge, 5),
              np.float32, exact=True)
        xe = rng.standard_normal(20000).astype(np.float32)         # grid-stride rounds
        close(L.gelu_forward(xe), gelu_forward_ref(xe), np.float32, rtol32=1e-6, atol32=1e-6)


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
            assert lib.nvrtcCreateProgram(ctypes.byref(prog), K.source(family, dtype).encode(),
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
            P.im2col(r.dev(np.zeros((4, 4), np.float32)), 2, 1, 0)
        with pytest.raises(ValueError, match="col2im: cols has shape"):
            P.col2im(r.dev(np.zeros((3, 3), np.float32)), (1, 1, 4, 4), 2, 1, 0)
        with pytest.raises(ValueError, match="max_pool2d_forward: padding"):
            P.max_pool2d_forward(r.dev(x4), 2, 1, 2)
        with pytest.raises(TypeError, match="argmax must be int64"):
            P.max_pool2d_backward(r.dev(np.zeros((1, 1, 3, 3), np.float32)),
                                  r.dev(np.zeros((1, 1, 3, 3), np.int32)), (1, 1, 4, 4), 2, 1,
                                  0)
        with pytest.raises(ValueError, match="softmax_forward: x must be 2-D"):
            P.softmax_forward(r.dev(np.zeros(3, np.float32)))
        with pytest.raises(TypeError, match="softmax_backward: grad_y and y must have the "
                                            "same dtype"):
            P.softmax_backward(r.dev(np.zeros((2, 3), np.float32)),
                               r.dev(np.zeros((2, 3), np.float64)))
        with pytest.raises(ValueError, match=r"cross_entropy_forward: target must have shape"):
            P.cross_entropy_forward(r.dev(np.zeros((2, 3), np.float32)), r.dev(np.zeros(3, int)))
        with pytest.raises(TypeError, match="target must be an integer array"):
            P.cross_entropy_forward(r.dev(np.zeros((2, 3), np.float32)),
                                    r.dev(np.zeros(2, np.float32)))
        with pytest.raises(ValueError, match="layer_norm_forward: weight must have shape"):
            P.layer_norm_forward(r.dev(np.zeros((2, 3), np.float32)),
                                 r.dev(np.zeros(4, np.float32)))
        with pytest.raises(ValueError, match="batch_norm_forward: batch statistics"):
            P.batch_norm_forward(r.dev(np.zeros((0, 3, 2), np.float32)))
        with pytest.raises(ValueError, match="gelu_backward: grad_y and x must have the same "
                                             "shape"):
            P.gelu_backward(r.dev(np.zeros(3, np.float32)), r.dev(np.zeros(4, np.float32)))
        with pytest.raises(ValueError, match=r"embedding_backward: grad_out must have shape"):
            P.embedding_backward(r.dev(np.zeros(3, np.int64)), r.dev(np.zeros((2, 4),
                                                                                np.float32)), 5)
        with pytest.raises(ValueError, match="adam_step: step counts updates from 1"):
            z = r.dev(np.zeros(3, np.float32))
            P.adam_step(z, z, z, z, 0, 1e-3, 0.9, 0.999, 1e-8, 0, False)
        with pytest.raises(ValueError, match="sgd_step: momentum = 0.9 needs a momentum_buf"):
            z = r.dev(np.zeros(3, np.float32))
            P.sgd_step(z, z, None, 0.1, 0.9, 0, 0, False, True)


def test_float16_and_empty_inputs_take_the_reference(runner):
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float16)
    with runner as r:
        y = r.host(P.softmax_forward(r.dev(x)))
        e = r.host(P.softmax_forward(r.dev(np.zeros((0, 4), np.float32))))
        ln = P.layer_norm_forward(r.dev(np.zeros((2, 0), np.float32)))
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32), softmax_forward_ref(x).astype(np.float32),
                               rtol=1e-3)
    assert e.shape == (0, 4)
    assert ln[0].shape == (2, 0) and ln[1].shape == (2,)


def test_kernels_reject_host_arrays_on_the_gpu():
    """With the CuPy backend a NumPy array is a caller bug, reported by name."""
    if not CUDA:
        pytest.skip("CuPy or a CUDA GPU is not available")
    prev = K.set_backend(K._CupyBackend())
    try:
        with pytest.raises(TypeError, match="im2col: x must be a CuPy array"):
            L.im2col(np.zeros((1, 1, 4, 4), np.float32), (2, 2), (1, 1), (0, 0))
    finally:
        K.set_backend(prev)


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
    prev = K.set_backend(Counting())
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
        K.set_backend(prev)
