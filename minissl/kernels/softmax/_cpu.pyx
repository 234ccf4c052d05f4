"""Cython kernels: softmax, log-softmax and fused softmax-cross-entropy over rows of (M, C).

The math and the validation live in __init__.py, the reference in reference.py; these loops
expect C-contiguous arrays of one float dtype whose shapes the wrapper has checked, with
M * C > 0.

Layout of the work:
- Rows run in parallel (OpenMP ``prange``, static schedule). Each row is reduced by one
  thread, always in the same order, so results do not depend on the thread count.
- The passes over one row (max, sum of exponentials, dot products) are small C functions in
  softmax.h. They are C rather than Cython for two reasons: GCC's ``target_clones``
  compiles each of them for AVX-512, AVX2 and baseline x86-64 and picks the best at load time
  (a portable binary that still uses the wide vectors), and ``#pragma omp simd reduction``
  lets the compiler vectorise a floating-point sum, which it otherwise may not reorder.
- ``exp`` is evaluated by a branch-free polynomial (minissl_kernels.h) that vectorises;
  libm's exp is a scalar call, and was the bottleneck: 3 ns per element against 0.3 ns.
- Sums of a row are accumulated in double, so the log-sum-exp of a float32 row is as accurate
  as its inputs. The vector lanes each hold a partial sum; the lane count is fixed per
  machine, so results are deterministic on a machine, and agree across machines to rounding.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, log
from libc.stdint cimport int64_t
from libc.string cimport memset
from minissl_checks cimport array_data, float_type

cnp.import_array()

include "minissl_threads.pxi"

# Raw data pointers, not typed memoryviews: a memoryview costs about 1 us per argument to
# acquire, most of a small call (measured; see minissl_checks.pxd). NAME names this module
# in the error messages of those checks.
cdef str NAME = "softmax"

cdef extern from "softmax.h":
    float mssl_max_f32(const float* x, Py_ssize_t n) noexcept nogil
    double mssl_max_f64(const double* x, Py_ssize_t n) noexcept nogil
    double mssl_sum_exp_f32(const float* x, float a, Py_ssize_t n) noexcept nogil
    double mssl_sum_exp_f64(const double* x, double a, Py_ssize_t n) noexcept nogil
    void mssl_exp_f32(const float* x, float a, float b, float* y, Py_ssize_t n) noexcept nogil
    void mssl_exp_f64(const double* x, double a, double b, double* y, Py_ssize_t n) noexcept nogil
    void mssl_scaled_softmax_f32(const float* x, double lse, float c, float* y,
                                 Py_ssize_t n) noexcept nogil
    void mssl_scaled_softmax_f64(const double* x, double lse, double c, double* y,
                                 Py_ssize_t n) noexcept nogil
    void mssl_exp_scaled_f32(const float* x, float m, float c, float* y,
                             Py_ssize_t n) noexcept nogil
    void mssl_exp_scaled_f64(const double* x, double m, double c, double* y,
                             Py_ssize_t n) noexcept nogil
    void mssl_scale_f32(float* y, float c, Py_ssize_t n) noexcept nogil
    void mssl_scale_f64(double* y, double c, Py_ssize_t n) noexcept nogil
    void mssl_softmax_bwd_f32(const float* g, const float* y, float d, float c, float* dx,
                              Py_ssize_t n) noexcept nogil
    void mssl_softmax_bwd_f64(const double* g, const double* y, double d, double c, double* dx,
                              Py_ssize_t n) noexcept nogil
    double mssl_sum_f32(const float* x, Py_ssize_t n) noexcept nogil
    double mssl_sum_f64(const double* x, Py_ssize_t n) noexcept nogil
    double mssl_dot_f32(const float* x, const float* y, Py_ssize_t n) noexcept nogil
    double mssl_dot_f64(const double* x, const double* y, Py_ssize_t n) noexcept nogil


# A parallel region costs a few microseconds to wake the second thread; below this many
# elements one thread finishes first.
cdef Py_ssize_t PARALLEL_MIN = 32768


# ---- the C passes above, dispatched on the fused type ---------------------------------------

cdef inline floating _max(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return mssl_max_f32(x, n)
    else:
        return mssl_max_f64(x, n)


cdef inline double _sum_exp(const floating* x, floating a, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return mssl_sum_exp_f32(x, a, n)
    else:
        return mssl_sum_exp_f64(x, a, n)


cdef inline void _exp(const floating* x, floating a, floating b, floating* y,
                      Py_ssize_t n) noexcept nogil:
    if floating is float:
        mssl_exp_f32(x, a, b, y, n)
    else:
        mssl_exp_f64(x, a, b, y, n)


cdef inline void _exp_scaled(const floating* x, floating m, floating c, floating* y,
                             Py_ssize_t n) noexcept nogil:
    if floating is float:
        mssl_exp_scaled_f32(x, m, c, y, n)
    else:
        mssl_exp_scaled_f64(x, m, c, y, n)


cdef inline void _scale(floating* y, floating c, Py_ssize_t n) noexcept nogil:
    if floating is float:
        mssl_scale_f32(y, c, n)
    else:
        mssl_scale_f64(y, c, n)


cdef inline void _softmax_bwd(const floating* g, const floating* y, floating d, floating c,
                              floating* dx, Py_ssize_t n) noexcept nogil:
    if floating is float:
        mssl_softmax_bwd_f32(g, y, d, c, dx, n)
    else:
        mssl_softmax_bwd_f64(g, y, d, c, dx, n)


cdef inline double _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return mssl_sum_f32(x, n)
    else:
        return mssl_sum_f64(x, n)


cdef inline double _dot(const floating* x, const floating* y, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return mssl_dot_f32(x, y, n)
    else:
        return mssl_dot_f64(x, y, n)


# ---- one row --------------------------------------------------------------------------------

cdef inline Py_ssize_t _kept(Py_ssize_t i, Py_ssize_t n, Py_ssize_t causal) noexcept nogil:
    """Columns row i keeps: all, or j <= i mod L under a causal mask of L rows (the masked
    ones are skipped, not exponentiated: half of a causal attention row)."""
    if causal == 0:
        return n
    return min(n, i % causal + 1)


cdef inline void _softmax_row(const floating* x, floating* y, Py_ssize_t n, Py_ssize_t keep,
                              floating scale) noexcept nogil:
    cdef floating m = _max(x, keep)
    _exp_scaled(x, m, scale, y, keep)             # y = exp(scale (x - m)), every entry <= 1
    _scale(y, <floating>(1.0 / _sum(y, keep)), keep)
    if keep < n:
        memset(y + keep, 0, (n - keep) * sizeof(floating))


cdef inline void _log_softmax_row(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    # (x_j - m) first: exact near the maximum; then subtract the small log of the sum.
    cdef floating m = _max(x, n)
    cdef floating log_s = <floating>log(_sum_exp(x, m, n))
    cdef Py_ssize_t j
    for j in range(n):
        y[j] = (x[j] - m) - log_s


cdef inline void _softmax_backward_row(const floating* g, const floating* y, floating* dx,
                                       Py_ssize_t n, Py_ssize_t keep,
                                       floating scale) noexcept nogil:
    _softmax_bwd(g, y, <floating>_dot(g, y, keep), scale, dx, keep)
    if keep < n:
        memset(dx + keep, 0, (n - keep) * sizeof(floating))


cdef inline void _log_softmax_backward_row(const floating* g, const floating* y_log,
                                           floating* dx, Py_ssize_t n) noexcept nogil:
    cdef floating s = <floating>_sum(g, n)
    _exp(y_log, 0, 0, dx, n)                              # dx = softmax = exp(y_log)
    cdef Py_ssize_t j
    for j in range(n):
        dx[j] = g[j] - dx[j] * s


cdef inline double _cross_entropy_row(const floating* x, int64_t t, int64_t ignore_index,
                                      floating* loss, Py_ssize_t n) noexcept nogil:
    """Stores the loss and returns lse = m + log sum_j exp(x_j - m), in double."""
    cdef floating m = _max(x, n)
    cdef double lse = m + log(_sum_exp(x, m, n))
    loss[0] = 0 if t == ignore_index else <floating>(lse - x[t])
    return lse


cdef inline void _cross_entropy_backward_row(floating g, const floating* x, int64_t t, double lse,
                                             floating* dx, Py_ssize_t n) noexcept nogil:
    if floating is float:
        mssl_scaled_softmax_f32(x, lse, g, dx, n)        # dx = g * softmax
    else:
        mssl_scaled_softmax_f64(x, lse, g, dx, n)
    # g * (p_t - 1) rather than g * p_t - g: exact subtraction when p_t is close to 1.
    cdef floating p_t = <floating>exp(x[t] - lse)
    dx[t] = g * (p_t - 1)


# ---- rows in parallel -----------------------------------------------------------------------

cdef void _softmax_rows(const floating* x, floating* y, Py_ssize_t M, Py_ssize_t C,
                        floating scale, Py_ssize_t causal) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(M, schedule="static", use_threads_if=THREADS > 1 and M * C >= PARALLEL_MIN,
                    num_threads=THREADS):
        _softmax_row(x + i * C, y + i * C, C, _kept(i, C, causal), scale)


cdef void _log_softmax_rows(const floating* x, floating* y, Py_ssize_t M,
                            Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(M, schedule="static", use_threads_if=THREADS > 1 and M * C >= PARALLEL_MIN,
                    num_threads=THREADS):
        _log_softmax_row(x + i * C, y + i * C, C)


cdef void _softmax_backward_rows(const floating* g, const floating* y, floating* dx,
                                 Py_ssize_t M, Py_ssize_t C, floating scale,
                                 Py_ssize_t causal) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(M, schedule="static", use_threads_if=THREADS > 1 and M * C >= PARALLEL_MIN,
                    num_threads=THREADS):
        _softmax_backward_row(g + i * C, y + i * C, dx + i * C, C, _kept(i, C, causal), scale)


cdef void _log_softmax_backward_rows(const floating* g, const floating* y_log, floating* dx,
                                     Py_ssize_t M, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(M, schedule="static", use_threads_if=THREADS > 1 and M * C >= PARALLEL_MIN,
                    num_threads=THREADS):
        _log_softmax_backward_row(g + i * C, y_log + i * C, dx + i * C, C)


cdef void _cross_entropy_rows(const floating* x, const int64_t* t, int64_t ignore_index,
                              floating* loss, double* lse, Py_ssize_t N,
                              Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(N, schedule="static", use_threads_if=THREADS > 1 and N * C >= PARALLEL_MIN,
                    num_threads=THREADS):
        lse[i] = _cross_entropy_row(x + i * C, t[i], ignore_index, loss + i, C)


cdef void _cross_entropy_backward_rows(const floating* g, const floating* x, const int64_t* t,
                                       const double* lse, int64_t ignore_index, floating* dx,
                                       Py_ssize_t N, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(N, schedule="static", use_threads_if=THREADS > 1 and N * C >= PARALLEL_MIN,
                    num_threads=THREADS):
        if t[i] == ignore_index:
            memset(dx + i * C, 0, C * sizeof(floating))
        else:
            _cross_entropy_backward_row(g[i], x + i * C, t[i], lse[i], dx + i * C, C)


cdef int _check_targets(const int64_t* t, Py_ssize_t N, Py_ssize_t C,
                        int64_t ignore_index) except -1:
    """Every target in [0, C) or equal to ignore_index. The wrapper has checked, with a better
    message; this keeps a direct call from reading outside the logits."""
    cdef Py_ssize_t i
    for i in range(N):
        if (t[i] < 0 or t[i] >= C) and t[i] != ignore_index:
            raise ValueError(f"minissl.kernels.softmax._cpu: target {t[i]} out of range [0, {C})")
    return 0


# ---- entry points (called by __init__.py) -------------------------------------------------------
# Arrays are C-contiguous, of one float dtype (lse float64, target int64), with M * C > 0.

def _check_options(double scale, Py_ssize_t causal):
    if not (scale > 0 and scale < float("inf")) or causal < 0:
        raise ValueError(f"{__name__}: scale must be finite and > 0 and causal >= 0, got "
                         f"{scale} and {causal}")


def softmax_forward(x, y, double scale=1.0, Py_ssize_t causal=0):
    """y = softmax(scale x) over the rows of x (M, C), row i over columns j <= i mod causal
    only (0 beyond) when causal > 0."""
    cdef int t = float_type(NAME, x)
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1]
    cdef void* px = array_data(NAME, x, t, 2, M, C, 0, False)
    cdef void* py = array_data(NAME, y, t, 2, M, C, 0, True)
    _check_options(scale, causal)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _softmax_rows(<const float*>px, <float*>py, M, C, <float>scale, causal)
        else:
            _softmax_rows(<const double*>px, <double*>py, M, C, scale, causal)


def log_softmax_forward(x, y):
    """y = log_softmax(x) over the rows of x (M, C)."""
    cdef int t = float_type(NAME, x)
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1]
    cdef void* px = array_data(NAME, x, t, 2, M, C, 0, False)
    cdef void* py = array_data(NAME, y, t, 2, M, C, 0, True)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _log_softmax_rows(<const float*>px, <float*>py, M, C)
        else:
            _log_softmax_rows(<const double*>px, <double*>py, M, C)


def softmax_backward(grad_y, y, dx, double scale=1.0, Py_ssize_t causal=0):
    """dx = scale y (g - sum(g y)) row by row (0 at the masked entries when causal > 0)."""
    cdef int t = float_type(NAME, y)
    cdef Py_ssize_t M = y.shape[0], C = y.shape[1]
    cdef void* pg = array_data(NAME, grad_y, t, 2, M, C, 0, False)
    cdef void* py = array_data(NAME, y, t, 2, M, C, 0, False)
    cdef void* pd = array_data(NAME, dx, t, 2, M, C, 0, True)
    _check_options(scale, causal)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _softmax_backward_rows(<const float*>pg, <const float*>py, <float*>pd, M, C,
                                   <float>scale, causal)
        else:
            _softmax_backward_rows(<const double*>pg, <const double*>py, <double*>pd, M, C,
                                   scale, causal)


def log_softmax_backward(grad_y, y_log, dx):
    """dx = g - exp(y_log) * sum(g) row by row."""
    cdef int t = float_type(NAME, y_log)
    cdef Py_ssize_t M = y_log.shape[0], C = y_log.shape[1]
    cdef void* pg = array_data(NAME, grad_y, t, 2, M, C, 0, False)
    cdef void* py = array_data(NAME, y_log, t, 2, M, C, 0, False)
    cdef void* pd = array_data(NAME, dx, t, 2, M, C, 0, True)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _log_softmax_backward_rows(<const float*>pg, <const float*>py, <float*>pd, M, C)
        else:
            _log_softmax_backward_rows(<const double*>pg, <const double*>py, <double*>pd, M, C)


def cross_entropy_forward(logits, target, int64_t ignore_index, loss, lse):
    """loss_i = lse_i - logits[i, t_i] (0 where t_i == ignore_index); lse_i in double."""
    cdef int t = float_type(NAME, logits)
    cdef Py_ssize_t N = logits.shape[0], C = logits.shape[1]
    cdef void* px = array_data(NAME, logits, t, 2, N, C, 0, False)
    cdef const int64_t* pt = <const int64_t*>array_data(NAME, target,
                                                        cnp.NPY_INT64, 1, N, 0, 0, False)
    cdef void* pl = array_data(NAME, loss, t, 1, N, 0, 0, True)
    cdef double* pe = <double*>array_data(NAME, lse, cnp.NPY_FLOAT64, 1, N, 0, 0, True)
    _check_targets(pt, N, C, ignore_index)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _cross_entropy_rows(<const float*>px, pt, ignore_index, <float*>pl, pe, N, C)
        else:
            _cross_entropy_rows(<const double*>px, pt, ignore_index, <double*>pl, pe, N, C)


def cross_entropy_backward(grad_loss, logits, target, lse, int64_t ignore_index, grad):
    """grad[i] = grad_loss_i * (softmax(logits[i]) - onehot(t_i)); 0 on ignored rows."""
    cdef int t = float_type(NAME, logits)
    cdef Py_ssize_t N = logits.shape[0], C = logits.shape[1]
    cdef void* pg = array_data(NAME, grad_loss, t, 1, N, 0, 0, False)
    cdef void* px = array_data(NAME, logits, t, 2, N, C, 0, False)
    cdef const int64_t* pt = <const int64_t*>array_data(NAME, target,
                                                        cnp.NPY_INT64, 1, N, 0, 0, False)
    cdef const double* pe = <const double*>array_data(NAME, lse,
                                                      cnp.NPY_FLOAT64, 1, N, 0, 0, False)
    cdef void* pd = array_data(NAME, grad, t, 2, N, C, 0, True)
    _check_targets(pt, N, C, ignore_index)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _cross_entropy_backward_rows(<const float*>pg, <const float*>px, pt, pe,
                                         ignore_index, <float*>pd, N, C)
        else:
            _cross_entropy_backward_rows(<const double*>pg, <const double*>px, pt, pe,
                                         ignore_index, <double*>pd, N, C)
