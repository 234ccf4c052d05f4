# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython im2col / col2im: the CPU kernels behind minissl.kernels.im2col.

Same contract as the NumPy reference (``im2col_ref``, ``col2im_ref`` in reference.py),
which is the specification; the public functions in __init__.py validate
their arguments, make the arrays C-contiguous and allocate the outputs. These functions check
the shapes once more (a wrong call must raise, never read out of bounds), release the GIL and
split the work over threads with OpenMP ``prange``.

Layout. For x of shape (N, C, H, W), window (kh, kw), stride (sh, sw), padding (ph, pw),
dilation (dh, dw):
    OH = (H + 2 ph - dh (kh - 1) - 1) // sh + 1,  OW likewise
    cols[(n OH + oh) OW + ow, (c kh + i) kw + j] = x[n, c, oh sh - ph + i dh, ow sw - pw + j dw]
(zero where that index falls in the padding). col2im is the adjoint (transpose) of that map:
x[n, c, h, w] = the sum of every cols entry that read x[n, c, h, w].

Dilation 1 keeps the unit-stride runs whose literal widths the C compiler unrolls; a dilated
window takes the strided copies, so plain convolutions pay nothing for dilation.

Both work one image row at a time, through a small zero-padded row buffer per thread, so the
inner loops have no bounds tests:
- im2col, per output row (n, oh): stage the kh input rows of every channel in the buffer
  (padding rows stay zero), then copy each window's runs of kw values out of it (dw apart).
- col2im, per input row (n, h): a gather. The thread that owns x[n, :, h, :] sums, into its
  buffer, the cols entries of the windows covering row h (output rows oh with h = oh sh - ph +
  i dh for some tap 0 <= i < kh), then copies the unpadded part out. Every x element is written
  by exactly one thread and its terms are added in one fixed order (oh, then ow, ascending): no
  atomics, no races, the same bits whatever the number of threads.
"""
import numpy as np

from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

include "minissl_threads.pxi"


ctypedef fused real:
    float
    double

cdef enum:
    # Below this many elements one thread is faster than waking the OpenMP team.
    PARALLEL_MIN_WORK = 32768


cdef struct Geometry:
    Py_ssize_t N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw
    Py_ssize_t Wp          # padded row buffer width: >= (OW-1) sw + (kw-1) dw + 1, >= pw + W


cdef Geometry _geometry(str fname, tuple x_shape, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t dh, Py_ssize_t dw) except *:
    cdef Geometry g
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0 or dh < 1 or dw < 1:
        raise ValueError(f"{fname}: need kernel >= 1, stride >= 1, padding >= 0, dilation "
                         f">= 1; got kernel ({kh}, {kw}), stride ({sh}, {sw}), padding "
                         f"({ph}, {pw}), dilation ({dh}, {dw})")
    g.N, g.C, g.H, g.W = x_shape
    g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw = kh, kw, sh, sw, ph, pw, dh, dw
    cdef Py_ssize_t span_h = (kh - 1) * dh + 1, span_w = (kw - 1) * dw + 1
    if g.H + 2 * ph < span_h or g.W + 2 * pw < span_w:
        raise ValueError(f"{fname}: window ({kh}, {kw}) dilated by ({dh}, {dw}) larger than "
                         f"the input {x_shape} padded by ({ph}, {pw})")
    g.OH = (g.H + 2 * ph - span_h) // sh + 1
    g.OW = (g.W + 2 * pw - span_w) // sw + 1
    g.Wp = max((g.OW - 1) * sw + span_w, pw + g.W)
    return g


cdef inline void _copy_runs(real* dst, const real* src, Py_ssize_t runs, Py_ssize_t width,
                            Py_ssize_t src_stride) noexcept nogil:
    """dst[r width + j] = src[r src_stride + j] for r < runs, j < width."""
    cdef Py_ssize_t r, j
    for r in range(runs):
        for j in range(width):
            dst[j] = src[j]
        dst += width
        src += src_stride


cdef inline void _copy_runs_dilated(real* dst, const real* src, Py_ssize_t runs,
                                    Py_ssize_t width, Py_ssize_t src_stride,
                                    Py_ssize_t step) noexcept nogil:
    """dst[r width + j] = src[r src_stride + j step] for r < runs, j < width."""
    cdef Py_ssize_t r, j
    for r in range(runs):
        for j in range(width):
            dst[j] = src[j * step]
        dst += width
        src += src_stride


cdef inline void _add_runs_dilated(real* dst, const real* src, Py_ssize_t runs,
                                   Py_ssize_t width, Py_ssize_t dst_stride,
                                   Py_ssize_t src_stride, Py_ssize_t step) noexcept nogil:
    """dst[r dst_stride + j step] += src[r src_stride + j] for r < runs, j < width."""
    cdef Py_ssize_t r, j
    for r in range(runs):
        for j in range(width):
            dst[j * step] += src[j]
        dst += dst_stride
        src += src_stride


cdef inline void _add_runs(real* dst, const real* src, Py_ssize_t runs, Py_ssize_t width,
                           Py_ssize_t dst_stride, Py_ssize_t src_stride) noexcept nogil:
    """dst[r dst_stride + j] += src[r src_stride + j] for r < runs, j < width."""
    cdef Py_ssize_t r, j
    for r in range(runs):
        for j in range(width):
            dst[j] += src[j]
        dst += dst_stride
        src += src_stride


cdef void _im2col_row(const real* x, real* cols, Geometry g, Py_ssize_t row,
                      real* buf) noexcept nogil:
    """Fill the OW rows of ``cols`` of output row ``row`` = n OH + oh.

    ``buf`` (C kh, Wp) holds input row oh sh - ph + i dh of channel c at [c kh + i, pw:pw + W];
    everything else in it is zero and stays zero.
    """
    cdef Py_ssize_t n = row // g.OH, oh = row % g.OH
    cdef Py_ssize_t c, i, h, ow, runs = g.C * g.kh
    cdef real* dst = cols + row * g.OW * (g.C * g.kh * g.kw)
    cdef real* line
    for c in range(g.C):
        for i in range(g.kh):
            h = oh * g.sh - g.ph + i * g.dh
            line = buf + (c * g.kh + i) * g.Wp + g.pw
            if 0 <= h < g.H:
                memcpy(line, x + ((n * g.C + c) * g.H + h) * g.W, g.W * sizeof(real))
            else:
                memset(line, 0, g.W * sizeof(real))
    for ow in range(g.OW):
        # The window's (c, i) runs of kw values; literal widths let the C compiler unroll the
        # inner loop, which makes 3x3 windows about three times faster.
        if g.dw != 1:
            _copy_runs_dilated(dst, buf + ow * g.sw, runs, g.kw, g.Wp, g.dw)
        elif g.kw == 3:
            _copy_runs(dst, buf + ow * g.sw, runs, 3, g.Wp)
        elif g.kw == 1:
            _copy_runs(dst, buf + ow * g.sw, runs, 1, g.Wp)
        else:
            _copy_runs(dst, buf + ow * g.sw, runs, g.kw, g.Wp)
        dst += runs * g.kw


def im2col(const real[:, :, :, ::1] x, real[:, ::1] cols, Py_ssize_t kh, Py_ssize_t kw,
           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
           Py_ssize_t dw):
    """Write the im2col matrix of ``x`` (N, C, H, W) into ``cols`` (N OH OW, C kh kw)."""
    x_shape = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    cdef Geometry g = _geometry("im2col", x_shape, kh, kw, sh, sw, ph, pw, dh, dw)
    if cols.shape[0] != g.N * g.OH * g.OW or cols.shape[1] != g.C * kh * kw:
        raise ValueError(f"im2col: cols has shape {(cols.shape[0], cols.shape[1])}, "
                         f"expected ({g.N * g.OH * g.OW}, {g.C * kh * kw}) for x {x_shape}")
    if cols.shape[0] == 0 or cols.shape[1] == 0:
        return
    if g.H == 0 or g.W == 0:                               # every window is padding
        np.asarray(cols)[...] = 0
        return
    cdef const real* xp = &x[0, 0, 0, 0]
    cdef real* cp = &cols[0, 0]
    cdef Py_ssize_t row, rows = g.N * g.OH, buf_len = g.C * g.kh * g.Wp
    cdef real* buf = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed                           # shared: written through a pointer
    # num_threads=0: Cython asks OpenMP for its default team (omp_get_max_threads()).
    cdef bint par = (THREADS > 1 and rows > 1
                     and cols.shape[0] * cols.shape[1] >= PARALLEL_MIN_WORK)
    with nogil, parallel(num_threads=THREADS if par else 1):
        buf = <real*> malloc(buf_len * sizeof(real))
        if buf == NULL:
            failed_p[0] = 1
        else:
            memset(buf, 0, buf_len * sizeof(real))
        for row in prange(rows, schedule="static"):
            if buf != NULL:
                _im2col_row(xp, cp, g, row, buf)
        free(buf)
    if failed:
        raise MemoryError("im2col: could not allocate a row buffer")


cdef void _col2im_row(const real* cols, real* x, Geometry g, Py_ssize_t row,
                      const Py_ssize_t* oh_lo, const Py_ssize_t* oh_hi, real* buf) noexcept nogil:
    """Gather input row ``row`` = n H + h of every channel, x[n, :, h, :].

    ``buf`` (C, Wp): padded row of channel c at [c, :]; column w of x is column pw + w.
    """
    cdef Py_ssize_t n = row // g.H, h = row % g.H
    cdef Py_ssize_t K = g.C * g.kh * g.kw, c, oh, ow, i
    cdef const real* src
    memset(buf, 0, g.C * g.Wp * sizeof(real))
    for oh in range(oh_lo[h], oh_hi[h]):
        i = h + g.ph - oh * g.sh                           # row h is row i / dh of window oh
        if i % g.dh != 0:
            continue                                       # row h falls between two taps
        i = i // g.dh
        src = cols + (n * g.OH + oh) * g.OW * K + i * g.kw
        for ow in range(g.OW):
            # cols[(n OH + oh) OW + ow, (c kh + i) kw + j] for every c: C runs of kw values,
            # kh kw apart; they land on padded columns ow sw + j dw of each channel's row.
            if g.dw != 1:
                _add_runs_dilated(buf + ow * g.sw, src, g.C, g.kw, g.Wp, g.kh * g.kw, g.dw)
            elif g.kw == 3:
                _add_runs(buf + ow * g.sw, src, g.C, 3, g.Wp, g.kh * g.kw)
            elif g.kw == 1:
                _add_runs(buf + ow * g.sw, src, g.C, 1, g.Wp, g.kh * g.kw)
            else:
                _add_runs(buf + ow * g.sw, src, g.C, g.kw, g.Wp, g.kh * g.kw)
            src += K
    for c in range(g.C):
        memcpy(x + ((n * g.C + c) * g.H + h) * g.W, buf + c * g.Wp + g.pw, g.W * sizeof(real))


cdef void _covering(Py_ssize_t[::1] lo, Py_ssize_t[::1] hi, Py_ssize_t pad, Py_ssize_t k,
                    Py_ssize_t s, Py_ssize_t n_out):
    """For each input coordinate p, the output positions whose window span covers it.

    Window o spans [o s - pad, o s - pad + k) (k: the dilated span (kh - 1) dh + 1), so it
    covers p iff
    (p + pad - k + 1) / s <= o <= (p + pad) / s. Stored as the half-open range
    [lo[p], hi[p]) clipped to [0, n_out); empty when lo[p] >= hi[p].
    """
    cdef Py_ssize_t p, t
    for p in range(lo.shape[0]):
        t = p + pad - k + 1
        lo[p] = 0 if t <= 0 else (t + s - 1) // s      # ceil for t > 0
        hi[p] = min((p + pad) // s + 1, n_out)         # p + pad >= 0: floor is plain //


def col2im(const real[:, ::1] cols, real[:, :, :, ::1] x, Py_ssize_t kh, Py_ssize_t kw,
           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
           Py_ssize_t dw):
    """Write the adjoint of im2col applied to ``cols`` into ``x`` (N, C, H, W), overwriting it."""
    x_shape = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    cdef Geometry g = _geometry("col2im", x_shape, kh, kw, sh, sw, ph, pw, dh, dw)
    if cols.shape[0] != g.N * g.OH * g.OW or cols.shape[1] != g.C * kh * kw:
        raise ValueError(f"col2im: cols has shape {(cols.shape[0], cols.shape[1])}, "
                         f"expected ({g.N * g.OH * g.OW}, {g.C * kh * kw}) for x {x_shape}")
    if g.N == 0 or g.C == 0 or g.H == 0 or g.W == 0:
        return
    cdef Py_ssize_t[::1] oh_lo = np.empty(g.H, np.intp), oh_hi = np.empty(g.H, np.intp)
    _covering(oh_lo, oh_hi, ph, (kh - 1) * dh + 1, sh, g.OH)
    cdef const real* cp = &cols[0, 0]
    cdef real* xp = &x[0, 0, 0, 0]
    cdef Py_ssize_t row, rows = g.N * g.H, buf_len = g.C * g.Wp
    cdef real* buf = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed                           # shared: written through a pointer
    # num_threads=0: Cython asks OpenMP for its default team (omp_get_max_threads()).
    cdef bint par = THREADS > 1 and rows > 1 and rows * g.C * g.W >= PARALLEL_MIN_WORK
    with nogil, parallel(num_threads=THREADS if par else 1):
        buf = <real*> malloc(buf_len * sizeof(real))
        if buf == NULL:
            failed_p[0] = 1
        for row in prange(rows, schedule="static"):
            if buf != NULL:
                _col2im_row(cp, xp, g, row, &oh_lo[0], &oh_hi[0], buf)
        free(buf)
    if failed:
        raise MemoryError("col2im: could not allocate a row buffer")
