/* CUDA kernels of the softmax family, written against the element type T (float or
   double). Compiled at run time by NVRTC through CuPy: minissl/kernels/cuda.py prepends
   the typedef of T and common.cuh. The launchers are in cuda.py beside this file. */
/* Softmax family over the rows of (M, C): one block per row, threads striding over columns. */

/* Columns row r keeps: all, or j <= r mod L under a causal mask of L rows (L > 0). */
__device__ inline int kept_columns(int C, int L) {
    return L > 0 ? min(C, (int)(blockIdx.x % (unsigned)L) + 1) : C;
}

/* y = softmax(scale x) over columns k < keep; 0 beyond. */
extern "C" __global__ void softmax_fwd_kernel(
        const T* __restrict__ x, T* __restrict__ y, int C, T neg_inf, T scale, int L) {
    __shared__ T buf[MAX_BLOCK];
    const T* row = x + blockIdx.x * C;
    T* out = y + blockIdx.x * C;
    const int keep = kept_columns(C, L);
    T m = neg_inf;
    for (int k = threadIdx.x; k < keep; k += blockDim.x) m = nan_max(m, row[k]);
    m = block_max(m, buf);
    T s = (T)0;                                 /* summed in T, as the reference */
    for (int k = threadIdx.x; k < keep; k += blockDim.x) s += exp(scale * (row[k] - m));
    s = block_sum_t(s, buf);
    for (int k = threadIdx.x; k < C; k += blockDim.x)
        out[k] = k < keep ? exp(scale * (row[k] - m)) / s : (T)0;
}

extern "C" __global__ void log_softmax_fwd_kernel(
        const T* __restrict__ x, T* __restrict__ y, int C, T neg_inf) {
    __shared__ T buf[MAX_BLOCK];
    __shared__ double dbuf[MAX_BLOCK];
    const T* row = x + blockIdx.x * C;
    T* out = y + blockIdx.x * C;
    T m = neg_inf;
    for (int k = threadIdx.x; k < C; k += blockDim.x) m = nan_max(m, row[k]);
    m = block_max(m, buf);
    double s = 0.0;                             /* exp in T, summed in float64 */
    for (int k = threadIdx.x; k < C; k += blockDim.x) s += (double)exp(row[k] - m);
    s = block_sum_d(s, dbuf);
    const double ls = log(s);
    for (int k = threadIdx.x; k < C; k += blockDim.x) out[k] = (T)((double)(row[k] - m) - ls);
}

/* dx = scale y (g - sum g y) over columns k < keep; 0 beyond. */
extern "C" __global__ void softmax_bwd_kernel(
        const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ dx, int C, T scale,
        int L) {
    __shared__ T buf[MAX_BLOCK];
    const int base = blockIdx.x * C;
    const int keep = kept_columns(C, L);
    T dot = (T)0;
    for (int k = threadIdx.x; k < keep; k += blockDim.x) dot += g[base + k] * y[base + k];
    dot = block_sum_t(dot, buf);
    for (int k = threadIdx.x; k < C; k += blockDim.x)
        dx[base + k] = k < keep ? scale * (y[base + k] * (g[base + k] - dot)) : (T)0;
}

extern "C" __global__ void log_softmax_bwd_kernel(
        const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ dx, int C) {
    __shared__ T buf[MAX_BLOCK];
    const int base = blockIdx.x * C;
    T s = (T)0;
    for (int k = threadIdx.x; k < C; k += blockDim.x) s += g[base + k];
    s = block_sum_t(s, buf);
    for (int k = threadIdx.x; k < C; k += blockDim.x)
        dx[base + k] = g[base + k] - exp(y[base + k]) * s;
}

/* loss_i = lse_i - x[i, t_i] with lse in float64; 0 where t_i == ignore_index; NaN where t_i
   is out of range (the GPU cannot raise without a device-to-host copy). */
extern "C" __global__ void cross_entropy_fwd_kernel(
        const T* __restrict__ x, const long long* __restrict__ target, T* __restrict__ loss,
        double* __restrict__ lse, int C, long long ignore_index, T neg_inf, T nan_value) {
    __shared__ T buf[MAX_BLOCK];
    __shared__ double dbuf[MAX_BLOCK];
    const T* row = x + blockIdx.x * C;
    T m = neg_inf;
    for (int k = threadIdx.x; k < C; k += blockDim.x) m = nan_max(m, row[k]);
    m = block_max(m, buf);
    double s = 0.0;
    for (int k = threadIdx.x; k < C; k += blockDim.x) s += (double)exp(row[k] - m);
    s = block_sum_d(s, dbuf);
    if (threadIdx.x == 0) {
        const double l = (double)m + log(s);
        const long long t = target[blockIdx.x];
        lse[blockIdx.x] = l;
        T out;
        if (t == ignore_index) out = (T)0;
        else if (t < 0 || t >= C) out = nan_value;
        else out = (T)(l - (double)row[t]);
        loss[blockIdx.x] = out;
    }
}

/* grad_ij = g_i (exp(x_ij - lse_i) - [j == t_i]), computed in float64; one thread per entry. */
extern "C" __global__ void cross_entropy_bwd_kernel(
        const T* __restrict__ g, const T* __restrict__ x, const long long* __restrict__ target,
        const double* __restrict__ lse, T* __restrict__ dx, int C, long long ignore_index,
        T nan_value, int total) {
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int i = idx / C, j = idx % C;
        const long long t = target[i];
        T out;
        if (t == ignore_index) {
            out = (T)0;
        } else if (t < 0 || t >= C) {
            out = nan_value;
        } else {
            const double p = exp((double)x[idx] - lse[i]);
            out = (T)((double)g[i] * (p - (j == t ? 1.0 : 0.0)));
        }
        dx[idx] = out;
    }
}
