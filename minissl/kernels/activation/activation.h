/* The C loops of the activation kernels, called from _cpu.pyx beside this file. */
#ifndef MINISSL_ACTIVATION_H
#define MINISSL_ACTIVATION_H

#include "minissl_kernels.h"

/* Phi(x) = 0.5 erfc(-x / sqrt 2), erfc by Numerical Recipes' erfcc (see the docstring). */
static inline float mssl_normal_cdf_f32(float x) {
    float z = fabsf(x) * 0.70710678118654752f;             /* |x| / sqrt 2 */
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float tail = 0.5f * t * mssl_expf(p - z * z);          /* 0.5 erfc(z) = Phi(-|x|) */
    return x < 0.0f ? tail : 1.0f - tail;
}

MSSL_CLONES static void mssl_gelu_f32(const float* x, float* y, Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) y[j] = x[j] * mssl_normal_cdf_f32(x[j]);
}

/* dx = g (Phi(x) + x phi(x)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi) */
MSSL_CLONES static void mssl_gelu_backward_f32(const float* g, const float* x, float* dx,
                                               Py_ssize_t n) {
    #pragma omp simd
    for (Py_ssize_t j = 0; j < n; j++) {
        float v = x[j];
        float pdf = 0.39894228040143267794f * mssl_expf(-0.5f * v * v);
        dx[j] = g[j] * (mssl_normal_cdf_f32(v) + v * pdf);
    }
}

#endif
