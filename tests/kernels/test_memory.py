"""The caching allocator of minissl's ops (minissl/kernels/memory): scoped to minissl's code,
reuses freed blocks, hands out zeroed memory for zeros, keeps data through realloc, respects
its limit, survives threads; and the kernels' thread setting."""
import os
import threading

import numpy as np
import pytest

import minissl as ms
from minissl.kernels import _dispatch, memory
from minissl.kernels._dispatch import load

EXT = load("memory")
needs_ext = pytest.mark.skipif(EXT is None, reason="Cython build missing or reference forced")


def handler_name(a=None):
    try:
        from numpy._core.multiarray import get_handler_name       # NumPy 2
    except ImportError:
        from numpy.core.multiarray import get_handler_name        # NumPy 1.22+
    return get_handler_name() if a is None else get_handler_name(a)


@needs_ext
def test_ops_allocate_from_the_cache_and_the_users_numpy_does_not():
    x = ms.tensor(np.ones((64, 256), np.float32), requires_grad=True)
    y = (x * 2.0).relu()
    assert handler_name(y.data) == "minissl_cache"
    y.sum().backward()
    assert handler_name(x.grad) == "minissl_cache"
    assert handler_name() != "minissl_cache"                  # the scope ended
    assert handler_name(np.ones((64, 256))) != "minissl_cache"


@needs_ext
def test_a_repeated_step_is_served_from_the_cache():
    rng = np.random.default_rng(0)
    lin = ms.nn.Linear(256, 256)
    x = ms.tensor(rng.standard_normal((128, 256), dtype=np.float32))

    def step():
        lin.zero_grad()
        lin(x).relu().sum().backward()

    for _ in range(3):
        step()
    before = memory.stats()
    for _ in range(5):
        step()
    after = memory.stats()
    assert after["misses"] == before["misses"]                # every large block was reused
    assert after["hits"] > before["hits"]


@needs_ext
def test_reused_blocks_are_zeroed_for_zeros_and_realloc_keeps_the_data():
    token = memory.enter()
    try:
        n = 1 << 16
        dirty = np.full(n, 7.0)
        del dirty                                             # a dirty block in the cache
        assert not np.zeros(n).any()                          # calloc zeroes a reused block
        a = np.arange(n, dtype=np.float64)
        a.resize(2 * n, refcheck=False)                        # realloc: grows, keeps the data
        np.testing.assert_array_equal(a[:n], np.arange(n))
        assert not a[n:].any()
        a.resize(n // 2, refcheck=False)                       # and shrinks
        np.testing.assert_array_equal(a, np.arange(n // 2))
        small = np.arange(10.0)                                # small blocks: plain malloc
        small.resize(1000, refcheck=False)
        np.testing.assert_array_equal(small[:10], np.arange(10.0))
    finally:
        memory.leave(token)


@needs_ext
def test_the_limit_bounds_what_is_kept_and_empty_cache_gives_it_back():
    old = memory.set_limit(0)
    try:
        token = memory.enter()
        try:
            bypassed = memory.stats()["bypassed"]
            a = np.ones(1 << 16)
            del a
        finally:
            memory.leave(token)
        assert memory.stats()["bypassed"] == bypassed + 1
        assert memory.stats()["cached_bytes"] == 0
    finally:
        memory.set_limit(old)
    token = memory.enter()
    try:
        a = np.ones(1 << 16)
        del a
    finally:
        memory.leave(token)
    assert memory.stats()["cached_bytes"] >= 8 << 16
    assert memory.empty_cache() >= 8 << 16
    assert memory.stats()["cached_bytes"] == 0
    with pytest.raises(ValueError, match="set_limit"):
        memory.set_limit(-1)


@needs_ext
def test_threads_running_ops_at_once_get_their_own_correct_results():
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((96, 300)) for _ in range(4)]
    expected = [np.exp(x - x.max(1, keepdims=True)) / np.exp(x - x.max(1, keepdims=True))
                .sum(1, keepdims=True) for x in xs]
    errors = []

    def work(i):
        for _ in range(30):
            y = ms.functional.softmax(ms.tensor(xs[i]), dim=1).data
            if not np.allclose(y, expected[i], rtol=1e-12, atol=1e-14):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("blas_threads", ["1", "2"])
def test_kernel_threads_default_to_blas_threads_when_minissl_runs_the_products(blas_threads):
    """In a fresh process: one pool, so the kernels get BLAS's thread count when the products
    run on minissl's threads (kernels/gemm), and 1 when BLAS runs them on its own pool."""
    import subprocess
    import sys
    code = ("from minissl import runtime\nfrom minissl.kernels import gemm\n"
            "print(runtime.get_num_threads(), gemm.blas_info() is not None)")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=blas_threads)
    env.pop("MINISSL_REFERENCE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    threads, bound = out.stdout.split()
    assert int(threads) == (int(blas_threads) if bound == "True" else 1)


def test_kernel_threads_are_validated():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="set_num_threads"):
            _dispatch.set_num_threads(bad)
