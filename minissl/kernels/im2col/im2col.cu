/* CUDA kernels of the im2col family, written against the element type T (float or
   double). Compiled at run time by NVRTC through CuPy: minissl/kernels/cuda.py prepends
   the typedef of T and common.cuh. The launchers are in cuda.py beside this file. */
/* im2col: one thread per entry of cols (writes are coalesced). col2im: one thread per input
   pixel, gathering the cols entries of the windows that cover it, in (i, j) order. */
extern "C" __global__ void im2col_kernel(
        const T* __restrict__ x, T* __restrict__ cols, int C, int H, int W, int kh, int kw,
        int sh, int sw, int ph, int pw, int dh, int dw, int OH, int OW, int total) {
    const int K = C * kh * kw;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int col = idx % K, row = idx / K;
        const int j = col % kw, i = (col / kw) % kh, c = col / (kh * kw);
        const int ow = row % OW, oh = (row / OW) % OH, n = row / (OW * OH);
        const int h = oh * sh - ph + i * dh, w = ow * sw - pw + j * dw;
        T v = (T)0;
        if (h >= 0 && h < H && w >= 0 && w < W) v = x[((n * C + c) * H + h) * W + w];
        cols[idx] = v;
    }
}

extern "C" __global__ void col2im_kernel(
        const T* __restrict__ cols, T* __restrict__ x, int C, int H, int W, int kh, int kw,
        int sh, int sw, int ph, int pw, int dh, int dw, int OH, int OW, int total) {
    const int K = C * kh * kw;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int w = idx % W, h = (idx / W) % H, c = (idx / (W * H)) % C;
        const int n = idx / (W * H * C);
        T acc = (T)0;
        /* Window (oh, ow) reads pixel (h, w) at tap (i, j) iff oh sh - ph + i dh == h. */
        for (int i = 0; i < kh; ++i) {
            const int th = h + ph - i * dh;
            if (th < 0) break;                 /* th only decreases with i */
            if (th % sh != 0) continue;
            const int oh = th / sh;
            if (oh >= OH) continue;
            for (int j = 0; j < kw; ++j) {
                const int tw = w + pw - j * dw;
                if (tw < 0) break;
                if (tw % sw != 0) continue;
                const int ow = tw / sw;
                if (ow >= OW) continue;
                acc += cols[((n * OH + oh) * OW + ow) * K + (c * kh + i) * kw + j];
            }
        }
        x[idx] = acc;
    }
}
