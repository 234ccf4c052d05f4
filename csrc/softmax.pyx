"""Cython kernels: softmax, log-softmax and fused softmax-cross-entropy over rows of (M, C).

The math, the reference and the validation live in minissl/kernels/softmax.py; these loops
expect C-contiguous arrays of one float dtype whose shapes the wrapper has checked, with
M * C > 0.

Layout of the work:
- Rows run in parallel (OpenMP ``prange``, static schedule). Each row is reduced by one
  thread, always in the same order, so results do not depend on the thread count.
- The passes over one row (max, sum of exponentials, dot products) are small C functions in
  the block below. They are C rather than Cython for two reasons: GCC's ``target_clones``
  compiles each of them for AVX-512, AVX2 and baseline x86-64 and picks the best at load time
  (a portable binary that still uses the wide vectors), and ``#pragma omp simd reduction``
  lets the compiler vectorise a floating-point sum, which it otherwise may not reorder.
- ``exp`` is evaluated by a branch-free polynomial (below) that vectorises; libm's exp is a
  scalar call, and was the bottleneck: 3 ns per element against 0.3 ns.
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

cnp.import_array()

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>

    /* Compile the row passes once per instruction set; the loader picks one at import time
       (GCC's function multi-versioning, needs ifunc: GCC on x86-64 Linux). Elsewhere they are
       compiled for the default target, which is just as correct. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define MSSL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define MSSL_CLONES
    #endif

    static inline float mssl_f32_from_bits(int32_t b) { float f; memcpy(&f, &b, 4); return f; }
    static inline double mssl_f64_from_bits(int64_t b) { double f; memcpy(&f, &b, 8); return f; }

    /* exp(x), branch-free so that loops calling it vectorise.
       x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2; exp(x) = 2^n exp(r).
       - round(): adding 1.5 * 2^23 (2^52 for double) leaves the integer n in the low bits of
         the sum (the "shifter" trick), so n is read off the bit pattern without a conversion.
       - r = x - n ln2 in two steps (Cody & Waite): ln2_hi has trailing zero bits, so n * ln2_hi
         is exact and r keeps full precision.
       - exp(r) by its Taylor polynomial: degree 7 for float (truncation r^8/8! < 5e-9, below
         half an ulp), degree 13 for double (r^14/14! < 5e-18).
       - 2^n is built from its exponent bits, as two factors 2^(n/2) 2^(n-n/2) so that results
         down to the subnormal range and up to overflow come out right.
       x is first clamped to where exp is finite and nonzero, -inf gives 0, +inf gives inf, NaN
       propagates. The two clamps are selected by the sign (instead of applied in sequence)
       because GCC if-converts, and so vectorises, this form.
       Measured against libm over the whole range: at most 2 ulp, float and double. */
    static inline float mssl_expf(float x) {
        float lo = x < -104.0f ? -104.0f : x;
        float hi = x > 88.8f ? 88.8f : x;
        x = x < 0.0f ? lo : hi;
        const float shifter = 12582912.0f;                        /* 1.5 * 2^23 */
        float t = x * 1.44269504088896341f + shifter;           /* x / ln2 + shifter */
        float n = t - shifter;
        int32_t ni;
        memcpy(&ni, &t, 4);
        ni -= 0x4B400000;                                         /* bits of the shifter */
        float r = (x - n * 6.9314575195e-01f) - n * 1.4286067653e-06f;
        float p = 1.0f / 5040;
        p = p * r + 1.0f / 720;
        p = p * r + 1.0f / 120;
        p = p * r + 1.0f / 24;
        p = p * r + 1.0f / 6;
        p = p * r + 0.5f;
        p = p * r + 1.0f;
        p = p * r + 1.0f;
        int32_t n1 = ni >> 1, n2 = ni - n1;
        return p * mssl_f32_from_bits((n1 + 127) << 23) * mssl_f32_from_bits((n2 + 127) << 23);
    }

    static inline double mssl_exp(double x) {
        double lo = x < -746.0 ? -746.0 : x;
        double hi = x > 710.0 ? 710.0 : x;
        x = x < 0.0 ? lo : hi;
        const double shifter = 6755399441055744.0;                /* 1.5 * 2^52 */
        double t = x * 1.4426950408889634074 + shifter;
        double n = t - shifter;
        int64_t ni;
        memcpy(&ni, &t, 8);
        ni -= 0x4338000000000000LL;
        double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
        double p = 1.0 / 6227020800.0;                            /* 1 / 13! */
        p = p * r + 1.0 / 479001600.0;
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
        p = p * r + 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
        int64_t n1 = ni >> 1, n2 = ni - n1;
        return p * mssl_f64_from_bits((n1 + 1023) << 52) * mssl_f64_from_bits((n2 + 1023) << 52);
    }

    /* max_j x_j (-inf for n = 0) */
    MSSL_CLONES static float mssl_max_f32(const float* x, Py_ssize_t n) {
        float m = -INFINITY;
        #pragma omp simd reduction(max:m)
        for (Py_ssize_t j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
        return m;
    }
    MSSL_CLONES static double mssl_max_f64(const double* x, Py_ssize_t n) {
        double m = -INFINITY;
        #pragma omp simd reduction(max:m)
        for (Py_ssize_t j = 0; j < n; j++) m = x[j] > m ? x[j] : m;
        return m;
    }

    /* sum_j exp(x_j - a), accumulated in double */
    MSSL_CLONES static double mssl_sum_exp_f32(const float* x, float a, Py_ssize_t n) {
        double s = 0;
        #pragma omp simd reduction(+:s)
        for (Py_ssize_t j = 0; j < n; j++) s += mssl_expf(x[j] - a);
        return s;
    }
    MSSL_CLONES static double mssl_sum_exp_f64(const double* x, double a, Py_ssize_t n) {
        double s = 0;
        #pragma omp simd reduction(+:s)
        for (Py_ssize_t j = 0; j < n; j++) s += mssl_exp(x[j] - a);
        return s;
    }

    /* y_j = exp((x_j - a) - b) */
    MSSL_CLONES static void mssl_exp_f32(const float* x, float a, float b, float* y, Py_ssize_t n) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) y[j] = mssl_expf((x[j] - a) - b);
    }
    MSSL_CLONES static void mssl_exp_f64(const double* x, double a, double b, double* y,
                                         Py_ssize_t n) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) y[j] = mssl_exp((x[j] - a) - b);
    }

    /* y_j = c exp(x_j - lse), the exponent formed in double: lse is a double, and x_j - lse
       is small for the entries that matter, so rounding it to float first loses nothing even
       for float32 logits near 1e4 (exp(x_j - lse) with lse rounded to float32 would be off
       by ~1e-3 there). */
    MSSL_CLONES static void mssl_scaled_softmax_f32(const float* x, double lse, float c,
                                                    float* y, Py_ssize_t n) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) y[j] = c * mssl_expf((float)(x[j] - lse));
    }
    MSSL_CLONES static void mssl_scaled_softmax_f64(const double* x, double lse, double c,
                                                    double* y, Py_ssize_t n) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) y[j] = c * mssl_exp(x[j] - lse);
    }

    /* sum_j x_j and sum_j x_j y_j, accumulated in double */
    MSSL_CLONES static double mssl_sum_f32(const float* x, Py_ssize_t n) {
        double s = 0;
        #pragma omp simd reduction(+:s)
        for (Py_ssize_t j = 0; j < n; j++) s += x[j];
        return s;
    }
    MSSL_CLONES static double mssl_sum_f64(const double* x, Py_ssize_t n) {
        double s = 0;
        #pragma omp simd reduction(+:s)
        for (Py_ssize_t j = 0; j < n; j++) s += x[j];
        return s;
    }
    MSSL_CLONES static double mssl_dot_f32(const float* x, const float* y, Py_ssize_t n) {
        double s = 0;
        #pragma omp simd reduction(+:s)
        for (Py_ssize_t j = 0; j < n; j++) s += (double)x[j] * y[j];
        return s;
    }
    MSSL_CLONES static double mssl_dot_f64(const double* x, const double* y, Py_ssize_t n) {
        double s = 0;
        #pragma omp simd reduction(+:s)
        for (Py_ssize_t j = 0; j < n; j++) s += x[j] * y[j];
        return s;
    }
    """
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

cdef inline void _softmax_row(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    cdef floating m = _max(x, n)
    _exp(x, m, 0, y, n)                                   # y = exp(x - m), every entry <= 1
    cdef floating inv = <floating>(1.0 / _sum(y, n))
    cdef Py_ssize_t j
    for j in range(n):
        y[j] = y[j] * inv


cdef inline void _log_softmax_row(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    # (x_j - m) first: exact near the maximum; then subtract the small log of the sum.
    cdef floating m = _max(x, n)
    cdef floating log_s = <floating>log(_sum_exp(x, m, n))
    cdef Py_ssize_t j
    for j in range(n):
        y[j] = (x[j] - m) - log_s


cdef inline void _softmax_backward_row(const floating* g, const floating* y, floating* dx,
                                       Py_ssize_t n) noexcept nogil:
    cdef floating d = <floating>_dot(g, y, n)
    cdef Py_ssize_t j
    for j in range(n):
        dx[j] = y[j] * (g[j] - d)


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


# ---- argument checks ------------------------------------------------------------------------
# The entry points take ndarrays and read their data pointers through NumPy's C API: a typed
# memoryview costs about a microsecond per argument to acquire, most of the time of a small
# call. The Python wrappers have validated and converted every argument already; these checks
# (nanoseconds) only make sure that a wrong direct call raises instead of reading out of bounds.

cdef int _float_type(object a) except -1:
    """NPY_FLOAT32 or NPY_FLOAT64, the type of the float ndarray ``a``."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"minissl._ext.softmax: expected an ndarray, got {type(a).__name__}")
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"minissl._ext.softmax: expected float32 or float64, got {a.dtype}")
    return t


cdef void* _data(object a, int typenum, int ndim, Py_ssize_t d0, Py_ssize_t d1,
                 bint writable) except NULL:
    """Data pointer of ``a``: a C-contiguous ndarray of type ``typenum`` and shape (d0,) or
    (d0, d1), writeable if asked."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"minissl._ext.softmax: expected an ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(arr)
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != ndim
            or dims[0] != d0 or (ndim > 1 and dims[1] != d1)
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or (writable and not cnp.PyArray_ISWRITEABLE(arr))):
        raise ValueError(f"minissl._ext.softmax: got a {a.dtype} array of shape {a.shape}, "
                         "not the C-contiguous array the kernel needs (call the functions of "
                         "minissl.kernels.softmax, which check and convert their arguments)")
    return cnp.PyArray_DATA(arr)


# ---- rows in parallel -----------------------------------------------------------------------

cdef void _softmax_rows(const floating* x, floating* y, Py_ssize_t M, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(M, schedule="static", use_threads_if=M * C >= PARALLEL_MIN):
        _softmax_row(x + i * C, y + i * C, C)


cdef void _log_softmax_rows(const floating* x, floating* y, Py_ssize_t M,
                            Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(M, schedule="static", use_threads_if=M * C >= PARALLEL_MIN):
        _log_softmax_row(x + i * C, y + i * C, C)


cdef void _softmax_backward_rows(const floating* g, const floating* y, floating* dx,
                                 Py_ssize_t M, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(M, schedule="static", use_threads_if=M * C >= PARALLEL_MIN):
        _softmax_backward_row(g + i * C, y + i * C, dx + i * C, C)


cdef void _log_softmax_backward_rows(const floating* g, const floating* y_log, floating* dx,
                                     Py_ssize_t M, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(M, schedule="static", use_threads_if=M * C >= PARALLEL_MIN):
        _log_softmax_backward_row(g + i * C, y_log + i * C, dx + i * C, C)


cdef void _cross_entropy_rows(const floating* x, const int64_t* t, int64_t ignore_index,
                              floating* loss, double* lse, Py_ssize_t N,
                              Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(N, schedule="static", use_threads_if=N * C >= PARALLEL_MIN):
        lse[i] = _cross_entropy_row(x + i * C, t[i], ignore_index, loss + i, C)


cdef void _cross_entropy_backward_rows(const floating* g, const floating* x, const int64_t* t,
                                       const double* lse, int64_t ignore_index, floating* dx,
                                       Py_ssize_t N, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t i
    for i in prange(N, schedule="static", use_threads_if=N * C >= PARALLEL_MIN):
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
            raise ValueError(f"minissl._ext.softmax: target {t[i]} out of range [0, {C})")
    return 0


# ---- entry points (called by minissl/kernels/softmax.py) ------------------------------------
# Arrays are C-contiguous, of one float dtype (lse float64, target int64), with M * C > 0.

def softmax_forward(x, y):
    """y = softmax(x) over the rows of x (M, C)."""
    cdef int t = _float_type(x)
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1]
    cdef void* px = _data(x, t, 2, M, C, False)
    cdef void* py = _data(y, t, 2, M, C, True)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _softmax_rows(<const float*>px, <float*>py, M, C)
        else:
            _softmax_rows(<const double*>px, <double*>py, M, C)


def log_softmax_forward(x, y):
    """y = log_softmax(x) over the rows of x (M, C)."""
    cdef int t = _float_type(x)
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1]
    cdef void* px = _data(x, t, 2, M, C, False)
    cdef void* py = _data(y, t, 2, M, C, True)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _log_softmax_rows(<const float*>px, <float*>py, M, C)
        else:
            _log_softmax_rows(<const double*>px, <double*>py, M, C)


def softmax_backward(grad_y, y, dx):
    """dx = y * (g - sum(g * y)) row by row."""
    cdef int t = _float_type(y)
    cdef Py_ssize_t M = y.shape[0], C = y.shape[1]
    cdef void* pg = _data(grad_y, t, 2, M, C, False)
    cdef void* py = _data(y, t, 2, M, C, False)
    cdef void* pd = _data(dx, t, 2, M, C, True)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _softmax_backward_rows(<const float*>pg, <const float*>py, <float*>pd, M, C)
        else:
            _softmax_backward_rows(<const double*>pg, <const double*>py, <double*>pd, M, C)


def log_softmax_backward(grad_y, y_log, dx):
    """dx = g - exp(y_log) * sum(g) row by row."""
    cdef int t = _float_type(y_log)
    cdef Py_ssize_t M = y_log.shape[0], C = y_log.shape[1]
    cdef void* pg = _data(grad_y, t, 2, M, C, False)
    cdef void* py = _data(y_log, t, 2, M, C, False)
    cdef void* pd = _data(dx, t, 2, M, C, True)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _log_softmax_backward_rows(<const float*>pg, <const float*>py, <float*>pd, M, C)
        else:
            _log_softmax_backward_rows(<const double*>pg, <const double*>py, <double*>pd, M, C)


def cross_entropy_forward(logits, target, int64_t ignore_index, loss, lse):
    """loss_i = lse_i - logits[i, t_i] (0 where t_i == ignore_index); lse_i in double."""
    cdef int t = _float_type(logits)
    cdef Py_ssize_t N = logits.shape[0], C = logits.shape[1]
    cdef void* px = _data(logits, t, 2, N, C, False)
    cdef const int64_t* pt = <const int64_t*>_data(target, cnp.NPY_INT64, 1, N, 0, False)
    cdef void* pl = _data(loss, t, 1, N, 0, True)
    cdef double* pe = <double*>_data(lse, cnp.NPY_FLOAT64, 1, N, 0, True)
    _check_targets(pt, N, C, ignore_index)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _cross_entropy_rows(<const float*>px, pt, ignore_index, <float*>pl, pe, N, C)
        else:
            _cross_entropy_rows(<const double*>px, pt, ignore_index, <double*>pl, pe, N, C)


def cross_entropy_backward(grad_loss, logits, target, lse, int64_t ignore_index, grad):
    """grad[i] = grad_loss_i * (softmax(logits[i]) - onehot(t_i)); 0 on ignored rows."""
    cdef int t = _float_type(logits)
    cdef Py_ssize_t N = logits.shape[0], C = logits.shape[1]
    cdef void* pg = _data(grad_loss, t, 1, N, 0, False)
    cdef void* px = _data(logits, t, 2, N, C, False)
    cdef const int64_t* pt = <const int64_t*>_data(target, cnp.NPY_INT64, 1, N, 0, False)
    cdef const double* pe = <const double*>_data(lse, cnp.NPY_FLOAT64, 1, N, 0, False)
    cdef void* pd = _data(grad, t, 2, N, C, True)
    _check_targets(pt, N, C, ignore_index)
    with nogil:
        if t == cnp.NPY_FLOAT32:
            _cross_entropy_backward_rows(<const float*>pg, <const float*>px, pt, pe,
                                         ignore_index, <float*>pd, N, C)
        else:
            _cross_entropy_backward_rows(<const double*>pg, <const double*>px, pt, pe,
                                         ignore_index, <double*>pd, N, C)
