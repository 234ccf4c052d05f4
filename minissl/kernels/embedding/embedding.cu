/* CUDA kernels of the embedding family, written against the element type T (float or
   double). Compiled at run time by NVRTC through CuPy: minissl/kernels/cuda.py prepends
   the typedef of T and common.cuh. The launchers are in cuda.py beside this file. */
/* Embedding backward: block (v, dchunk) owns grad_weight[v, dchunk*B : (dchunk+1)*B]. It walks
   the positions in tiles of B, compacts the positions of the tile holding token v (block-wide
   inclusive prefix sum of the match flags, so in position order) and adds their gradient rows. */
extern "C" __global__ void embedding_bwd_kernel(
        const long long* __restrict__ idx, const T* __restrict__ g, T* __restrict__ gw,
        int P, int D) {
    __shared__ int scan[MAX_BLOCK];
    __shared__ int pos[MAX_BLOCK];
    const int t = threadIdx.x, B = blockDim.x;
    const long long v = blockIdx.x;
    const int d = blockIdx.y * B + t;
    T acc = (T)0;
    for (int base = 0; base < P; base += B) {
        const int p = base + t;
        const int f = (p < P && idx[p] == v) ? 1 : 0;
        scan[t] = f;
        __syncthreads();
        for (int off = 1; off < B; off <<= 1) {  /* Hillis-Steele inclusive scan */
            const int add = (t >= off) ? scan[t - off] : 0;
            __syncthreads();
            scan[t] += add;
            __syncthreads();
        }
        if (f) pos[scan[t] - 1] = p;
        const int count = scan[B - 1];
        __syncthreads();
        if (d < D)
            for (int k = 0; k < count; ++k) acc += g[pos[k] * D + d];
        __syncthreads();                        /* before the next tile overwrites pos */
    }
    if (d < D) gw[blockIdx.x * D + d] = acc;
}
