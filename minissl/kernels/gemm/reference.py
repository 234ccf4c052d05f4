"""The reference of the gemm family: the array module's own ``matmul`` (for NumPy, its BLAS
with BLAS's own threads), and for a linear layer the product plus a bias and the sum of a
matrix's rows. Array-module generic, so it runs CuPy arrays too."""
from ...backend import get_array_module


def matmul_ref(a, b):
    """a @ b, NumPy's semantics."""
    return get_array_module(a).matmul(a, b)


def addmm_ref(bias, a, b):
    """bias + a @ b, the bias (n,) added to every row of the (m, n) product."""
    return get_array_module(a).matmul(a, b) + bias


def sum_rows_ref(g):
    """The sum of the rows of a matrix g (m, n): g.sum(axis=0)."""
    return g.sum(axis=0)
