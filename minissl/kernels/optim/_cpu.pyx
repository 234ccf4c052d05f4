# distutils: extra_compile_args = -fno-math-errno -ffp-contract=off
"""Cython kernels: fused, in-place SGD and Adam/AdamW updates over flat contiguous arrays.

The formulas and the validation live in __init__.py, the reference in reference.py. Each kernel
reads every element once and writes it once, where the NumPy version runs a dozen array
operations with temporaries. The arithmetic is that of PyTorch's single-tensor optimisers,
operation for operation and in the arrays' own precision (the scalars are rounded to it first,
as PyTorch rounds them to float for float32 tensors), so results agree with PyTorch to float32
rounding; they are bit-identical to the reference wherever the compiler keeps the operations
unfused.

The loops are C (optim.h, optim_impl.h) so that GCC's ``target_clones`` can build them for AVX-512, AVX2
and baseline x86-64 and pick one at load time; ``-fno-math-errno`` (first line) lets sqrt
vectorise, as nothing here reads errno. Elements are independent, so chunks of the arrays run
in parallel without changing any result.
"""
cimport numpy as cnp
from cython.parallel cimport prange
from minissl_checks cimport array_data, float_type

cnp.import_array()

include "minissl_threads.pxi"

# Raw data pointers, not typed memoryviews: a memoryview costs about 1 us per argument to
# acquire, most of a small call (measured; see minissl_checks.pxd). NAME names this module
# in the error messages of those checks.
cdef str NAME = "optim"

cdef extern from "optim.h":
    void mssl_sgd_f32(float* p, const float* g, float* buf, Py_ssize_t n, float lr,
                      float momentum, float one_minus_dampening, float wd, int nesterov,
                      int first_step) noexcept nogil
    void mssl_sgd_f64(double* p, const double* g, double* buf, Py_ssize_t n, double lr,
                      double momentum, double one_minus_dampening, double wd, int nesterov,
                      int first_step) noexcept nogil
    void mssl_adam_f32(float* p, const float* g, float* m, float* v, Py_ssize_t n,
                       float step_size, float bias_correction2_sqrt, float one_minus_beta1,
                       float beta2, float one_minus_beta2, float eps, float decay,
                       float l2) noexcept nogil
    void mssl_adam_f64(double* p, const double* g, double* m, double* v, Py_ssize_t n,
                       double step_size, double bias_correction2_sqrt, double one_minus_beta1,
                       double beta2, double one_minus_beta2, double eps, double decay,
                       double l2) noexcept nogil


# Elements per parallel task, and the size below which one thread finishes first.
cdef Py_ssize_t CHUNK = 16384
cdef Py_ssize_t PARALLEL_MIN = 65536


cdef int _check_disjoint(char** ptrs, int count, Py_ssize_t nbytes) except -1:
    """The arrays of one update must not overlap: the C loops promise the compiler they do not
    (``restrict``), which is what lets them vectorise."""
    cdef int i, j
    for i in range(count):
        for j in range(i + 1, count):
            if ptrs[i] != NULL and ptrs[j] != NULL and ptrs[i] < ptrs[j] + nbytes \
                    and ptrs[j] < ptrs[i] + nbytes:
                raise ValueError("minissl.kernels.optim._cpu: the parameter, its gradient and "
                                 "its state arrays must be distinct, non-overlapping arrays")
    return 0


# ---- entry points (called by __init__.py) -------------------------------------------------------
# Flat C-contiguous arrays of one float dtype, updated in place in chunks spread over threads.

def sgd_step(param, grad, buf, double lr, double momentum, double one_minus_dampening,
             double weight_decay, bint nesterov, bint first_step):
    """One SGD step in place; ``buf`` is None when momentum == 0. The scalars come as
    PyTorch computes them, in double (1 - dampening included), and are rounded here."""
    cdef int t = float_type(NAME, param)
    cdef Py_ssize_t n = param.shape[0], k, s
    cdef char* pp = <char*>array_data(NAME, param, t, 1, n, 0, 0, True)
    cdef char* pg = <char*>array_data(NAME, grad, t, 1, n, 0, 0, False)
    cdef char* pb = NULL if buf is None else <char*>array_data(NAME, buf, t, 1, n, 0, 0, True)
    cdef Py_ssize_t size = 4 if t == cnp.NPY_FLOAT32 else 8      # bytes per element
    cdef char* ptrs[3]
    if momentum != 0 and pb == NULL:
        raise ValueError("minissl.kernels.optim._cpu: momentum needs a buffer")
    ptrs[0], ptrs[1], ptrs[2] = pp, pg, pb
    _check_disjoint(ptrs, 3, n * size)
    for k in prange((n + CHUNK - 1) // CHUNK, nogil=True, schedule="static",
                    use_threads_if=THREADS > 1 and n >= PARALLEL_MIN,
                      num_threads=THREADS):
        s = k * CHUNK
        if t == cnp.NPY_FLOAT32:
            mssl_sgd_f32(<float*>(pp + s * size), <const float*>(pg + s * size),
                         NULL if pb == NULL else <float*>(pb + s * size), min(CHUNK, n - s),
                         lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step)
        else:
            mssl_sgd_f64(<double*>(pp + s * size), <const double*>(pg + s * size),
                         NULL if pb == NULL else <double*>(pb + s * size), min(CHUNK, n - s),
                         lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step)


def adam_step(param, grad, exp_avg, exp_avg_sq, double step_size, double bias_correction2_sqrt,
              double one_minus_beta1, double beta2, double one_minus_beta2, double eps,
              double decay, double l2):
    """One Adam/AdamW step in place. step_size = lr / (1 - beta1^t), bias_correction2_sqrt =
    sqrt(1 - beta2^t); decay = 1 - lr * wd for AdamW (else 1), l2 = wd for Adam (else 0).
    The scalars come as PyTorch computes them, in double, and are rounded here."""
    cdef int t = float_type(NAME, param)
    cdef Py_ssize_t n = param.shape[0], k, s
    cdef char* pp = <char*>array_data(NAME, param, t, 1, n, 0, 0, True)
    cdef char* pg = <char*>array_data(NAME, grad, t, 1, n, 0, 0, False)
    cdef char* pm = <char*>array_data(NAME, exp_avg, t, 1, n, 0, 0, True)
    cdef char* pv = <char*>array_data(NAME, exp_avg_sq, t, 1, n, 0, 0, True)
    cdef Py_ssize_t size = 4 if t == cnp.NPY_FLOAT32 else 8      # bytes per element
    cdef char* ptrs[4]
    ptrs[0], ptrs[1], ptrs[2], ptrs[3] = pp, pg, pm, pv
    _check_disjoint(ptrs, 4, n * size)
    for k in prange((n + CHUNK - 1) // CHUNK, nogil=True, schedule="static",
                    use_threads_if=THREADS > 1 and n >= PARALLEL_MIN,
                      num_threads=THREADS):
        s = k * CHUNK
        if t == cnp.NPY_FLOAT32:
            mssl_adam_f32(<float*>(pp + s * size), <const float*>(pg + s * size),
                          <float*>(pm + s * size), <float*>(pv + s * size), min(CHUNK, n - s),
                          step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
                          one_minus_beta2, eps, decay, l2)
        else:
            mssl_adam_f64(<double*>(pp + s * size), <const double*>(pg + s * size),
                          <double*>(pm + s * size), <double*>(pv + s * size), min(CHUNK, n - s),
                          step_size, bias_correction2_sqrt, one_minus_beta1, beta2,
                          one_minus_beta2, eps, decay, l2)
