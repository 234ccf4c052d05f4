"""Batched matrix products (minissl.kernels.gemm): the compiled products against NumPy's
``matmul`` over batch shapes, broadcasting, transposed and strided operands, both float dtypes
and both thread counts; ``out=`` into strided views; BLAS's thread limit restored; fallbacks."""
import ctypes

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl.kernels import gemm as G
from minissl.kernels._dispatch import load

EXT = load("gemm")
needs_blas = pytest.mark.skipif(EXT is None or G.blas_info() is None,
                                reason="Cython build missing, reference forced, or no OpenBLAS")


def operand(rng, batch, rows, cols, dtype, layout):
    """(*batch, rows, cols) in one of the layouts BLAS reads directly, or a strided one."""
    if layout == "transposed":
        return np.ascontiguousarray(
            rng.standard_normal(batch + (cols, rows)).astype(dtype)).swapaxes(-1, -2)
    if layout == "sliced":   # every other row and a padded row length: lda > cols
        return rng.standard_normal(batch + (2 * rows, cols + 3)).astype(dtype)[..., ::2, :cols]
    if layout == "strided":  # no unit stride at all: must be copied first
        return rng.standard_normal(batch + (rows, 2 * cols)).astype(dtype)[..., ::2]
    return rng.standard_normal(batch + (rows, cols)).astype(dtype)


def check(a, b):
    c = G.matmul(a, b)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    tol = 1e-4 if a.dtype == np.float32 else 1e-11
    assert c.shape == expected.shape and c.dtype == a.dtype and c.flags.c_contiguous
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * max(1, a.shape[-1]))


layouts = st.sampled_from(["contiguous", "transposed", "sliced", "strided"])


@needs_blas
@given(st.integers(0, 2**31), st.sampled_from([(), (2,), (3, 1), (1, 4), (2, 3)]),
       st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), layouts, layouts,
       st.sampled_from([np.float32, np.float64]), st.booleans())
def test_batched_products_match_numpy(seed, batch, m, k, n, la, lb, dtype, broadcast_b):
    rng = np.random.default_rng(seed)
    a = operand(rng, batch, m, k, dtype, la)
    b = operand(rng, () if broadcast_b else batch, k, n, dtype, lb)
    check(a, b)


@needs_blas
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch,m,k,n", [((8,), 128, 32, 128), ((1,), 300, 50, 7),
                                         ((2, 2), 3, 500, 2), ((), 70, 300, 200),
                                         ((), 40, 600, 900)])
def test_large_enough_to_split(threads, batch, m, k, n):
    from minissl.kernels import _dispatch
    previous = _dispatch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        check(rng.standard_normal(batch + (m, k)).astype(np.float32),
              rng.standard_normal(batch + (k, n)).astype(np.float32))
    finally:
        _dispatch.set_num_threads(previous)


@needs_blas
def test_blas_thread_limit_is_restored():
    lib = ctypes.CDLL(next(p for p in G._loaded_libraries() if G._blas[1] in p))
    set_local = lib.openblas_set_num_threads_local
    set_local.restype, set_local.argtypes = ctypes.c_int, [ctypes.c_int]
    before = set_local(3)
    try:
        rng = np.random.default_rng(1)
        G.matmul(rng.standard_normal((4, 64, 64)), rng.standard_normal((4, 64, 64)))
        assert set_local(3) == 3
    finally:
        set_local(before)


@needs_blas
def test_out_may_be_a_strided_view():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 3, 4, 6))
    buf = np.full((2, 5, 3, 20), np.nan)
    out = buf[..., 2:8].transpose(0, 2, 1, 3)                      # (2, 3, 5, 6), row stride 20
    assert G.matmul(a, b, out=out) is out
    np.testing.assert_allclose(out, a @ b, rtol=1e-12)
    assert np.isnan(buf[..., :2]).all() and np.isnan(buf[..., 8:]).all()


@needs_blas
def test_out_overlapping_an_operand_gets_a_copy():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 4, 4))
    b = rng.standard_normal((3, 4, 4))
    expected = a @ b
    assert G.matmul(a, b, out=a) is a
    np.testing.assert_allclose(a, expected, rtol=1e-12)


def test_other_operands_are_numpys():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((3, 2))
    i = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(G.matmul(i, i.swapaxes(1, 2)), i @ i.swapaxes(1, 2))
    np.testing.assert_array_equal(G.matmul(a[0], b), a[0] @ b)
    assert G.matmul(np.zeros((2, 0, 3)), np.zeros((2, 3, 4))).shape == (2, 0, 4)


def test_reference_forced(monkeypatch):
    monkeypatch.setenv("MINISSL_REFERENCE", "1")
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 5, 2))
    np.testing.assert_array_equal(G.matmul(a, b), np.matmul(a, b))


def test_numpy_fallback_never_sends_a_gram_matrix_to_syrk(monkeypatch):
    """NumPy runs ``a @ a.T`` (same memory) as OpenBLAS's ``syrk``, 3-4x slower than gemm."""
    monkeypatch.setenv("MINISSL_REFERENCE", "1")
    seen = []
    monkeypatch.setattr(G, "matmul_ref", lambda a, b: seen.append(b) or np.matmul(a, b))
    a = np.random.default_rng(6).standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_allclose(G.matmul(a, a.T), a @ a.T, rtol=1e-6)
    assert seen[-1].flags.c_contiguous and not np.shares_memory(seen[-1], a)
    G.matmul(a, a.T.copy())
    assert seen[-1].flags.c_contiguous


@needs_blas
def test_bad_shapes_name_the_op():
    with pytest.raises(ValueError, match="matmul: shapes"):
        G.matmul(np.zeros((2, 3, 4)), np.zeros((2, 5, 6)))
    with pytest.raises(ValueError, match="matmul: batch dims"):
        G.matmul(np.zeros((2, 3, 4)), np.zeros((3, 4, 6)))


@needs_blas
def test_compiled_entry_rejects_bad_offsets():
    a = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="offsets"):
        EXT.gemm(a, a, a, np.zeros(3, np.int64), 111, 111, 2, 2, 2, 2, 2, 2, 1, 1)
