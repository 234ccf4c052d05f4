/* Device helpers shared by every kernel family's .cu file: NaN-propagating max, block-wide
   reductions and Chan et al.'s merge of (count, mean, M2) summaries. minissl/kernels/cuda.py
   prepends `typedef float T;` (or double) and this file to a family's source before NVRTC
   compiles it. */
#define MAX_BLOCK 256   /* size of the shared buffers; launches use at most this many threads */

/* NaN test that does not depend on a math library: only NaN differs from itself. NVRTC does
   not enable fast-math, which would break it. */
__device__ __forceinline__ bool is_nan_t(T v) { return v != v; }

/* max that propagates NaN, like numpy.max (fmax would drop it). */
__device__ __forceinline__ T nan_max(T a, T b) { return (b > a || is_nan_t(b)) ? b : a; }

/* Block-wide reductions over blockDim.x threads (a power of two <= MAX_BLOCK). Every thread
   of the block must call them (they contain __syncthreads) and gets the result. The tree
   adds in a fixed pattern, so the result is deterministic. */
__device__ T block_max(T v, T* buf) {
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) buf[t] = nan_max(buf[t], buf[t + s]);
        __syncthreads();
    }
    const T r = buf[0];
    __syncthreads();          /* the caller may reuse buf at once */
    return r;
}

__device__ T block_sum_t(T v, T* buf) {
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) buf[t] = buf[t] + buf[t + s];
        __syncthreads();
    }
    const T r = buf[0];
    __syncthreads();
    return r;
}

__device__ double block_sum_d(double v, double* buf) {
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) buf[t] = buf[t] + buf[t + s];
        __syncthreads();
    }
    const double r = buf[0];
    __syncthreads();
    return r;
}

/* Chan et al.'s merge of two (count, mean, M2) summaries, M2 = sum of squared deviations. */
__device__ void welford_merge(double& n, double& mean, double& m2,
                              double nb, double meanb, double m2b) {
    if (nb == 0.0) return;
    if (n == 0.0) { n = nb; mean = meanb; m2 = m2b; return; }
    const double nt = n + nb;
    const double d = meanb - mean;
    mean = mean + d * (nb / nt);
    m2 = m2 + m2b + d * d * (n * nb / nt);
    n = nt;
}

__device__ void block_welford(double& n, double& mean, double& m2,
                              double* bn, double* bmean, double* bm2) {
    const int t = threadIdx.x;
    bn[t] = n; bmean[t] = mean; bm2[t] = m2;
    __syncthreads();
    for (int s = blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) welford_merge(bn[t], bmean[t], bm2[t], bn[t + s], bmean[t + s], bm2[t + s]);
        __syncthreads();
    }
    n = bn[0]; mean = bmean[0]; m2 = bm2[0];
    __syncthreads();
}
