"""Where the data of the arrays minissl's ops create comes from: a caching allocator.

A training step allocates and frees the same large arrays every step. With glibc's defaults
a freed block of more than its mmap threshold (128 KiB, raised dynamically up to 32 MiB) goes
back to the operating system, as does free memory at the top of the heap, and the next step
pays a page fault and the kernel's zeroing for each 4 KiB page of it again: 5,600 faults per
mlp_simclr step, 11,000 per gpt_char step, a third of a small step's time. Process-wide heap
settings (``mallopt``, ``GLIBC_TUNABLES``) would cure it for the whole process, which a library
must not change; this cache cures it for minissl's own arrays only.

While minissl runs an op's forward or backward pass (``autograd.Function.__call__``,
``Tensor.backward``), NumPy allocates through a handler (NEP 49) whose free blocks of 32 KiB
or more are kept by size class (requests rounded up to 4 KiB) and handed to the next request
of the same class. NumPy keeps the current handler in a context variable, so the user's own
NumPy code, other threads and other libraries keep NumPy's default allocator. An array stays
with the allocator that made it: an output handed to the user is freed into the cache when
the user drops it.

The cost: up to ``limit`` bytes (1 GiB by default) of freed memory stay reserved;
``empty_cache()`` gives them back and ``set_limit(bytes)`` changes the bound (0 turns the
cache off). ``stats()`` reports what it holds. The reference path (``MINISSL_REFERENCE=1``
when first used) or a build without the compiled kernels uses NumPy's own allocator. On the
GPU, CuPy's memory pool already does this job.

The cache itself is C (memory.h) behind a Cython handler (_cpu.pyx). It has no NumPy
reference or CUDA twin: NumPy's default allocator is the reference, and the tests check that
arrays made through the cache behave identically.
"""
from .. import _dispatch

_module = None      # the compiled module, False when unavailable; looked up on first use


def _load():
    global _module
    if _module is None:
        _module = _dispatch.load("memory") or False
    return _module


def enter():
    """Make the cache NumPy's allocator in this context; returns the token for ``leave``
    (None when the cache is unavailable)."""
    m = _module if _module is not None else _load()
    return m.enter() if m else None


def leave(token):
    """Undo the ``enter`` that returned ``token``."""
    if token is not None:
        _module.leave(token)


def empty_cache():
    """Give every cached free block back to the C library; returns the bytes given back."""
    m = _load()
    return m.empty_cache() if m else 0


def set_limit(nbytes):
    """Keep at most ``nbytes`` of free blocks (0 disables caching); returns the old limit."""
    nbytes = int(nbytes)
    if nbytes < 0:
        raise ValueError(f"memory.set_limit: nbytes must be >= 0, got {nbytes}")
    m = _load()
    return m.set_limit(nbytes) if m else 0


def stats():
    """A dict: ``cached_bytes`` (free blocks held), ``limit``, ``hits`` (requests served from
    the cache), ``misses`` (large requests that went to the C library), ``bypassed`` (frees
    the full cache passed on), ``enabled``."""
    m = _load()
    if not m:
        return dict(cached_bytes=0, limit=0, hits=0, misses=0, bypassed=0, enabled=False)
    cached, limit, hits, misses, bypassed = m.stats()
    return dict(cached_bytes=cached, limit=limit, hits=hits, misses=misses, bypassed=bypassed,
                enabled=True)
