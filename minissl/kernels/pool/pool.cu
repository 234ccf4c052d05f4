/* CUDA kernels of the pool family, written against the element type T (float or
   double). Compiled at run time by NVRTC through CuPy: minissl/kernels/cuda.py prepends
   the typedef of T and common.cuh. The launchers are in cuda.py beside this file. */
/* Pooling: forward one thread per output; backward one thread per input pixel (a gather over
   the windows covering it, in the reference's (i, j) order). */
extern "C" __global__ void max_pool_fwd_kernel(
        const T* __restrict__ x, T* __restrict__ out, long long* __restrict__ argmax,
        int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, int OH, int OW,
        T neg_inf, int total) {
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int ow = idx % OW, oh = (idx / OW) % OH, nc = idx / (OW * OH);
        const T* plane = x + nc * H * W;
        const int h0 = oh * sh - ph, w0 = ow * sw - pw;
        /* Before any pixel is taken the window points at its first in-bounds pixel. */
        long long arg = (long long)max(h0, 0) * W + max(w0, 0);
        T best = neg_inf;
        for (int i = 0; i < kh; ++i) {
            const int h = h0 + i;
            if (h < 0 || h >= H) continue;     /* padding is -inf: never taken */
            for (int j = 0; j < kw; ++j) {
                const int w = w0 + j;
                if (w < 0 || w >= W) continue;
                const T v = plane[h * W + w];
                /* Strictly greater: the first maximum wins; a NaN is always taken so that
                   it propagates (the last NaN wins, as in the reference and PyTorch). */
                if (v > best || is_nan_t(v)) { best = v; arg = (long long)h * W + w; }
            }
        }
        out[idx] = best;
        argmax[idx] = arg;
    }
}

extern "C" __global__ void max_pool_bwd_kernel(
        const T* __restrict__ g, const long long* __restrict__ argmax, T* __restrict__ gx,
        int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, int OH, int OW,
        int total) {
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int w = idx % W, h = (idx / W) % H, nc = idx / (W * H);
        const long long me = (long long)h * W + w;
        T acc = (T)0;
        for (int i = 0; i < kh; ++i) {
            const int th = h + ph - i;
            if (th < 0) break;
            if (th % sh != 0) continue;
            const int oh = th / sh;
            if (oh >= OH) continue;
            for (int j = 0; j < kw; ++j) {
                const int tw = w + pw - j;
                if (tw < 0) break;
                if (tw % sw != 0) continue;
                const int ow = tw / sw;
                if (ow >= OW) continue;
                const int o = (nc * OH + oh) * OW + ow;
                if (argmax[o] == me) acc += g[o];
            }
        }
        gx[idx] = acc;
    }
}

extern "C" __global__ void avg_pool_fwd_kernel(
        const T* __restrict__ x, T* __restrict__ out, int H, int W, int kh, int kw,
        int sh, int sw, int ph, int pw, int OH, int OW, int total) {
    const T area = (T)(kh * kw);               /* count_include_pad=True */
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int ow = idx % OW, oh = (idx / OW) % OH, nc = idx / (OW * OH);
        const T* plane = x + nc * H * W;
        const int h0 = oh * sh - ph, w0 = ow * sw - pw;
        T acc = (T)0;
        for (int i = 0; i < kh; ++i) {
            const int h = h0 + i;
            if (h < 0 || h >= H) continue;     /* padding adds 0 */
            for (int j = 0; j < kw; ++j) {
                const int w = w0 + j;
                if (w < 0 || w >= W) continue;
                acc += plane[h * W + w];
            }
        }
        out[idx] = acc / area;
    }
}

extern "C" __global__ void avg_pool_bwd_kernel(
        const T* __restrict__ g, T* __restrict__ gx, int H, int W, int kh, int kw,
        int sh, int sw, int ph, int pw, int OH, int OW, int total) {
    const T area = (T)(kh * kw);
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int w = idx % W, h = (idx / W) % H, nc = idx / (W * H);
        T acc = (T)0;
        for (int i = 0; i < kh; ++i) {
            const int th = h + ph - i;
            if (th < 0) break;
            if (th % sh != 0) continue;
            const int oh = th / sh;
            if (oh >= OH) continue;
            for (int j = 0; j < kw; ++j) {
                const int tw = w + pw - j;
                if (tw < 0) break;
                if (tw % sw != 0) continue;
                const int ow = tw / sw;
                if (ow >= OW) continue;
                acc += g[(nc * OH + oh) * OW + ow] / area;
            }
        }
        gx[idx] = acc;
    }
}
