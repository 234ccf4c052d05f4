"""The gemm family on the GPU: CuPy's ``matmul``, which calls cuBLAS. A hand-written CUDA
product would be slower than cuBLAS, so this family has no .cu source."""
from .. import cuda as cu


def matmul(a, b):
    be = cu.device_backend("matmul", a=a, b=b)
    return be.xp.matmul(a, b)
