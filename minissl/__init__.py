"""minissl: self-supervised learning from first principles.

>>> import minissl as ms
>>> x = ms.tensor([[1.0, 2.0]], requires_grad=True)
>>> (x * x).sum().backward(); x.grad
array([[2., 4.]], dtype=float32)
"""
from .autograd import Function, Tensor, is_grad_enabled, no_grad, tensor
from .backend import get_array_module, is_cuda_available
from .gradcheck import GradcheckError, gradcheck
from .ops.elementwise import where
from .ops.shape import cat, stack
from . import random
from .random import manual_seed

__version__ = "0.1.0"

# ``ms.nn``, ``ms.optim``, ``ms.functional``, ``ms.losses``, ``ms.runtime`` and ``ms.profiler``,
# as in ``torch.nn``: imported on first use, so that ``import minissl`` stays light.
_SUBMODULES = ("nn", "optim", "functional", "losses", "runtime", "profiler")


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'minissl' has no attribute {name!r}")

__all__ = ["Tensor", "Function", "tensor", "no_grad", "is_grad_enabled", "cat", "stack",
           "where", "gradcheck", "manual_seed", "random", "GradcheckError", "get_array_module", "is_cuda_available"]
