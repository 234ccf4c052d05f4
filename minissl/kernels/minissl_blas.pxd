# The BLAS entry points that the compiled families calling BLAS themselves (gemm, conv) bind
# (``from minissl_blas cimport ...``): the 64-bit-integer CBLAS sgemm / dgemm and OpenBLAS's
# per-call thread limit, found by address in the process by minissl/kernels/gemm/__init__.py.
from libc.stdint cimport int64_t

ctypedef void (*sgemm_t)(int, int, int, int64_t, int64_t, int64_t, float, const float*,
                         int64_t, const float*, int64_t, float, float*, int64_t) noexcept nogil
ctypedef void (*dgemm_t)(int, int, int, int64_t, int64_t, int64_t, double, const double*,
                         int64_t, const double*, int64_t, double, double*, int64_t) noexcept nogil
ctypedef int (*set_local_t)(int) noexcept nogil

cdef enum:
    ROW_MAJOR = 101
    NO_TRANS = 111
    TRANS = 112
