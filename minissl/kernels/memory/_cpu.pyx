"""Cython glue: NumPy's data-memory handler (NEP 49) backed by the cache of memory.h.

A handler is a PyCapsule named "mem_handler" holding a ``PyDataMem_Handler``. NumPy keeps the
current handler in a context variable: ``PyDataMem_SetHandler`` changes it for the running
thread's context only and returns the one it replaces, so ``enter``/``leave`` scope it to a
block of minissl's code. An array remembers the handler that allocated it and is freed by it,
whatever handler is current then.
"""
from cpython.pycapsule cimport PyCapsule_New
from libc.string cimport strncpy
cimport numpy as cnp

cnp.import_array()

cdef extern from "memory.h" nogil:
    ctypedef struct PyDataMemAllocator:
        void *ctx
        void *(*malloc)(void *, size_t)
        void *(*calloc)(void *, size_t, size_t)
        void *(*realloc)(void *, void *, size_t)
        void (*free)(void *, void *, size_t)
    ctypedef struct PyDataMem_Handler:
        char name[127]
        unsigned char version
        PyDataMemAllocator allocator
    ctypedef struct ms_cache:
        size_t cached_bytes, limit, hits, misses, bypass
    ms_cache ms_state
    size_t MS_CACHE_MIN
    void *ms_malloc(void *, size_t)
    void *ms_calloc(void *, size_t, size_t)
    void *ms_realloc(void *, void *, size_t)
    void ms_free_block(void *, void *, size_t)
    size_t ms_empty()

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

cdef PyDataMem_Handler _handler
strncpy(_handler.name, b"minissl_cache", 127)
_handler.version = 1
_handler.allocator.ctx = NULL
_handler.allocator.malloc = ms_malloc
_handler.allocator.calloc = ms_calloc
_handler.allocator.realloc = ms_realloc
_handler.allocator.free = ms_free_block

HANDLER = PyCapsule_New(&_handler, "mem_handler", NULL)
CACHE_MIN = MS_CACHE_MIN


def enter():
    """Make the cache the current handler of this context; returns the handler it replaced."""
    return PyDataMem_SetHandler(HANDLER)


def leave(previous):
    """Restore ``previous``, the handler ``enter`` returned."""
    PyDataMem_SetHandler(previous)


def empty_cache():
    """Free every cached block; returns the bytes freed."""
    return ms_empty()


def set_limit(size_t limit):
    """Hold at most ``limit`` bytes of free blocks (0: cache nothing); returns the old limit.
    The cache is emptied when it holds more than the new limit."""
    old = ms_state.limit
    ms_state.limit = limit
    if ms_state.cached_bytes > limit:
        ms_empty()
    return old


def stats():
    """(cached_bytes, limit, hits, misses, bypassed frees) at this moment."""
    return (ms_state.cached_bytes, ms_state.limit, ms_state.hits, ms_state.misses,
            ms_state.bypass)
