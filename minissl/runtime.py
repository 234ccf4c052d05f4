"""minissl's process-level controls: kernel threads, the array cache, and ``tune()``.

``import minissl`` changes nothing in the host process, and minissl is fast without any
setting: the two causes that used to need process settings are removed where they arise.

**One thread pool.** NumPy's BLAS (OpenBLAS) runs its own worker threads for every matrix
product, and they spin for about 0.1 s waiting for the next one; a second pool for the
compiled kernels on the same cores made steps 2-10x slower. So minissl runs the products of
its ops itself (minissl/kernels/gemm: each of its threads makes one single-threaded call of
the BLAS NumPy loaded), and OpenBLAS's workers stay asleep. Its kernels and products then
share one OpenMP pool of ``get_num_threads()`` threads: by default as many as NumPy's BLAS
uses, or 1 where NumPy's BLAS is not an OpenBLAS minissl can call (then the cores are left
to BLAS's own pool, as before). While other processes keep the cores busy the default runs
serially (a load guard measures, at most every 0.25 s, how many cores other processes kept
busy since its last look, from /proc/stat: spinning threads that wait for a descheduled
teammate made steps 4-12x slower). ``set_num_threads(n)`` fixes the count
and turns the guard off. Results do not depend on the count: the kernels give the same bits,
and products are split by their shape, never by the threads running.

**A cache for the arrays of ops.** A training step allocates and frees the same large
arrays every step; glibc returns such blocks to the operating system and the next step pays a
page fault per 4 KiB page again. The ops now allocate through minissl's caching allocator
(minissl/kernels/memory), which keeps freed blocks for reuse and touches neither the process
heap settings nor the user's own NumPy arrays. ``memory_stats()``, ``empty_cache()`` and
``set_cache_limit(nbytes)`` (default 1 GiB of free blocks) control it.

**tune(), optional.** A training script that owns its process may still call :func:`tune`,
as the command line, the demo and the benchmarks do. It changes two process-wide settings,
each only as a default (a choice the user made in the environment always wins), none with
``MINISSL_RUNTIME=default``; what each still buys is measured in docs/performance.md.

**The heap** (takes effect at once). minissl's ops no longer need it (their arrays come from
the cache above); it still helps the rest of a training process, whose data loading and
augmentation allocate and free large arrays too. With
glibc's defaults much of that memory goes back to the operating system as soon as it is freed:
the top of the heap is trimmed once more than 128 KiB (raised dynamically) lies free there,
and blocks above the mmap threshold are mapped and unmapped one by one. The next step asks for
the same memory again and pays a page fault, and the kernel's zeroing, for every 4 KiB page it
touches (this cost a third of the benchmark workloads' step time before the ops had a cache).
``tune`` sets two limits with ``mallopt``: ``M_TRIM_THRESHOLD`` = 1 GiB (up to 1 GiB of free
memory at the top of the heap is kept for reuse) and ``M_MMAP_MAX`` = 0 (every block comes
from the heap, and so is reused; glibc's largest mmap threshold, 32 MiB, would still map
conv_simclr's 32 MiB activations afresh each step). The cost: a process that frees a large
working set keeps up to 1 GiB of it reserved. Skipped where the C library is not glibc and
when ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_MMAP_MAX_`` or
``GLIBC_TUNABLES`` is set.

**OpenBLAS's idle threads** (takes effect only if ``tune`` runs before NumPy is imported;
matters only for the products that minissl does not run itself: the user's own, or all of
them where NumPy's BLAS is not one minissl can call). After a matrix product OpenBLAS's worker
threads spin for 2^28 cycles (about 0.1 s) waiting for the next one, so they are still
spinning while parallel kernels run between two products, and take a core from them.
``OPENBLAS_THREAD_TIMEOUT`` = 12 makes them sleep after 2^12 cycles; waking them costs
microseconds (with parallel kernels: conv_simclr 355 -> 300 ms, gpt_char 86 -> 81 ms). OpenBLAS reads the variable once, when NumPy loads it: set it in the shell
(``OPENBLAS_THREAD_TIMEOUT=12 minissl ...``) when minissl or NumPy is imported before ``tune``
can run, as it is by ``import minissl.runtime`` itself.

**OpenMP's idle threads: no longer set by ``tune``.** With OpenMP's default waiting, idle
workers spin for a while after each kernel; while OpenBLAS ran the products on its own pool
they stole the cores its next call needed (on 2 cores a small step ran up to 10x slower), and
``tune`` set ``OMP_WAIT_POLICY=PASSIVE`` to make them sleep at once. With the products on
minissl's own pool that makes each of a step's many parallel regions wake a sleeping thread,
and steps got slower (conv_simclr 446-557 ms against 385-490, gpt_char 129-162 against
102-136; docs/performance.md), so ``tune`` leaves it alone (``Tuning.omp_wait_policy`` is
always False). ``set_omp_wait_policy()`` still sets it for a program that asks, if called
before the first compiled kernel loads libgomp.

PyTorch runs its kernels and its matrix products on one OpenMP pool; so does minissl now.
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


def set_num_threads(n):
    """Threads for the compiled kernels' parallel loops and minissl's matrix products
    (default: see the module docstring); returns the previous number. Like
    ``torch.set_num_threads``, but for minissl's own work only: NumPy's BLAS keeps its own
    setting for the user's products."""
    from .kernels import _dispatch
    return _dispatch.set_num_threads(n)


def get_num_threads():
    """Threads the compiled kernels' parallel loops run on."""
    from .kernels import _dispatch
    return _dispatch.get_num_threads()


def memory_stats():
    """What the array cache of minissl's ops holds: a dict with ``cached_bytes``, ``limit``,
    ``hits``, ``misses``, ``bypassed`` and ``enabled`` (see minissl/kernels/memory)."""
    from .kernels import memory
    return memory.stats()


def empty_cache():
    """Give the array cache's free blocks back to the C library; returns the bytes freed."""
    from .kernels import memory
    return memory.empty_cache()


def set_cache_limit(nbytes):
    """Keep at most ``nbytes`` of free blocks in the array cache (0 turns caching off);
    returns the previous limit."""
    from .kernels import memory
    return memory.set_limit(nbytes)


def tune():
    """Apply the two settings of the module docstring (the heap, OpenBLAS's idle threads);
    returns a :class:`Tuning` telling which were applied (``omp_wait_policy``: always False,
    see the module docstring). Call it once, first thing in a program (before NumPy is
    imported for the OpenBLAS setting)."""
    return Tuning(tune_malloc(), set_blas_thread_timeout(), False)
