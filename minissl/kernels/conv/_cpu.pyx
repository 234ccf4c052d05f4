# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython kernel: 2-D convolution image by image, each image's windows unfolded into a
cache-sized buffer and multiplied there by one single-threaded BLAS call (the kernels of
minissl.kernels.conv; the math and the contract are in __init__.py).

Per image n (one thread owns it):
1. Stage: xs = x[n] zero-padded and split by column phase modulo the stride sw,
       xs[c, h, r, q] = x_pad[c, h, q sw + r]
   so that every window tap (i, j) reads, for a row oh of the output, ONE contiguous run:
       x_pad[c, oh sh + i dh, ow sw + j dw] = xs[c, oh sh + i dh, (j dw) % sw, ow + (j dw) // sw]
   for ow = 0 .. OW-1 (a memcpy of OW values, whatever the stride and dilation).
2. Unfold a block of output rows oh0 .. oh1-1 as colsT (C kh kw, (oh1 - oh0) OW): row (c, i, j)
   holds the tap's runs, one per output row (the transpose of im2col's rows, per image).
3. Forward: Y_n[:, block] = W colsT (O x CK by CK x rows OW), written straight into y[n]
   (NCHW), plus the bias.
   Backward: dW += G_n[:, block] colsT^T into the image chunk's accumulator; dcolsT = W^T
   G_n[:, block], whose runs are added back into the phase-split gradient buffer (the
   adjoint of steps 1-2), which is then unsplit into dx[n].
The blocks keep colsT within BLOCK_BYTES, so it stays in the core's cache between the unfold
and the product. The copies of steps 1-2 and the adds of their adjoint are C loops (conv.h,
conv_impl.h) built for AVX-512, AVX2 and baseline x86-64 and picked at load time; a stride-2
row is split into its two phases in one interleaved pass. Each dx[n] is computed by one
thread in one fixed order; dW's images are summed in chunks fixed by the shape (not by the
threads), then the chunks in order: the bits do not depend on the number of threads.
"""
cimport numpy as cnp
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

cnp.import_array()

include "minissl_threads.pxi"

from minissl_blas cimport NO_TRANS, ROW_MAJOR, TRANS, dgemm_t, set_local_t, sgemm_t

cdef extern from "conv.h":
    void mssl_conv_unfold_tap_f32(const float* src, int64_t stride, float* tap, int64_t rows,
                                  int64_t n) noexcept nogil
    void mssl_conv_unfold_tap_f64(const double* src, int64_t stride, double* tap, int64_t rows,
                                  int64_t n) noexcept nogil
    void mssl_conv_fold_tap_f32(float* dst, int64_t stride, const float* tap, int64_t rows,
                                int64_t n) noexcept nogil
    void mssl_conv_fold_tap_f64(double* dst, int64_t stride, const double* tap, int64_t rows,
                                int64_t n) noexcept nogil
    void mssl_conv_split2_f32(float* row, float* p0, float* p1, int64_t w, int64_t pw,
                              int to_phases) noexcept nogil
    void mssl_conv_split2_f64(double* row, double* p0, double* p1, int64_t w, int64_t pw,
                              int to_phases) noexcept nogil

cdef sgemm_t SGEMM = NULL
cdef dgemm_t DGEMM = NULL
cdef set_local_t SET_LOCAL = NULL
# The unfolded block of one image, colsT (C kh kw, rows OW), is kept at about this size, so that
# it stays in a core's cache between the unfold and the product (L2 is 1-2 MiB a core on
# today's x86; 128 KiB to 4 MiB measured within noise of each other, docs/performance.md).
cdef int64_t BLOCK_BYTES = 256 * 1024


def bind(size_t sgemm, size_t dgemm, size_t set_local):
    """Store the addresses of ``cblas_sgemm``, ``cblas_dgemm`` (64-bit integer interface) and
    ``openblas_set_num_threads_local`` of the BLAS NumPy loaded (found by kernels/gemm)."""
    global SGEMM, DGEMM, SET_LOCAL
    if not sgemm or not dgemm or not set_local:
        raise ValueError("minissl.kernels.conv._cpu.bind: null function address")
    SGEMM, DGEMM, SET_LOCAL = <sgemm_t>sgemm, <dgemm_t>dgemm, <set_local_t>set_local


ctypedef fused real:
    float
    double


cdef struct Geo:
    int64_t N, C, H, W, O, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw
    int64_t Hp, Wq, CK, P, rows, blocks     # padded height, phase width, C kh kw, OH OW, block rows


cdef inline void _gemm(int ta, int tb, int64_t m, int64_t n, int64_t k,
                       const real* A, int64_t lda, const real* B, int64_t ldb, real beta,
                       real* C, int64_t ldc) noexcept nogil:
    """C = op(A) op(B) + beta C, row-major, on the calling thread (BLAS told to use one)."""
    if real is float:
        SGEMM(ROW_MAJOR, ta, tb, m, n, k, 1.0, A, lda, B, ldb, beta, C, ldc)
    else:
        DGEMM(ROW_MAJOR, ta, tb, m, n, k, 1.0, A, lda, B, ldb, beta, C, ldc)


cdef inline void _phase_range(const Geo* g, int64_t r, int64_t* lo, int64_t* hi) noexcept nogil:
    """The q of phase r that hold input columns: 0 <= q sw + r - pw < W."""
    lo[0] = (g.pw - r + g.sw - 1) // g.sw if g.pw > r else 0
    hi[0] = (g.W - 1 + g.pw - r) // g.sw + 1 if g.W - 1 + g.pw >= r else 0


cdef void _phases(const Geo* g, real* x, real* xs, bint to_buffer) noexcept nogil:
    """Between one image x (C, H, W) and its phase-split buffer, xs[c, h, r, q] = x_pad[c, h,
    q sw + r]: to the buffer (staging) or back (the adjoint). Only the positions that hold
    pixels are copied: the buffer's padding stays as its owner left it (zero)."""
    cdef int64_t c, h, r, q, lo, hi
    cdef real* row
    cdef real* phase
    for c in range(g.C):
        for h in range(g.H):
            row = x + (c * g.H + h) * g.W
            if g.sw == 2:   # both phases in one interleaved pass (conv_impl.h)
                phase = xs + (c * g.Hp + h + g.ph) * 2 * g.Wq
                if real is float:
                    mssl_conv_split2_f32(row, phase, phase + g.Wq, g.W, g.pw, to_buffer)
                else:
                    mssl_conv_split2_f64(row, phase, phase + g.Wq, g.W, g.pw, to_buffer)
                continue
            for r in range(g.sw):
                phase = xs + ((c * g.Hp + h + g.ph) * g.sw + r) * g.Wq
                _phase_range(g, r, &lo, &hi)
                if g.sw == 1 and to_buffer:
                    memcpy(phase + lo, row + lo - g.pw, (hi - lo) * sizeof(real))
                elif g.sw == 1:
                    memcpy(row + lo - g.pw, phase + lo, (hi - lo) * sizeof(real))
                elif to_buffer:
                    for q in range(lo, hi):
                        phase[q] = row[q * g.sw + r - g.pw]
                else:
                    for q in range(lo, hi):
                        row[q * g.sw + r - g.pw] = phase[q]


cdef void _taps(const Geo* g, real* xs, real* cols, int64_t oh0, int64_t oh1,
                bint fold) noexcept nogil:
    """Unfold (``fold`` false): cols ((c, i, j), (oh - oh0) OW + ow) = the tap's run in xs,
    output rows oh0 .. oh1-1. Fold, its adjoint: add each run of cols back where it was read
    from."""
    cdef int64_t c, i, j, r, q, n = (oh1 - oh0) * g.OW
    cdef int64_t stride = g.sh * g.sw * g.Wq     # from one output row's run to the next
    cdef real* run
    cdef real* tap
    for c in range(g.C):
        for i in range(g.kh):
            for j in range(g.kw):
                r, q = (j * g.dw) % g.sw, (j * g.dw) // g.sw
                tap = cols + ((c * g.kh + i) * g.kw + j) * n
                run = xs + ((c * g.Hp + oh0 * g.sh + i * g.dh) * g.sw + r) * g.Wq + q
                if real is float:
                    if fold:
                        mssl_conv_fold_tap_f32(run, stride, tap, oh1 - oh0, g.OW)
                    else:
                        mssl_conv_unfold_tap_f32(run, stride, tap, oh1 - oh0, g.OW)
                else:
                    if fold:
                        mssl_conv_fold_tap_f64(run, stride, tap, oh1 - oh0, g.OW)
                    else:
                        mssl_conv_unfold_tap_f64(run, stride, tap, oh1 - oh0, g.OW)


cdef tuple _s4(Py_ssize_t* s):
    return (s[0], s[1], s[2], s[3])


cdef Geo _geo(tuple x_shape, tuple w_shape, tuple y_shape, int64_t kh, int64_t kw,
              int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
              int64_t itemsize) except *:
    """The geometry, checked once more against the arrays (a wrong call must raise, never
    read out of bounds)."""
    cdef Geo g
    g.N, g.C, g.H, g.W = x_shape
    g.O = w_shape[0]
    g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw = kh, kw, sh, sw, ph, pw, dh, dw
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError("minissl.kernels.conv._cpu: bad window arguments")
    g.OH = (g.H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    g.OW = (g.W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    g.CK = g.C * kh * kw
    if g.CK < 1 or g.O < 1:
        raise ValueError(f"minissl.kernels.conv._cpu: empty weight {w_shape}")
    if (g.OH < 1 or g.OW < 1 or w_shape[1] != g.CK
            or y_shape != (g.N, g.O, g.OH, g.OW)):
        raise ValueError(f"minissl.kernels.conv._cpu: shapes x {x_shape}, weight {w_shape}, "
                         f"output {y_shape} do not fit window ({kh}, {kw}), stride ({sh}, "
                         f"{sw}), padding ({ph}, {pw}), dilation ({dh}, {dw})")
    g.Hp = g.H + 2 * ph
    g.Wq = (g.W + 2 * pw + sw - 1) // sw
    g.P = g.OH * g.OW
    cdef int64_t most = max(1, BLOCK_BYTES // (g.CK * g.OW * itemsize))
    cdef int64_t blocks = (g.OH + most - 1) // most
    g.rows = (g.OH + blocks - 1) // blocks
    g.blocks = (g.OH + g.rows - 1) // g.rows
    return g


def forward(const real[:, :, :, ::1] x, const real[:, ::1] w2, const real[::1] bias,
            real[:, :, :, ::1] y,
            int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
            int64_t dh, int64_t dw):
    """y[n] = W colsT(x[n]) (+ bias[o] when ``bias`` is not empty), image by image."""
    if SGEMM == NULL:
        raise RuntimeError("minissl.kernels.conv._cpu.forward: no BLAS bound (call bind first)")
    cdef Geo g = _geo(_s4(x.shape), (w2.shape[0], w2.shape[1]), _s4(y.shape), kh, kw,
                      sh, sw, ph, pw, dh, dw, sizeof(real))
    if bias.shape[0] not in (0, g.O):
        raise ValueError("minissl.kernels.conv._cpu.forward: bias does not match the weight")
    cdef bint has_bias = bias.shape[0] > 0
    cdef int64_t n, oh0, oh1, o, t, nb, b
    cdef real* xs
    cdef real* cols
    cdef real* yn
    cdef int failed = 0, previous
    cdef int* fail = &failed
    cdef int threads = THREADS if g.N > 1 else 1
    if g.N == 0:
        return
    with nogil:
        previous = SET_LOCAL(1)
        with parallel(num_threads=threads):
            xs = <real*>calloc(g.C * g.Hp * g.sw * g.Wq, sizeof(real))
            cols = <real*>malloc(g.CK * g.rows * g.OW * sizeof(real))
            if xs == NULL or cols == NULL:
                fail[0] = 1
            for n in prange(g.N, schedule="static"):
                if xs == NULL or cols == NULL:
                    continue
                _phases(&g, <real*>&x[n, 0, 0, 0], xs, True)
                yn = &y[n, 0, 0, 0]
                for b in range(g.blocks):
                    oh0 = b * g.rows
                    oh1 = min(oh0 + g.rows, g.OH)
                    nb = (oh1 - oh0) * g.OW
                    _taps(&g, xs, cols, oh0, oh1, False)
                    _gemm(NO_TRANS, NO_TRANS, g.O, nb, g.CK, &w2[0, 0], g.CK, cols, nb,
                          0, yn + oh0 * g.OW, g.P)
                    if has_bias:
                        for o in range(g.O):
                            for t in range(nb):
                                yn[o * g.P + oh0 * g.OW + t] += bias[o]
            free(xs)
            free(cols)
        SET_LOCAL(previous)
    if failed:
        raise MemoryError("minissl.kernels.conv._cpu.forward: out of memory for the buffers")


def backward(const real[:, :, :, ::1] x, const real[:, ::1] w2, const real[:, :, :, ::1] gy,
             real[:, :, :, ::1] gx, real[:, :, ::1] gw_parts,
             int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
             int64_t dh, int64_t dw, bint need_x, bint need_w):
    """gx[n] = fold(W^T G_n) (if ``need_x``); gw_parts[k] = sum over the images of chunk k
    of G_n colsT(x[n])^T (if ``need_w``), chunk k = images N k // K .. N (k+1) // K - 1 for
    K = gw_parts.shape[0]."""
    if SGEMM == NULL:
        raise RuntimeError("minissl.kernels.conv._cpu.backward: no BLAS bound (call bind first)")
    cdef Geo g = _geo(_s4(x.shape), (w2.shape[0], w2.shape[1]), _s4(gy.shape), kh, kw,
                      sh, sw, ph, pw, dh, dw, sizeof(real))
    if need_x and _s4(gx.shape) != _s4(x.shape):
        raise ValueError("minissl.kernels.conv._cpu.backward: gx does not match x")
    cdef int64_t K = gw_parts.shape[0]
    if need_w and (K < 1 or K > max(g.N, 1) or gw_parts.shape[1] != g.O
                   or gw_parts.shape[2] != g.CK):
        raise ValueError("minissl.kernels.conv._cpu.backward: gw_parts has the wrong shape")
    if not need_w:
        K = g.N
    cdef int64_t k, n, oh0, oh1, nb, b, size = g.C * g.Hp * g.sw * g.Wq
    cdef real* xs
    cdef real* gxs
    cdef real* cols
    cdef const real* gn
    cdef real* acc
    cdef int failed = 0, previous
    cdef int* fail = &failed
    cdef int threads = THREADS if K > 1 else 1
    if g.N == 0:
        return
    with nogil:
        previous = SET_LOCAL(1)
        with parallel(num_threads=threads):
            xs = <real*>calloc(size, sizeof(real))
            gxs = <real*>calloc(size, sizeof(real))
            cols = <real*>malloc(g.CK * g.rows * g.OW * sizeof(real))
            if xs == NULL or gxs == NULL or cols == NULL:
                fail[0] = 1
            for k in prange(K, schedule="static"):
                if xs == NULL or gxs == NULL or cols == NULL:
                    continue
                acc = NULL
                if need_w:
                    acc = &gw_parts[k, 0, 0]
                    memset(acc, 0, g.O * g.CK * sizeof(real))
                for n in range(g.N * k // K, g.N * (k + 1) // K):
                    gn = &gy[n, 0, 0, 0]
                    if need_w:
                        _phases(&g, <real*>&x[n, 0, 0, 0], xs, True)
                    if need_x:
                        memset(gxs, 0, size * sizeof(real))
                    for b in range(g.blocks):
                        oh0 = b * g.rows
                        oh1 = min(oh0 + g.rows, g.OH)
                        nb = (oh1 - oh0) * g.OW
                        if need_w:   # dW += G_n[:, block] colsT^T
                            _taps(&g, xs, cols, oh0, oh1, False)
                            _gemm(NO_TRANS, TRANS, g.O, g.CK, nb, gn + oh0 * g.OW, g.P, cols,
                                  nb, 1, acc, g.CK)
                        if need_x:   # dcolsT = W^T G_n[:, block], folded back
                            _gemm(TRANS, NO_TRANS, g.CK, nb, g.O, &w2[0, 0], g.CK,
                                  gn + oh0 * g.OW, g.P, 0, cols, nb)
                            _taps(&g, gxs, cols, oh0, oh1, True)
                    if need_x:
                        _phases(&g, &gx[n, 0, 0, 0], gxs, False)
            free(xs)
            free(gxs)
            free(cols)
        SET_LOCAL(previous)
    if failed:
        raise MemoryError("minissl.kernels.conv._cpu.backward: out of memory for the buffers")
