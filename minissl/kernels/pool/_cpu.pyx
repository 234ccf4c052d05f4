# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython 2-D max and average pooling: the CPU kernels behind minissl.kernels.pool.

Same contract as the NumPy reference (``*_ref`` in reference.py), which is the
specification; the public functions in __init__.py validate arguments, make arrays C-contiguous and
allocate outputs. These functions check the shapes once more (a wrong call must raise, never
read out of bounds), release the GIL and split the work with OpenMP ``prange``: forward over
the N C planes, backward over the N C H input rows. Every output element has exactly one
writer, so there are no atomics and no races.

Window (oh, ow) covers input rows [oh sh - ph, oh sh - ph + kh) and columns
[ow sw - pw, ow sw - pw + kw), clipped to the input: padding is -inf for max pooling (never
selected) and 0 for average pooling, which divides by kh kw always (count_include_pad=True).

The backward functions are gathers, one input row at a time: the thread that owns row h of a
plane visits only the windows covering that row (output rows oh with
oh sh - ph <= h < oh sh - ph + kh) and sums their gradient into the row's pixels (for max
pooling, into the pixel their argmax names), in a fixed order (oh, then ow, ascending): the
same bits whatever the number of threads. A stored argmax that lies outside its own window
contributes nothing, instead of writing somewhere it should not.
"""
import numpy as np

from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, isnan
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

include "minissl_threads.pxi"


ctypedef fused real:
    float
    double

cdef enum:
    # Below this many elements one thread is faster than waking the OpenMP team.
    PARALLEL_MIN_WORK = 32768


cdef struct Geometry:
    Py_ssize_t N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw


cdef Geometry _geometry(str fname, tuple x_shape, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw) except *:
    cdef Geometry g
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"{fname}: need kernel >= 1, stride >= 1, 0 <= padding <= kernel/2; "
                         f"got kernel ({kh}, {kw}), stride ({sh}, {sw}), padding ({ph}, {pw})")
    g.N, g.C, g.H, g.W = x_shape
    g.kh, g.kw, g.sh, g.sw, g.ph, g.pw = kh, kw, sh, sw, ph, pw
    if g.H < 1 or g.W < 1 or g.H + 2 * ph < kh or g.W + 2 * pw < kw:
        raise ValueError(f"{fname}: window ({kh}, {kw}) does not fit the input {x_shape} "
                         f"padded by ({ph}, {pw})")
    g.OH = (g.H + 2 * ph - kh) // sh + 1
    g.OW = (g.W + 2 * pw - kw) // sw + 1
    return g


cdef tuple _dims(const Py_ssize_t* shape):
    """The shape of a 4-d memoryview as a tuple (for checks and messages)."""
    return (shape[0], shape[1], shape[2], shape[3])


cdef void _covering(Py_ssize_t[::1] lo, Py_ssize_t[::1] hi, Py_ssize_t pad, Py_ssize_t k,
                    Py_ssize_t s, Py_ssize_t n_out):
    """For each input coordinate p, the output positions whose window covers it.

    Window o spans [o s - pad, o s - pad + k), so it covers p iff
    (p + pad - k + 1) / s <= o <= (p + pad) / s. Stored as the half-open range
    [lo[p], hi[p]) clipped to [0, n_out); empty when lo[p] >= hi[p].
    """
    cdef Py_ssize_t p, t
    for p in range(lo.shape[0]):
        t = p + pad - k + 1
        lo[p] = 0 if t <= 0 else (t + s - 1) // s      # ceil for t > 0
        hi[p] = min((p + pad) // s + 1, n_out)         # p + pad >= 0: floor is plain //


cdef inline bint _parallel(Py_ssize_t items, Geometry g) noexcept nogil:
    """Whether to split ``items`` (planes or rows) over threads: only when there is enough work."""
    return THREADS > 1 and items > 1 and g.N * g.C * g.H * g.W >= PARALLEL_MIN_WORK


# ----------------------------------------------------------------------------- max pooling

cdef void _max_forward_plane(const real* x, real* out, int64_t* argmax, Geometry g,
                             Py_ssize_t p) noexcept nogil:
    cdef const real* xin = x + p * g.H * g.W
    cdef Py_ssize_t oh, ow, h, w, h0, h1, w0, w1, best_at
    cdef real v, best
    out += p * g.OH * g.OW
    argmax += p * g.OH * g.OW
    for oh in range(g.OH):
        h0 = oh * g.sh - g.ph
        h1 = min(h0 + g.kh, g.H)
        h0 = max(h0, 0)
        for ow in range(g.OW):
            w0 = ow * g.sw - g.pw
            w1 = min(w0 + g.kw, g.W)
            w0 = max(w0, 0)
            # PyTorch's rule: scan row-major, keep the first maximum, let NaN win (so a NaN
            # propagates), and start from the first in-bounds pixel (kept if all are -inf).
            best = -INFINITY
            best_at = h0 * g.W + w0
            for h in range(h0, h1):
                for w in range(w0, w1):
                    v = xin[h * g.W + w]
                    if v > best or isnan(v):
                        best = v
                        best_at = h * g.W + w
            out[oh * g.OW + ow] = best
            argmax[oh * g.OW + ow] = best_at


def max_pool2d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] out,
                       int64_t[:, :, :, ::1] argmax, Py_ssize_t kh, Py_ssize_t kw,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw):
    """Max pooling of ``x`` (N, C, H, W) into ``out`` and ``argmax`` (N, C, OH, OW)."""
    x_shape = _dims(x.shape)
    cdef Geometry g = _geometry("max_pool2d_forward", x_shape, kh, kw, sh, sw, ph, pw)
    expected = (g.N, g.C, g.OH, g.OW)
    if _dims(out.shape) != expected or _dims(argmax.shape) != expected:
        raise ValueError(f"max_pool2d_forward: out {_dims(out.shape)} and argmax "
                         f"{_dims(argmax.shape)} must have shape {expected} for x {x_shape}")
    if g.N == 0 or g.C == 0:
        return
    cdef const real* xp = &x[0, 0, 0, 0]
    cdef real* op = &out[0, 0, 0, 0]
    cdef int64_t* ap = &argmax[0, 0, 0, 0]
    cdef Py_ssize_t p, planes = g.N * g.C
    with nogil:
        if _parallel(planes, g):
            for p in prange(planes, schedule="static"):
                _max_forward_plane(xp, op, ap, g, p)
        else:
            for p in range(planes):
                _max_forward_plane(xp, op, ap, g, p)


cdef void _max_backward_row(const real* grad_out, const int64_t* argmax, real* grad_x,
                            Geometry g, Py_ssize_t row,
                            const Py_ssize_t* oh_lo, const Py_ssize_t* oh_hi) noexcept nogil:
    """Gather input row ``row`` = (n C + c) H + h of grad_x.

    Only the windows of output rows [oh_lo[h], oh_hi[h]) cover row h; each sends its
    gradient to column argmax - h W if that pixel is in this row and in the window.
    """
    cdef Py_ssize_t plane = row // g.H, h = row % g.H
    cdef Py_ssize_t oh, ow, o, w0
    cdef int64_t col
    cdef real* dst = grad_x + row * g.W
    grad_out += plane * g.OH * g.OW
    argmax += plane * g.OH * g.OW
    memset(dst, 0, g.W * sizeof(real))
    for oh in range(oh_lo[h], oh_hi[h]):
        for ow in range(g.OW):
            o = oh * g.OW + ow
            col = argmax[o] - h * g.W
            w0 = ow * g.sw - g.pw
            if 0 <= col < g.W and w0 <= col < w0 + g.kw:
                dst[col] += grad_out[o]


def max_pool2d_backward(const real[:, :, :, ::1] grad_out, const int64_t[:, :, :, ::1] argmax,
                        real[:, :, :, ::1] grad_x, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw):
    """Write into ``grad_x`` (N, C, H, W) the gradient of max pooling (gather form)."""
    x_shape = _dims(grad_x.shape)
    cdef Geometry g = _geometry("max_pool2d_backward", x_shape, kh, kw, sh, sw, ph, pw)
    expected = (g.N, g.C, g.OH, g.OW)
    if _dims(grad_out.shape) != expected or _dims(argmax.shape) != expected:
        raise ValueError(f"max_pool2d_backward: grad_out {_dims(grad_out.shape)} and argmax "
                         f"{_dims(argmax.shape)} must have shape {expected} for x {x_shape}")
    if g.N == 0 or g.C == 0:
        return
    cdef Py_ssize_t[::1] oh_lo = np.empty(g.H, np.intp), oh_hi = np.empty(g.H, np.intp)
    _covering(oh_lo, oh_hi, ph, kh, sh, g.OH)
    cdef const real* gp = &grad_out[0, 0, 0, 0]
    cdef const int64_t* ap = &argmax[0, 0, 0, 0]
    cdef real* xp = &grad_x[0, 0, 0, 0]
    cdef Py_ssize_t row, rows = g.N * g.C * g.H
    with nogil:
        if _parallel(rows, g):
            for row in prange(rows, schedule="static"):
                _max_backward_row(gp, ap, xp, g, row, &oh_lo[0], &oh_hi[0])
        else:
            for row in range(rows):
                _max_backward_row(gp, ap, xp, g, row, &oh_lo[0], &oh_hi[0])


# ----------------------------------------------------------------------------- average pooling

cdef void _avg_forward_plane(const real* x, real* out, Geometry g, Py_ssize_t p) noexcept nogil:
    cdef const real* xin = x + p * g.H * g.W
    cdef Py_ssize_t oh, ow, h, w, h0, h1, w0, w1
    cdef real acc, area = g.kh * g.kw                  # count_include_pad=True
    out += p * g.OH * g.OW
    for oh in range(g.OH):
        h0 = oh * g.sh - g.ph
        h1 = min(h0 + g.kh, g.H)
        h0 = max(h0, 0)
        for ow in range(g.OW):
            w0 = ow * g.sw - g.pw
            w1 = min(w0 + g.kw, g.W)
            w0 = max(w0, 0)
            acc = 0
            for h in range(h0, h1):
                for w in range(w0, w1):
                    acc = acc + xin[h * g.W + w]
            out[oh * g.OW + ow] = acc / area


def avg_pool2d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] out, Py_ssize_t kh,
                       Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                       Py_ssize_t pw):
    """Average pooling of ``x`` (N, C, H, W) into ``out`` (N, C, OH, OW)."""
    x_shape = _dims(x.shape)
    cdef Geometry g = _geometry("avg_pool2d_forward", x_shape, kh, kw, sh, sw, ph, pw)
    expected = (g.N, g.C, g.OH, g.OW)
    if _dims(out.shape) != expected:
        raise ValueError(f"avg_pool2d_forward: out {_dims(out.shape)} must have shape "
                         f"{expected} for x {x_shape}")
    if g.N == 0 or g.C == 0:
        return
    cdef const real* xp = &x[0, 0, 0, 0]
    cdef real* op = &out[0, 0, 0, 0]
    cdef Py_ssize_t p, planes = g.N * g.C
    with nogil:
        if _parallel(planes, g):
            for p in prange(planes, schedule="static"):
                _avg_forward_plane(xp, op, g, p)
        else:
            for p in range(planes):
                _avg_forward_plane(xp, op, g, p)


cdef void _avg_backward_row(const real* grad_out, real* grad_x, Geometry g, Py_ssize_t row,
                            const Py_ssize_t* oh_lo, const Py_ssize_t* oh_hi,
                            const Py_ssize_t* ow_lo, const Py_ssize_t* ow_hi,
                            real* col_sum) noexcept nogil:
    """Gather input row ``row`` = (n C + c) H + h of grad_x.

    The sum over the windows covering (h, w) is separable: first add, for every ow, the
    output rows covering h (``col_sum``, length OW), then the columns covering w.
    """
    cdef Py_ssize_t plane = row // g.H, h = row % g.H
    cdef Py_ssize_t oh, ow, w
    cdef real acc, area = g.kh * g.kw                  # count_include_pad=True
    cdef real* dst = grad_x + row * g.W
    grad_out += plane * g.OH * g.OW
    memset(col_sum, 0, g.OW * sizeof(real))
    for oh in range(oh_lo[h], oh_hi[h]):
        for ow in range(g.OW):
            col_sum[ow] += grad_out[oh * g.OW + ow]
    for w in range(g.W):
        acc = 0
        for ow in range(ow_lo[w], ow_hi[w]):
            acc = acc + col_sum[ow]
        dst[w] = acc / area


def avg_pool2d_backward(const real[:, :, :, ::1] grad_out, real[:, :, :, ::1] grad_x,
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t ph, Py_ssize_t pw):
    """Write into ``grad_x`` (N, C, H, W) the gradient of average pooling (gather form)."""
    x_shape = _dims(grad_x.shape)
    cdef Geometry g = _geometry("avg_pool2d_backward", x_shape, kh, kw, sh, sw, ph, pw)
    expected = (g.N, g.C, g.OH, g.OW)
    if _dims(grad_out.shape) != expected:
        raise ValueError(f"avg_pool2d_backward: grad_out {_dims(grad_out.shape)} must have "
                         f"shape {expected} for x {x_shape}")
    if g.N == 0 or g.C == 0:
        return
    cdef Py_ssize_t[::1] oh_lo = np.empty(g.H, np.intp), oh_hi = np.empty(g.H, np.intp)
    cdef Py_ssize_t[::1] ow_lo = np.empty(g.W, np.intp), ow_hi = np.empty(g.W, np.intp)
    _covering(oh_lo, oh_hi, ph, kh, sh, g.OH)
    _covering(ow_lo, ow_hi, pw, kw, sw, g.OW)
    cdef const real* gp = &grad_out[0, 0, 0, 0]
    cdef real* xp = &grad_x[0, 0, 0, 0]
    cdef Py_ssize_t row, rows = g.N * g.C * g.H
    cdef real* col_sum = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed                           # shared: written through a pointer
    # num_threads=0: Cython asks OpenMP for its default team (omp_get_max_threads()).
    with nogil, parallel(num_threads=THREADS if _parallel(rows, g) else 1):
        col_sum = <real*> malloc(g.OW * sizeof(real))
        if col_sum == NULL:
            failed_p[0] = 1
        for row in prange(rows, schedule="static"):
            if col_sum != NULL:
                _avg_backward_row(gp, xp, g, row, &oh_lo[0], &oh_hi[0], &ow_lo[0], &ow_hi[0],
                                  col_sum)
        free(col_sum)
    if failed:
        raise MemoryError("avg_pool2d_backward: could not allocate a row buffer")
