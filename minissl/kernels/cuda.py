"""The GPU versions of minissl's kernels: CUDA C compiled at run time through CuPy.

Every function here has exactly the signature and the semantics of its NumPy reference in
``im2col``, ``pool``, ``softmax``, ``norm``, ``activation``, ``embedding`` and ``optim`` (read
the math there); it takes and returns CuPy arrays. The kernel-family modules dispatch to it for
device arrays.

How the kernels are built
-------------------------
* One CUDA source per kernel family (``_SOURCES``), written against an element type ``T``.
  ``_source(family, dtype)`` prepends ``typedef float T;`` or ``typedef double T;`` and the
  shared helpers; ``cupy.RawModule`` compiles it with NVRTC on the first call that needs it,
  and the module is kept (CuPy also caches the binary on disk), so importing this file
  imports nothing from CuPy and costs nothing on a CPU-only machine.
* Launches go through one small backend object (``_backend()``): CuPy's ``RawKernel`` in
  normal use. Every scalar argument is passed as a NumPy scalar of the C parameter's exact
  type (``np.int32`` for ``int``, ``np.int64`` for ``long long``, ``dtype.type`` for ``T``,
  ``np.float64`` for ``double``): RawKernel copies arguments by their size, so a Python int
  (sent as 8 bytes) for an ``int`` parameter would be silently wrong. The tests swap in a CPU
  emulator of the same launches (tests/test_gpu.py), which checks every argument against the
  C signature and runs the very same CUDA source on host threads, and compile every family
  with NVRTC wherever its library is installed, GPU or not.
* Only ``RawKernel``: one mechanism, explicit launch geometry, and reductions whose order is
  fixed by the code, not by a library.

Determinism and reductions
--------------------------
No kernel uses floating-point atomics, so every result is the same bit for bit on every run.
Adjoints that add many contributions into one place are written as gathers, one thread per
output element summing what reaches it in a fixed order: col2im and the pooling backwards sum
the windows covering a pixel in (i, j) order, which is exactly the order of the NumPy
reference, so they agree with it bit for bit; the embedding backward sums the gradient rows of
the positions holding a token in position order (``np.add.at``'s order) by compacting the
matches of each tile of positions with a block-wide prefix sum. Row reductions (softmax,
layer norm) use one block per row and a shared-memory tree; per-channel batch-norm statistics
and the column sums of the layer-norm weight gradient use a fixed split into chunks, one
partial per chunk, combined in chunk order by a second kernel (Welford/Chan's parallel
variance for the batch statistics, numerically stable in one pass: Chan, Golub & LeVeque,
"Algorithms for computing the sample variance", 1983). Accumulators follow the reference:
float64 where it sums in float64 (log-sum-exp, norm statistics and their adjoints), the
element type where it sums in the element type (softmax and its backward).

What differs from the CPU functions
-----------------------------------
Checks of *values* would need a device-to-host copy and a stall of the GPU in every step, so
they are not done; the kernels instead guard every memory access: a cross-entropy target
outside [0, C) that is not ``ignore_index`` gives a NaN loss and a NaN gradient row (where
the CPU raises ValueError), and an embedding index outside [0, num_embeddings) contributes
nothing to the gradient. All checks of shapes, dtypes and devices are the CPU functions' own.
Arrays of more than 2**30 elements, and dtypes other than float32/float64, take the
array-module-generic NumPy reference (correct, slower): the kernels index with 32-bit ints.
"""
import math
import re

import numpy as np

from .activation import _check_float as _check_float_any
from .activation import gelu_backward_ref, gelu_forward_ref
from .embedding import embedding_backward_ref
from .im2col import (check_array, check_shape4, col2im_ref, im2col_ref, window_geometry)
from .norm import (_check_float as _check_float_nd, _check_grad, _check_vector,
                   batch_norm_backward_ref, batch_norm_forward_ref, layer_norm_backward_ref,
                   layer_norm_forward_ref)
from .optim import adam_step_ref, sgd_step_ref
from .pool import (_check_grad_out, _pool_geometry, avg_pool2d_backward_ref,
                   avg_pool2d_forward_ref, max_pool2d_backward_ref, max_pool2d_forward_ref)
from .softmax import (_check_float, _check_same, cross_entropy_backward_ref,
                      cross_entropy_forward_ref, log_softmax_backward_ref,
                      log_softmax_forward_ref, softmax_backward_ref, softmax_forward_ref)

__all__ = [
    "im2col", "col2im", "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
    "avg_pool2d_backward", "softmax_forward", "softmax_backward", "log_softmax_forward",
    "log_softmax_backward", "cross_entropy_forward", "cross_entropy_backward",
    "layer_norm_forward", "layer_norm_backward", "batch_norm_forward", "batch_norm_backward",
    "gelu_forward", "gelu_backward", "embedding_backward", "sgd_step", "adam_step",
    "warmup", "kernel_names", "FAMILIES",
]

# ---------------------------------------------------------------------------------- launches
# Module-level so that the tests can shrink them and make every grid-stride loop, every
# block-strided row loop and every chunked reduction run more than one round.
_THREADS = 256          # threads per block of the elementwise kernels
_MAX_GRID = 1 << 20     # at most this many blocks; grid-stride loops cover the rest
_MAX_BLOCK = 256        # threads per block of the cooperative kernels (power of 2, <= 256)
_CHUNK_PER_THREAD = 16  # batch-norm statistics: values per thread of a chunk
_ROWS_PER_CHUNK = 32    # layer-norm weight gradient: rows summed by one partial
_MAX_ELEMENTS = 1 << 30  # larger arrays take the reference (32-bit indexing in the kernels)

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# ------------------------------------------------------------------------------ CUDA sources

# Shared by every family. T is typedef'd in front of this by _source().
_COMMON = r"""
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
"""

_SOURCES = {}

# im2col: one thread per entry of cols (writes are coalesced). col2im: one thread per input
# pixel, gathering the cols entries of the windows that cover it, in (i, j) order.
_SOURCES["im2col"] = r"""
extern "C" __global__ void im2col_kernel(
        const T* __restrict__ x, T* __restrict__ cols, int C, int H, int W, int kh, int kw,
        int sh, int sw, int ph, int pw, int OH, int OW, int total) {
    const int K = C * kh * kw;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int col = idx % K, row = idx / K;
        const int j = col % kw, i = (col / kw) % kh, c = col / (kh * kw);
        const int ow = row % OW, oh = (row / OW) % OH, n = row / (OW * OH);
        const int h = oh * sh - ph + i, w = ow * sw - pw + j;
        T v = (T)0;
        if (h >= 0 && h < H && w >= 0 && w < W) v = x[((n * C + c) * H + h) * W + w];
        cols[idx] = v;
    }
}

extern "C" __global__ void col2im_kernel(
        const T* __restrict__ cols, T* __restrict__ x, int C, int H, int W, int kh, int kw,
        int sh, int sw, int ph, int pw, int OH, int OW, int total) {
    const int K = C * kh * kw;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += blockDim.x * gridDim.x) {
        const int w = idx % W, h = (idx / W) % H, c = (idx / (W * H)) % C;
        const int n = idx / (W * H * C);
        T acc = (T)0;
        /* Window (oh, ow) reads pixel (h, w) at offset (i, j) iff oh sh - ph + i == h. */
        for (int i = 0; i < kh; ++i) {
            const int th = h + ph - i;
            if (th < 0) break;                 /* th only decreases with i */
            if (th % sh != 0) continue;
            const int oh = th / sh;
            if (oh >= OH) continue;
            for (int j = 0; j < kw; ++j) {
                const int tw = w + pw - j;
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
"""

# Pooling: forward one thread per output; backward one thread per input pixel (a gather over
# the windows covering it, in the reference's (i, j) order).
_SOURCES["pool"] = r"""
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
"""

# Softmax family over the rows of (M, C): one block per row, threads striding over columns.
_SOURCES["softmax"] = r"""
extern "C" __global__ void softmax_fwd_kernel(
        const T* __restrict__ x, T* __restrict__ y, int C, T neg_inf) {
    __shared__ T buf[MAX_BLOCK];
    const T* row = x + blockIdx.x * C;
    T* out = y + blockIdx.x * C;
    T m = neg_inf;
    for (int k = threadIdx.x; k < C; k += blockDim.x) m = nan_max(m, row[k]);
    m = block_max(m, buf);
    T s = (T)0;                                 /* summed in T, as the reference */
    for (int k = threadIdx.x; k < C; k += blockDim.x) s += exp(row[k] - m);
    s = block_sum_t(s, buf);
    for (int k = threadIdx.x; k < C; k += blockDim.x) out[k] = exp(row[k] - m) / s;
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

extern "C" __global__ void softmax_bwd_kernel(
        const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ dx, int C) {
    __shared__ T buf[MAX_BLOCK];
    const int base = blockIdx.x * C;
    T dot = (T)0;
    for (int k = threadIdx.x; k < C; k += blockDim.x) dot += g[base + k] * y[base + k];
    dot = block_sum_t(dot, buf);
    for (int k = threadIdx.x; k < C; k += blockDim.x)
        dx[base + k] = y[base + k] * (g[base + k] - dot);
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
"""

# Layer norm over rows (M, D): one block per row for the forward and for grad_x; the weight
# and bias gradients are column sums over rows, done in two deterministic stages.
# Batch norm over (N, C, L) per channel: chunked Welford statistics merged in chunk order.
_SOURCES["norm"] = r"""
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
"""

# Exact GELU, elementwise, in the element type (as the reference).
_SOURCES["activation"] = r"""
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
"""

# Embedding backward: block (v, dchunk) owns grad_weight[v, dchunk*B : (dchunk+1)*B]. It walks
# the positions in tiles of B, compacts the positions of the tile holding token v (block-wide
# inclusive prefix sum of the match flags, so in position order) and adds their gradient rows.
_SOURCES["embedding"] = r"""
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
"""

# Fused optimiser updates, one thread per element, the reference's operations in its order.
_SOURCES["optim"] = r"""
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
"""

FAMILIES = tuple(_SOURCES)


def _ctype(dtype):
    return {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]


def _source(family, dtype):
    """The complete CUDA source of a kernel family for an element dtype (float32/float64)."""
    return f"typedef {_ctype(dtype)} T;\n" + _COMMON + _SOURCES[family]


# ----------------------------------------------------------------------------- the backend

class _CupyBackend:
    """Compiles kernel families lazily with NVRTC (``cupy.RawModule``) and launches them on the
    current CUDA device and stream (so launches are captured by CUDA-graph stream capture)."""

    name = "cupy"

    def __init__(self):
        from ..backend import cupy
        self.xp = cupy()
        self._modules = {}
        self._functions = {}

    def is_device_array(self, a):
        return isinstance(a, self.xp.ndarray)

    def module(self, family, dtype):
        key = (family, np.dtype(dtype))
        mod = self._modules.get(key)
        if mod is None:
            mod = self._modules[key] = self.xp.RawModule(code=_source(family, dtype))
        return mod

    def kernel(self, family, name, dtype):
        """The ``cupy.RawKernel`` ``name``, called as ``k(grid, block, args)``."""
        key = (family, name, np.dtype(dtype))
        fn = self._functions.get(key)
        if fn is None:
            fn = self._functions[key] = self.module(family, dtype).get_function(name)
        return fn


_BACKEND = None


def _backend():
    global _BACKEND
    if _BACKEND is None:
        _BACKEND = _CupyBackend()
    return _BACKEND


def _set_backend(backend):
    """Swap the launch backend (the tests' CPU emulator); returns the previous one."""
    global _BACKEND
    prev, _BACKEND = _BACKEND, backend
    return prev


def kernel_names(family):
    """The names of the ``__global__`` functions of a kernel family."""
    return re.findall(r"__global__\s+void\s+(\w+)\s*\(", _SOURCES[family])


def warmup(families=FAMILIES, dtypes=(np.float32,)):
    """Compile and load every kernel of the given families now (e.g. before capturing a CUDA
    graph, so that no module is compiled or loaded during the capture)."""
    be = _backend()
    for fam in families:
        for dt in dtypes:
            for name in kernel_names(fam):
                be.kernel(fam, name, dt)


# ----------------------------------------------------------------------------- helpers

def _i32(v):
    return np.int32(v)


def _i64(v):
    return np.int64(v)


def _f64(v):
    return np.float64(v)


def _grid(n):
    """Blocks for n elements with _THREADS threads each (the kernels loop over the rest)."""
    return (max(1, min(-(-n // _THREADS), _MAX_GRID)),)


def _coop_block(work):
    """Threads of a cooperative block for ``work`` items per block: a power of two, at least
    a warp (or _MAX_BLOCK when smaller), at most _MAX_BLOCK."""
    b = min(32, _MAX_BLOCK)
    while b < work and b < _MAX_BLOCK:
        b *= 2
    return b


def _on_device(fname, **arrays):
    """The backend, after checking that every array is a device array of it."""
    be = _backend()
    for name, a in arrays.items():
        if a is not None and not be.is_device_array(a):
            raise TypeError(f"{fname}: {name} must be a CuPy array (this is the GPU kernel), "
                            f"got {type(a).__module__}.{type(a).__name__}")
    return be


def _kernel_ok(*arrays):
    """Whether the CUDA kernels apply: one float32/float64 dtype, sizes that fit int32."""
    dt = arrays[0].dtype
    return (dt in _KERNEL_DTYPES and all(a.dtype == dt for a in arrays)
            and all(a.size <= _MAX_ELEMENTS for a in arrays))


def _contig(xp, a, dtype=None):
    """``a`` as a C-contiguous array (of ``dtype``), with its shape: ``ascontiguousarray``
    alone turns a 0-d array into a 1-d one, in NumPy and in CuPy."""
    return xp.ascontiguousarray(a, dtype=dtype).reshape(a.shape)


# ----------------------------------------------------------------------------- im2col

def im2col(x, kernel_size, stride, padding):
    """GPU :func:`minissl.kernels.im2col.im2col`: cols (N OH OW, C kh kw) of x (N, C, H, W)."""
    check_array("im2col", "x", x, 4)
    ks, st, pad, (oh, ow) = window_geometry("im2col", x.shape, kernel_size, stride, padding)
    (kh, kw), (sh, sw), (ph, pw) = ks, st, pad
    be = _on_device("im2col", x=x)
    xp = be.xp
    n, c, h, w = x.shape
    shape = (n * oh * ow, c * kh * kw)
    total = shape[0] * shape[1]
    if not _kernel_ok(x) or total > _MAX_ELEMENTS:
        return im2col_ref(x, ks, st, pad)
    cols = xp.empty(shape, dtype=x.dtype)
    if total:
        k = be.kernel("im2col", "im2col_kernel", x.dtype)
        k(_grid(total), (_THREADS,), (_contig(xp, x), cols, _i32(c), _i32(h), _i32(w),
                                      _i32(kh), _i32(kw), _i32(sh), _i32(sw), _i32(ph),
                                      _i32(pw), _i32(oh), _i32(ow), _i32(total)))
    return cols


def col2im(cols, x_shape, kernel_size, stride, padding):
    """GPU :func:`minissl.kernels.im2col.col2im` (the adjoint of im2col), as a gather."""
    check_array("col2im", "cols", cols, 2)
    x_shape = check_shape4("col2im", "x_shape", x_shape)
    ks, st, pad, (oh, ow) = window_geometry("col2im", x_shape, kernel_size, stride, padding)
    (kh, kw), (sh, sw), (ph, pw) = ks, st, pad
    n, c, h, w = x_shape
    expected = (n * oh * ow, c * kh * kw)
    if cols.shape != expected:
        raise ValueError(f"col2im: cols has shape {cols.shape}, expected {expected} for "
                         f"x_shape={x_shape}, kernel_size={ks}, stride={st}, padding={pad}")
    be = _on_device("col2im", cols=cols)
    xp = be.xp
    total = n * c * h * w
    if not _kernel_ok(cols) or total > _MAX_ELEMENTS:
        return col2im_ref(cols, x_shape, ks, st, pad)
    x = xp.empty(x_shape, dtype=cols.dtype)
    if total:
        k = be.kernel("im2col", "col2im_kernel", cols.dtype)
        k(_grid(total), (_THREADS,), (_contig(xp, cols), x, _i32(c), _i32(h), _i32(w),
                                      _i32(kh), _i32(kw), _i32(sh), _i32(sw), _i32(ph),
                                      _i32(pw), _i32(oh), _i32(ow), _i32(total)))
    return x


# ----------------------------------------------------------------------------- pooling

def _geometry_args(x_shape, ks, st, pad, out_hw):
    return (_i32(x_shape[2]), _i32(x_shape[3]), _i32(ks[0]), _i32(ks[1]), _i32(st[0]),
            _i32(st[1]), _i32(pad[0]), _i32(pad[1]), _i32(out_hw[0]), _i32(out_hw[1]))


def max_pool2d_forward(x, kernel_size, stride, padding):
    """GPU :func:`minissl.kernels.pool.max_pool2d_forward` -> (out, argmax int64)."""
    fname = "max_pool2d_forward"
    check_array(fname, "x", x, 4)
    ks, st, pad, out_hw = _pool_geometry(fname, x.shape, kernel_size, stride, padding)
    be = _on_device(fname, x=x)
    xp = be.xp
    shape = (x.shape[0], x.shape[1], *out_hw)
    if not _kernel_ok(x):
        return max_pool2d_forward_ref(x, ks, st, pad)
    out = xp.empty(shape, dtype=x.dtype)
    argmax = xp.empty(shape, dtype=np.int64)
    total = out.size
    if total:
        k = be.kernel("pool", "max_pool_fwd_kernel", x.dtype)
        k(_grid(total), (_THREADS,), (_contig(xp, x), out, argmax,
                                      *_geometry_args(x.shape, ks, st, pad, out_hw),
                                      x.dtype.type(-np.inf), _i32(total)))
    return out, argmax


def max_pool2d_backward(grad_out, argmax, x_shape, kernel_size, stride, padding):
    """GPU :func:`minissl.kernels.pool.max_pool2d_backward`, a gather over input pixels."""
    fname = "max_pool2d_backward"
    check_array(fname, "grad_out", grad_out, 4)
    be = _on_device(fname, grad_out=grad_out, argmax=argmax)
    check_array(fname, "argmax", argmax, 4, floating=False)
    if argmax.dtype != np.int64:
        raise TypeError(f"{fname}: argmax must be int64, got {argmax.dtype}")
    x_shape = check_shape4(fname, "x_shape", x_shape)
    ks, st, pad, out_hw = _pool_geometry(fname, x_shape, kernel_size, stride, padding)
    _check_grad_out(fname, grad_out, x_shape, out_hw)
    if argmax.shape != grad_out.shape:
        raise ValueError(f"{fname}: argmax has shape {argmax.shape}, expected grad_out's "
                         f"{grad_out.shape}")
    xp = be.xp
    total = int(np.prod(x_shape))
    if not _kernel_ok(grad_out) or total > _MAX_ELEMENTS:
        return max_pool2d_backward_ref(grad_out, argmax, x_shape, ks, st, pad)
    grad_x = xp.empty(x_shape, dtype=grad_out.dtype)
    if total:
        k = be.kernel("pool", "max_pool_bwd_kernel", grad_out.dtype)
        k(_grid(total), (_THREADS,), (_contig(xp, grad_out), _contig(xp, argmax), grad_x,
                                      *_geometry_args(x_shape, ks, st, pad, out_hw),
                                      _i32(total)))
    return grad_x


def avg_pool2d_forward(x, kernel_size, stride, padding):
    """GPU :func:`minissl.kernels.pool.avg_pool2d_forward` (count_include_pad=True)."""
    fname = "avg_pool2d_forward"
    check_array(fname, "x", x, 4)
    ks, st, pad, out_hw = _pool_geometry(fname, x.shape, kernel_size, stride, padding)
    be = _on_device(fname, x=x)
    xp = be.xp
    if not _kernel_ok(x):
        return avg_pool2d_forward_ref(x, ks, st, pad)
    out = xp.empty((x.shape[0], x.shape[1], *out_hw), dtype=x.dtype)
    total = out.size
    if total:
        k = be.kernel("pool", "avg_pool_fwd_kernel", x.dtype)
        k(_grid(total), (_THREADS,), (_contig(xp, x), out,
                                      *_geometry_args(x.shape, ks, st, pad, out_hw),
                                      _i32(total)))
    return out


def avg_pool2d_backward(grad_out, x_shape, kernel_size, stride, padding):
    """GPU :func:`minissl.kernels.pool.avg_pool2d_backward`, a gather over input pixels."""
    fname = "avg_pool2d_backward"
    check_array(fname, "grad_out", grad_out, 4)
    x_shape = check_shape4(fname, "x_shape", x_shape)
    ks, st, pad, out_hw = _pool_geometry(fname, x_shape, kernel_size, stride, padding)
    _check_grad_out(fname, grad_out, x_shape, out_hw)
    be = _on_device(fname, grad_out=grad_out)
    xp = be.xp
    total = int(np.prod(x_shape))
    if not _kernel_ok(grad_out) or total > _MAX_ELEMENTS:
        return avg_pool2d_backward_ref(grad_out, x_shape, ks, st, pad)
    grad_x = xp.empty(x_shape, dtype=grad_out.dtype)
    if total:
        k = be.kernel("pool", "avg_pool_bwd_kernel", grad_out.dtype)
        k(_grid(total), (_THREADS,), (_contig(xp, grad_out), grad_x,
                                      *_geometry_args(x_shape, ks, st, pad, out_hw),
                                      _i32(total)))
    return grad_x


# ----------------------------------------------------------------------------- softmax

def _rows(fname, kernel_name, names, make_args, reference, x, *extra):
    """Launch a one-block-per-row kernel of the softmax family on (M, C) arrays ``x, *extra``
    (called ``names``), or the reference for what the kernels do not cover."""
    be = _on_device(fname, **dict(zip(names, (x, *extra))))
    if not _kernel_ok(x, *extra) or x.size == 0:
        return reference(x, *extra)
    xp = be.xp
    m, c = x.shape
    out = xp.empty((m, c), dtype=x.dtype)
    k = be.kernel("softmax", kernel_name, x.dtype)
    k((m,), (_coop_block(c),), make_args(xp, out, x, *extra))
    return out


def softmax_forward(x):
    """GPU :func:`minissl.kernels.softmax.softmax_forward`: softmax over the rows of (M, C)."""
    fn = "softmax_forward"
    _check_float(fn, "x", x, ndim=2)
    return _rows(fn, "softmax_fwd_kernel", ("x",),
                 lambda xp, y, x: (_contig(xp, x), y, _i32(x.shape[1]), x.dtype.type(-np.inf)),
                 softmax_forward_ref, x)


def log_softmax_forward(x):
    """GPU :func:`minissl.kernels.softmax.log_softmax_forward` over the rows of (M, C)."""
    fn = "log_softmax_forward"
    _check_float(fn, "x", x, ndim=2)
    return _rows(fn, "log_softmax_fwd_kernel", ("x",),
                 lambda xp, y, x: (_contig(xp, x), y, _i32(x.shape[1]), x.dtype.type(-np.inf)),
                 log_softmax_forward_ref, x)


def softmax_backward(grad_y, y):
    """GPU :func:`minissl.kernels.softmax.softmax_backward`: y * (g - sum(g * y, -1))."""
    fn = "softmax_backward"
    _check_float(fn, "grad_y", grad_y, ndim=2)
    _check_float(fn, "y", y, ndim=2)
    _check_same(fn, ("grad_y", "y"), (grad_y, y))
    return _rows(fn, "softmax_bwd_kernel", ("grad_y", "y"),
                 lambda xp, dx, g, y: (_contig(xp, g), _contig(xp, y), dx, _i32(g.shape[1])),
                 softmax_backward_ref, grad_y, y)


def log_softmax_backward(grad_y, y_log):
    """GPU :func:`minissl.kernels.softmax.log_softmax_backward`: g - exp(y) * sum(g, -1)."""
    fn = "log_softmax_backward"
    _check_float(fn, "grad_y", grad_y, ndim=2)
    _check_float(fn, "y_log", y_log, ndim=2)
    _check_same(fn, ("grad_y", "y_log"), (grad_y, y_log))
    return _rows(fn, "log_softmax_bwd_kernel", ("grad_y", "y_log"),
                 lambda xp, dx, g, y: (_contig(xp, g), _contig(xp, y), dx, _i32(g.shape[1])),
                 log_softmax_backward_ref, grad_y, y_log)


def _check_target_meta(fn, target, logits):
    """dtype and shape of the target; its values are checked in the kernel (see module)."""
    if not hasattr(target, "dtype") or target.dtype.kind not in "iu":
        raise TypeError(f"{fn}: target must be an integer array, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    n = logits.shape[0]
    if target.shape != (n,):
        raise ValueError(f"{fn}: target must have shape ({n},) for logits of shape "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")


def cross_entropy_forward(logits, target, ignore_index=-100):
    """GPU :func:`minissl.kernels.softmax.cross_entropy_forward` -> (loss, lse float64).

    A target outside [0, C) that is not ``ignore_index`` gives a NaN loss (no ValueError: that
    check would need a device-to-host copy).
    """
    fn = "cross_entropy_forward"
    _check_float(fn, "logits", logits, ndim=2)
    _check_target_meta(fn, target, logits)
    be = _on_device(fn, logits=logits, target=target)
    if not _kernel_ok(logits) or logits.size == 0:
        return cross_entropy_forward_ref(logits, target, ignore_index)
    xp = be.xp
    n, c = logits.shape
    loss = xp.empty(n, dtype=logits.dtype)
    lse = xp.empty(n, dtype=np.float64)
    k = be.kernel("softmax", "cross_entropy_fwd_kernel", logits.dtype)
    t = logits.dtype.type
    k((n,), (_coop_block(c),), (_contig(xp, logits), _contig(xp, target, np.int64), loss, lse,
                                _i32(c), _i64(ignore_index), t(-np.inf), t(np.nan)))
    return loss, lse


def cross_entropy_backward(grad_loss, logits, target, lse, ignore_index=-100):
    """GPU :func:`minissl.kernels.softmax.cross_entropy_backward`: g (softmax - onehot)."""
    fn = "cross_entropy_backward"
    _check_float(fn, "logits", logits, ndim=2)
    _check_float(fn, "grad_loss", grad_loss, ndim=1)
    _check_float(fn, "lse", lse, ndim=1)
    n = logits.shape[0]
    if grad_loss.shape != (n,) or lse.shape != (n,):
        raise ValueError(f"{fn}: grad_loss and lse must have shape ({n},) for logits of shape "
                         f"{tuple(logits.shape)}, got {tuple(grad_loss.shape)} and "
                         f"{tuple(lse.shape)}")
    _check_target_meta(fn, target, logits)
    be = _on_device(fn, grad_loss=grad_loss, logits=logits, target=target, lse=lse)
    if not _kernel_ok(logits) or logits.size == 0:
        return cross_entropy_backward_ref(grad_loss, logits, target, lse, ignore_index)
    xp = be.xp
    c = logits.shape[1]
    total = logits.size
    grad = xp.empty(logits.shape, dtype=logits.dtype)
    k = be.kernel("softmax", "cross_entropy_bwd_kernel", logits.dtype)
    k(_grid(total), (_THREADS,), (_contig(xp, grad_loss, logits.dtype), _contig(xp, logits),
                                  _contig(xp, target, np.int64), _contig(xp, lse, np.float64),
                                  grad, _i32(c), _i64(ignore_index), logits.dtype.type(np.nan),
                                  _i32(total)))
    return grad


# ----------------------------------------------------------------------------- norms

def _optional(xp, a, like):
    """(array to pass, flag): an absent weight or bias is passed as a dummy never read."""
    return (like, _i32(0)) if a is None else (_contig(xp, a), _i32(1))


def layer_norm_forward(x, weight=None, bias=None, eps=1e-5):
    """GPU :func:`minissl.kernels.norm.layer_norm_forward` -> (y, mean, rstd)."""
    fn = "layer_norm_forward"
    _check_float_nd(fn, "x", x, 2)
    _check_vector(fn, "weight", weight, x.shape[1], x)
    _check_vector(fn, "bias", bias, x.shape[1], x)
    be = _on_device(fn, x=x, weight=weight, bias=bias)
    if not _kernel_ok(x) or x.size == 0:
        return layer_norm_forward_ref(x, weight, bias, eps)
    xp = be.xp
    m, d = x.shape
    x = _contig(xp, x)
    y = xp.empty_like(x)
    mean = xp.empty(m, dtype=x.dtype)
    rstd = xp.empty(m, dtype=x.dtype)
    w, has_w = _optional(xp, weight, x)
    b, has_b = _optional(xp, bias, x)
    k = be.kernel("norm", "layer_norm_fwd_kernel", x.dtype)
    k((m,), (_coop_block(d),), (x, w, b, has_w, has_b, y, mean, rstd, _i32(d), _f64(eps)))
    return y, mean, rstd


def layer_norm_backward(grad_y, x, mean, rstd, weight=None):
    """GPU :func:`minissl.kernels.norm.layer_norm_backward` -> (dx, dw or None, db)."""
    fn = "layer_norm_backward"
    _check_float_nd(fn, "x", x, 2)
    _check_grad(fn, grad_y, x)
    if mean is None or rstd is None:
        raise TypeError(f"{fn}: mean and rstd are required (the forward's results)")
    _check_vector(fn, "mean", mean, x.shape[0], x, dtype=False)
    _check_vector(fn, "rstd", rstd, x.shape[0], x, dtype=False)
    _check_vector(fn, "weight", weight, x.shape[1], x)
    be = _on_device(fn, grad_y=grad_y, x=x, mean=mean, rstd=rstd, weight=weight)
    if not _kernel_ok(x, grad_y) or x.size == 0:
        return layer_norm_backward_ref(grad_y, x, mean, rstd, weight)
    xp = be.xp
    m, d = x.shape
    g, x = _contig(xp, grad_y), _contig(xp, x)
    mean_d, rstd_d = _contig(xp, mean, np.float64), _contig(xp, rstd, np.float64)
    w, has_w = _optional(xp, weight, x)
    dx = xp.empty_like(x)
    k = be.kernel("norm", "layer_norm_bwd_dx_kernel", x.dtype)
    k((m,), (_coop_block(d),), (g, x, mean_d, rstd_d, w, has_w, dx, _i32(d)))
    # Column sums: R partials of _ROWS_PER_CHUNK rows each, then R partials per column.
    rpc = _ROWS_PER_CHUNK
    r = -(-m // rpc)
    part_w = xp.empty((r, d), dtype=np.float64)
    part_b = xp.empty((r, d), dtype=np.float64)
    k = be.kernel("norm", "layer_norm_bwd_partial_kernel", x.dtype)
    k(_grid(r * d), (_THREADS,), (g, x, mean_d, rstd_d, part_w, part_b, _i32(m), _i32(d),
                                  _i32(rpc), _i32(r * d)))
    db = xp.empty(d, dtype=x.dtype)
    dw = None if weight is None else xp.empty(d, dtype=x.dtype)
    k = be.kernel("norm", "column_finish_kernel", x.dtype)
    k(_grid(d), (_THREADS,), (part_w, part_b, db if dw is None else dw, db, has_w, _i32(r),
                              _i32(d)))
    return dx, dw, db


def _bn_chunks(count):
    """(chunk, S): each channel's ``count`` values split into S chunks of ``chunk`` values."""
    chunk = _coop_block(count) * _CHUNK_PER_THREAD
    return chunk, max(1, -(-count // chunk))


def batch_norm_forward(x, weight=None, bias=None, eps=1e-5):
    """GPU :func:`minissl.kernels.norm.batch_norm_forward` on x (N, C, L) -> (y, mean, var,
    rstd) with batch statistics per channel."""
    fn = "batch_norm_forward"
    _check_float_nd(fn, "x", x, 3)
    _check_vector(fn, "weight", weight, x.shape[1], x)
    _check_vector(fn, "bias", bias, x.shape[1], x)
    if x.shape[0] * x.shape[2] == 0 and x.shape[1] > 0:
        raise ValueError(f"{fn}: batch statistics need at least one value per channel, got x "
                         f"of shape {tuple(x.shape)}")
    be = _on_device(fn, x=x, weight=weight, bias=bias)
    if not _kernel_ok(x) or x.size == 0:
        return batch_norm_forward_ref(x, weight, bias, eps)
    xp = be.xp
    n, c, l_ = x.shape
    x = _contig(xp, x)
    count = n * l_
    chunk, s = _bn_chunks(count)
    parts = [xp.empty(c * s, dtype=np.float64) for _ in range(3)]
    k = be.kernel("norm", "batch_norm_stats_partial_kernel", x.dtype)
    k((c * s,), (_coop_block(min(count, chunk)),),
      (x, *parts, _i32(c), _i32(l_), _i32(s), _i32(chunk), _i32(count)))
    mean, var, rstd = (xp.empty(c, dtype=x.dtype) for _ in range(3))
    mean_d = xp.empty(c, dtype=np.float64)
    rstd_d = xp.empty(c, dtype=np.float64)
    k = be.kernel("norm", "batch_norm_stats_finish_kernel", x.dtype)
    k(_grid(c), (_THREADS,), (*parts, mean, var, rstd, mean_d, rstd_d, _i32(c), _i32(s),
                              _f64(eps)))
    w, has_w = _optional(xp, weight, x)
    b, has_b = _optional(xp, bias, x)
    y = xp.empty_like(x)
    k = be.kernel("norm", "batch_norm_apply_kernel", x.dtype)
    k(_grid(x.size), (_THREADS,), (x, mean_d, rstd_d, w, b, has_w, has_b, y, _i32(c),
                                   _i32(l_), _i32(x.size)))
    return y, mean, var, rstd


def batch_norm_backward(grad_y, x, mean, rstd, weight=None):
    """GPU :func:`minissl.kernels.norm.batch_norm_backward` -> (dx, dw or None, db)."""
    fn = "batch_norm_backward"
    _check_float_nd(fn, "x", x, 3)
    _check_grad(fn, grad_y, x)
    if mean is None or rstd is None:
        raise TypeError(f"{fn}: mean and rstd are required (the forward's results)")
    _check_vector(fn, "mean", mean, x.shape[1], x, dtype=False)
    _check_vector(fn, "rstd", rstd, x.shape[1], x, dtype=False)
    _check_vector(fn, "weight", weight, x.shape[1], x)
    be = _on_device(fn, grad_y=grad_y, x=x, mean=mean, rstd=rstd, weight=weight)
    if not _kernel_ok(x, grad_y) or x.size == 0:
        return batch_norm_backward_ref(grad_y, x, mean, rstd, weight)
    xp = be.xp
    n, c, l_ = x.shape
    g, x = _contig(xp, grad_y), _contig(xp, x)
    mean_d, rstd_d = _contig(xp, mean, np.float64), _contig(xp, rstd, np.float64)
    count = n * l_
    chunk, s = _bn_chunks(count)
    part_g = xp.empty(c * s, dtype=np.float64)
    part_gx = xp.empty(c * s, dtype=np.float64)
    k = be.kernel("norm", "batch_norm_bwd_partial_kernel", x.dtype)
    k((c * s,), (_coop_block(min(count, chunk)),),
      (g, x, mean_d, rstd_d, part_g, part_gx, _i32(c), _i32(l_), _i32(s), _i32(chunk),
       _i32(count)))
    db = xp.empty(c, dtype=x.dtype)
    dw = None if weight is None else xp.empty(c, dtype=x.dtype)
    w, has_w = _optional(xp, weight, x)
    sg_d = xp.empty(c, dtype=np.float64)
    sgx_d = xp.empty(c, dtype=np.float64)
    k = be.kernel("norm", "batch_norm_bwd_finish_kernel", x.dtype)
    k(_grid(c), (_THREADS,), (part_g, part_gx, db if dw is None else dw, db, has_w, sg_d,
                              sgx_d, _i32(c), _i32(s)))
    dx = xp.empty_like(x)
    k = be.kernel("norm", "batch_norm_bwd_apply_kernel", x.dtype)
    k(_grid(x.size), (_THREADS,), (g, x, mean_d, rstd_d, w, has_w, sg_d, sgx_d,
                                   _f64(max(count, 1)), dx, _i32(c), _i32(l_), _i32(x.size)))
    return dx, dw, db


# ----------------------------------------------------------------------------- GELU

def gelu_forward(x):
    """GPU :func:`minissl.kernels.activation.gelu_forward`: 0.5 x (1 + erf(x / sqrt 2))."""
    _check_float_any("gelu_forward", "x", x)
    be = _on_device("gelu_forward", x=x)
    if not _kernel_ok(x) or x.size == 0:
        return gelu_forward_ref(x)
    xp = be.xp
    x = _contig(xp, x)
    y = xp.empty_like(x)
    k = be.kernel("activation", "gelu_fwd_kernel", x.dtype)
    k(_grid(x.size), (_THREADS,), (x, y, _i32(x.size)))
    return y


def gelu_backward(grad_y, x):
    """GPU :func:`minissl.kernels.activation.gelu_backward`: g (Phi(x) + x phi(x))."""
    fn = "gelu_backward"
    _check_float_any(fn, "grad_y", grad_y)
    _check_float_any(fn, "x", x)
    if grad_y.shape != x.shape:
        raise ValueError(f"{fn}: grad_y and x must have the same shape, got "
                         f"{tuple(grad_y.shape)} and {tuple(x.shape)}")
    if grad_y.dtype != x.dtype:
        raise TypeError(f"{fn}: grad_y and x must have the same dtype, got {grad_y.dtype} "
                        f"and {x.dtype}")
    be = _on_device(fn, grad_y=grad_y, x=x)
    if not _kernel_ok(x) or x.size == 0:
        return gelu_backward_ref(grad_y, x)
    xp = be.xp
    g, x = _contig(xp, grad_y), _contig(xp, x)
    dx = xp.empty_like(x)
    k = be.kernel("activation", "gelu_bwd_kernel", x.dtype)
    k(_grid(x.size), (_THREADS,), (g, x, dx, _i32(x.size)))
    return dx


# ----------------------------------------------------------------------------- embedding

def embedding_backward(indices, grad_out, num_embeddings):
    """GPU :func:`minissl.kernels.embedding.embedding_backward`: grad_weight (V, D), row v the
    sum of grad_out over the positions holding v, in position order (deterministic).

    Indices outside [0, num_embeddings) contribute nothing (the CPU raises; checking would
    need a device-to-host copy).
    """
    fn = "embedding_backward"
    from .embedding import check_args        # the CPU checks, which read no device data
    v = check_args(indices, grad_out, num_embeddings)
    be = _on_device(fn, indices=indices, grad_out=grad_out)
    xp = be.xp
    d = grad_out.shape[-1]
    p = indices.size
    if not _kernel_ok(grad_out) or v * d > _MAX_ELEMENTS:
        return embedding_backward_ref(indices, grad_out, v)
    grad_weight = xp.empty((v, d), dtype=grad_out.dtype)
    if v * d == 0:
        return grad_weight
    if p == 0:
        grad_weight[...] = 0
        return grad_weight
    # One block size serves as the tile of positions and as the slice of columns per block.
    block = _coop_block(max(p, d))
    k = be.kernel("embedding", "embedding_bwd_kernel", grad_out.dtype)
    k((v, -(-d // block)), (block,), (_contig(xp, indices, np.int64).reshape(-1),
                                      _contig(xp, grad_out).reshape(p, d), grad_weight,
                                      _i32(p), _i32(d)))
    return grad_weight


# ----------------------------------------------------------------------------- optimisers

# The CPU checks serve here too (shapes and dtypes; CuPy flags have no writeable).
from .optim import _check_arrays as _check_optim_arrays  # noqa: E402


def _in_place_ok(*arrays):
    """The fused kernels update C-contiguous arrays; views take the reference, which updates
    them in place whatever their strides."""
    return _kernel_ok(*arrays) and all(a.flags.c_contiguous for a in arrays)


def sgd_step(param, grad, momentum_buf, lr, momentum, dampening, weight_decay, nesterov,
             first_step):
    """GPU :func:`minissl.kernels.optim.sgd_step`: one fused SGD update, in place."""
    fn = "sgd_step"
    named = [("grad", grad)]
    if momentum != 0:
        if momentum_buf is None:
            raise ValueError(f"{fn}: momentum = {momentum} needs a momentum_buf of param's "
                             f"shape {tuple(getattr(param, 'shape', ()))}")
        named.append(("momentum_buf", momentum_buf))
    _check_optim_arrays(fn, param, named)
    bufs = (momentum_buf,) if momentum != 0 else ()
    be = _on_device(fn, param=param, grad=grad, momentum_buf=bufs[0] if bufs else None)
    if not _in_place_ok(param, *bufs) or param.size == 0:
        sgd_step_ref(param, grad, momentum_buf, lr, momentum, dampening, weight_decay,
                     nesterov, first_step)
        return
    xp = be.xp
    t = param.dtype.type
    k = be.kernel("optim", "sgd_kernel", param.dtype)
    k(_grid(param.size), (_THREADS,), (param, _contig(xp, grad), bufs[0] if bufs else param,
                                       _i32(param.size), t(lr), t(momentum),
                                       t(1 - dampening), t(weight_decay),
                                       _i32(weight_decay != 0), _i32(momentum != 0),
                                       _i32(bool(nesterov)), _i32(bool(first_step))))


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
              decoupled):
    """GPU :func:`minissl.kernels.optim.adam_step`: one fused Adam/AdamW update, in place."""
    fn = "adam_step"
    _check_optim_arrays(fn, param, [("grad", grad), ("exp_avg", exp_avg),
                                    ("exp_avg_sq", exp_avg_sq)])
    if int(step) != step or step < 1:
        raise ValueError(f"{fn}: step counts updates from 1, got {step!r}")
    be = _on_device(fn, param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    if not _in_place_ok(param, exp_avg, exp_avg_sq) or param.size == 0:
        adam_step_ref(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps,
                      weight_decay, decoupled)
        return
    xp = be.xp
    t = param.dtype.type
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    k = be.kernel("optim", "adam_kernel", param.dtype)
    k(_grid(param.size), (_THREADS,), (param, _contig(xp, grad), exp_avg, exp_avg_sq,
                                       _i32(param.size), t(lr / bias_correction1),
                                       t(math.sqrt(bias_correction2)), t(1 - beta1), t(beta2),
                                       t(1 - beta2), t(eps), t(1 - lr * weight_decay),
                                       t(weight_decay),
                                       _i32(weight_decay != 0 and bool(decoupled)),
                                       _i32(weight_decay != 0 and not decoupled)))
