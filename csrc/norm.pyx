"""Cython kernels: layer norm over rows of (M, D), training-mode batch norm over (N, C, L).

The math, the reference and the validation live in minissl/kernels/norm.py; these loops expect
C-contiguous arrays of one float dtype (weight and bias may be None; mean and rstd passed to
the backward are float64) whose shapes the wrapper has checked, with every dimension > 0.

- Statistics are accumulated in double. The variance is the two-pass sum of squared
  deviations from the double-precision mean (no E[x^2] - E[x]^2 cancellation), and the
  normalisation itself is computed in double and rounded once.
- The reductions are small C functions (block below) so that GCC can vectorise them:
  ``#pragma omp simd reduction`` allows it to split a floating-point sum over vector lanes,
  which it may not do on its own, and ``target_clones`` builds them for AVX-512, AVX2 and
  baseline x86-64 and picks one at load time. The lane count is fixed on a machine, so the
  results are deterministic there.
- Layer norm runs rows in parallel. Its weight and bias gradients are sums over rows: each
  block of ``ROWS_PER_BLOCK`` rows (a fixed number, so the summation order never depends on
  the thread count) accumulates its own partial sums, which are added in block order.
- Batch norm runs channels in parallel; each channel is reduced by one thread, in order.
  (N, C, 1) input, BatchNorm1d's case, is reduced row by row instead so that the loads stay
  contiguous: lanes then hold channels, each summed sequentially over n.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport calloc, free
from minissl_checks cimport array_data, float_type

cnp.import_array()

# Names this module in the error messages of the argument checks (csrc/minissl_checks.pxd).
cdef str NAME = "norm"

cdef extern from "minissl_kernels.h":     # MSSL_CLONES, MSSL_SIMD, MSSL_INLINE
    """
    /* Sums over a row use MSSL_LANES interleaved partial sums (element j goes to lane
       j % MSSL_LANES) added pairwise at the end. The compiler turns the lanes into vector
       registers, two or more independent chains, so the adds do not wait on each other; and
       the lanes are fixed by the code, not by the instruction set or the thread count. (An
       ``omp simd reduction`` was 20% slower on rows of 128: its final sum over the lanes is
       sequential.) */
    #define MSSL_LANES 16
    MSSL_INLINE double mssl_lanes_total(const double* a) {
        double h[8];
        for (int k = 0; k < 8; k++) h[k] = a[k] + a[k + 8];
        return ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]));
    }

    /* The kernels, written once for an element type T and instantiated for float (suffix f32)
       and double (f64) at the end. All arithmetic is in double; T is only loaded and stored.
       Pointers marked restrict never overlap (the wrapper allocates every output). */
    #define MSSL_NORM_KERNELS(T, S)                                                               \
                                                                                                  \
    /* sum_j x_j  (inlined into the kernels below; mssl_sum_S is the callable version) */         \
    MSSL_INLINE double mssl_sum_inl_##S(const T* restrict x, Py_ssize_t n) {                      \
        double acc[MSSL_LANES] = {0};                                                             \
        Py_ssize_t j = 0;                                                                         \
        for (; j + MSSL_LANES <= n; j += MSSL_LANES)                                              \
            MSSL_SIMD                                                                             \
            for (int k = 0; k < MSSL_LANES; k++) acc[k] += x[j + k];                              \
        for (int k = 0; j < n; j++, k++) acc[k] += x[j];                                          \
        return mssl_lanes_total(acc);                                                             \
    }                                                                                             \
    MSSL_CLONES static double mssl_sum_##S(const T* restrict x, Py_ssize_t n) {                   \
        return mssl_sum_inl_##S(x, n);                                                            \
    }                                                                                             \
                                                                                                  \
    /* sum_j (x_j - c)^2 */                                                                       \
    MSSL_INLINE double mssl_sum_sq_dev_inl_##S(const T* restrict x, double c,                     \
                                                 Py_ssize_t n) {                                  \
        double acc[MSSL_LANES] = {0};                                                             \
        Py_ssize_t j = 0;                                                                         \
        for (; j + MSSL_LANES <= n; j += MSSL_LANES)                                              \
            MSSL_SIMD                                                                             \
            for (int k = 0; k < MSSL_LANES; k++) { double d = x[j + k] - c; acc[k] += d * d; }    \
        for (int k = 0; j < n; j++, k++) { double d = x[j] - c; acc[k] += d * d; }                \
        return mssl_lanes_total(acc);                                                             \
    }                                                                                             \
    MSSL_CLONES static double mssl_sum_sq_dev_##S(const T* restrict x, double c, Py_ssize_t n) {  \
        return mssl_sum_sq_dev_inl_##S(x, c, n);                                                  \
    }                                                                                             \
                                                                                                  \
    /* *sum_g = sum_j g_j w_j,  *sum_gx = sum_j g_j w_j (x_j - mean) rstd  (w NULL: w_j = 1) */   \
    MSSL_INLINE void mssl_grad_sums_inl_##S(const T* restrict g, const T* restrict x,             \
                                              const T* restrict w, double mean, double rstd,      \
                                              Py_ssize_t n, double* sum_g, double* sum_gx) {      \
        double a[MSSL_LANES] = {0}, b[MSSL_LANES] = {0};                                          \
        Py_ssize_t j = 0;                                                                         \
        if (w) {                        /* two loops: a select inside would not vectorise */      \
            for (; j + MSSL_LANES <= n; j += MSSL_LANES)                                          \
                MSSL_SIMD                                                                         \
                for (int k = 0; k < MSSL_LANES; k++) {                                            \
                    double gh = (double)g[j + k] * w[j + k];                                      \
                    a[k] += gh;                                                                   \
                    b[k] += gh * ((x[j + k] - mean) * rstd);                                      \
                }                                                                                 \
            for (int k = 0; j < n; j++, k++) {                                                    \
                double gh = (double)g[j] * w[j];                                                  \
                a[k] += gh;                                                                       \
                b[k] += gh * ((x[j] - mean) * rstd);                                              \
            }                                                                                     \
        } else {                                                                                  \
            for (; j + MSSL_LANES <= n; j += MSSL_LANES)                                          \
                MSSL_SIMD                                                                         \
                for (int k = 0; k < MSSL_LANES; k++) {                                            \
                    a[k] += g[j + k];                                                             \
                    b[k] += g[j + k] * ((x[j + k] - mean) * rstd);                                \
                }                                                                                 \
            for (int k = 0; j < n; j++, k++) {                                                    \
                a[k] += g[j];                                                                     \
                b[k] += g[j] * ((x[j] - mean) * rstd);                                            \
            }                                                                                     \
        }                                                                                         \
        *sum_g = mssl_lanes_total(a);                                                             \
        *sum_gx = mssl_lanes_total(b);                                                            \
    }                                                                                             \
    /* The batch-norm sums; with ym (the output of a fused ReLU) g_j counts only where            \
       ym_j > 0, the ReLU's gradient mask. */                                                     \
    MSSL_CLONES static void mssl_grad_sums_##S(const T* restrict g, const T* restrict x,          \
                                               const T* restrict ym, double mean, double rstd,    \
                                               Py_ssize_t n, double* sum_g, double* sum_gx) {     \
        if (!ym) {                                                                                \
            mssl_grad_sums_inl_##S(g, x, NULL, mean, rstd, n, sum_g, sum_gx);                     \
            return;                                                                               \
        }                                                                                         \
        double a[MSSL_LANES] = {0}, b[MSSL_LANES] = {0};                                          \
        Py_ssize_t j = 0;                                                                         \
        for (; j + MSSL_LANES <= n; j += MSSL_LANES)                                              \
            MSSL_SIMD                                                                             \
            for (int k = 0; k < MSSL_LANES; k++) {                                                \
                double gm = (double)g[j + k] * (ym[j + k] > 0);                                   \
                a[k] += gm;                                                                       \
                b[k] += gm * ((x[j + k] - mean) * rstd);                                          \
            }                                                                                     \
        for (int k = 0; j < n; j++, k++) {                                                        \
            double gm = (double)g[j] * (ym[j] > 0);                                               \
            a[k] += gm;                                                                           \
            b[k] += gm * ((x[j] - mean) * rstd);                                                  \
        }                                                                                         \
        *sum_g = mssl_lanes_total(a);                                                             \
        *sum_gx = mssl_lanes_total(b);                                                            \
    }                                                                                             \
                                                                                                  \
    /* y_j = (x_j - mean) * scale + shift, then max(y_j, 0) if relu (NaN stays NaN) */            \
    MSSL_CLONES static void mssl_affine_##S(const T* restrict x, double mean, double scale,       \
                                            double shift, T* restrict y, Py_ssize_t n,            \
                                            int relu) {                                           \
        if (relu) {                                                                               \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) {                                                  \
                T v = (T)((x[j] - mean) * scale + shift);                                         \
                y[j] = v < 0 ? (T)0 : v;                                                          \
            }                                                                                     \
        } else {                                                                                  \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean) * scale + shift);         \
        }                                                                                         \
    }                                                                                             \
                                                                                                  \
    /* Layer norm of one row: mean, rstd = 1 / sqrt(var + eps) (two passes), then                 \
       y_j = (x_j - mean) rstd w_j + b_j; w, b may be NULL */                                     \
    MSSL_CLONES static void mssl_ln_forward_row_##S(const T* restrict x, const T* restrict w,     \
                                                    const T* restrict b, double eps,              \
                                                    T* restrict y, Py_ssize_t n,                  \
                                                    double* mean_out, double* rstd_out) {         \
        const double mean = mssl_sum_inl_##S(x, n) / n;                                           \
        const double rstd = 1.0 / sqrt(mssl_sum_sq_dev_inl_##S(x, mean, n) / n + eps);            \
        *mean_out = mean;                                                                         \
        *rstd_out = rstd;                                                                         \
        if (w && b) {                                                                             \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean) * rstd * w[j] + b[j]);    \
        } else if (w) {                                                                           \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean) * rstd * w[j]);           \
        } else if (b) {                                                                           \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean) * rstd + b[j]);           \
        } else {                                                                                  \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean) * rstd);                  \
        }                                                                                         \
    }                                                                                             \
                                                                                                  \
    /* Layer-norm backward of one row, with xhat_j = (x_j - mean) rstd, gh_j = g_j w_j:           \
       dx_j = rstd (gh_j - mean(gh) - xhat_j mean(gh xhat));                                      \
       dw_acc_j += g_j xhat_j and db_acc_j += g_j (partial sums over rows). w may be NULL. */     \
    MSSL_CLONES static void mssl_ln_backward_row_##S(const T* restrict g, const T* restrict x,    \
                                                     const T* restrict w, double mean,            \
                                                     double rstd, T* restrict dx,                 \
                                                     double* restrict dw_acc,                     \
                                                     double* restrict db_acc, Py_ssize_t n) {     \
        double sum_gh, sum_ghx;                                                                   \
        mssl_grad_sums_inl_##S(g, x, w, mean, rstd, n, &sum_gh, &sum_ghx);                        \
        const double c1 = sum_gh / n, c2 = sum_ghx / n;                                           \
        if (w) {                                                                                  \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) {                                                  \
                double xhat = (x[j] - mean) * rstd;                                               \
                dx[j] = (T)(rstd * ((double)g[j] * w[j] - c1 - xhat * c2));                       \
                dw_acc[j] += g[j] * xhat;                                                         \
                db_acc[j] += g[j];                                                                \
            }                                                                                     \
        } else {                                                                                  \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) {                                                  \
                double xhat = (x[j] - mean) * rstd;                                               \
                dx[j] = (T)(rstd * (g[j] - c1 - xhat * c2));                                      \
                db_acc[j] += g[j];                                                                \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
                                                                                                  \
    /* Batch-norm input gradient: dx_j = k (g_j - c1 - (x_j - mean) rc2), with g_j masked by      \
       ym_j > 0 when ym (a fused ReLU's output) is given */                                       \
    MSSL_CLONES static void mssl_bn_dx_##S(const T* restrict g, const T* restrict x,              \
                                           const T* restrict ym, double mean, double k,           \
                                           double c1, double rc2, T* restrict dx, Py_ssize_t n) { \
        if (ym) {                                                                                 \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) {                                                  \
                double gm = (double)g[j] * (ym[j] > 0);                                           \
                dx[j] = (T)(k * (gm - c1 - (x[j] - mean) * rc2));                                 \
            }                                                                                     \
        } else {                                                                                  \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++)                                                    \
                dx[j] = (T)(k * (g[j] - c1 - (x[j] - mean) * rc2));                               \
        }                                                                                         \
    }                                                                                             \
                                                                                                  \
    /* The same passes for one row of an (N, C) matrix whose columns are the channels             \
       (batch norm with L = 1); the per-channel values are arrays indexed like the row. Each      \
       channel is a vector lane, summed over the rows in order. */                                \
    MSSL_CLONES static void mssl_col_add_##S(const T* restrict x, double* restrict acc,           \
                                             Py_ssize_t n) {                                      \
        MSSL_SIMD                                                                                 \
        for (Py_ssize_t j = 0; j < n; j++) acc[j] += x[j];                                        \
    }                                                                                             \
    MSSL_CLONES static void mssl_col_add_sq_dev_##S(const T* restrict x,                          \
                                                    const double* restrict mean,                  \
                                                    double* restrict acc, Py_ssize_t n) {         \
        MSSL_SIMD                                                                                 \
        for (Py_ssize_t j = 0; j < n; j++) { double d = x[j] - mean[j]; acc[j] += d * d; }        \
    }                                                                                             \
    MSSL_CLONES static void mssl_col_grad_add_##S(const T* restrict g, const T* restrict x,       \
                                                  const T* restrict ym,                           \
                                                  const double* restrict mean,                    \
                                                  const double* restrict rstd,                    \
                                                  double* restrict sum_g,                         \
                                                  double* restrict sum_gx, Py_ssize_t n) {        \
        if (ym) {                                                                                 \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) {                                                  \
                double gm = (double)g[j] * (ym[j] > 0);                                           \
                sum_g[j] += gm;                                                                   \
                sum_gx[j] += gm * ((x[j] - mean[j]) * rstd[j]);                                   \
            }                                                                                     \
        } else {                                                                                  \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) {                                                  \
                sum_g[j] += g[j];                                                                 \
                sum_gx[j] += g[j] * ((x[j] - mean[j]) * rstd[j]);                                 \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    MSSL_CLONES static void mssl_row_affine_##S(const T* restrict x,                              \
                                                const double* restrict mean,                      \
                                                const double* restrict scale,                     \
                                                const double* restrict shift, T* restrict y,      \
                                                Py_ssize_t n, int relu) {                         \
        if (relu) {                                                                               \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) {                                                  \
                T v = (T)((x[j] - mean[j]) * scale[j] + shift[j]);                                \
                y[j] = v < 0 ? (T)0 : v;                                                          \
            }                                                                                     \
        } else {                                                                                  \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean[j]) * scale[j] + shift[j]);\
        }                                                                                         \
    }                                                                                             \
    MSSL_CLONES static void mssl_row_bn_dx_##S(const T* restrict g, const T* restrict x,          \
                                               const T* restrict ym,                              \
                                               const double* restrict mean,                       \
                                               const double* restrict k,                          \
                                               const double* restrict c1,                         \
                                               const double* restrict rc2, T* restrict dx,        \
                                               Py_ssize_t n) {                                    \
        if (ym) {                                                                                 \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++) {                                                  \
                double gm = (double)g[j] * (ym[j] > 0);                                           \
                dx[j] = (T)(k[j] * (gm - c1[j] - (x[j] - mean[j]) * rc2[j]));                     \
            }                                                                                     \
        } else {                                                                                  \
            MSSL_SIMD                                                                             \
            for (Py_ssize_t j = 0; j < n; j++)                                                    \
                dx[j] = (T)(k[j] * (g[j] - c1[j] - (x[j] - mean[j]) * rc2[j]));                   \
        }                                                                                         \
    }

    MSSL_NORM_KERNELS(float, f32)
    MSSL_NORM_KERNELS(double, f64)
    """
    double mssl_sum_f32(const float* x, Py_ssize_t n) noexcept nogil
    double mssl_sum_sq_dev_f32(const float* x, double c, Py_ssize_t n) noexcept nogil
    void mssl_affine_f32(const float* x, double mean, double scale, double shift, float* y,
                        Py_ssize_t n, int relu) noexcept nogil
    void mssl_ln_forward_row_f32(const float* x, const float* w, const float* b, double eps,
                                float* y, Py_ssize_t n, double* mean_out,
                                double* rstd_out) noexcept nogil
    void mssl_ln_backward_row_f32(const float* g, const float* x, const float* w, double mean,
                                 double rstd, float* dx, double* dw_acc, double* db_acc,
                                 Py_ssize_t n) noexcept nogil
    void mssl_grad_sums_f32(const float* g, const float* x, const float* ym, double mean,
                           double rstd, Py_ssize_t n, double* sum_g,
                           double* sum_gx) noexcept nogil
    void mssl_bn_dx_f32(const float* g, const float* x, const float* ym, double mean, double k,
                        double c1, double rc2, float* dx, Py_ssize_t n) noexcept nogil
    void mssl_col_add_f32(const float* x, double* acc, Py_ssize_t n) noexcept nogil
    void mssl_col_add_sq_dev_f32(const float* x, const double* mean, double* acc,
                                Py_ssize_t n) noexcept nogil
    void mssl_col_grad_add_f32(const float* g, const float* x, const float* ym, const double* mean,
                              const double* rstd, double* sum_g, double* sum_gx,
                              Py_ssize_t n) noexcept nogil
    void mssl_row_affine_f32(const float* x, const double* mean, const double* scale,
                            const double* shift, float* y, Py_ssize_t n, int relu) noexcept nogil
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
    void mssl_ln_backward_row_f64(const double* g, const double* x, const double* w, double mean,
                                 double rstd, double* dx, double* dw_acc, double* db_acc,
                                 Py_ssize_t n) noexcept nogil
    void mssl_grad_sums_f64(const double* g, const double* x, const double* ym, double mean,
                           double rstd, Py_ssize_t n, double* sum_g,
                           double* sum_gx) noexcept nogil
    void mssl_bn_dx_f64(const double* g, const double* x, const double* ym, double mean, double k,
                        double c1, double rc2, double* dx, Py_ssize_t n) noexcept nogil
    void mssl_col_add_f64(const double* x, double* acc, Py_ssize_t n) noexcept nogil
    void mssl_col_add_sq_dev_f64(const double* x, const double* mean, double* acc,
                                Py_ssize_t n) noexcept nogil
    void mssl_col_grad_add_f64(const double* g, const double* x, const double* ym,
                              const double* mean, const double* rstd, double* sum_g,
                              double* sum_gx, Py_ssize_t n) noexcept nogil
    void mssl_row_affine_f64(const double* x, const double* mean, const double* scale,
                            const double* shift, double* y, Py_ssize_t n, int relu) noexcept nogil
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


# ---- the C kernels above, dispatched on the fused type --------------------------------------

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


# ---- argument checks (the others are in csrc/minissl_checks.pxd) ----------------------------

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
    for i in prange(M, schedule="static", use_threads_if=M * D >= PARALLEL_MIN):
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
    for blk in prange(nblocks, schedule="static", use_threads_if=M * D >= PARALLEL_MIN):
        for i in range(blk * ROWS_PER_BLOCK, min((blk + 1) * ROWS_PER_BLOCK, M)):
            if floating is float:
                mssl_ln_backward_row_f32(g + i * D, x + i * D, w, mean[i], rstd[i], dx + i * D,
                                         dw_part + blk * D, db_part + blk * D, D)
            else:
                mssl_ln_backward_row_f64(g + i * D, x + i * D, w, mean[i], rstd[i], dx + i * D,
                                         dw_part + blk * D, db_part + blk * D, D)
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
        raise ValueError("minissl._ext.norm: dw must be given exactly when weight is")
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


# ---- batch norm -----------------------------------------------------------------------------
# Per channel c: mean[c], var[c] over the N*L values; then y = (x - mean) * scale + shift with
# scale = rstd * w and shift = b. Two layouts: L > 1, where each (n, c) is a contiguous segment
# of L values and a channel is reduced segment by segment; and L == 1, an (N, C) matrix whose
# columns are the channels, reduced row by row over blocks of columns.

cdef void _column_moments(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0,
                          Py_ssize_t c1, double* mean, double* var) noexcept nogil:
    """Mean and biased variance of columns c0..c1-1 of the (N, C) matrix x, two passes."""
    cdef Py_ssize_t n, c
    for n in range(N):
        if floating is float:
            mssl_col_add_f32(x + n * C + c0, mean + c0, c1 - c0)
        else:
            mssl_col_add_f64(x + n * C + c0, mean + c0, c1 - c0)
    for c in range(c0, c1):
        mean[c] /= N
    for n in range(N):
        if floating is float:
            mssl_col_add_sq_dev_f32(x + n * C + c0, mean + c0, var + c0, c1 - c0)
        else:
            mssl_col_add_sq_dev_f64(x + n * C + c0, mean + c0, var + c0, c1 - c0)
    for c in range(c0, c1):
        var[c] /= N


cdef void _channel_moments(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
                           Py_ssize_t c, double* mean, double* var) noexcept nogil:
    """Mean and biased variance of channel c of the (N, C, L) array x, two passes."""
    cdef Py_ssize_t n
    cdef double s = 0, ss = 0
    for n in range(N):
        s += _sum(x + (n * C + c) * L, L)
    mean[c] = s / (N * L)
    for n in range(N):
        ss += _sum_sq_dev(x + (n * C + c) * L, mean[c], L)
    var[c] = ss / (N * L)


cdef int _batch_norm(const floating* x, const floating* w, const floating* b, double eps,
                     floating* y, floating* mean_out, floating* var_out, floating* rstd_out,
                     Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, bint relu) noexcept nogil:
    """y = max(., 0) of the result when relu (a fused ReLU). Returns -1 when out of memory."""
    cdef Py_ssize_t nblocks = (C + COLUMNS_PER_BLOCK - 1) // COLUMNS_PER_BLOCK, n, c, blk
    cdef bint parallel = N * C * L >= PARALLEL_MIN
    cdef double rstd
    # per channel, in double: mean, var (accumulated from zero), scale, shift
    cdef double* mean = <double*>calloc(4 * C, sizeof(double))
    if mean == NULL:
        return -1
    cdef double* var = mean + C
    cdef double* scale = mean + 2 * C
    cdef double* shift = mean + 3 * C
    if L == 1:
        for blk in prange(nblocks, schedule="static", use_threads_if=parallel):
            _column_moments(x, N, C, blk * COLUMNS_PER_BLOCK,
                            min((blk + 1) * COLUMNS_PER_BLOCK, C), mean, var)
    else:
        for c in prange(C, schedule="static", use_threads_if=parallel):
            _channel_moments(x, N, C, L, c, mean, var)
    for c in range(C):
        rstd = 1.0 / sqrt(var[c] + eps)
        scale[c] = rstd if w == NULL else rstd * w[c]
        shift[c] = 0.0 if b == NULL else b[c]
        mean_out[c] = <floating>mean[c]
        var_out[c] = <floating>var[c]
        rstd_out[c] = <floating>rstd
    for n in prange(N, schedule="static", use_threads_if=parallel):
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
    cdef Py_ssize_t n
    for n in range(N):
        if floating is float:
            mssl_col_grad_add_f32(g + n * C + c0, x + n * C + c0, _at(ym, n * C + c0), mean + c0,
                                  rstd + c0, sum_g + c0, sum_gx + c0, c1 - c0)
        else:
            mssl_col_grad_add_f64(g + n * C + c0, x + n * C + c0, _at(ym, n * C + c0), mean + c0,
                                  rstd + c0, sum_g + c0, sum_gx + c0, c1 - c0)


cdef void _channel_grad_sums(const floating* g, const floating* x, const floating* ym,
                             Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t c,
                             const double* mean, const double* rstd, double* sum_g,
                             double* sum_gx) noexcept nogil:
    """The same sums for channel c of (N, C, L) arrays."""
    cdef Py_ssize_t n
    cdef double a = 0, b = 0, sg, sgx
    for n in range(N):
        _grad_sums(g + (n * C + c) * L, x + (n * C + c) * L, _at(ym, (n * C + c) * L), mean[c],
                   rstd[c], L, &sg, &sgx)
        a += sg
        b += sgx
    sum_g[c] = a
    sum_gx[c] = b


cdef int _batch_norm_backward(const floating* g, const floating* x, const floating* ym,
                              const double* mean, const double* rstd, const floating* w,
                              floating* dx, floating* dw, floating* db, Py_ssize_t N,
                              Py_ssize_t C, Py_ssize_t L) noexcept nogil:
    """dx = k (g - c1 - (x - mean) rc2) with k = w rstd, c1 = sum_g / n and
    rc2 = rstd sum_gx / n, n = N * L; dw = sum_gx, db = sum_g. With ym (the output of a fused
    ReLU), g is first masked by ym > 0 (the ReLU's backward). Returns -1 when out of memory."""
    cdef Py_ssize_t nblocks = (C + COLUMNS_PER_BLOCK - 1) // COLUMNS_PER_BLOCK, n, c, blk
    cdef bint parallel = N * C * L >= PARALLEL_MIN
    cdef double count = <double>(N * L)
    # per channel, in double: sum_g, sum_gx (accumulated from zero), k, c1, rc2
    cdef double* sum_g = <double*>calloc(5 * C, sizeof(double))
    if sum_g == NULL:
        return -1
    cdef double* sum_gx = sum_g + C
    cdef double* k = sum_g + 2 * C
    cdef double* c1 = sum_g + 3 * C
    cdef double* rc2 = sum_g + 4 * C
    if L == 1:
        for blk in prange(nblocks, schedule="static", use_threads_if=parallel):
            _column_grad_sums(g, x, ym, N, C, blk * COLUMNS_PER_BLOCK,
                              min((blk + 1) * COLUMNS_PER_BLOCK, C), mean, rstd, sum_g, sum_gx)
    else:
        for c in prange(C, schedule="static", use_threads_if=parallel):
            _channel_grad_sums(g, x, ym, N, C, L, c, mean, rstd, sum_g, sum_gx)
    for c in range(C):
        if w != NULL:
            dw[c] = <floating>sum_gx[c]
        db[c] = <floating>sum_g[c]
        k[c] = rstd[c] if w == NULL else rstd[c] * w[c]
        c1[c] = sum_g[c] / count
        rc2[c] = rstd[c] * (sum_gx[c] / count)
    for n in prange(N, schedule="static", use_threads_if=parallel):
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
        raise ValueError("minissl._ext.norm: dw must be given exactly when weight is")
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
