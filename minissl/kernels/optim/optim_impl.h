/* The optim kernels, written once for an element type T and included twice by optim.h:
   once with T = float (names suffixed _f32), once with T = double (_f64). MSSL_FN(name)
   appends the suffix S. No include guard, on purpose. */

/* SGD, torch/optim/sgd.py (_single_tensor_sgd):
     d = g + wd p;  buf = d (first step) or momentum buf + (1 - dampening) d;
     d = d + momentum buf (Nesterov) or buf;  p = p - lr d                       */
MSSL_CLONES static void MSSL_FN(mssl_sgd)(T* restrict p, const T* restrict g,
                                     T* restrict buf, Py_ssize_t n, T lr, T momentum,
                                     T one_minus_dampening, T wd, int nesterov,
                                     int first_step) {
    #pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) {
        T d = g[i];
        if (wd != 0) d = d + wd * p[i];
        if (momentum != 0) {
            T b = first_step ? d : buf[i] * momentum + one_minus_dampening * d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        p[i] = p[i] - lr * d;
    }
}

/* Adam / AdamW, torch/optim/adam.py (_single_tensor_adam):
     p = p decay (AdamW: decay = 1 - lr wd);  g = g + l2 p (Adam: l2 = wd);
     m = m + (1 - beta1) (g - m)      (PyTorch's lerp; = beta1 m + (1 - beta1) g)
     v = v beta2 + (1 - beta2) g g
     p = p - step_size m / (sqrt(v) / bias_correction2_sqrt + eps)                */
MSSL_CLONES static void MSSL_FN(mssl_adam)(T* restrict p, const T* restrict g,
                                      T* restrict m, T* restrict v, Py_ssize_t n,
                                      T step_size, T bias_correction2_sqrt,
                                      T one_minus_beta1, T beta2, T one_minus_beta2,
                                      T eps, T decay, T l2) {
    #pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++) {
        T pi = p[i], gi = g[i];
        if (decay != 1) pi = pi * decay;
        if (l2 != 0) gi = gi + l2 * pi;
        T mi = m[i] + one_minus_beta1 * (gi - m[i]);
        T vi = v[i] * beta2 + one_minus_beta2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * mi / (SQRT(vi) / bias_correction2_sqrt + eps);
    }
}
