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
    rng = np.random.default_rng(0)
    a = rng.standard_normal(batch + (m, k)).astype(np.float32)
    b = rng.standard_normal(batch + (k, n)).astype(np.float32)
    with_threads(threads, lambda: check(a, b))


def with_threads(threads, fn):
    """fn() with the kernels' thread count set to ``threads``, then restored."""
    from minissl.kernels import _dispatch
    previous = _dispatch.set_num_threads(threads)
    try:
        return fn()
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


# ---- addmm and sum_rows: a linear layer's bias, written and summed by the rows' own threads

@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n,la,lb", [
    (4096, 128, 384, "contiguous", "transposed"),   # gpt_char's qkv: split by rows
    (300, 700, 900, "contiguous", "contiguous"),    # split by columns (n > m)
    (7, 5, 3, "contiguous", "contiguous"),          # small: one thread, no split
    (64, 40, 33, "sliced", "strided")])             # operands BLAS cannot read in place
def test_addmm_is_the_product_plus_the_bias_on_every_row(dtype, m, k, n, la, lb):
    rng = np.random.default_rng(1)
    a, b = operand(rng, (), m, k, dtype, la), operand(rng, (), k, n, dtype, lb)
    bias = rng.standard_normal(n).astype(dtype) * 10
    expected = a.astype(np.float64) @ b.astype(np.float64) + bias
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for threads in (1, 2):
        c = with_threads(threads, lambda: G.addmm(bias, a, b))
        assert c.shape == (m, n) and c.dtype == dtype and c.flags.c_contiguous
        np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * max(1, k) * 10)
    # The split follows the shape, not the threads: the same bits on 1 and 2 threads.
    np.testing.assert_array_equal(with_threads(1, lambda: G.addmm(bias, a, b)),
                                  with_threads(2, lambda: G.addmm(bias, a, b)))


@needs_blas
def test_addmm_adds_the_bias_it_is_given_not_the_previous_contents_of_c():
    """BLAS adds the product to what C holds (beta 1): C must hold exactly the bias first,
    in every row of every thread's block, also where malloc hands back a dirty block."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((1000, 64)).astype(np.float32)
    b = rng.standard_normal((64, 300)).astype(np.float32)
    junk = np.full((1000, 300), 1e6, np.float32)
    del junk
    c = G.addmm(np.zeros(300, np.float32), a, b)
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-4)


def test_addmm_names_bad_arguments():
    a, b = np.zeros((4, 3), np.float32), np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="addmm: needs matrices"):
        G.addmm(np.zeros(4, np.float32), a, b)
    with pytest.raises(TypeError, match="addmm: bias dtype float64"):
        G.addmm(np.zeros(5), a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n", [(4096, 128), (100, 3), (1, 7), (0, 4), (65, 1)])
def test_sum_rows_is_the_sum_over_rows_and_does_not_depend_on_the_threads(dtype, m, n):
    g = np.random.default_rng(3).standard_normal((m, n)).astype(dtype)
    expected = g.astype(np.float64).sum(axis=0)
    one = with_threads(1, lambda: G.sum_rows(g))
    two = with_threads(2, lambda: G.sum_rows(g))
    assert one.shape == (n,) and one.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(one, expected, rtol=tol, atol=tol * max(1, m) ** 0.5)
    np.testing.assert_array_equal(one, two)


def test_sum_rows_of_other_matrices_is_numpys():
    g = np.arange(12, dtype=np.int64).reshape(3, 4)
    np.testing.assert_array_equal(G.sum_rows(g), g.sum(axis=0))
    s = np.random.default_rng(4).standard_normal((6, 8)).astype(np.float32)[:, ::2]
    np.testing.assert_allclose(G.sum_rows(s), s.sum(axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="sum_rows: needs a matrix"):
        G.sum_rows(np.zeros(3))


@needs_blas
def test_compiled_entries_reject_a_bad_bias_or_output():
    a = np.zeros((2, 2), np.float32)
    offsets = np.zeros((3, 1), np.int64)
    with pytest.raises(ValueError, match="bias"):
        EXT.gemm(a, a, a, offsets, 111, 111, 2, 2, 2, 2, 2, 2, 1, 1, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="sum_rows"):
        EXT.sum_rows(a, np.zeros(3, np.float32), 1)


@pytest.mark.skipif(EXT is None, reason="Cython build missing or reference forced")
@pytest.mark.parametrize("m,n", [(4096, 128), (130, 37), (64, 16), (1, 3)])
def test_sum_rows_is_the_documented_blocked_float64_sum_bit_for_bit(m, n):
    """Blocks of 64 rows, each column summed in row order in float64, the blocks' sums added
    in block order, then rounded once to float32."""
    g = np.random.default_rng(5).standard_normal((m, n)).astype(np.float32)
    blocks = [g[i:i + 64].astype(np.float64) for i in range(0, m, 64)]
    partial = []
    for blk in blocks:
        acc = np.zeros(n)
        for row in blk:
            acc = acc + row
        partial.append(acc)
    total = np.zeros(n)
    for p in partial:
        total = total + p
    np.testing.assert_array_equal(G.sum_rows(g), total.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_addmm_and_sum_rows_agree_with_their_references(dtype):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((300, 70)).astype(dtype)
    b = rng.standard_normal((70, 50)).astype(dtype)
    bias = rng.standard_normal(50).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(G.addmm(bias, a, b), G.addmm_ref(bias, a, b), rtol=tol,
                               atol=tol * 10)
    np.testing.assert_allclose(G.sum_rows(a), G.sum_rows_ref(a), rtol=tol, atol=tol * 10)
