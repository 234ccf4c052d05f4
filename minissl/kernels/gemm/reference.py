"""The reference of the gemm family: the array module's own ``matmul`` (for NumPy, its BLAS
with BLAS's own threads). Array-module generic, so it runs CuPy arrays too."""
from ...backend import get_array_module


def matmul_ref(a, b):
    """a @ b, NumPy's semantics."""
    return get_array_module(a).matmul(a, b)
