/* CUDA kernels of the norm family, written against the element type T (float or
   double). Compiled at run time by NVRTC through CuPy: minissl/kernels/cuda.py prepends
   the typedef of T and common.cuh. The launchers are in cuda.py beside this file. */
/* Layer norm over rows (M, D): one block per row for the forward and for grad_x; the weight
   and bias gradients are column sums over rows, done in two deterministic stages.
   Batch norm over (N, C, L) per channel: chunked Welford statistics merged in chunk order. */
extern "C" __global__ void layer_norm_fwd_kernel(
        const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
        int has_w, int has_b, T* __restrict__ y, T* __restrict__ mean_out,
        T* __restrict__ rstd_out, int D, double eps) {
    __shared__ double dbuf[MAX_BLOCK];
    const int base = blockIdx.x * D;
    double s = 0.0;
    for (int k = threadIdx.x; k < D; k += blockDim.x) s += (double)x[base + k];
    const double mean = block_sum_d(s, dbuf) / D;
    double q = 0.0;                              /* two-pass variance, as the reference */
    for (int k = threadIdx.x; k < D; k += blockDim.x) {
        const double d = (double)x[base + k] - mean;
        q += d * d;
    }
    const double var = block_sum_d(q, dbuf) / D;
    const double rstd = 1.0 / sqrt(var + eps);
    for (int k = threadIdx.x; k < D; k += blockDim.x) {
        double v = ((double)x[base + k] - mean) * rstd;
        if (has_w) v = v * (double)w[k];
        if (has_b) v = v + (double)b[k];
        y[base + k] = (T)v;
    }
    if (threadIdx.x == 0) {
        mean_out[blockIdx.x] = (T)mean;
        rstd_out[blockIdx.x] = (T)rstd;
    }
}

/* dx = rstd (gh - mean(gh) - xhat mean(gh xhat)), gh = g * w. */
extern "C" __global__ void layer_norm_bwd_dx_kernel(
        const T* __restrict__ g, const T* __restrict__ x, const double* __restrict__ mean,
        const double* __restrict__ rstd, const T* __restrict__ w, int has_w,
        T* __restrict__ dx, int D) {
    __shared__ double dbuf[MAX_BLOCK];
    const int base = blockIdx.x * D;
    const double mu = mean[blockIdx.x], rs = rstd[blockIdx.x];
    double sg = 0.0, sgx = 0.0;
    for (int k = threadIdx.x; k < D; k += blockDim.x) {
        double gh = (double)g[base + k];
        if (has_w) gh = gh * (double)w[k];
        sg += gh;
        sgx += gh * (((double)x[base + k] - mu) * rs);
    }
    sg = block_sum_d(sg, dbuf) / D;
    sgx = block_sum_d(sgx, dbuf) / D;
    for (int k = threadIdx.x; k < D; k += blockDim.x) {
        double gh = (double)g[base + k];
        if (has_w) gh = gh * (double)w[k];
        const double xhat = ((double)x[base + k] - mu) * rs;
        dx[base + k] = (T)(rs * (gh - sg - xhat * sgx));
    }
}

/* Stage 1 of d weight = sum_rows g * xhat and d bias = sum_rows g: thread (r, d) sums rows
   [r rpc, (r + 1) rpc) of column d (consecutive threads read consecutive columns). */
extern "C" __global__ void layer_norm_bwd_partial_kernel(
        const T* __restrict__ g, const T* __restrict__ x, const double* __restrict__ mean,
        const double* __restrict__ rstd, double* __restrict__ part_w,
        double* __restrict__ part_b, int M, int D, int rpc, int total) {
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int d = idx % D, r = idx / D;
        const int end = min(M, (r + 1) * rpc);
        double sw = 0.0, sb = 0.0;
        for (int m = r * rpc; m < end; ++m) {
            const double gg = (double)g[m * D + d];
            sb += gg;
            sw += gg * (((double)x[m * D + d] - mean[m]) * rstd[m]);
        }
        part_w[idx] = sw;
        part_b[idx] = sb;
    }
}

/* Stage 2: add the R partials of each column in chunk order. */
extern "C" __global__ void column_finish_kernel(
        const double* __restrict__ part_w, const double* __restrict__ part_b,
        T* __restrict__ dw, T* __restrict__ db, int has_w, int R, int D) {
    for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < D; d += blockDim.x * gridDim.x) {
        double sw = 0.0, sb = 0.0;
        for (int r = 0; r < R; ++r) {
            sw += part_w[r * D + d];
            sb += part_b[r * D + d];
        }
        db[d] = (T)sb;
        if (has_w) dw[d] = (T)sw;
    }
}

/* Block (c, s) summarises the values [s chunk, (s + 1) chunk) of channel c, where value k
   of a channel is x[n, c, l] with n = k / L, l = k % L. */
extern "C" __global__ void batch_norm_stats_partial_kernel(
        const T* __restrict__ x, double* __restrict__ part_n, double* __restrict__ part_mean,
        double* __restrict__ part_m2, int C, int L, int S, int chunk, int count) {
    __shared__ double bn[MAX_BLOCK];
    __shared__ double bmean[MAX_BLOCK];
    __shared__ double bm2[MAX_BLOCK];
    const int c = blockIdx.x / S, s = blockIdx.x % S;
    const int start = s * chunk;
    const int end = min(count, start + chunk);
    double n = 0.0, mean = 0.0, m2 = 0.0;
    for (int k = start + threadIdx.x; k < end; k += blockDim.x) {
        const int nn = k / L, l = k - nn * L;
        const double v = (double)x[(nn * C + c) * L + l];
        n += 1.0;                                /* Welford's update */
        const double d = v - mean;
        mean += d / n;
        m2 += d * (v - mean);
    }
    block_welford(n, mean, m2, bn, bmean, bm2);
    if (threadIdx.x == 0) {
        part_n[blockIdx.x] = n;
        part_mean[blockIdx.x] = mean;
        part_m2[blockIdx.x] = m2;
    }
}

extern "C" __global__ void batch_norm_stats_finish_kernel(
        const double* __restrict__ part_n, const double* __restrict__ part_mean,
        const double* __restrict__ part_m2, T* __restrict__ mean_out, T* __restrict__ var_out,
        T* __restrict__ rstd_out, double* __restrict__ mean_d, double* __restrict__ rstd_d,
        int C, int S, double eps) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += blockDim.x * gridDim.x) {
        double n = 0.0, mean = 0.0, m2 = 0.0;
        for (int s = 0; s < S; ++s)
            welford_merge(n, mean, m2, part_n[c * S + s], part_mean[c * S + s],
                          part_m2[c * S + s]);
        const double var = m2 / n;               /* biased; n >= 1 (checked by the caller) */
        const double rstd = 1.0 / sqrt(var + eps);
        mean_out[c] = (T)mean;
        var_out[c] = (T)var;
        rstd_out[c] = (T)rstd;
        mean_d[c] = mean;
        rstd_d[c] = rstd;
    }
}

extern "C" __global__ void batch_norm_apply_kernel(
        const T* __restrict__ x, const double* __restrict__ mean_d,
        const double* __restrict__ rstd_d, const T* __restrict__ w, const T* __restrict__ b,
        int has_w, int has_b, T* __restrict__ y, int C, int L, int total) {
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int c = (idx / L) % C;
        double v = ((double)x[idx] - mean_d[c]) * rstd_d[c];
        if (has_w) v = v * (double)w[c];
        if (has_b) v = v + (double)b[c];
        y[idx] = (T)v;
    }
}

/* Per-chunk sums of g and g * xhat over the values of a channel (layout as above). */
extern "C" __global__ void batch_norm_bwd_partial_kernel(
        const T* __restrict__ g, const T* __restrict__ x, const double* __restrict__ mean_d,
        const double* __restrict__ rstd_d, double* __restrict__ part_g,
        double* __restrict__ part_gx, int C, int L, int S, int chunk, int count) {
    __shared__ double dbuf[MAX_BLOCK];
    const int c = blockIdx.x / S, s = blockIdx.x % S;
    const int start = s * chunk;
    const int end = min(count, start + chunk);
    const double mu = mean_d[c], rs = rstd_d[c];
    double sg = 0.0, sgx = 0.0;
    for (int k = start + threadIdx.x; k < end; k += blockDim.x) {
        const int nn = k / L, l = k - nn * L;
        const int at = (nn * C + c) * L + l;
        const double gg = (double)g[at];
        sg += gg;
        sgx += gg * (((double)x[at] - mu) * rs);
    }
    sg = block_sum_d(sg, dbuf);
    sgx = block_sum_d(sgx, dbuf);
    if (threadIdx.x == 0) {
        part_g[blockIdx.x] = sg;
        part_gx[blockIdx.x] = sgx;
    }
}

extern "C" __global__ void batch_norm_bwd_finish_kernel(
        const double* __restrict__ part_g, const double* __restrict__ part_gx,
        T* __restrict__ dw, T* __restrict__ db, int has_w, double* __restrict__ sg_d,
        double* __restrict__ sgx_d, int C, int S) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += blockDim.x * gridDim.x) {
        double sg = 0.0, sgx = 0.0;
        for (int s = 0; s < S; ++s) {
            sg += part_g[c * S + s];
            sgx += part_gx[c * S + s];
        }
        sg_d[c] = sg;
        sgx_d[c] = sgx;
        db[c] = (T)sg;
        if (has_w) dw[c] = (T)sgx;
    }
}

/* dx = w rstd (g - sum_g / n - xhat sum_gx / n). */
extern "C" __global__ void batch_norm_bwd_apply_kernel(
        const T* __restrict__ g, const T* __restrict__ x, const double* __restrict__ mean_d,
        const double* __restrict__ rstd_d, const T* __restrict__ w, int has_w,
        const double* __restrict__ sg_d, const double* __restrict__ sgx_d, double n,
        T* __restrict__ dx, int C, int L, int total) {
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int c = (idx / L) % C;
        const double rs = rstd_d[c];
        const double xhat = ((double)x[idx] - mean_d[c]) * rs;
        const double ww = has_w ? (double)w[c] : 1.0;
        dx[idx] = (T)(ww * rs * ((double)g[idx] - sg_d[c] / n - xhat * (sgx_d[c] / n)));
    }
}
