/* CUDA kernels of the activation family, written against the element type T (float or
   double). Compiled at run time by NVRTC through CuPy: minissl/kernels/cuda.py prepends
   the typedef of T and common.cuh. The launchers are in cuda.py beside this file. */
/* Exact GELU, elementwise, in the element type (as the reference). */
extern "C" __global__ void gelu_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const T v = x[i];
        y[i] = v * ((T)0.5 * ((T)1 + erf(v * (T)0.70710678118654752440)));
    }
}

extern "C" __global__ void gelu_bwd_kernel(
        const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ dx, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const T v = x[i];
        const T cdf = (T)0.5 * ((T)1 + erf(v * (T)0.70710678118654752440));
        const T pdf = (T)0.39894228040143267794 * exp((T)-0.5 * v * v);
        dx[i] = g[i] * (cdf + v * pdf);
    }
}
