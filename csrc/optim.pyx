# distutils: extra_compile_args = -fno-math-errno -ffp-contract=off
"""Cython kernels: fused, in-place SGD and Adam/AdamW updates over flat contiguous arrays.

The formulas, the reference and the validation live in minissl/kernels/optim.py. Each kernel
reads every element once and writes it once, where the NumPy version runs a dozen array
operations with temporaries. The arithmetic is that of PyTorch's single-tensor optimisers,
operation for operation and in the arrays' own precision (the scalars are rounded to it first,
as PyTorch rounds them to float for float32 tensors), so results agree with PyTorch to float32
rounding; they are bit-identical to the reference wherever the compiler keeps the operations
unfused.

The loops are C (block below) so that GCC's ``target_clones`` can build them for AVX-512, AVX2
and baseline x86-64 and pick one at load time; ``-fno-math-errno`` (first line) lets sqrt
vectorise, as nothing here reads errno. Elements are independent, so chunks of the arrays run
in parallel without changing any result.
"""
cimport numpy as cnp
from cython.parallel cimport prange

cnp.import_array()

cdef extern from *:
    """
    #include <math.h>

    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define MSSL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define MSSL_CLONES
    #endif

    /* SGD, torch/optim/sgd.py (_single_tensor_sgd):
         d = g + wd p;  buf = d (first step) or momentum buf + (1 - dampening) d;
         d = d + momentum buf (Nesterov) or buf;  p = p - lr d                       */
    MSSL_CLONES static void mssl_sgd_f32(float* restrict p, const float* restrict g,
                                         float* restrict buf, Py_ssize_t n, float lr,
                                         float momentum, float one_minus_dampening, float wd,
                                         int nesterov, int first_step) {
        #pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++) {
            float d = g[i];
            if (wd != 0) d = d + wd * p[i];
            if (momentum != 0) {
                float b = first_step ? d : buf[i] * momentum + one_minus_dampening * d;
                buf[i] = b;
                d = nesterov ? d + momentum * b : b;
            }
            p[i] = p[i] - lr * d;
        }
    }
    MSSL_CLONES static void mssl_sgd_f64(double* restrict p, const double* restrict g,
                                         double* restrict buf, Py_ssize_t n, double lr,
                                         double momentum, double one_minus_dampening, double wd,
                                         int nesterov, int first_step) {
        #pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++) {
            double d = g[i];
            if (wd != 0) d = d + wd * p[i];
            if (momentum != 0) {
                double b = first_step ? d : buf[i] * momentum + one_minus_dampening * d;
                buf[i] = b;
                d = nesterov ? d + momentum * b : b;
            }
            p[i] = p[i] - lr * d;
        }
    }

    /* Adam / AdamW, torch/optim/adam.py (_single_tensor_adam):
         p = p decay (AdamW: decay = 1 - lr wd);  g = g + l2 p (Adam: l2 = wd);
         m = m + (1 - beta1) (g - m)      (PyTorch's lerp; = beta1 m + (1 - beta1) g)
         v = v beta2 + (1 - beta2) g g
         p = p - step_size m / (sqrt(v) / bias_correction2_sqrt + eps)                */
    MSSL_CLONES static void mssl_adam_f32(float* restrict p, const float* restrict g,
                                          float* restrict m, float* restrict v, Py_ssize_t n,
                                          float step_size, float bias_correction2_sqrt,
                                          float one_minus_beta1, float beta2,
                                          float one_minus_beta2, float eps, float decay,
                                          float l2) {
        #pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++) {
            float pi = p[i], gi = g[i];
            if (decay != 1) pi = pi * decay;
            if (l2 != 0) gi = gi + l2 * pi;
            float mi = m[i] + one_minus_beta1 * (gi - m[i]);
            float vi = v[i] * beta2 + one_minus_beta2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = pi - step_size * mi / (sqrtf(vi) / bias_correction2_sqrt + eps);
        }
    }
    MSSL_CLONES static void mssl_adam_f64(double* restrict p, const double* restrict g,
                                          double* restrict m, double* restrict v, Py_ssize_t n,
                                          double step_size, double bias_correction2_sqrt,
                                          double one_minus_beta1, double beta2,
                                          double one_minus_beta2, double eps, double decay,
                                          double l2) {
        #pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++) {
            double pi = p[i], gi = g[i];
            if (decay != 1) pi = pi * decay;
            if (l2 != 0) gi = gi + l2 * pi;
            double mi = m[i] + one_minus_beta1 * (gi - m[i]);
            double vi = v[i] * beta2 + one_minus_beta2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = pi - step_size * mi / (sqrt(vi) / bias_correction2_sqrt + eps);
        }
    }
    """
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


# ---- argument checks ------------------------------------------------------------------------
# The entry points take ndarrays and read their data pointers through NumPy's C API: a typed
# memoryview costs about a microsecond per argument to acquire, most of the time of a small
# call. The Python wrappers have validated and converted every argument already; these checks
# (nanoseconds) only make sure that a wrong direct call raises instead of reading out of bounds.

cdef int _float_type(object a) except -1:
    """NPY_FLOAT32 or NPY_FLOAT64, the type of the float ndarray ``a``."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"minissl._ext.optim: expected an ndarray, got {type(a).__name__}")
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"minissl._ext.optim: expected float32 or float64, got {a.dtype}")
    return t


cdef void* _data(object a, int typenum, int ndim, Py_ssize_t d0, Py_ssize_t d1,
                 bint writable) except NULL:
    """Data pointer of ``a``: a C-contiguous ndarray of type ``typenum`` and shape (d0,) or
    (d0, d1), writeable if asked."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"minissl._ext.optim: expected an ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(arr)
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != ndim
            or dims[0] != d0 or (ndim > 1 and dims[1] != d1)
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or (writable and not cnp.PyArray_ISWRITEABLE(arr))):
        raise ValueError(f"minissl._ext.optim: got a {a.dtype} array of shape {a.shape}, "
                         "not the C-contiguous array the kernel needs (call the functions of "
                         "minissl.kernels.optim, which check and convert their arguments)")
    return cnp.PyArray_DATA(arr)


cdef int _check_disjoint(char** ptrs, int count, Py_ssize_t nbytes) except -1:
    """The arrays of one update must not overlap: the C loops promise the compiler they do not
    (``restrict``), which is what lets them vectorise."""
    cdef int i, j
    for i in range(count):
        for j in range(i + 1, count):
            if ptrs[i] != NULL and ptrs[j] != NULL and ptrs[i] < ptrs[j] + nbytes \
                    and ptrs[j] < ptrs[i] + nbytes:
                raise ValueError("minissl._ext.optim: the parameter, its gradient and its state "
                                 "arrays must be distinct, non-overlapping arrays")
    return 0


# ---- entry points (called by minissl/kernels/optim.py) --------------------------------------
# Flat C-contiguous arrays of one float dtype, updated in place in chunks spread over threads.

def sgd_step(param, grad, buf, double lr, double momentum, double one_minus_dampening,
             double weight_decay, bint nesterov, bint first_step):
    """One SGD step in place; ``buf`` is None when momentum == 0. The scalars come as
    PyTorch computes them, in double (1 - dampening included), and are rounded here."""
    cdef int t = _float_type(param)
    cdef Py_ssize_t n = param.shape[0], k, s
    cdef char* pp = <char*>_data(param, t, 1, n, 0, True)
    cdef char* pg = <char*>_data(grad, t, 1, n, 0, False)
    cdef char* pb = NULL if buf is None else <char*>_data(buf, t, 1, n, 0, True)
    cdef Py_ssize_t size = 4 if t == cnp.NPY_FLOAT32 else 8      # bytes per element
    cdef char* ptrs[3]
    if momentum != 0 and pb == NULL:
        raise ValueError("minissl._ext.optim: momentum needs a buffer")
    ptrs[0], ptrs[1], ptrs[2] = pp, pg, pb
    _check_disjoint(ptrs, 3, n * size)
    for k in prange((n + CHUNK - 1) // CHUNK, nogil=True, schedule="static",
                    use_threads_if=n >= PARALLEL_MIN):
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
    cdef int t = _float_type(param)
    cdef Py_ssize_t n = param.shape[0], k, s
    cdef char* pp = <char*>_data(param, t, 1, n, 0, True)
    cdef char* pg = <char*>_data(grad, t, 1, n, 0, False)
    cdef char* pm = <char*>_data(exp_avg, t, 1, n, 0, True)
    cdef char* pv = <char*>_data(exp_avg_sq, t, 1, n, 0, True)
    cdef Py_ssize_t size = 4 if t == cnp.NPY_FLOAT32 else 8      # bytes per element
    cdef char* ptrs[4]
    ptrs[0], ptrs[1], ptrs[2], ptrs[3] = pp, pg, pm, pv
    _check_disjoint(ptrs, 4, n * size)
    for k in prange((n + CHUNK - 1) // CHUNK, nogil=True, schedule="static",
                    use_threads_if=n >= PARALLEL_MIN):
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
