/* The norm kernels, written once for an element type T and included twice by norm.h:
   once with T = float (names suffixed _f32), once with T = double (_f64). MSSL_FN(name)
   appends the suffix S. No include guard, on purpose. */

/* sum_j x_j  (inlined into the kernels below; mssl_sum_S is the callable version) */
MSSL_INLINE double MSSL_FN(mssl_sum_inl)(const T* restrict x, Py_ssize_t n) {
    double acc[MSSL_LANES] = {0};
    Py_ssize_t j = 0;
    for (; j + MSSL_LANES <= n; j += MSSL_LANES)
        #pragma omp simd
        for (int k = 0; k < MSSL_LANES; k++) acc[k] += x[j + k];
    for (int k = 0; j < n; j++, k++) acc[k] += x[j];
    return mssl_lanes_total(acc);
}
MSSL_CLONES static double MSSL_FN(mssl_sum)(const T* restrict x, Py_ssize_t n) {
    return MSSL_FN(mssl_sum_inl)(x, n);
}

/* sum_j (x_j - c)^2 */
MSSL_INLINE double MSSL_FN(mssl_sum_sq_dev_inl)(const T* restrict x, double c,
                                             Py_ssize_t n) {
    double acc[MSSL_LANES] = {0};
    Py_ssize_t j = 0;
    for (; j + MSSL_LANES <= n; j += MSSL_LANES)
        #pragma omp simd
        for (int k = 0; k < MSSL_LANES; k++) { double d = x[j + k] - c; acc[k] += d * d; }
    for (int k = 0; j < n; j++, k++) { double d = x[j] - c; acc[k] += d * d; }
    return mssl_lanes_total(acc);
}
MSSL_CLONES static double MSSL_FN(mssl_sum_sq_dev)(const T* restrict x, double c, Py_ssize_t n) {
    return MSSL_FN(mssl_sum_sq_dev_inl)(x, c, n);
}

/* *sum_g = sum_j g_j w_j,  *sum_gx = sum_j g_j w_j (x_j - mean) rstd  (w NULL: w_j = 1) */
MSSL_INLINE void MSSL_FN(mssl_grad_sums_inl)(const T* restrict g, const T* restrict x,
                                          const T* restrict w, double mean, double rstd,
                                          Py_ssize_t n, double* sum_g, double* sum_gx) {
    double a[MSSL_LANES] = {0}, b[MSSL_LANES] = {0};
    Py_ssize_t j = 0;
    if (w) {                        /* two loops: a select inside would not vectorise */
        for (; j + MSSL_LANES <= n; j += MSSL_LANES)
            #pragma omp simd
            for (int k = 0; k < MSSL_LANES; k++) {
                double gh = (double)g[j + k] * w[j + k];
                a[k] += gh;
                b[k] += gh * ((x[j + k] - mean) * rstd);
            }
        for (int k = 0; j < n; j++, k++) {
            double gh = (double)g[j] * w[j];
            a[k] += gh;
            b[k] += gh * ((x[j] - mean) * rstd);
        }
    } else {
        for (; j + MSSL_LANES <= n; j += MSSL_LANES)
            #pragma omp simd
            for (int k = 0; k < MSSL_LANES; k++) {
                a[k] += g[j + k];
                b[k] += g[j + k] * ((x[j + k] - mean) * rstd);
            }
        for (int k = 0; j < n; j++, k++) {
            a[k] += g[j];
            b[k] += g[j] * ((x[j] - mean) * rstd);
        }
    }
    *sum_g = mssl_lanes_total(a);
    *sum_gx = mssl_lanes_total(b);
}
/* The batch-norm sums; with ym (the output of a fused ReLU) g_j counts only where
   ym_j > 0, the ReLU's gradient mask. */
MSSL_CLONES static void MSSL_FN(mssl_grad_sums)(const T* restrict g, const T* restrict x,
                                           const T* restrict ym, double mean, double rstd,
                                           Py_ssize_t n, double* sum_g, double* sum_gx) {
    if (!ym) {
        MSSL_FN(mssl_grad_sums_inl)(g, x, NULL, mean, rstd, n, sum_g, sum_gx);
        return;
    }
    double a[MSSL_LANES] = {0}, b[MSSL_LANES] = {0};
    Py_ssize_t j = 0;
    for (; j + MSSL_LANES <= n; j += MSSL_LANES)
        #pragma omp simd
        for (int k = 0; k < MSSL_LANES; k++) {
            double gm = (double)g[j + k] * (ym[j + k] > 0);
            a[k] += gm;
            b[k] += gm * ((x[j + k] - mean) * rstd);
        }
    for (int k = 0; j < n; j++, k++) {
        double gm = (double)g[j] * (ym[j] > 0);
        a[k] += gm;
        b[k] += gm * ((x[j] - mean) * rstd);
    }
    *sum_g = mssl_lanes_total(a);
    *sum_gx = mssl_lanes_total(b);
}

/* y_j = (x_j - mean) * scale + shift, then max(y_j, 0) if relu (NaN stays NaN) */
MSSL_CLONES static void MSSL_FN(mssl_affine)(const T* restrict x, double mean, double scale,
                                        double shift, T* restrict y, Py_ssize_t n,
                                        int relu) {
    if (relu) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) {
            T v = (T)((x[j] - mean) * scale + shift);
            y[j] = v < 0 ? (T)0 : v;
        }
    } else {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean) * scale + shift);
    }
}

/* Layer norm of one row: mean, rstd = 1 / sqrt(var + eps) (two passes), then
   y_j = (x_j - mean) rstd w_j + b_j; w, b may be NULL */
MSSL_CLONES static void MSSL_FN(mssl_ln_forward_row)(const T* restrict x, const T* restrict w,
                                                const T* restrict b, double eps,
                                                T* restrict y, Py_ssize_t n,
                                                double* mean_out, double* rstd_out) {
    const double mean = MSSL_FN(mssl_sum_inl)(x, n) / n;
    const double rstd = 1.0 / sqrt(MSSL_FN(mssl_sum_sq_dev_inl)(x, mean, n) / n + eps);
    *mean_out = mean;
    *rstd_out = rstd;
    if (w && b) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean) * rstd * w[j] + b[j]);
    } else if (w) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean) * rstd * w[j]);
    } else if (b) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean) * rstd + b[j]);
    } else {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean) * rstd);
    }
}

/* L2 normalisation of one row: *norm_out = max(||x||_2, eps) (the norm's square summed in
   double, in lanes), y_j = x_j / *norm_out. A NaN norm stays NaN, as NumPy's maximum has it. */
MSSL_CLONES static void MSSL_FN(mssl_l2n_forward_row)(const T* restrict x, double eps,
                                                 T* restrict y, Py_ssize_t n,
                                                 double* norm_out) {
    const double norm = sqrt(MSSL_FN(mssl_sum_sq_dev_inl)(x, 0.0, n));
    const double d = norm < eps ? eps : norm;
    *norm_out = d;
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)(x[j] / d);
}

/* Its adjoint: dx_j = (g_j - y_j <g, y>) / norm, with <g, y> taken as 0 on a row whose norm
   was clamped to eps (there y = x / eps does not depend on the direction of x). */
MSSL_CLONES static void MSSL_FN(mssl_l2n_backward_row)(const T* restrict g, const T* restrict y,
                                                  double norm, double eps, T* restrict dx,
                                                  Py_ssize_t n) {
    double proj = 0;
    if (!(norm <= eps)) {
        double acc[MSSL_LANES] = {0};
        Py_ssize_t j = 0;
        for (; j + MSSL_LANES <= n; j += MSSL_LANES)
            #pragma omp simd
            for (int k = 0; k < MSSL_LANES; k++) acc[k] += (double)g[j + k] * y[j + k];
        for (int k = 0; j < n; j++, k++) acc[k] += (double)g[j] * y[j];
        proj = mssl_lanes_total(acc);
    }
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) dx[j] = (T)((g[j] - y[j] * proj) / norm);
}

/* Column sums of rows 0..N-1 of a matrix with row stride ld, over n columns (batch norm with
   L = 1: the columns are the channels). Each column is summed over the rows in order, from
   zero, into ``acc`` (written, not added to). A strip of MSSL_LN_STRIP columns is summed at
   a time with its sums in registers and stored once: summed into memory row by row they
   were a read-modify-write per row (see mssl_ln_backward_block, which uses it too). */
#define MSSL_COL_STRIPS(BODY_FULL, BODY_TAIL, STORE)                                        \
    for (Py_ssize_t j0 = 0; j0 < n; j0 += MSSL_LN_STRIP) {                                  \
        const Py_ssize_t m = n - j0 < MSSL_LN_STRIP ? n - j0 : MSSL_LN_STRIP;               \
        double a[MSSL_LN_STRIP] = {0}, b[MSSL_LN_STRIP] = {0};                              \
        (void)b;                                                                             \
        for (Py_ssize_t r = 0; r < N; r++) {                                                 \
            const Py_ssize_t o = r * ld + j0;                                                \
            if (m == MSSL_LN_STRIP) {                                                        \
                _Pragma("omp simd")                                                          \
                for (int k = 0; k < MSSL_LN_STRIP; k++) { BODY_FULL }                        \
            } else {                                                                         \
                for (int k = 0; k < m; k++) { BODY_TAIL }                                    \
            }                                                                                \
        }                                                                                    \
        for (int k = 0; k < m; k++) { STORE }                                                \
    }

/* Layer-norm backward of a block of rows (row-major, n values a row), with
   xhat_ij = (x_ij - mean_i) rstd_i and gh_ij = g_ij w_j:
     dx_ij = rstd_i (gh_ij - mean_j(gh_i.) - xhat_ij mean_j(gh_i. xhat_i.))   row by row;
     dw_part_j = sum_i g_ij xhat_ij,  db_part_j = sum_i g_ij                  over the rows,
   each column summed in row order from zero. The column sums run a strip of MSSL_LN_STRIP
   columns at a time with the sums in registers, stored once a block: summed into memory
   row by row they were a read-modify-write of 2 n doubles per row, which made this kernel
   twice as slow, and 3-4x in the windows when this machine's two vCPUs slow each other down
   (docs/performance.md). w may be NULL (then dw_part is not written). */
MSSL_CLONES static void MSSL_FN(mssl_ln_backward_block)(const T* restrict g,
                                                   const T* restrict x, const T* restrict w,
                                                   const double* restrict mean,
                                                   const double* restrict rstd,
                                                   T* restrict dx, double* restrict dw_part,
                                                   double* restrict db_part,
                                                   Py_ssize_t rows, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < rows; i++) {
        const T* gi = g + i * n;
        const T* xi = x + i * n;
        T* dxi = dx + i * n;
        const double mu = mean[i], rs = rstd[i];
        double sum_gh, sum_ghx;
        MSSL_FN(mssl_grad_sums_inl)(gi, xi, w, mu, rs, n, &sum_gh, &sum_ghx);
        const double c1 = sum_gh / n, c2 = sum_ghx / n;
        if (w) {
            #pragma omp simd
            for (Py_ssize_t j = 0; j < n; j++)
                dxi[j] = (T)(rs * ((double)gi[j] * w[j] - c1 - (xi[j] - mu) * rs * c2));
        } else {
            #pragma omp simd
            for (Py_ssize_t j = 0; j < n; j++)
                dxi[j] = (T)(rs * (gi[j] - c1 - (xi[j] - mu) * rs * c2));
        }
    }
    const Py_ssize_t N = rows, ld = n;      /* the names MSSL_COL_STRIPS reads */
    MSSL_COL_STRIPS({ a[k] += g[o + k] * ((x[o + k] - mean[r]) * rstd[r]); b[k] += g[o + k]; },
                    { a[k] += g[o + k] * ((x[o + k] - mean[r]) * rstd[r]); b[k] += g[o + k]; },
                    { if (dw_part) dw_part[j0 + k] = a[k]; db_part[j0 + k] = b[k]; })
}

/* Batch-norm input gradient: dx_j = k (g_j - c1 - (x_j - mean) rc2), with g_j masked by
   ym_j > 0 when ym (a fused ReLU's output) is given */
MSSL_CLONES static void MSSL_FN(mssl_bn_dx)(const T* restrict g, const T* restrict x,
                                       const T* restrict ym, double mean, double k,
                                       double c1, double rc2, T* restrict dx, Py_ssize_t n) {
    if (ym) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) {
            double gm = (double)g[j] * (ym[j] > 0);
            dx[j] = (T)(k * (gm - c1 - (x[j] - mean) * rc2));
        }
    } else {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++)
            dx[j] = (T)(k * (g[j] - c1 - (x[j] - mean) * rc2));
    }
}

/* acc_j = sum_r x_rj */
MSSL_CLONES static void MSSL_FN(mssl_col_sums)(const T* restrict x, Py_ssize_t N,
                                          Py_ssize_t ld, double* restrict acc, Py_ssize_t n) {
    MSSL_COL_STRIPS(a[k] += x[o + k];, a[k] += x[o + k];, acc[j0 + k] = a[k];)
}

/* acc_j = sum_r (x_rj - mean_j)^2 */
MSSL_CLONES static void MSSL_FN(mssl_col_sums_sq_dev)(const T* restrict x, Py_ssize_t N,
                                                 Py_ssize_t ld, const double* restrict mean,
                                                 double* restrict acc, Py_ssize_t n) {
    MSSL_COL_STRIPS({ double d = x[o + k] - mean[j0 + k]; a[k] += d * d; },
                    { double d = x[o + k] - mean[j0 + k]; a[k] += d * d; },
                    acc[j0 + k] = a[k];)
}

/* sum_g_j = sum_r gm_rj and sum_gx_j = sum_r gm_rj xhat_rj, with xhat_rj =
   (x_rj - mean_j) rstd_j and gm = g, or g masked by ym > 0 when ym is given */
MSSL_CLONES static void MSSL_FN(mssl_col_grad_sums)(const T* restrict g, const T* restrict x,
                                               const T* restrict ym, Py_ssize_t N,
                                               Py_ssize_t ld, const double* restrict mean,
                                               const double* restrict rstd,
                                               double* restrict sum_g,
                                               double* restrict sum_gx, Py_ssize_t n) {
    if (ym) {
        MSSL_COL_STRIPS(
            { double gm = (double)g[o + k] * (ym[o + k] > 0);
              a[k] += gm; b[k] += gm * ((x[o + k] - mean[j0 + k]) * rstd[j0 + k]); },
            { double gm = (double)g[o + k] * (ym[o + k] > 0);
              a[k] += gm; b[k] += gm * ((x[o + k] - mean[j0 + k]) * rstd[j0 + k]); },
            { sum_g[j0 + k] = a[k]; sum_gx[j0 + k] = b[k]; })
    } else {
        MSSL_COL_STRIPS(
            { a[k] += g[o + k]; b[k] += g[o + k] * ((x[o + k] - mean[j0 + k]) * rstd[j0 + k]); },
            { a[k] += g[o + k]; b[k] += g[o + k] * ((x[o + k] - mean[j0 + k]) * rstd[j0 + k]); },
            { sum_g[j0 + k] = a[k]; sum_gx[j0 + k] = b[k]; })
    }
}
#undef MSSL_COL_STRIPS

MSSL_CLONES static void MSSL_FN(mssl_row_affine)(const T* restrict x,
                                            const double* restrict mean,
                                            const double* restrict scale,
                                            const double* restrict shift, T* restrict y,
                                            Py_ssize_t n, int relu) {
    if (relu) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) {
            T v = (T)((x[j] - mean[j]) * scale[j] + shift[j]);
            y[j] = v < 0 ? (T)0 : v;
        }
    } else {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) y[j] = (T)((x[j] - mean[j]) * scale[j] + shift[j]);
    }
}
MSSL_CLONES static void MSSL_FN(mssl_row_bn_dx)(const T* restrict g, const T* restrict x,
                                           const T* restrict ym,
                                           const double* restrict mean,
                                           const double* restrict k,
                                           const double* restrict c1,
                                           const double* restrict rc2, T* restrict dx,
                                           Py_ssize_t n) {
    if (ym) {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++) {
            double gm = (double)g[j] * (ym[j] > 0);
            dx[j] = (T)(k[j] * (gm - c1[j] - (x[j] - mean[j]) * rc2[j]));
        }
    } else {
        #pragma omp simd
        for (Py_ssize_t j = 0; j < n; j++)
            dx[j] = (T)(k[j] * (g[j] - c1[j] - (x[j] - mean[j]) * rc2[j]));
    }
}
