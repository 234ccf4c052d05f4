"""Cython kernel: the embedding backward, a deterministic scatter-add of gradient rows.

The math, the reference and the validation (every index in range) live in
minissl/kernels/embedding.py. Here ``grad_weight`` (V, D) arrives zeroed and
``grad_weight[idx[i]] += grad_out[i]`` runs for i = 0, 1, ... in order.

Parallel without atomics or races: the D columns are split into blocks and each thread owns
whole blocks, scanning every index but touching only its own columns. Every element is still
summed in index order, so the result is the same bit for bit whatever the thread count.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

cnp.import_array()

# Below this many elements the wake-up of the second thread costs more than it saves.
cdef Py_ssize_t PARALLEL_MIN = 32768
# The columns are split evenly into at most MAX_BLOCKS blocks of at least MIN_COLUMNS each:
# enough blocks to balance the threads, wide enough rows that each index pays for its loop.
cdef Py_ssize_t MAX_BLOCKS = 8
cdef Py_ssize_t MIN_COLUMNS = 32


# ---- argument checks ------------------------------------------------------------------------
# The entry points take ndarrays and read their data pointers through NumPy's C API: a typed
# memoryview costs about a microsecond per argument to acquire, most of the time of a small
# call. The Python wrappers have validated and converted every argument already; these checks
# (nanoseconds) only make sure that a wrong direct call raises instead of reading out of bounds.

cdef int _float_type(object a) except -1:
    """NPY_FLOAT32 or NPY_FLOAT64, the type of the float ndarray ``a``."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"minissl._ext.embedding: expected an ndarray, got {type(a).__name__}")
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"minissl._ext.embedding: expected float32 or float64, got {a.dtype}")
    return t


cdef void* _data(object a, int typenum, int ndim, Py_ssize_t d0, Py_ssize_t d1,
                 bint writable) except NULL:
    """Data pointer of ``a``: a C-contiguous ndarray of type ``typenum`` and shape (d0,) or
    (d0, d1), writeable if asked."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"minissl._ext.embedding: expected an ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(arr)
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != ndim
            or dims[0] != d0 or (ndim > 1 and dims[1] != d1)
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or (writable and not cnp.PyArray_ISWRITEABLE(arr))):
        raise ValueError(f"minissl._ext.embedding: got a {a.dtype} array of shape {a.shape}, "
                         "not the C-contiguous array the kernel needs (call the functions of "
                         "minissl.kernels.embedding, which check and convert their arguments)")
    return cnp.PyArray_DATA(arr)


cdef void _scatter_add(const int64_t* idx, const floating* grad_out, floating* grad_weight,
                       Py_ssize_t n, Py_ssize_t D) noexcept nogil:
    """grad_weight[idx[i]] += grad_out[i] for i in order, columns split over the threads."""
    cdef Py_ssize_t nblocks = max(1, min(MAX_BLOCKS, D // MIN_COLUMNS)), i, j, blk, c0, c1
    cdef const floating* src
    cdef floating* dst
    for blk in prange(nblocks, schedule="static", use_threads_if=n * D >= PARALLEL_MIN):
        c0 = blk * D // nblocks
        c1 = (blk + 1) * D // nblocks
        for i in range(n):
            src = grad_out + i * D
            dst = grad_weight + idx[i] * D
            for j in range(c0, c1):
                dst[j] += src[j]


def embedding_backward(idx, grad_out, grad_weight):
    """idx (n,) int64 with entries in [0, V), grad_out (n, D), grad_weight (V, D) zeroed."""
    cdef int t = _float_type(grad_out)
    cdef Py_ssize_t n = grad_out.shape[0], D = grad_out.shape[1], V = grad_weight.shape[0], i
    cdef const int64_t* pi = <const int64_t*>_data(idx, cnp.NPY_INT64, 1, n, 0, False)
    cdef void* pg = _data(grad_out, t, 2, n, D, False)
    cdef void* pw = _data(grad_weight, t, 2, V, D, True)
    for i in range(n):               # the wrapper has checked; this keeps a direct call safe
        if pi[i] < 0 or pi[i] >= V:
            raise ValueError(f"minissl._ext.embedding: index {pi[i]} out of range [0, {V})")
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _scatter_add(pi, <const float*>pg, <float*>pw, n, D)
        else:
            _scatter_add(pi, <const double*>pg, <double*>pw, n, D)
