"""Cython kernels: layer norm and L2 normalisation over rows of (M, D), training-mode batch norm
over (N, C, L).

The math and the validation live in __init__.py, the reference in reference.py; these loops
expect C-contiguous arrays of one float dtype (weight and bias may be None; mean and rstd passed to
the backward are float64) whose shapes the wrapper has checked, with every dimension > 0.

- Statistics are accumulated in double. The variance is the two-pass sum of squared
  deviations from the double-precision mean (no E[x^2] - E[x]^2 cancellation), and the
  normalisation itself is computed in double and rounded once.
- The reductions are small C functions (norm.h, norm_impl.h) so that GCC can vectorise them:
  ``#pragma omp simd reduction`` allows it to split a floating-point sum over vector lanes,
  which it may not do on its own, and ``target_clones`` builds them for AVX-512, AVX2 and
  baseline x86-64 and picks one at load time. The lane count is fixed on a machine, so the
  results are deterministic there.
- Layer norm runs rows in parallel. Its weight and bias gradients are sums over rows: each
  block of ``ROWS_PER_BLOCK`` rows (a fixed number, so the summation order never depends on
  the thread count) accumulates its own partial sums, which are added in block order. Within
  a block the partial sums of MSSL_LN_STRIP (32) columns at a time stay in registers over the
  block's rows and are stored once (``mssl_ln_backward_block``), not read and written back
  every row.
- Batch norm over (N, C, L) with L > 1 (BatchNorm2d's case) reads its arrays in memory
  order, in blocks of ``IMAGES_PER_BLOCK`` images: each block gets every channel's mean and
  sum of squared deviations from that mean (two passes over the block, the second from the
  cache), and the blocks are merged in order with Chan, Golub and LeVeque's pairwise update,
  which forms no sum of squares either; the gradient sums are summed per block and the blocks
  added in order. (Reduced channel by channel, a thread read L values of every image, then
  jumped a whole image ahead: up to 1.8x slower on the conv workload's shapes,
  docs/performance.md.) Over an (N, C) matrix (L == 1, BatchNorm1d's case) the statistics are
  reduced row by row instead so that the loads stay contiguous: lanes then hold channels,
  each summed sequentially over n, MSSL_LN_STRIP (32) channels at a time in registers
  (``mssl_col_sums`` and its siblings).
- L2 normalisation runs rows in parallel, each row's squares (and, backward, its dot product
  with the gradient) summed in double lanes.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport calloc, free
from minissl_checks cimport array_data, float_type

cnp.import_array()

include "minissl_threads.pxi"

# Raw data pointers, not typed memoryviews: a memoryview costs about 1 us per argument to
# acquire, most of a small call (measured; see minissl_checks.pxd). NAME names this module
# in the error messages of those checks.
cdef str NAME = "norm"

cdef extern from "norm.h":
    double mssl_sum_f32(const float* x, Py_ssize_t n) noexcept nogil
    double mssl_sum_sq_dev_f32(const float* x, double c, Py_ssize_t n) noexcept nogil
    void mssl_affine_f32(const float* x, double mean, double scale, double shift, float* y,
                        Py_ssize_t n, int relu) noexcept nogil
    void mssl_ln_forward_row_f32(const float* x, const float* w, const float* b, double eps,
                                float* y, Py_ssize_t n, double* mean_out,
                                double* rstd_out) noexcept nogil
    void mssl_ln_backward_block_f32(const float* g, const float* x, const float* w,
                                   const double* mean, const double* rstd, float* dx,
                                   double* dw_part, double* db_part, Py_ssize_t rows,
                                   Py_ssize_t n) noexcept nogil
    void mssl_grad_sums_f32(const float* g, const float* x, const float* ym, double mean,
                           double rstd, Py_ssize_t n, double* sum_g,
                           double* sum_gx) noexcept nogil
    void mssl_bn_dx_f32(const float* g, const float* x, const float* ym, double mean, double k,
                        double c1, double rc2, float* dx, Py_ssize_t n) noexcept nogil
    void mssl_col_sums_f32(const float* x, Py_ssize_t N, Py_ssize_t ld, double* acc,
                          Py_ssize_t n) noexcept nogil
    void mssl_col_sums_sq_dev_f32(const float* x, Py_ssize_t N, Py_ssize_t ld, const double* mean,
                                 double* acc, Py_ssize_t n) noexcept nogil
    void mssl_col_grad_sums_f32(const float* g, const float* x, const float* ym, Py_ssize_t N,
                               Py_ssize_t ld, const double* mean, const double* rstd,
                               double* sum_g, double* sum_gx, Py_ssize_t n) noexcept nogil
    void mssl_row_affine_f32(const float* x, const double* mean, const double* scale,
                            const double* shift, float* y, Py_ssize_t n, int relu) noexcept nogil
    void mssl_l2n_forward_row_f32(const float* x, double eps, float* y, Py_ssize_t n,
                                 double* norm_out) noexcept nogil
    void mssl_l2n_backward_row_f32(const float* g, const float* y, double norm, double eps,
                                  float* dx, Py_ssize_t n) noexcept nogil
    void mssl_row_bn_dx_f32(const float* g, const float* x, const float* ym, const double* mean,
                           const double* k, const double* c1, const double* rc2, float* dx,
                           Py_ssize_t n) noexcept nogil

    double mssl_sum_f64(const double* x, Py_ssize_t n) noexcept nogil
    double mssl_sum_sq_dev_f64(const double* x, double c, Py_ssize_t n) noexcept nogil
    void mssl_affine_f64(const double* x, double mean, double scale, double shift, double* y,
                        Py_ssize_t n, int relu) noexcept nogil
    void mssl_ln_forward_row_f64(const double* x, const double* w, const double* b, double eps,
                                double* y, Py_ssize_t n, double* mean_out,
                                double* rstd_out) noexcept nogil
    void mssl_ln_backward_block_f64(const double* g, const double* x, const double* w,
                                   const double* mean, const double* rstd, double* dx,
                                   double* dw_part, double* db_part, Py_ssize_t rows,
                                   Py_ssize_t n) noexcept nogil
    void mssl_grad_sums_f64(const double* g, const double* x, const double* ym, double mean,
                           double rstd, Py_ssize_t n, double* sum_g,
                           double* sum_gx) noexcept nogil
    void mssl_bn_dx_f64(const double* g, const double* x, const double* ym, double mean, double k,
                        double c1, double rc2, double* dx, Py_ssize_t n) noexcept nogil
    void mssl_col_sums_f64(const double* x, Py_ssize_t N, Py_ssize_t ld, double* acc,
                          Py_ssize_t n) noexcept nogil
    void mssl_col_sums_sq_dev_f64(const double* x, Py_ssize_t N, Py_ssize_t ld,
                                 const double* mean, double* acc, Py_ssize_t n) noexcept nogil
    void mssl_col_grad_sums_f64(const double* g, const double* x, const double* ym,
                               Py_ssize_t N, Py_ssize_t ld, const double* mean,
                               const double* rstd, double* sum_g, double* sum_gx,
                               Py_ssize_t n) noexcept nogil
    void mssl_row_affine_f64(const double* x, const double* mean, const double* scale,
                            const double* shift, double* y, Py_ssize_t n, int relu) noexcept nogil
    void mssl_l2n_forward_row_f64(const double* x, double eps, double* y, Py_ssize_t n,
                                 double* norm_out) noexcept nogil
    void mssl_l2n_backward_row_f64(const double* g, const double* y, double norm, double eps,
                                  double* dx, Py_ssize_t n) noexcept nogil
    void mssl_row_bn_dx_f64(const double* g, const double* x, const double* ym, const double* mean,
                           const double* k, const double* c1, const double* rc2, double* dx,
                           Py_ssize_t n) noexcept nogil


# A parallel region costs a few microseconds to wake the second thread; below this many
# elements one thread finishes first.
cdef Py_ssize_t PARALLEL_MIN = 32768
# Layer-norm rows per partial sum of the weight/bias gradients (see the module docstring).
cdef Py_ssize_t ROWS_PER_BLOCK = 64
# Channels per task when L == 1: wide enough for whole vectors of contiguous loads.
cdef Py_ssize_t COLUMNS_PER_BLOCK = 64
# Batch norm's reductions when L > 1 are tasks of IMAGES_PER_BLOCK images by one of
# CHANNEL_CHUNKS runs of channels (so that a batch of one or two images still has work for
# every thread); fixed numbers, so the summation order never depends on the thread count.
cdef Py_ssize_t IMAGES_PER_BLOCK = 4
cdef Py_ssize_t CHANNEL_CHUNKS = 8


# ---- the C kernels of norm.h, dispatched on the fused type ----------------------------------

cdef inline double _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return mssl_sum_f32(x, n)
    else:
        return mssl_sum_f64(x, n)


cdef inline double _sum_sq_dev(const floating* x, double c, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return mssl_sum_sq_dev_f32(x, c, n)
    else:
        return mssl_sum_sq_dev_f64(x, c, n)


cdef inline void _affine(const floating* x, double mean, double scale, double shift, floating* y,
                         Py_ssize_t n, bint relu) noexcept nogil:
    if floating is float:
        mssl_affine_f32(x, mean, scale, shift, y, n, relu)
    else:
        mssl_affine_f64(x, mean, scale, shift, y, n, relu)


cdef inline void _grad_sums(const floating* g, const floating* x, const floating* ym, double mean,
                            double rstd, Py_ssize_t n, double* sum_g,
                            double* sum_gx) noexcept nogil:
    if floating is float:
        mssl_grad_sums_f32(g, x, ym, mean, rstd, n, sum_g, sum_gx)
    else:
        mssl_grad_sums_f64(g, x, ym, mean, rstd, n, sum_g, sum_gx)


cdef inline void _bn_dx(const floating* g, const floating* x, const floating* ym, double mean,
                        double k, double c1, double rc2, floating* dx,
                        Py_ssize_t n) noexcept nogil:
    if floating is float:
        mssl_bn_dx_f32(g, x, ym, mean, k, c1, rc2, dx, n)
    else:
        mssl_bn_dx_f64(g, x, ym, mean, k, c1, rc2, dx, n)


cdef inline const floating* _at(const floating* p, Py_ssize_t offset) noexcept nogil:
    """p + offset, or NULL for a NULL p (an absent optional array stays absent)."""
    return NULL if p == NULL else p + offset


# ---- argument checks (the others are in minissl_checks.pxd) ----------------------------

cdef void* _optional(object a, int typenum, Py_ssize_t n, bint writable) except? NULL:
    """Data pointer of an optional (n,) vector; NULL for None."""
    if a is None:
        return NULL
    return array_data(NAME, a, typenum, 1, n, 0, 0, writable)


# ---- layer norm -----------------------------------------------------------------------------

cdef inline void _layer_norm_row(const floating* x, const floating* w, const floating* b,
                                 double eps, floating* y, floating* mean_out,
                                 floating* rstd_out, Py_ssize_t n) noexcept nogil:
    cdef double mean, rstd
    if floating is float:
        mssl_ln_forward_row_f32(x, w, b, eps, y, n, &mean, &rstd)
    else:
        mssl_ln_forward_row_f64(x, w, b, eps, y, n, &mean, &rstd)
    mean_out[0] = <floating>mean
    rstd_out[0] = <floating>rstd


cdef void _layer_norm_rows(const floating* x, const floating* w, const floating* b, double eps,
                           floating* y, floating* mean, floating* rstd, Py_ssize_t M,
                           Py_ssize_t D) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(M, schedule="static", use_threads_if=THREADS > 1 and M * D >= PARALLEL_MIN,
                    num_threads=THREADS):
        _layer_norm_row(x + i * D, w, b, eps, y + i * D, mean + i, rstd + i, D)


cdef int _layer_norm_backward_rows(const floating* g, const floating* x, const double* mean,
                                   const double* rstd, const floating* w, floating* dx,
                                   floating* dw, floating* db, Py_ssize_t M,
                                   Py_ssize_t D) noexcept nogil:
    """Returns -1 when out of memory. dw and db are sums over rows: each block of
    ROWS_PER_BLOCK rows accumulates its own partial sums, added in block order at the end."""
    cdef Py_ssize_t nblocks = (M + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK, i, j, blk
    cdef double sw, sb
    cdef double* dw_part = <double*>calloc(nblocks * D, sizeof(double))   # (nblocks, D)
    cdef double* db_part = <double*>calloc(nblocks * D, sizeof(double))
    if dw_part == NULL or db_part == NULL:
        free(dw_part)
        free(db_part)
        return -1
    for blk in prange(nblocks, schedule="static",
                      use_threads_if=THREADS > 1 and M * D >= PARALLEL_MIN,
                      num_threads=THREADS):
        i = blk * ROWS_PER_BLOCK
        if floating is float:
            mssl_ln_backward_block_f32(g + i * D, x + i * D, w, mean + i, rstd + i, dx + i * D,
                                       dw_part + blk * D, db_part + blk * D,
                                       min(ROWS_PER_BLOCK, M - i), D)
        else:
            mssl_ln_backward_block_f64(g + i * D, x + i * D, w, mean + i, rstd + i, dx + i * D,
                                       dw_part + blk * D, db_part + blk * D,
                                       min(ROWS_PER_BLOCK, M - i), D)
    for j in range(D):
        sw = 0
        sb = 0
        for blk in range(nblocks):
            sw += dw_part[blk * D + j]
            sb += db_part[blk * D + j]
        if w != NULL:
            dw[j] = <floating>sw
        db[j] = <floating>sb
    free(dw_part)
    free(db_part)
    return 0


def layer_norm_forward(x, weight, bias, double eps, y, mean, rstd):
    """Layer norm of the rows of x (M, D); weight, bias (D,) or None."""
    cdef int t = float_type(NAME, x)
    cdef Py_ssize_t M = x.shape[0], D = x.shape[1]
    cdef void* px = array_data(NAME, x, t, 2, M, D, 0, False)
    cdef void* pw = _optional(weight, t, D, False)
    cdef void* pb = _optional(bias, t, D, False)
    cdef void* py = array_data(NAME, y, t, 2, M, D, 0, True)
    cdef void* pm = array_data(NAME, mean, t, 1, M, 0, 0, True)
    cdef void* pr = array_data(NAME, rstd, t, 1, M, 0, 0, True)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _layer_norm_rows(<const float*>px, <const float*>pw, <const float*>pb, eps,
                             <float*>py, <float*>pm, <float*>pr, M, D)
        else:
            _layer_norm_rows(<const double*>px, <const double*>pw, <const double*>pb, eps,
                             <double*>py, <double*>pm, <double*>pr, M, D)


def layer_norm_backward(grad_y, x, mean, rstd, weight, dx, dw, db):
    """dx (M, D), dw (D,) (None when weight is None), db (D,); mean and rstd float64 (M,)."""
    cdef int t = float_type(NAME, x), err
    cdef Py_ssize_t M = x.shape[0], D = x.shape[1]
    cdef void* pg = array_data(NAME, grad_y, t, 2, M, D, 0, False)
    cdef void* px = array_data(NAME, x, t, 2, M, D, 0, False)
    cdef const double* pm = <const double*>array_data(NAME, mean,
                                                      cnp.NPY_FLOAT64, 1, M, 0, 0, False)
    cdef const double* pr = <const double*>array_data(NAME, rstd,
                                                      cnp.NPY_FLOAT64, 1, M, 0, 0, False)
    cdef void* pw = _optional(weight, t, D, False)
    cdef void* pdx = array_data(NAME, dx, t, 2, M, D, 0, True)
    cdef void* pdw = _optional(dw, t, D, True)
    cdef void* pdb = array_data(NAME, db, t, 1, D, 0, 0, True)
    if (pw == NULL) != (pdw == NULL):
        raise ValueError("minissl.kernels.norm._cpu: dw must be given exactly when weight is")
    with nogil:
        if t == cnp.NPY_FLOAT32:
            err = _layer_norm_backward_rows(<const float*>pg, <const float*>px, pm, pr,
                                            <const float*>pw, <float*>pdx, <float*>pdw,
                                            <float*>pdb, M, D)
        else:
            err = _layer_norm_backward_rows(<const double*>pg, <const double*>px, pm, pr,
                                            <const double*>pw, <double*>pdx, <double*>pdw,
                                            <double*>pdb, M, D)
    if err:
        raise MemoryError()


# ---- L2 normalisation of rows -----------------------------------------------------------------

cdef void _l2n_rows(const floating* x, double eps, floating* y, double* norm, Py_ssize_t M,
                    Py_ssize_t D) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(M, schedule="static", use_threads_if=THREADS > 1 and M * D >= PARALLEL_MIN,
                    num_threads=THREADS):
        if floating is float:
            mssl_l2n_forward_row_f32(x + i * D, eps, y + i * D, D, norm + i)
        else:
            mssl_l2n_forward_row_f64(x + i * D, eps, y + i * D, D, norm + i)


cdef void _l2n_backward_rows(const floating* g, const floating* y, const double* norm,
                             double eps, floating* dx, Py_ssize_t M, Py_ssize_t D) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(M, schedule="static", use_threads_if=THREADS > 1 and M * D >= PARALLEL_MIN,
                    num_threads=THREADS):
        if floating is float:
            mssl_l2n_backward_row_f32(g + i * D, y + i * D, norm[i], eps, dx + i * D, D)
        else:
            mssl_l2n_backward_row_f64(g + i * D, y + i * D, norm[i], eps, dx + i * D, D)


def l2_normalize_forward(x, double eps, y, norm):
    """y (M, D) = each row of x over max(its L2 norm, eps); norm (M,) float64 = that divisor."""
    cdef int t = float_type(NAME, x)
    cdef Py_ssize_t M = x.shape[0], D = x.shape[1]
    cdef void* px = array_data(NAME, x, t, 2, M, D, 0, False)
    cdef void* py = array_data(NAME, y, t, 2, M, D, 0, True)
    cdef double* pn = <double*>array_data(NAME, norm, cnp.NPY_FLOAT64, 1, M, 0, 0, True)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _l2n_rows(<const float*>px, eps, <float*>py, pn, M, D)
        else:
            _l2n_rows(<const double*>px, eps, <double*>py, pn, M, D)


def l2_normalize_backward(grad_y, y, norm, double eps, dx):
    """dx (M, D) from grad_y and the forward's y (M, D) and norm (M,) float64."""
    cdef int t = float_type(NAME, y)
    cdef Py_ssize_t M = y.shape[0], D = y.shape[1]
    cdef void* pg = array_data(NAME, grad_y, t, 2, M, D, 0, False)
    cdef void* py = array_data(NAME, y, t, 2, M, D, 0, False)
    cdef const double* pn = <const double*>array_data(NAME, norm, cnp.NPY_FLOAT64, 1, M, 0, 0,
                                                      False)
    cdef void* pdx = array_data(NAME, dx, t, 2, M, D, 0, True)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _l2n_backward_rows(<const float*>pg, <const float*>py, pn, eps, <float*>pdx, M, D)
        else:
            _l2n_backward_rows(<const double*>pg, <const double*>py, pn, eps, <double*>pdx, M,
                               D)


# ---- batch norm -----------------------------------------------------------------------------
# Per channel c: mean[c], var[c] over the N*L values; then y = (x - mean) * scale + shift with
# scale = rstd * w and shift = b. Two layouts: L > 1, where each (n, c) is a contiguous segment
# of L values, reduced in blocks of images; and L == 1, an (N, C) matrix whose columns are the
# channels, reduced row by row over blocks of columns.

cdef void _column_moments(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0,
                          Py_ssize_t c1, double* mean, double* var) noexcept nogil:
    """Mean and biased variance of columns c0..c1-1 of the (N, C) matrix x, two passes."""
    cdef Py_ssize_t c
    if floating is float:
        mssl_col_sums_f32(x + c0, N, C, mean + c0, c1 - c0)
    else:
        mssl_col_sums_f64(x + c0, N, C, mean + c0, c1 - c0)
    for c in range(c0, c1):
        mean[c] /= N
    if floating is float:
        mssl_col_sums_sq_dev_f32(x + c0, N, C, mean + c0, var + c0, c1 - c0)
    else:
        mssl_col_sums_sq_dev_f64(x + c0, N, C, mean + c0, var + c0, c1 - c0)
    for c in range(c0, c1):
        var[c] /= N


cdef inline Py_ssize_t _task_range(Py_ssize_t task, Py_ssize_t N, Py_ssize_t C, Py_ssize_t* lo,
                                   Py_ssize_t* hi, Py_ssize_t* c0, Py_ssize_t* c1) noexcept nogil:
    """The images lo..hi-1 and channels c0..c1-1 of task ``task`` of batch norm's reductions
    when L > 1: block task // CHANNEL_CHUNKS of IMAGES_PER_BLOCK images, chunk
    task % CHANNEL_CHUNKS of the channels (empty when C < CHANNEL_CHUNKS). Returns the block.
    Consecutive tasks cover one block, so a thread's share is a run of whole images."""
    cdef Py_ssize_t blk = task // CHANNEL_CHUNKS, k = task % CHANNEL_CHUNKS
    lo[0] = blk * IMAGES_PER_BLOCK
    hi[0] = min(lo[0] + IMAGES_PER_BLOCK, N)
    c0[0] = C * k // CHANNEL_CHUNKS
    c1[0] = C * (k + 1) // CHANNEL_CHUNKS
    return blk


cdef inline void _merge(double* mean, double* m2, double count, double mean_b, double m2_b,
                        double count_b) noexcept nogil:
    """Merge a group of count_b values (mean mean_b, sum of squared deviations m2_b) into
    the running (mean, m2) of ``count`` values (Chan, Golub and LeVeque's pairwise update):
    d = mean_b - mean, mean += d count_b / n, m2 += m2_b + d^2 count count_b / n, with
    n = count + count_b. No sum of squares is formed, so no E[x^2] - E[x]^2 cancellation."""
    cdef double n = count + count_b, d = mean_b - mean[0]
    mean[0] += d * (count_b / n)
    m2[0] += m2_b + d * d * (count * (count_b / n))


cdef void _image_block_moments(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
                               Py_ssize_t task, double* part) noexcept nogil:
    """Task ``task`` (``_task_range``): part[blk, 0, c] and part[blk, 1, c], the mean and the
    sum of squared deviations from it of channel c over the images of block blk of
    x (N, C, L), for the task's channels, in two passes over them in memory order (the
    second finds them in the cache: IMAGES_PER_BLOCK images)."""
    cdef Py_ssize_t lo, hi, c0, c1, n, c, blk
    blk = _task_range(task, N, C, &lo, &hi, &c0, &c1)
    cdef double* mean = part + 2 * blk * C
    cdef double* m2 = mean + C
    for c in range(c0, c1):
        mean[c] = 0
        m2[c] = 0
    for n in range(lo, hi):
        for c in range(c0, c1):
            mean[c] += _sum(x + (n * C + c) * L, L)
    for c in range(c0, c1):
        mean[c] /= (hi - lo) * L
    for n in range(lo, hi):
        for c in range(c0, c1):
            m2[c] += _sum_sq_dev(x + (n * C + c) * L, mean[c], L)


cdef int _batch_norm(const floating* x, const floating* w, const floating* b, double eps,
                     floating* y, floating* mean_out, floating* var_out, floating* rstd_out,
                     Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, bint relu) noexcept nogil:
    """y = max(., 0) of the result when relu (a fused ReLU). Returns -1 when out of memory."""
    cdef Py_ssize_t nblocks = (C + COLUMNS_PER_BLOCK - 1) // COLUMNS_PER_BLOCK, n, c, blk, task
    cdef bint parallel = THREADS > 1 and N * C * L >= PARALLEL_MIN
    cdef Py_ssize_t nimg = (N + IMAGES_PER_BLOCK - 1) // IMAGES_PER_BLOCK
    cdef double rstd
    # per channel, in double: mean, var, scale, shift; then (L > 1) each block of images'
    # means and m2, (nimg, 2, C)
    cdef double* mean = <double*>calloc((4 + (2 * nimg if L > 1 else 0)) * C, sizeof(double))
    if mean == NULL:
        return -1
    cdef double* var = mean + C
    cdef double* scale = mean + 2 * C
    cdef double* shift = mean + 3 * C
    cdef double* part = mean + 4 * C
    if L == 1:
        for blk in prange(nblocks, schedule="static", use_threads_if=parallel,
                          num_threads=THREADS):
            _column_moments(x, N, C, blk * COLUMNS_PER_BLOCK,
                            min((blk + 1) * COLUMNS_PER_BLOCK, C), mean, var)
    else:
        for task in prange(nimg * CHANNEL_CHUNKS, schedule="static", use_threads_if=parallel,
                           num_threads=THREADS):
            _image_block_moments(x, N, C, L, task, part)
        for c in range(C):   # the blocks merged in order; var = m2 / (N L)
            mean[c] = part[c]
            var[c] = part[C + c]
            for blk in range(1, nimg):
                _merge(mean + c, var + c, <double>(blk * IMAGES_PER_BLOCK * L),
                       part[2 * blk * C + c], part[(2 * blk + 1) * C + c],
                       <double>((min((blk + 1) * IMAGES_PER_BLOCK, N) - blk * IMAGES_PER_BLOCK)
                                * L))
            var[c] /= N * L
    for c in range(C):
        rstd = 1.0 / sqrt(var[c] + eps)
        scale[c] = rstd if w == NULL else rstd * w[c]
        shift[c] = 0.0 if b == NULL else b[c]
        mean_out[c] = <floating>mean[c]
        var_out[c] = <floating>var[c]
        rstd_out[c] = <floating>rstd
    for n in prange(N, schedule="static", use_threads_if=parallel,
                    num_threads=THREADS):
        if L == 1:
            if floating is float:
                mssl_row_affine_f32(x + n * C, mean, scale, shift, y + n * C, C, relu)
            else:
                mssl_row_affine_f64(x + n * C, mean, scale, shift, y + n * C, C, relu)
        else:
            for c in range(C):
                _affine(x + (n * C + c) * L, mean[c], scale[c], shift[c], y + (n * C + c) * L, L,
                        relu)
    free(mean)
    return 0


def batch_norm_forward(x, weight, bias, double eps, y, mean, var, rstd, bint relu=False):
    """Batch norm of x (N, C, L) with statistics per channel; weight, bias (C,) or None;
    ``relu``: y = max(batch norm, 0), a fused ReLU."""
    cdef int t = float_type(NAME, x), err
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2]
    cdef void* px = array_data(NAME, x, t, 3, N, C, L, False)
    cdef void* pw = _optional(weight, t, C, False)
    cdef void* pb = _optional(bias, t, C, False)
    cdef void* py = array_data(NAME, y, t, 3, N, C, L, True)
    cdef void* pm = array_data(NAME, mean, t, 1, C, 0, 0, True)
    cdef void* pv = array_data(NAME, var, t, 1, C, 0, 0, True)
    cdef void* pr = array_data(NAME, rstd, t, 1, C, 0, 0, True)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            err = _batch_norm(<const float*>px, <const float*>pw, <const float*>pb, eps,
                              <float*>py, <float*>pm, <float*>pv, <float*>pr, N, C, L, relu)
        else:
            err = _batch_norm(<const double*>px, <const double*>pw, <const double*>pb, eps,
                              <double*>py, <double*>pm, <double*>pv, <double*>pr, N, C, L, relu)
    if err:
        raise MemoryError()


cdef void _column_grad_sums(const floating* g, const floating* x, const floating* ym,
                            Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1,
                            const double* mean, const double* rstd, double* sum_g,
                            double* sum_gx) noexcept nogil:
    """sum_g[c] = sum_n g[n, c], sum_gx[c] = sum_n g[n, c] xhat[n, c] for c0 <= c < c1
    (g masked by ym > 0 when ym is given)."""
    if floating is float:
        mssl_col_grad_sums_f32(g + c0, x + c0, _at(ym, c0), N, C, mean + c0, rstd + c0,
                               sum_g + c0, sum_gx + c0, c1 - c0)
    else:
        mssl_col_grad_sums_f64(g + c0, x + c0, _at(ym, c0), N, C, mean + c0, rstd + c0,
                               sum_g + c0, sum_gx + c0, c1 - c0)


cdef void _image_block_grad_sums(const floating* g, const floating* x, const floating* ym,
                                 Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t task,
                                 const double* mean, const double* rstd,
                                 double* part) noexcept nogil:
    """Task ``task`` (``_task_range``): part[blk, 0, c] = sum g and part[blk, 1, c] =
    sum g xhat over channel c's values in the images of block blk of (N, C, L) arrays, for
    the task's channels, read once in memory order (g masked by ym > 0 when ym is given)."""
    cdef Py_ssize_t lo, hi, c0, c1, n, c, o, blk
    blk = _task_range(task, N, C, &lo, &hi, &c0, &c1)
    cdef double* sum_g = part + 2 * blk * C
    cdef double* sum_gx = sum_g + C
    cdef double sg, sgx
    for c in range(c0, c1):
        sum_g[c] = 0
        sum_gx[c] = 0
    for n in range(lo, hi):
        for c in range(c0, c1):
            o = (n * C + c) * L
            _grad_sums(g + o, x + o, _at(ym, o), mean[c], rstd[c], L, &sg, &sgx)
            sum_g[c] += sg
            sum_gx[c] += sgx


cdef int _batch_norm_backward(const floating* g, const floating* x, const floating* ym,
                              const double* mean, const double* rstd, const floating* w,
                              floating* dx, floating* dw, floating* db, Py_ssize_t N,
                              Py_ssize_t C, Py_ssize_t L) noexcept nogil:
    """dx = k (g - c1 - (x - mean) rc2) with k = w rstd, c1 = sum_g / n and
    rc2 = rstd sum_gx / n, n = N * L; dw = sum_gx, db = sum_g. With ym (the output of a fused
    ReLU), g is first masked by ym > 0 (the ReLU's backward). Returns -1 when out of memory."""
    cdef Py_ssize_t nblocks = (C + COLUMNS_PER_BLOCK - 1) // COLUMNS_PER_BLOCK, n, c, blk, task
    cdef bint parallel = THREADS > 1 and N * C * L >= PARALLEL_MIN
    cdef Py_ssize_t nimg = (N + IMAGES_PER_BLOCK - 1) // IMAGES_PER_BLOCK
    cdef double count = <double>(N * L)
    # per channel, in double: sum_g, sum_gx (accumulated from zero), k, c1, rc2; then (L > 1)
    # each block of images' two sums, (nimg, 2, C)
    cdef double* sum_g = <double*>calloc((5 + (2 * nimg if L > 1 else 0)) * C, sizeof(double))
    if sum_g == NULL:
        return -1
    cdef double* sum_gx = sum_g + C
    cdef double* k = sum_g + 2 * C
    cdef double* c1 = sum_g + 3 * C
    cdef double* rc2 = sum_g + 4 * C
    cdef double* part = sum_g + 5 * C
    if L == 1:
        for blk in prange(nblocks, schedule="static", use_threads_if=parallel,
                          num_threads=THREADS):
            _column_grad_sums(g, x, ym, N, C, blk * COLUMNS_PER_BLOCK,
                              min((blk + 1) * COLUMNS_PER_BLOCK, C), mean, rstd, sum_g, sum_gx)
    else:
        for task in prange(nimg * CHANNEL_CHUNKS, schedule="static", use_threads_if=parallel,
                           num_threads=THREADS):
            _image_block_grad_sums(g, x, ym, N, C, L, task, mean, rstd, part)
        for c in range(C):   # the blocks added in order
            for blk in range(nimg):
                sum_g[c] += part[2 * blk * C + c]
                sum_gx[c] += part[(2 * blk + 1) * C + c]
    for c in range(C):
        if w != NULL:
            dw[c] = <floating>sum_gx[c]
        db[c] = <floating>sum_g[c]
        k[c] = rstd[c] if w == NULL else rstd[c] * w[c]
        c1[c] = sum_g[c] / count
        rc2[c] = rstd[c] * (sum_gx[c] / count)
    for n in prange(N, schedule="static", use_threads_if=parallel,
                    num_threads=THREADS):
        if L == 1:
            if floating is float:
                mssl_row_bn_dx_f32(g + n * C, x + n * C, _at(ym, n * C), mean, k, c1, rc2,
                                   dx + n * C, C)
            else:
                mssl_row_bn_dx_f64(g + n * C, x + n * C, _at(ym, n * C), mean, k, c1, rc2,
                                   dx + n * C, C)
        else:
            for c in range(C):
                _bn_dx(g + (n * C + c) * L, x + (n * C + c) * L, _at(ym, (n * C + c) * L),
                       mean[c], k[c], c1[c], rc2[c], dx + (n * C + c) * L, L)
    free(sum_g)
    return 0


def batch_norm_backward(grad_y, x, mean, rstd, weight, dx, dw, db, relu_output=None):
    """dx (N, C, L), dw (C,) (None when weight is None), db (C,); mean, rstd float64 (C,).
    ``relu_output`` (N, C, L): the forward's output with a fused ReLU, whose mask
    (relu_output > 0) applies to grad_y first."""
    cdef int t = float_type(NAME, x), err
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2]
    cdef void* pg = array_data(NAME, grad_y, t, 3, N, C, L, False)
    cdef void* px = array_data(NAME, x, t, 3, N, C, L, False)
    cdef const double* pm = <const double*>array_data(NAME, mean,
                                                      cnp.NPY_FLOAT64, 1, C, 0, 0, False)
    cdef const double* pr = <const double*>array_data(NAME, rstd,
                                                      cnp.NPY_FLOAT64, 1, C, 0, 0, False)
    cdef void* pw = _optional(weight, t, C, False)
    cdef void* pdx = array_data(NAME, dx, t, 3, N, C, L, True)
    cdef void* pdw = _optional(dw, t, C, True)
    cdef void* pdb = array_data(NAME, db, t, 1, C, 0, 0, True)
    cdef void* pym = NULL
    if relu_output is not None:
        pym = array_data(NAME, relu_output, t, 3, N, C, L, False)
    if (pw == NULL) != (pdw == NULL):
        raise ValueError("minissl.kernels.norm._cpu: dw must be given exactly when weight is")
    with nogil:
        if t == cnp.NPY_FLOAT32:
            err = _batch_norm_backward(<const float*>pg, <const float*>px, <const float*>pym,
                                       pm, pr, <const float*>pw, <float*>pdx, <float*>pdw,
                                       <float*>pdb, N, C, L)
        else:
            err = _batch_norm_backward(<const double*>pg, <const double*>px, <const double*>pym,
                                       pm, pr, <const double*>pw, <double*>pdx, <double*>pdw,
                                       <double*>pdb, N, C, L)
    if err:
        raise MemoryError()
