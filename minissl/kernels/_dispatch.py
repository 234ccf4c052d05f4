"""Which version of a kernel runs: the NumPy reference, the compiled CPU kernel, or CUDA.

Every kernel family lives in one folder, ``minissl/kernels/<family>/``:

* ``reference.py``: the NumPy reference (``*_ref``), the readable specification; it is
  array-module generic, so it also runs on CuPy arrays;
* ``_cpu.pyx`` and ``<family>.h``: the Cython entry points and the C loops they call, built
  into ``minissl.kernels.<family>._cpu``;
* ``<family>.cu`` and ``cuda.py``: the CUDA source and its CuPy launchers;
* ``__init__.py``: the public functions, which check their arguments once and then ask this
  module which version to run.

``compiled(family, *arrays)`` is the compiled module when it is built and takes the arrays;
``on_device(a)`` tells whether an array lives on the GPU; ``gpu(family, name)`` is the CUDA
launcher of that name. ``MINISSL_REFERENCE=1`` forces the reference everywhere (read on
every call, so that a test can force it at run time). ``check_float`` and ``check_same`` are
the argument checks every family shares.

Nothing here loads a compiled kernel, OpenMP or CuPy on import: the compiled module of a
family is imported on its first call.
"""
import importlib
import os
import sys
import warnings

import numpy as np

from . import cuda as _cuda

_warned = False


def reference_forced():
    return os.environ.get("MINISSL_REFERENCE", "") not in ("", "0")


def load(family):
    """The compiled module ``minissl.kernels.<family>._cpu``, or None (then use the reference)."""
    global _warned
    if reference_forced():
        return None
    try:
        module = importlib.import_module(f"minissl.kernels.{family}._cpu")
    except ImportError as e:
        if not _warned:
            _warned = True
            warnings.warn(f"minissl: compiled kernels unavailable ({e}); using the NumPy "
                          "reference kernels (slower). Reinstall with a C compiler and Cython "
                          "to build them.", RuntimeWarning, stacklevel=2)
        return None
    if hasattr(module, "set_num_threads"):
        module.set_num_threads(get_num_threads())
    return module


_threads = None    # threads of the compiled kernels' parallel loops; None: not decided yet


def set_num_threads(n):
    """Run the compiled kernels' parallel loops and matrix products on ``n`` threads, in every
    family loaded now or later; returns the previous number."""
    global _threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be an integer >= 1, got {n!r}")
    previous, _threads = get_num_threads(), n
    for name, module in list(sys.modules.items()):
        if (name.startswith("minissl.kernels.") and name.endswith("._cpu")
                and hasattr(module, "set_num_threads")):
            module.set_num_threads(n)
    return previous


def get_num_threads():
    """The number of threads the compiled kernels' parallel loops (and, where minissl runs
    them, the matrix products) run on. The default, decided on first use: as many as NumPy's
    BLAS uses when minissl runs the products on its own threads (minissl/kernels/gemm), so
    that one pool serves products and kernels; else 1, leaving the cores to BLAS's own pool,
    whose idle workers would spin against a second one (docs/performance.md)."""
    global _threads
    if _threads is None:
        from . import gemm
        _threads = gemm.pool_threads()
    return _threads


_modules = {}   # family -> the compiled module, or None when it is not built; filled on first use


def compiled(family, *arrays, contiguous=False):
    """The compiled module of ``family`` when every array is a NumPy float32 or float64 array
    (C-contiguous too, if ``contiguous``), else None: then the caller runs the NumPy reference,
    which also takes ndarray subclasses, other dtypes and strided views.

    The module is cached after the first lookup (``load`` imports it again on every call,
    microseconds that matter for small arrays).
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
    if family not in _modules:
        _modules[family] = load(family)
    return _modules[family]


def on_device(a):
    """Whether ``a`` is an array of the GPU backend (a CuPy array), so the CUDA launchers run
    it. A plain NumPy array answers at once, without looking for CuPy."""
    return type(a) is not np.ndarray and _cuda.is_device_array(a)


def gpu(family, name):
    """The CUDA launcher ``minissl.kernels.<family>.cuda.<name>``; with MINISSL_REFERENCE=1 the
    reference ``<name>_ref`` instead (array-module generic, so it runs on the device too).
    Both have the public function's signature."""
    if reference_forced():
        return getattr(importlib.import_module(f"minissl.kernels.{family}.reference"),
                       name + "_ref")
    return getattr(importlib.import_module(f"minissl.kernels.{family}.cuda"), name)


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
