"""Process settings for a training loop: glibc's heap, and OpenBLAS's idle threads.

``import minissl`` runs this module first (it imports nothing heavy, and no NumPy). Both
settings are defaults only: a choice the user made in the environment always wins, and
``MINISSL_RUNTIME=default`` turns both off. Measured on the project's 2-core machine with
``benchmarks/bench_cpu.py`` (see docs/performance.md).

**The heap.** A training step allocates and frees the same large arrays every time
(activations, gradients, im2col matrices, softmax probabilities). With glibc's defaults much
of that memory goes back to the operating system as soon as it is freed: the top of the heap
is trimmed once more than 128 KiB (raised dynamically) lies free there, and blocks above the
mmap threshold are mapped and unmapped one by one. The next step asks for the same memory
again and pays a page fault, and the kernel's zeroing, for every 4 KiB page it touches: a
third of the step time of the benchmark workloads (mlp_simclr 32 -> 20 ms). ``tune_malloc``
sets two limits with ``mallopt``: ``M_TRIM_THRESHOLD`` = 1 GiB (up to 1 GiB of free memory at
the top of the heap is kept for reuse) and ``M_MMAP_MAX`` = 0 (every block comes from the heap,
and so is reused; glibc's largest mmap threshold, 32 MiB, would still map conv_simclr's 32 MiB
activations afresh each step: 2000 page faults a step, and 5-10 % of its time). The cost: a
process that frees a large working set keeps up to 1 GiB of it reserved, and freed blocks
below the top of the heap are kept for reuse rather than returned. Skipped where the C library
is not glibc and when ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_MMAP_MAX_`` or ``GLIBC_TUNABLES`` is set.

**OpenBLAS's idle threads.** After a matrix product, OpenBLAS's worker threads spin waiting for
the next one for 2^28 cycles (about 0.1 s), so they are still spinning while the compiled
kernels (OpenMP, both cores) run between two products, and take a core from them.
``OPENBLAS_THREAD_TIMEOUT`` = 12 makes them sleep after 2^12 cycles (about a microsecond);
waking them for the next product costs microseconds (conv_simclr 355 -> 300 ms, gpt_char
86 -> 81 ms). OpenBLAS reads the variable once, when NumPy loads it, so this takes effect only
when ``minissl`` is imported before ``numpy``; ``BLAS_TIMEOUT_APPLIED`` tells whether it was
in time. PyTorch uses its own OpenMP thread pool, not OpenBLAS, and is not affected.
"""
import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
SETTINGS = {M_TRIM_THRESHOLD: 1 << 30, M_MMAP_MAX: 0}
# The same heap settings as glibc's environment variables (for a child process, e.g. the
# PyTorch reference of benchmarks/bench_cpu.py --torch-malloc).
ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_MAX_": "0"}
_USER_HEAP_CHOICE = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_",
                     "GLIBC_TUNABLES")
BLAS_THREAD_TIMEOUT = "12"   # log2 of the cycles an idle OpenBLAS thread spins before sleeping


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


TUNED = tune_malloc()
BLAS_TIMEOUT_APPLIED = set_blas_thread_timeout()
