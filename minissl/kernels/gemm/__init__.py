"""Matrix products, ``matmul(a, b)`` with NumPy's ``@`` semantics for operands of 2 or more
dimensions, on minissl's own threads: one pool for the products and the kernels.

Math: for each matrix of the (broadcast) batch, C = A B, C_ij = sum_k A_ik B_kj; with A of
(..., M, K) and B of (..., K, N), C is (..., M, N). Its adjoints are products too (dA = G B^T,
dB = A^T G: minissl/ops/linalg.py). A linear layer's two other pieces live here as well:
``addmm(bias, A, B)`` = A B + bias on every row (PyTorch's ``addmm``), and ``sum_rows(G)``,
its bias gradient, sum_i G_ij; both are split over the threads as the product's rows are, so
that each thread writes and reads back its own rows (docs/performance.md, "Two speeds of one
machine").

Versions, as in every family: ``matmul_ref`` (reference.py: the array module's ``matmul``,
what ``MINISSL_REFERENCE=1`` runs); the compiled one (_cpu.pyx); on the GPU CuPy's ``matmul``
(cuBLAS, cuda.py).

Why a compiled version at all, when NumPy calls the same BLAS. (1) A batch of small products
(attention's (B, H, L, E) x (B, H, E, S), a convolution image by image): NumPy runs them one
BLAS call after another, and OpenBLAS splits each small product over its threads, paying its
start-up every time; sharing out whole matrices, each computed by one thread with BLAS told
to use one thread, is 1.4-3.7x faster on the workloads' batched shapes. (2) One pool: after
every product OpenBLAS's own workers spin for about 0.1 s, on the cores the next kernel or
the OpenMP threads of the next batched product need; measured, routing only the batched
products here made whole steps slower, routing every product here made them faster
(docs/performance.md, "One pool for the products"). A single product is split into blocks
of whole rows or columns of C, one per thread: within +-10 % of OpenBLAS's own threads on
the workloads' shapes.

Finding the BLAS. The compiled version needs the 64-bit-integer CBLAS ``sgemm``/``dgemm`` and
OpenBLAS's ``openblas_set_num_threads_local`` of a library already in the process (NumPy's
wheels bundle ``scipy_openblas64_``). They are looked up by name on the first product
among the shared libraries the process has loaded (Linux: /proc/self/maps); nothing is
loaded. Where there is no such library (another BLAS, another OS), every product is NumPy's.

What it changes while it runs: in OpenBLAS builds without OpenMP (NumPy's wheels),
``openblas_set_num_threads_local`` sets a process-wide limit, not a per-thread one. It is set
to 1 for the length of a batched product and restored when the product returns (one such
product at a time, under a lock), so BLAS calls that another thread of the host makes in that
window run on one thread. Threads: the kernels' (``minissl.runtime.set_num_threads``), by
default as many as BLAS itself uses (``openblas_get_num_threads`` on first use), so
``OPENBLAS_NUM_THREADS`` applies to these products as to NumPy's.
"""
import ctypes
import math
import os
import threading

import numpy as np

from .. import _dispatch
from .._dispatch import compiled, on_device, reference_forced
from .reference import addmm_ref, matmul_ref, sum_rows_ref

__all__ = ["matmul", "addmm", "sum_rows", "matmul_ref", "addmm_ref", "sum_rows_ref",
           "blas_info"]

# A product of fewer multiply-adds than this runs on the calling thread alone: starting the
# other threads costs microseconds.
PARALLEL_MIN = 1 << 18
# Each part of a split product keeps at least this many rows (columns) of C.
MIN_PART = 32

_lock = threading.Lock()   # one product at a time changes BLAS's thread limit (see matmul)
_blas = None   # None: not looked up yet; False: none usable; else (get_num_threads, name)
_addresses = None  # (sgemm, dgemm, set_num_threads_local) of that BLAS, once found
_bound = set()     # the other compiled modules bound to it (bind_blas)

_SYMBOLS = (  # (sgemm, dgemm, get_num_threads) of the 64-bit-integer interfaces we know
    ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", "scipy_openblas_get_num_threads64_"),
    ("cblas_sgemm64_", "cblas_dgemm64_", "openblas_get_num_threads64_"),
)


def _loaded_libraries():
    try:
        with open("/proc/self/maps") as f:
            fields = [line.split(None, 5) for line in f]
        paths = {x[5].strip() for x in fields if len(x) == 6}
    except OSError:
        return []
    return sorted(p for p in paths if "blas" in os.path.basename(p).lower() and ".so" in p)


def _bind(module):
    """Find and bind the BLAS entry points once; returns the usable state (see ``_blas``)."""
    global _blas, _addresses
    if _blas is None:
        _blas = False
        for path in _loaded_libraries():
            try:
                lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_LOCAL)
            except OSError:
                continue
            for sgemm, dgemm, nthreads in _SYMBOLS:
                fns = [getattr(lib, s, None) for s in (sgemm, dgemm, nthreads,
                                                       "openblas_set_num_threads_local")]
                if all(fns):
                    addr = [ctypes.cast(f, ctypes.c_void_p).value for f in fns]
                    module.bind(addr[0], addr[1], addr[3])
                    _addresses = (addr[0], addr[1], addr[3])
                    get = fns[2]
                    get.restype, get.argtypes = ctypes.c_int, []
                    _blas = (get, os.path.basename(path))
                    return _blas
    return _blas


def _state():
    module = compiled("gemm", np.empty(0, np.float32))
    return _bind(module) if module is not None else False


def bind_blas(module):
    """Bind another compiled module that calls BLAS itself (its ``bind(sgemm, dgemm,
    set_num_threads_local)``, as kernels/conv's) to the BLAS the products use. True when it
    is bound, False where there is no such BLAS (then its caller runs another version).
    Changing BLAS's thread limit, as these modules do, goes under ``blas_lock``."""
    if module in _bound:
        return True
    if not _state():
        return False
    module.bind(*_addresses)
    _bound.add(module)
    return True


blas_lock = _lock


def blas_info():
    """The library whose ``gemm`` the compiled products call, or None (NumPy's ``matmul``
    then runs every product)."""
    state = _state()
    return state[1] if state else None


def pool_threads():
    """The kernels' default thread count (minissl/kernels/_dispatch.py): as many as BLAS
    uses when the products run here, else 1."""
    state = _state()
    return max(1, int(state[0]())) if state else 1


def _layout(x):
    """(x, trans, ld): ``x`` or a contiguous copy, whose last two axes BLAS can read as a
    row-major matrix (trans 111, leading dimension ld) or as the transpose of one (112)."""
    r, c = x.shape[-2:]
    s0, s1 = x.strides[-2:]
    isz = x.itemsize
    if x.flags.aligned and all(s >= 0 and s % isz == 0 for s in x.strides):
        if s1 == isz and s0 // isz >= max(c, 1):
            return x, 111, s0 // isz
        if s0 == isz and s1 // isz >= max(r, 1):
            return x, 112, s1 // isz
        if c == 1 and r == 1:
            return x, 111, 1
    x = np.ascontiguousarray(x)
    return x, 111, max(c, 1)


def _offsets(x, batch):
    """Byte offset of each matrix of the broadcast ``batch`` in ``x``, flattened (C order)."""
    off = np.zeros(batch, dtype=np.int64)
    lead = len(batch) - (x.ndim - 2)
    for d in range(lead, len(batch)):
        n, s = x.shape[d - lead], x.strides[d - lead]
        if n != 1 and s:
            shape = [1] * len(batch)
            shape[d] = n
            off = off + np.arange(n, dtype=np.int64).reshape(shape) * s
    return off.reshape(-1)


def _is_own_transpose(a, b):
    """True when ``b`` is ``a.T`` over the same memory (a Gram matrix ``a @ a.T``)."""
    return (a.ndim == 2 and b.ndim == 2 and b.strides == a.strides[::-1]
            and b.shape == a.shape[::-1] and type(a) is np.ndarray and type(b) is np.ndarray
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _numpy(a, b):
    """The array module's ``matmul``, but never OpenBLAS's ``syrk``: NumPy sends ``a @ a.T``
    there, 3-4x slower than the plain ``gemm`` a copied operand gets (1024x128: 4.0 ms vs
    1.2 ms, 2 cores). The compiled path calls ``gemm`` itself and needs no copy."""
    if _is_own_transpose(a, b):
        b = np.ascontiguousarray(b)
    return matmul_ref(a, b)


def _written(c, out):
    if out is None:
        return c
    out[...] = c
    return out


def _rowmajor_out(out, shape, dtype, a, b):
    """Whether C can be written straight into ``out``: its shape and dtype, row-major
    matrices (unit stride along a row), non-negative aligned strides, no overlap with the
    operands."""
    if type(out) is not np.ndarray or out.shape != shape or out.dtype != dtype:
        return False
    if np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return False
    isz = out.itemsize
    return (out.flags.writeable and out.flags.aligned and out.strides[-1] == isz
            and all(s >= 0 and s % isz == 0 for s in out.strides)
            and out.strides[-2] // isz >= shape[-1])


def matmul(a, b, out=None):
    """``a @ b`` for arrays of 2 or more dimensions (batch dimensions broadcast): a new
    C-contiguous array, or written into ``out`` (which may be a strided view) and returned.
    Other operands (1-D, integer, mixed dtypes, GPU arrays) get their array module's
    ``matmul``."""
    return _matmul(a, b, out)


def addmm(bias, a, b):
    """``bias + a @ b`` (PyTorch's ``addmm``) for matrices a (m, k), b (k, n) and a bias
    (n,) of their dtype, added to every row: a new C-contiguous (m, n) array. Compiled, each
    thread writes the bias into its block of rows (or columns) of C and has BLAS add its
    product to it (beta 1, as PyTorch's ``addmm``): C is written once, by the thread that
    will read that block next (docs/performance.md), and BLAS need not clear it first. The
    result agrees with ``a @ b + bias`` to rounding (BLAS adds partial products over blocks
    of k to the bias rather than to zero); it does not depend on the thread count."""
    if a.ndim != 2 or b.ndim != 2 or getattr(bias, "shape", None) != (b.shape[-1],):
        raise ValueError(f"addmm: needs matrices a (m, k), b (k, n) and a bias (n,), got "
                         f"shapes {tuple(a.shape)}, {tuple(b.shape)} and "
                         f"{tuple(getattr(bias, 'shape', ()))}")
    if bias.dtype != a.dtype:
        raise TypeError(f"addmm: bias dtype {bias.dtype} differs from the operands' {a.dtype}")
    return _matmul(a, b, None, bias)


def sum_rows(g):
    """``g.sum(axis=0)`` of a matrix g (m, n): the bias gradient of a linear layer. Compiled:
    blocks of 64 rows summed in float64 by the thread that wrote them (the products' row
    split), the blocks' sums added in order, so the bits do not depend on the thread count
    (they differ from NumPy's float32 sum by its rounding error only). Other arrays (GPU,
    integer, not C-contiguous) get their array module's sum."""
    if g.ndim != 2:
        raise ValueError(f"sum_rows: needs a matrix (m, n), got shape {tuple(g.shape)}")
    module = None
    if (type(g) is np.ndarray and g.dtype in (np.float32, np.float64)
            and g.flags.c_contiguous and not reference_forced()):
        module = compiled("gemm", g)
    if module is None or g.size == 0:
        return sum_rows_ref(g)
    out = np.empty(g.shape[1], dtype=g.dtype)
    module.sum_rows(g, out, _dispatch.running_threads())
    return out


def _matmul(a, b, out, bias=None):
    if on_device(a) or on_device(b):
        from . import cuda
        return _written(cuda.matmul(a, b) if bias is None else cuda.addmm(bias, a, b), out)
    module = None
    if a.ndim >= 2 and b.ndim >= 2 and a.dtype == b.dtype and not reference_forced():
        module = compiled("gemm", a, b)
    if module is None or not _bind(module):
        return _written(_numpy(a, b) if bias is None else addmm_ref(bias, a, b), out)
    (m, k), (k2, n) = a.shape[-2:], b.shape[-2:]
    if k != k2:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned "
                         f"({k} != {k2})")
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch dims of shapes {a.shape} and {b.shape} do not "
                         "broadcast") from None
    nb = math.prod(batch)
    if m == 0 or n == 0 or k == 0 or nb == 0:
        return _written(matmul_ref(a, b) if bias is None else addmm_ref(bias, a, b), out)
    a, ta, lda = _layout(a)
    b, tb, ldb = _layout(b)
    shape = batch + (m, n)
    c = out if _rowmajor_out(out, shape, a.dtype, a, b) else np.empty(shape, dtype=a.dtype)
    offsets = np.empty((3, nb), dtype=np.int64)
    offsets[0], offsets[1], offsets[2] = _offsets(a, batch), _offsets(b, batch), _offsets(c, batch)
    big = m * n * k * nb >= PARALLEL_MIN
    threads = _dispatch.running_threads() if big else 1
    # One product is split into blocks of rows (or columns) by its shape and the machine's
    # cores, never by the threads running now, so its bits do not depend on them.
    parts = min(_dispatch._cores, max(1, max(m, n) // MIN_PART)) if big and nb == 1 else 1
    if bias is not None:
        bias = np.ascontiguousarray(bias)
    with _lock:
        module.gemm(a, b, c, offsets, ta, tb, m, n, k, lda, ldb, c.strides[-2] // c.itemsize,
                    threads, parts, bias)
    return c if out is None or c is out else _written(c, out)
