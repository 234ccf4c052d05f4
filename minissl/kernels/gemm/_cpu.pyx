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
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

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
                   int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                   double beta=0.0) noexcept nogil:
    """C (m, n) = op(A) op(B) + beta C on the calling thread (``gemm`` has told BLAS to use
    one). With beta 0 BLAS first clears C, with 1 it adds to what C holds."""
    if dbl:
        DGEMM(ROW_MAJOR, ta, tb, m, n, k, 1.0, <double*>A, lda, <double*>B, ldb, beta,
              <double*>C, ldc)
    else:
        SGEMM(ROW_MAJOR, ta, tb, m, n, k, 1.0, <float*>A, lda, <float*>B, ldb, <float>beta,
              <float*>C, ldc)


cdef void _fill_bias(bint dbl, char* C, const char* bias, int64_t r0, int64_t r1, int64_t c0,
                     int64_t c1, int64_t ldc) noexcept nogil:
    """C[r0:r1, c0:c1] = bias[c0:c1] on every row."""
    cdef int64_t isz = 8 if dbl else 4
    cdef int64_t i
    for i in range(r0, r1):
        memcpy(C + (i * ldc + c0) * isz, bias + c0 * isz, (c1 - c0) * isz)


cdef void _part(bint dbl, char* A, char* B, char* C, int ta, int tb, int64_t m, int64_t n,
                int64_t k, int64_t lda, int64_t ldb, int64_t ldc, int64_t part,
                int64_t parts, bint by_rows, const char* bias) noexcept nogil:
    """Part ``part`` of ``parts`` of C: a block of whole rows (``by_rows``) or columns. With
    a ``bias`` (n,) the thread first writes it into every row of its block and has BLAS add
    the product to it (beta 1, as PyTorch's ``addmm`` does): no pass that clears C, none that
    adds the bias after, and each thread writes only its own block."""
    cdef int64_t isz = 8 if dbl else 4
    cdef int64_t total = m if by_rows else n
    cdef int64_t lo = total * part // parts
    cdef int64_t hi = total * (part + 1) // parts
    cdef double beta = 0.0 if bias == NULL else 1.0
    if hi <= lo:
        return
    if by_rows:   # rows lo:hi of op(A) and of C
        if bias != NULL:
            _fill_bias(dbl, C, bias, lo, hi, 0, n, ldc)
        _product(dbl, A + (lo * lda if ta == NO_TRANS else lo) * isz, B, C + lo * ldc * isz,
                 ta, tb, hi - lo, n, k, lda, ldb, ldc, beta)
    else:         # columns lo:hi of op(B) and of C
        if bias != NULL:
            _fill_bias(dbl, C, bias, 0, m, lo, hi, ldc)
        _product(dbl, A, B + (lo if tb == NO_TRANS else lo * ldb) * isz, C + lo * isz,
                 ta, tb, m, hi - lo, k, lda, ldb, ldc, beta)


def gemm(cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, cnp.ndarray offsets, int ta, int tb,
         int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
         int threads, int64_t parts, cnp.ndarray bias=None):
    """C_i = op(A_i) op(B_i) for each matrix i of a batch, row-major; the matrices start at
    byte offsets ``offsets[0, i]``, ``offsets[1, i]``, ``offsets[2, i]`` from the data of
    ``a``, ``b`` and ``c``. With ``parts`` > 1 each matrix is split into that many blocks of
    rows or columns (the longer side), shared out over ``threads``; else whole matrices are.
    ``bias`` (n,), for one matrix only (``addmm``), is written into every row of C by the
    thread that computes the row's block, before BLAS adds the product to it. The caller
    (__init__.py) has checked every shape, stride and offset against the arrays, and the
    bias's dtype and length."""
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
    cdef const char* pbias = NULL
    if bias is not None:
        if nb != 1 or bias.dtype != c.dtype or bias.ndim != 1 or bias.shape[0] != n \
                or not bias.flags.c_contiguous:
            raise ValueError("minissl.kernels.gemm._cpu.gemm: bias must be one C-contiguous "
                             "(n,) row of C's dtype, for one matrix")
        pbias = <const char*>cnp.PyArray_DATA(bias)
    with nogil:
        previous = SET_LOCAL(1)
        if parts > 1:       # one product, in blocks of rows or columns shared out
            for i in range(nb):
                for p in prange(parts, schedule="static", num_threads=threads,
                                use_threads_if=threads > 1):
                    _part(dbl, A + off[i], B + off[nb + i], C + off[2 * nb + i], ta, tb,
                          m, n, k, lda, ldb, ldc, p, parts, by_rows, pbias)
        elif threads > 1 and nb > 1:   # whole matrices shared out
            for i in prange(nb, schedule="static", num_threads=threads):
                _product(dbl, A + off[i], B + off[nb + i], C + off[2 * nb + i], ta, tb,
                         m, n, k, lda, ldb, ldc)
        elif pbias != NULL:            # one matrix, one thread, plus the bias: one part
            _part(dbl, A + off[0], B + off[nb], C + off[2 * nb], ta, tb, m, n, k, lda, ldb, ldc,
                  0, 1, True, pbias)
        else:
            for i in range(nb):
                _product(dbl, A + off[i], B + off[nb + i], C + off[2 * nb + i], ta, tb,
                         m, n, k, lda, ldb, ldc)
        SET_LOCAL(previous)


# ---- sum of a matrix's rows (a linear layer's bias gradient) ----------------------------------

cdef int64_t ROWS_PER_BLOCK = 64
cdef int64_t SUM_PARALLEL_MIN = 32768   # below this many elements one thread sums
cdef enum:
    STRIP = 16                          # columns summed at once, in registers


cdef void _sum_block(bint dbl, const char* G, double* acc, int64_t lo, int64_t hi,
                     int64_t n) noexcept nogil:
    """acc[:n] = the sums of the rows lo:hi of G (row length n), each column in row order
    from zero, STRIP columns at a time with the sums in registers and stored once (summed
    into memory row by row they would be read and written back every row: the pattern that
    made layer norm's backward slow, docs/performance.md)."""
    cdef double a[STRIP]
    cdef int64_t i, j0, k, m
    cdef const float* rf
    cdef const double* rd
    j0 = 0
    while j0 < n:
        m = min(<int64_t>STRIP, n - j0)
        for k in range(STRIP):
            a[k] = 0
        for i in range(lo, hi):
            if dbl:
                rd = <const double*>G + i * n + j0
                for k in range(m):
                    a[k] += rd[k]
            else:
                rf = <const float*>G + i * n + j0
                for k in range(m):
                    a[k] += rf[k]
        for k in range(m):
            acc[j0 + k] = a[k]
        j0 += STRIP


def sum_rows(cnp.ndarray g, cnp.ndarray out, int threads):
    """out (n,) = the sum of the rows of g (m, n), both C-contiguous of one float dtype.

    Each block of ROWS_PER_BLOCK rows is summed by one thread into its own float64 partial
    sums, blocks shared out by OpenMP's static schedule (thread 0 the first run of rows, as in
    the products' row split, so each thread reads rows it wrote itself); the partials are
    added in block order at the end. The bits do not depend on the thread count."""
    if g.ndim != 2 or out.ndim != 1 or out.shape[0] != g.shape[1] or g.dtype != out.dtype \
            or g.dtype not in ('float32', 'float64') or not g.flags.c_contiguous \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("minissl.kernels.gemm._cpu.sum_rows: g (m, n) and out (n,) must be "
                         "C-contiguous arrays of one float dtype")
    cdef int64_t m = g.shape[0], n = g.shape[1], nblocks, blk, i, j, lo, hi
    nblocks = (m + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK
    cdef bint dbl = g.dtype == 'float64'
    cdef char* G = <char*>cnp.PyArray_DATA(g)
    cdef char* O = <char*>cnp.PyArray_DATA(out)
    cdef double* part = <double*>calloc(max(nblocks, 1) * max(n, 1), sizeof(double))
    cdef double s
    if part == NULL:
        raise MemoryError("minissl.kernels.gemm._cpu.sum_rows: out of memory")
    with nogil:
        for blk in prange(nblocks, schedule="static", num_threads=threads,
                          use_threads_if=threads > 1 and m * n >= SUM_PARALLEL_MIN):
            lo = blk * ROWS_PER_BLOCK
            hi = min(lo + ROWS_PER_BLOCK, m)
            _sum_block(dbl, G, part + blk * n, lo, hi, n)
        for j in range(n):
            s = 0
            for blk in range(nblocks):
                s = s + part[blk * n + j]
            if dbl:
                (<double*>O)[j] = s
            else:
                (<float*>O)[j] = <float>s
    free(part)
