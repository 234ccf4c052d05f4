"""Cython kernel: the embedding backward, a deterministic scatter-add of gradient rows.

The math and the validation (every index in range) live in __init__.py, the reference in
reference.py. Here ``grad_weight`` (V, D) arrives zeroed and
``grad_weight[idx[i]] += grad_out[i]`` runs for i = 0, 1, ... in order.

Parallel without atomics or races: the D columns are split into blocks and each thread owns
whole blocks, scanning every index but touching only its own columns. Every element is still
summed in index order, so the result is the same bit for bit whatever the thread count.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from minissl_checks cimport array_data, float_type

cnp.import_array()

include "minissl_threads.pxi"

# Raw data pointers, not typed memoryviews: a memoryview costs about 1 us per argument to
# acquire, most of a small call (measured; see minissl_checks.pxd). NAME names this module
# in the error messages of those checks.
cdef str NAME = "embedding"

# Below this many elements the wake-up of the second thread costs more than it saves.
cdef Py_ssize_t PARALLEL_MIN = 32768
# The columns are split evenly into at most MAX_BLOCKS blocks of at least MIN_COLUMNS each:
# enough blocks to balance the threads, wide enough rows that each index pays for its loop.
cdef Py_ssize_t MAX_BLOCKS = 8
cdef Py_ssize_t MIN_COLUMNS = 32


cdef void _scatter_add(const int64_t* idx, const floating* grad_out, floating* grad_weight,
                       Py_ssize_t n, Py_ssize_t D) noexcept nogil:
    """grad_weight[idx[i]] += grad_out[i] for i in order, columns split over the threads."""
    cdef Py_ssize_t nblocks = max(1, min(MAX_BLOCKS, D // MIN_COLUMNS)), i, j, blk, c0, c1
    cdef const floating* src
    cdef floating* dst
    for blk in prange(nblocks, schedule="static",
                      use_threads_if=THREADS > 1 and n * D >= PARALLEL_MIN,
                      num_threads=THREADS):
        c0 = blk * D // nblocks
        c1 = (blk + 1) * D // nblocks
        for i in range(n):
            src = grad_out + i * D
            dst = grad_weight + idx[i] * D
            for j in range(c0, c1):
                dst[j] += src[j]


def embedding_backward(idx, grad_out, grad_weight):
    """idx (n,) int64 with entries in [0, V), grad_out (n, D), grad_weight (V, D) zeroed."""
    cdef int t = float_type(NAME, grad_out)
    cdef Py_ssize_t n = grad_out.shape[0], D = grad_out.shape[1], V = grad_weight.shape[0], i
    cdef const int64_t* pi = <const int64_t*>array_data(NAME, idx,
                                                        cnp.NPY_INT64, 1, n, 0, 0, False)
    cdef void* pg = array_data(NAME, grad_out, t, 2, n, D, 0, False)
    cdef void* pw = array_data(NAME, grad_weight, t, 2, V, D, 0, True)
    for i in range(n):               # the wrapper has checked; this keeps a direct call safe
        if pi[i] < 0 or pi[i] >= V:
            raise ValueError(f"minissl.kernels.embedding._cpu: index {pi[i]} out of range "
                             f"[0, {V})")
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _scatter_add(pi, <const float*>pg, <float*>pw, n, D)
        else:
            _scatter_add(pi, <const double*>pg, <double*>pw, n, D)
