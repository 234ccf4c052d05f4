"""The gemm family on the GPU: CuPy's ``matmul``, which calls cuBLAS. A hand-written CUDA
product would be slower than cuBLAS, so this family has no .cu source."""
from .. import cuda as cu


def matmul(a, b):
    be = cu.device_backend("matmul", a=a, b=b)
    return be.xp.matmul(a, b)


def addmm(bias, a, b):
    """bias + a @ b on the device: cuBLAS's product, then CuPy's broadcast add."""
    be = cu.device_backend("addmm", bias=bias, a=a, b=b)
    return be.xp.matmul(a, b) + bias
