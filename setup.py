"""Build script: compiles each kernel family's Cython entry points,
minissl/kernels/<family>/_cpu.pyx, into the extension module minissl.kernels.<family>._cpu.

A family's C code (<family>.h beside the .pyx) and the shared helpers in minissl/kernels
(minissl_kernels.h, minissl_checks.pxd) are found through the include paths.

The build is optional by design: if Cython, numpy headers or a C compiler are missing, or a
source fails to compile, the package still installs and minissl falls back to the NumPy
reference kernels with one warning (see minissl/kernels/_dispatch.py).
"""
import glob
import os
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _has_openmp():
    """True when the C compiler accepts -fopenmp and links a program that uses it."""
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        try:
            objs = cc.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
            cc.link_executable(objs, os.path.join(tmp, "omp"), extra_postargs=["-fopenmp"])
        except Exception:
            return False
    return True


def _extensions():
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as e:
        print(f"minissl: Cython kernels not built ({e}); the NumPy reference will be used",
              file=sys.stderr)
        return []
    flags = ["-O3"]
    link = []
    if sys.platform != "win32" and _has_openmp():
        flags.append("-fopenmp")
        link.append("-fopenmp")
    # MINISSL_ONLY=a,b builds just those sources (handy while working on one kernel).
    only = set(filter(None, os.environ.get("MINISSL_ONLY", "").split(",")))
    exts = []
    shared = os.path.join("minissl", "kernels")
    for path in sorted(glob.glob(os.path.join(shared, "*", "_cpu.pyx"))):
        family = os.path.dirname(path)
        name = os.path.basename(family)
        if only and name not in only:
            continue
        exts.append(Extension(
            f"minissl.kernels.{name}._cpu", [path],
            include_dirs=[family, shared, numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=flags, extra_link_args=link))
    return cythonize(exts, language_level=3, include_path=[shared], compiler_directives={
        "boundscheck": False, "wraparound": False, "cdivision": True,
        "initializedcheck": False})


class OptionalBuildExt(build_ext):
    """Build each extension, but never let a failed kernel stop the install."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # compiler missing or a source failed: fall back at run time
            print(f"minissl: could not build {ext.name} ({e}); "
                  "the NumPy reference will be used", file=sys.stderr)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
