"""Pick the implementation of a kernel family: Cython build, CuPy, or the NumPy reference.

Every kernel family module in ``minissl/kernels`` holds the NumPy reference (the readable
specification). ``load(name)`` returns the compiled Cython module ``minissl._ext.<name>`` or
None. It returns None, and warns once, when the build is missing; it returns None silently
when the environment variable ``MINISSL_REFERENCE=1`` forces the reference path, so that path
can be tested and read.
"""
import importlib
import os
import warnings

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


def gpu(name, reference):
    """The CuPy kernel ``minissl.kernels.cuda.<name>`` for device arrays, or ``reference``
    (array-module generic, so it also runs on the device) when MINISSL_REFERENCE=1."""
    if reference_forced():
        return reference
    from . import cuda
    return getattr(cuda, name)
