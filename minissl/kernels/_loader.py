"""Pick the implementation of a kernel family: Cython build, CuPy, or the NumPy reference.

Every kernel family module in ``minissl/kernels`` holds the NumPy reference (the readable
specification). ``load(name)`` returns the compiled Cython module ``minissl._ext.<name>`` or
None. It returns None, and warns once, when the build is missing; it returns None silently
when the environment variable ``MINISSL_REFERENCE=1`` forces the reference path, so that path
can be tested and read. ``compiled(name, *arrays)`` is what the public kernel functions call:
the cached module when the arrays are ones it takes, else None. ``check_float`` and
``check_same`` are the argument checks they share.
"""
import importlib
import os
import warnings

import numpy as np

# The compiled kernels parallelise with OpenMP, and numpy's matrix products with OpenBLAS's own
# threads. With OpenMP's default (active) waiting, idle OpenMP workers spin after each kernel
# and steal the cores the next BLAS call needs: on 2 cores a small step ran up to 10x slower.
# Passive waiting (threads sleep) avoids that; it must be set before libgomp loads, i.e. before
# the first compiled kernel is imported. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_warned = False


def reference_forced():
    return os.environ.get("MINISSL_REFERENCE", "") not in ("", "0")


def load(name):
    """The compiled module ``minissl._ext.<name>``, or None (then use the NumPy reference)."""
    global _warned
    if reference_forced():
        return None
    try:
        return importlib.import_module(f"minissl._ext.{name}")
    except ImportError as e:
        if not _warned:
            _warned = True
            warnings.warn(f"minissl: compiled kernels unavailable ({e}); using the NumPy "
                          "reference kernels (slower). Reinstall with a C compiler and Cython "
                          "to build them.", RuntimeWarning, stacklevel=2)
        return None


_modules = {}   # name -> the compiled module, or None when it is not built; filled on first use


def compiled(name, *arrays, contiguous=False):
    """The compiled module ``minissl._ext.<name>`` when every array is a NumPy float32 or
    float64 array (C-contiguous too, if ``contiguous``), else None: then the caller runs the
    NumPy reference, which also takes ndarray subclasses, other dtypes and strided views.

    The module is cached after the first lookup (``load`` imports it again on every call,
    microseconds that matter for small arrays). MINISSL_REFERENCE is read on every call, so
    that the reference can be forced at run time.
    """
    for a in arrays:
        if type(a) is not np.ndarray:
            return None
        if a.dtype != np.float32 and a.dtype != np.float64:
            return None
        if contiguous and not a.flags.c_contiguous:
            return None
    if reference_forced():
        return None
    if name not in _modules:
        _modules[name] = load(name)
    return _modules[name]


def check_float(fn, name, a, ndim=None):
    """Raise unless ``a`` is a floating-point array (with ``ndim`` dimensions, if given); the
    messages name the public function ``fn`` and the argument ``name``."""
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{fn}: {name} must be an ndarray, got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{fn}: {name} must be a floating-point array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got shape {tuple(a.shape)}")


def check_same(fn, names, arrays):
    """Raise unless the arrays have equal shapes and dtypes (the engine never mixes dtypes; a
    mix here is a caller bug); ``names`` name them in the messages."""
    a0 = arrays[0]
    for name, a in zip(names[1:], arrays[1:]):
        if a.shape != a0.shape:
            raise ValueError(f"{fn}: {names[0]} and {name} must have the same shape, got "
                             f"{tuple(a0.shape)} and {tuple(a.shape)}")
        if a.dtype != a0.dtype:
            raise TypeError(f"{fn}: {names[0]} and {name} must have the same dtype, got "
                            f"{a0.dtype} and {a.dtype}")


def gpu(name, reference):
    """The CuPy kernel ``minissl.kernels.cuda.<name>`` for device arrays, or ``reference``
    (array-module generic, so it also runs on the device) when MINISSL_REFERENCE=1."""
    if reference_forced():
        return reference
    from . import cuda
    return getattr(cuda, name)
