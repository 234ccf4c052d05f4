"""The conv family on the GPU: the reference's lowering with im2col's CUDA kernels
(kernels/im2col/im2col.cu) and cuBLAS's products (CuPy's ``matmul``). The CPU kernel's point,
keeping each image's unfolded windows in a core's cache, does not carry over to a GPU, whose
products want one large matrix; so this family has no .cu source."""
from .. import cuda as cu
from ..im2col import cuda as im2col_cuda
from .reference import conv2d_backward_ref, conv2d_forward_ref


def conv2d_forward(x, weight, bias, stride, padding, dilation):
    cu.device_backend("conv2d_forward", x=x, weight=weight)
    return conv2d_forward_ref(x, weight, bias, stride, padding, dilation,
                              im2col=im2col_cuda.im2col)


def conv2d_backward(x, weight, grad_out, stride, padding, dilation, need_x=True, need_w=True):
    cu.device_backend("conv2d_backward", x=x, weight=weight, grad_out=grad_out)
    return conv2d_backward_ref(x, weight, grad_out, stride, padding, dilation, need_x, need_w,
                               im2col=im2col_cuda.im2col, col2im=im2col_cuda.col2im)
