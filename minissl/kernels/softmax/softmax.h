/* The C loops of the softmax kernels, called from _cpu.pyx beside this file. */
#ifndef MINISSL_SOFTMAX_H
#define MINISSL_SOFTMAX_H

#include "minissl_kernels.h"

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

/* y_j = exp(c (x_j - m)): the numerators of softmax(c x) for m = max_j x_j and c > 0 */
MSSL_CLONES static void mssl_exp_scaled_f32(const float* x, float m, float c, float* y,
                                            Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) y[j] = mssl_expf(c * (x[j] - m));
}
MSSL_CLONES static void mssl_exp_scaled_f64(const double* x, double m, double c, double* y,
                                            Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) y[j] = mssl_exp(c * (x[j] - m));
}

/* y_j = c y_j */
MSSL_CLONES static void mssl_scale_f32(float* y, float c, Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) y[j] *= c;
}
MSSL_CLONES static void mssl_scale_f64(double* y, double c, Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) y[j] *= c;
}

/* dx_j = c y_j (g_j - d): softmax's backward for d = sum_j g_j y_j */
MSSL_CLONES static void mssl_softmax_bwd_f32(const float* g, const float* y, float d, float c,
                                             float* dx, Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) dx[j] = c * (y[j] * (g[j] - d));
}
MSSL_CLONES static void mssl_softmax_bwd_f64(const double* g, const double* y, double d,
                                             double c, double* dx, Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) dx[j] = c * (y[j] * (g[j] - d));
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

#endif
