"""Keep freed memory for the next step: glibc's heap settings for a training loop.

A training step allocates and frees the same large arrays every time (activations, gradients,
im2col matrices, softmax probabilities). With glibc's default settings much of that memory goes
back to the operating system as soon as it is freed: the top of the heap is trimmed once more
than 128 KiB (raised dynamically) lies free there, and blocks above the mmap threshold are
mapped and unmapped one by one. The next step then asks for the same memory again and pays a
page fault, and the kernel's zeroing, for every 4 KiB page it touches. On the benchmark
workloads that is a third of minissl's step time (mlp_simclr 32 -> 19 ms on 2 cores).

``tune_malloc`` (called once by ``import minissl``) raises two limits with ``mallopt``:

- ``M_TRIM_THRESHOLD`` = 1 GiB: up to 1 GiB of free memory at the top of the heap is kept for
  reuse instead of being returned to the OS;
- ``M_MMAP_THRESHOLD`` = 32 MiB (the largest value glibc accepts): blocks up to that size come
  from the heap, and so are reused, instead of being mapped afresh.

What this costs: a process that frees a large working set keeps up to 1 GiB of it reserved.
It does nothing where the C library is not glibc, when ``MINISSL_MALLOC=default``, or when
the user already chose with glibc's own ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``
or ``GLIBC_TUNABLES`` variables. (PyTorch's CPU allocator uses the same glibc heap with its
defaults; ``benchmarks/bench_cpu.py --torch-malloc`` measures it under these settings too.)
"""
import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
SETTINGS = {M_TRIM_THRESHOLD: 1 << 30, M_MMAP_THRESHOLD: 32 << 20}
ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}
_USER_CHOICE = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def tune_malloc():
    """Apply ``SETTINGS`` with glibc's ``mallopt``; True when they were applied."""
    if (not sys.platform.startswith("linux") or os.environ.get("MINISSL_MALLOC") == "default"
            or any(k in os.environ for k in _USER_CHOICE)):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version   # glibc only: musl has a no-op mallopt
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())


TUNED = tune_malloc()
