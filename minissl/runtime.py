"""Process settings for a training loop, applied only when asked: ``minissl.runtime.tune()``.

``import minissl`` changes nothing in the host process. A training script, the command line
(``minissl ...``), the demo and the benchmarks call :func:`tune` to change three process-wide
settings, each only as a default (a choice the user made in the environment always wins), and
none at all with ``MINISSL_RUNTIME=default``. Measured on the project's 2-core machine with
``benchmarks/bench_cpu.py`` (see docs/performance.md).

**The heap** (takes effect at once). A training step allocates and frees the same large
arrays every time (activations, gradients, im2col matrices, softmax probabilities). With
glibc's defaults much of that memory goes back to the operating system as soon as it is freed:
the top of the heap is trimmed once more than 128 KiB (raised dynamically) lies free there,
and blocks above the mmap threshold are mapped and unmapped one by one. The next step asks for
the same memory again and pays a page fault, and the kernel's zeroing, for every 4 KiB page it
touches: a third of the step time of the benchmark workloads (mlp_simclr 32 -> 20 ms).
``tune`` sets two limits with ``mallopt``: ``M_TRIM_THRESHOLD`` = 1 GiB (up to 1 GiB of free
memory at the top of the heap is kept for reuse) and ``M_MMAP_MAX`` = 0 (every block comes
from the heap, and so is reused; glibc's largest mmap threshold, 32 MiB, would still map
conv_simclr's 32 MiB activations afresh each step). The cost: a process that frees a large
working set keeps up to 1 GiB of it reserved. Skipped where the C library is not glibc and
when ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_MMAP_MAX_`` or
``GLIBC_TUNABLES`` is set.

**OpenBLAS's idle threads** (takes effect only if ``tune`` runs before NumPy is imported).
After a matrix product OpenBLAS's worker threads spin for 2^28 cycles (about 0.1 s) waiting for
the next one, so they are still spinning while the compiled kernels (OpenMP, all cores) run
between two products, and take a core from them. ``OPENBLAS_THREAD_TIMEOUT`` = 12 makes them
sleep after 2^12 cycles; waking them costs microseconds (conv_simclr 355 -> 300 ms, gpt_char
86 -> 81 ms). OpenBLAS reads the variable once, when NumPy loads it: set it in the shell
(``OPENBLAS_THREAD_TIMEOUT=12 minissl ...``) when minissl or NumPy is imported before ``tune``
can run, as it is by ``import minissl.runtime`` itself.

**OpenMP's idle threads** (takes effect only if ``tune`` runs before the first compiled kernel
is called, which loads libgomp). With OpenMP's default (active) waiting, idle workers spin
after each kernel and steal the cores the next BLAS call needs: on 2 cores a small step ran up
to 10x slower. ``OMP_WAIT_POLICY`` = PASSIVE makes them sleep.

PyTorch uses its own OpenMP thread pool, not OpenBLAS, and is affected by none of this.
"""
import ctypes
import os
import sys
from collections import namedtuple

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
SETTINGS = {M_TRIM_THRESHOLD: 1 << 30, M_MMAP_MAX: 0}
# The same heap settings as glibc's environment variables, for a child process that should
# start with them (a program that is not minissl, or one launched before it can call tune()).
ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_MAX_": "0"}
_USER_HEAP_CHOICE = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_",
                     "GLIBC_TUNABLES")
BLAS_THREAD_TIMEOUT = "12"   # log2 of the cycles an idle OpenBLAS thread spins before sleeping

Tuning = namedtuple("Tuning", ["heap", "blas_thread_timeout", "omp_wait_policy"])
Tuning.__doc__ = """What :func:`tune` changed: each field True when that setting was applied
(and will take effect), False when it was skipped (disabled, the user's own choice, or too
late)."""


def _disabled():
    return os.environ.get("MINISSL_RUNTIME") == "default"


def tune_malloc():
    """Apply ``SETTINGS`` with glibc's ``mallopt``; True when they were applied."""
    if (not sys.platform.startswith("linux") or _disabled()
            or any(k in os.environ for k in _USER_HEAP_CHOICE)):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version   # glibc only: musl has a no-op mallopt
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())


def set_blas_thread_timeout():
    """Set ``OPENBLAS_THREAD_TIMEOUT`` unless the user did or NumPy (hence OpenBLAS) is
    already loaded; True when OpenBLAS will read minissl's value."""
    if _disabled() or "numpy" in sys.modules or "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return False
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = BLAS_THREAD_TIMEOUT
    return True


def _compiled_kernel_loaded():
    return any(name.startswith("minissl.kernels.") and name.endswith("._cpu")
               for name in sys.modules)


def set_omp_wait_policy():
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it or a compiled kernel (hence
    libgomp) is already loaded; True when OpenMP will read minissl's value."""
    if _disabled() or "OMP_WAIT_POLICY" in os.environ or _compiled_kernel_loaded():
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def tune():
    """Apply the three settings of the module docstring; returns a :class:`Tuning` telling
    which were applied. Call it once, first thing in a program (before NumPy is imported
    for the OpenBLAS setting, before the first kernel runs for the OpenMP one)."""
    return Tuning(tune_malloc(), set_blas_thread_timeout(), set_omp_wait_policy())
