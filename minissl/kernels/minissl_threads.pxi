# The thread count of a family's parallel loops, the same in every compiled family (each
# _cpu.pyx includes this file): set on first use by minissl/kernels/_dispatch.py, as many as
# BLAS uses when the matrix products run on minissl's own threads (kernels/gemm: one pool for
# both), else 1; minissl.runtime.set_num_threads overrides it, in every family at once.
cdef int THREADS = 1


def set_num_threads(int n):
    """Run this module's parallel loops on ``n`` threads (1: serial)."""
    global THREADS
    THREADS = n if n > 1 else 1
