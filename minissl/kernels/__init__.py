"""The hot loops of minissl, one folder per kernel family.

``im2col``, ``pool``, ``softmax``, ``norm``, ``activation``, ``embedding`` and ``optim`` each
hold every version of their kernels side by side: ``reference.py`` (NumPy, the
specification), ``_cpu.pyx`` with its C in ``<family>.h`` (the compiled CPU kernels),
``<family>.cu`` with its launchers in ``cuda.py`` (the GPU kernels), and ``__init__.py``, the
public functions, which check their arguments once and pick a version (see ``_dispatch.py``).
Shared pieces sit here: ``minissl_kernels.h`` (C helpers), ``minissl_checks.pxd`` (the
Cython entry points' guards), ``common.cuh`` and ``cuda.py`` (CUDA helpers and the CuPy
backend). Importing a family loads no compiled code; its first call does.
"""
