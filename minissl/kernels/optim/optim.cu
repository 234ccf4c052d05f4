/* CUDA kernels of the optim family, written against the element type T (float or
   double). Compiled at run time by NVRTC through CuPy: minissl/kernels/cuda.py prepends
   the typedef of T and common.cuh. The launchers are in cuda.py beside this file. */
/* Fused optimiser updates, one thread per element, the reference's operations in its order. */
extern "C" __global__ void sgd_kernel(
        T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf, int n, T lr,
        T momentum, T one_minus_dampening, T weight_decay, int has_wd, int has_momentum,
        int nesterov, int first_step) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        T d = g[i];
        if (has_wd) d = d + weight_decay * p[i];
        if (has_momentum) {
            T b;
            if (first_step) b = d;
            else b = buf[i] * momentum + one_minus_dampening * d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        p[i] = p[i] - lr * d;
    }
}

extern "C" __global__ void adam_kernel(
        T* __restrict__ p, const T* __restrict__ g, T* __restrict__ exp_avg,
        T* __restrict__ exp_avg_sq, int n, T step_size, T sqrt_bc2, T one_minus_beta1,
        T beta2, T one_minus_beta2, T eps, T decay, T weight_decay, int decoupled, int l2) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        T pi = p[i];
        T gi = g[i];
        if (decoupled) pi = pi * decay;                 /* AdamW: p *= 1 - lr wd */
        else if (l2) gi = gi + weight_decay * pi;       /* Adam: g += wd p */
        T m = exp_avg[i];
        m = m + one_minus_beta1 * (gi - m);             /* PyTorch's lerp form */
        T v = exp_avg_sq[i] * beta2;
        v = v + one_minus_beta2 * gi * gi;
        const T denom = sqrt(v) / sqrt_bc2 + eps;
        p[i] = pi - step_size * m / denom;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
    }
}
