"""Cython kernel: batched matrix products shared out over minissl's own threads, each matrix
one single-threaded call of the BLAS that NumPy already loaded.

__init__.py finds that BLAS, checks the operands and works out their layout; this module
only holds the BLAS entry points (``bind``) and runs the products (``gemm``).

Each thread of one OpenMP region computes whole matrices of the batch; a single product is
split into blocks of whole rows (or columns) of C, as many as the caller says (by the shape,
never by the threads, so that the bits do not depend on them). BLAS is told to use one thread for the region
(``openblas_set_num_threads_local``; restored after; __init__.py says what that changes), so
its own workers are not woken. Each element of C is one BLAS dot product over K whatever the
split, so the threads change which thread computes an element, not how (results agree with
NumPy's ``matmul`` to rounding: BLAS's blocking of K may differ with the part's size).
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int64_t

cnp.import_array()

from minissl_blas cimport NO_TRANS, ROW_MAJOR, dgemm_t, set_local_t, sgemm_t

cdef sgemm_t SGEMM = NULL
cdef dgemm_t DGEMM = NULL
cdef set_local_t SET_LOCAL = NULL


def bind(size_t sgemm, size_t dgemm, size_t set_local):
    """Store the addresses of ``cblas_sgemm``, ``cblas_dgemm`` (64-bit integer interface) and
    ``openblas_set_num_threads_local`` of the BLAS NumPy loaded (found by __init__.py)."""
    global SGEMM, DGEMM, SET_LOCAL
    if not sgemm or not dgemm or not set_local:
        raise ValueError("minissl.kernels.gemm._cpu.bind: null function address")
    SGEMM, DGEMM, SET_LOCAL = <sgemm_t>sgemm, <dgemm_t>dgemm, <set_local_t>set_local


cdef void _product(bint dbl, char* A, char* B, char* C, int ta, int tb, int64_t m, int64_t n,
                   int64_t k, int64_t lda, int64_t ldb, int64_t ldc) noexcept nogil:
    """C (m, n) = op(A) op(B) on the calling thread (``gemm`` has told BLAS to use one)."""
    if dbl:
        DGEMM(ROW_MAJOR, ta, tb, m, n, k, 1.0, <double*>A, lda, <double*>B, ldb, 0.0,
              <double*>C, ldc)
    else:
        SGEMM(ROW_MAJOR, ta, tb, m, n, k, 1.0, <float*>A, lda, <float*>B, ldb, 0.0,
              <float*>C, ldc)


cdef void _part(bint dbl, char* A, char* B, char* C, int ta, int tb, int64_t m, int64_t n,
                int64_t k, int64_t lda, int64_t ldb, int64_t ldc, int64_t part,
                int64_t parts, bint by_rows) noexcept nogil:
    """Part ``part`` of ``parts`` of C: a block of whole rows (``by_rows``) or columns."""
    cdef int64_t isz = 8 if dbl else 4
    cdef int64_t total = m if by_rows else n
    cdef int64_t lo = total * part // parts
    cdef int64_t hi = total * (part + 1) // parts
    if hi <= lo:
        return
    if by_rows:   # rows lo:hi of op(A) and of C
        _product(dbl, A + (lo * lda if ta == NO_TRANS else lo) * isz, B, C + lo * ldc * isz,
                 ta, tb, hi - lo, n, k, lda, ldb, ldc)
    else:         # columns lo:hi of op(B) and of C
        _product(dbl, A, B + (lo if tb == NO_TRANS else lo * ldb) * isz, C + lo * isz,
                 ta, tb, m, hi - lo, k, lda, ldb, ldc)


def gemm(cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, cnp.ndarray offsets, int ta, int tb,
         int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
         int threads, int64_t parts):
    """C_i = op(A_i) op(B_i) for each matrix i of a batch, row-major; the matrices start at
    byte offsets ``offsets[0, i]``, ``offsets[1, i]``, ``offsets[2, i]`` from the data of
    ``a``, ``b`` and ``c``. With ``parts`` > 1 each matrix is split into that many blocks of
    rows or columns (the longer side), shared out over ``threads``; else whole matrices are. The caller (__init__.py) has checked every shape,
    stride and offset against the arrays."""
    if SGEMM == NULL:
        raise RuntimeError("minissl.kernels.gemm._cpu.gemm: no BLAS bound (call bind first)")
    if offsets.ndim != 2 or offsets.shape[0] != 3 or offsets.dtype != 'int64' \
            or not offsets.flags.c_contiguous:
        raise ValueError("minissl.kernels.gemm._cpu.gemm: offsets must be C-contiguous int64 "
                         "of shape (3, batch)")
    cdef bint dbl = c.dtype == 'float64'
    cdef char* A = <char*>cnp.PyArray_DATA(a)
    cdef char* B = <char*>cnp.PyArray_DATA(b)
    cdef char* C = <char*>cnp.PyArray_DATA(c)
    cdef int64_t* off = <int64_t*>cnp.PyArray_DATA(offsets)
    cdef int64_t nb = offsets.shape[1], i, p
    cdef bint by_rows = m >= n
    cdef int previous
    with nogil:
        previous = SET_LOCAL(1)
        if parts > 1:       # one product, in blocks of rows or columns shared out
            for i in range(nb):
                for p in prange(parts, schedule="static", num_threads=threads,
                                use_threads_if=threads > 1):
                    _part(dbl, A + off[i], B + off[nb + i], C + off[2 * nb + i], ta, tb,
                          m, n, k, lda, ldb, ldc, p, parts, by_rows)
        elif threads > 1 and nb > 1:   # whole matrices shared out
            for i in prange(nb, schedule="static", num_threads=threads):
                _product(dbl, A + off[i], B + off[nb + i], C + off[2 * nb + i], ta, tb,
                         m, n, k, lda, ldb, ldc)
        else:
            for i in range(nb):
                _product(dbl, A + off[i], B + off[nb + i], C + off[2 * nb + i], ta, tb,
                         m, n, k, lda, ldb, ldc)
        SET_LOCAL(previous)
