"""Embedding backward (scatter-add): the compiled kernel against the NumPy reference (bit for
bit: both sum every row in index order), the reference against a plain loop and PyTorch,
repeated indices, determinism, edge cases and input validation."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minissl.kernels import embedding as K
from minissl.kernels._dispatch import load
from minissl.kernels.embedding import embedding_backward_ref
from support.cuda_emulator import close, layouts

DTYPES = [np.float32, np.float64]
EXT = load("embedding")
needs_ext = pytest.mark.skipif(EXT is None, reason="Cython build missing or reference forced")


def scatter_loop(indices, grad_out, num_embeddings):
    """The definition: add each position's gradient row to the row it looked up."""
    d = grad_out.shape[-1]
    out = np.zeros((num_embeddings, d), grad_out.dtype)
    for p, v in np.ndenumerate(indices):
        out[v] += grad_out[p]
    return out


@st.composite
def problems(draw):
    """indices of any shape (0-d and empty included), grad_out (*indices.shape, D)."""
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
    return shape, draw(st.integers(1, 9)), draw(st.integers(0, 70))   # shape, V, D


@needs_ext
@given(problem=problems(), dtype=st.sampled_from(DTYPES), sliced=st.booleans(),
       seed=st.integers(0, 2**31))
def test_compiled_matches_reference_exactly(problem, dtype, sliced, seed):
    shape, v, d = problem
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v, shape)
    g = rng.standard_normal(shape + (2 * d,)).astype(dtype)
    g = g[..., ::2] if sliced else g[..., :d].copy()     # strided or contiguous
    out = K.embedding_backward(idx, g, v)
    assert out.shape == (v, d) and out.dtype == dtype
    np.testing.assert_array_equal(out, K.embedding_backward_ref(idx, g, v))


@given(problem=problems(), seed=st.integers(0, 2**31))
def test_reference_matches_the_loop(problem, seed):
    shape, v, d = problem
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v, shape)
    g = rng.standard_normal(shape + (d,))
    np.testing.assert_allclose(K.embedding_backward_ref(idx, g, v), scatter_loop(idx, g, v),
                               rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(K.embedding_backward(idx, g, v), scatter_loop(idx, g, v),
                               rtol=1e-14, atol=1e-14)


@pytest.fixture(scope="module")
def torch():
    """PyTorch on one thread (see test_kernels_softmax.py)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.mark.torch
@given(problem=problems(), seed=st.integers(0, 2**31))
def test_matches_torch(torch, problem, seed):
    shape, v, d = problem
    assume(shape and 0 not in shape)                 # torch's kernel wants a non-empty index
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v, shape)
    g = rng.standard_normal(shape + (d,)).astype(np.float32)
    expected = torch.ops.aten.embedding_dense_backward(
        torch.from_numpy(g), torch.from_numpy(idx), v, -1, False).numpy()
    np.testing.assert_allclose(K.embedding_backward(idx, g, v), expected, rtol=1e-6,
                               atol=1e-6)


def test_repeated_indices_accumulate():
    idx = np.array([[2, 0, 2], [2, 1, 0]])
    g = np.arange(6 * 2, dtype=np.float32).reshape(2, 3, 2)
    out = K.embedding_backward(idx, g, 4)
    np.testing.assert_array_equal(out, [[2 + 10, 3 + 11], [8, 9], [0 + 4 + 6, 1 + 5 + 7], [0, 0]])


def test_large_input_is_deterministic_and_parallel_safe():
    """Big enough to run on both threads: column blocks, each row summed in index order, so
    the bits equal the sequential reference's and repeat run after run."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 50, (64, 128))              # many repeats per row
    g = rng.standard_normal((64, 128, 200)).astype(np.float32)
    first = K.embedding_backward(idx, g, 50)
    np.testing.assert_array_equal(first, K.embedding_backward_ref(idx, g, 50))
    np.testing.assert_array_equal(first, K.embedding_backward(idx, g, 50))


@needs_ext
def test_compiled_entry_point_rejects_what_the_wrapper_would_not_pass():
    """Called directly, the kernel checks the index range itself: an error, never a write
    outside grad_weight."""
    with pytest.raises(ValueError, match="index 9 out of range"):
        EXT.embedding_backward(np.array([0, 9]), np.zeros((2, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="minissl.kernels.embedding._cpu"):
        EXT.embedding_backward(np.array([0, 1], np.int32), np.zeros((2, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="minissl.kernels.embedding._cpu"):
        EXT.embedding_backward(np.array([0, 1]), np.zeros((2, 3)), np.zeros((4, 2)))


def test_any_integer_dtype_and_zero_dim_indices():
    g = np.ones((3, 4), np.float32)
    for dt in (np.int8, np.int32, np.uint16, np.int64):
        out = K.embedding_backward(np.array([1, 1, 0], dt), g, 2)
        np.testing.assert_array_equal(out, [[1] * 4, [2] * 4])
    out = K.embedding_backward(np.array(3), np.arange(4.0), 5)      # one lookup, grad (D,)
    np.testing.assert_array_equal(out[3], np.arange(4.0))
    assert (out[[0, 1, 2, 4]] == 0).all()


def test_size_zero():
    assert K.embedding_backward(np.zeros((0,), np.int64), np.zeros((0, 3)), 4).shape == (4, 3)
    assert (K.embedding_backward(np.zeros((2, 0), np.int64), np.zeros((2, 0, 3)), 4) == 0).all()
    assert K.embedding_backward(np.array([1, 2]), np.zeros((2, 0)), 4).shape == (4, 0)
    assert K.embedding_backward(np.zeros((0,), np.int64), np.zeros((0, 3)), 0).shape == (0, 3)


def test_on_device(device):
    from minissl.backend import to_device
    idx = np.array([[0, 3], [3, 3]])
    g = np.arange(8.0).reshape(2, 2, 2)
    out = K.embedding_backward(to_device(idx, device), to_device(g, device), 4)
    np.testing.assert_array_equal(to_device(out, "cpu"), scatter_loop(idx, g, 4))


@pytest.mark.parametrize("call, exc, words", [
    (lambda: K.embedding_backward(np.array([0, 5]), np.zeros((2, 3)), 5), ValueError,
     ["embedding_backward", "index 5", "num_embeddings = 5"]),
    (lambda: K.embedding_backward(np.array([-1, 0]), np.zeros((2, 3)), 5), ValueError,
     ["embedding_backward", "index -1"]),
    (lambda: K.embedding_backward(np.array([0, 1]), np.zeros((3, 3)), 5), ValueError,
     ["embedding_backward", "(2, 'D')", "(3, 3)"]),
    (lambda: K.embedding_backward(np.array([0, 1]), np.zeros(2), 5), ValueError,
     ["embedding_backward", "(2,)"]),
    (lambda: K.embedding_backward(np.array([0.0, 1.0]), np.zeros((2, 3)), 5), TypeError,
     ["embedding_backward", "integer"]),
    (lambda: K.embedding_backward(np.array([0, 1]), np.zeros((2, 3), np.int32), 5), TypeError,
     ["embedding_backward", "int32"]),
    (lambda: K.embedding_backward(np.array([0, 1]), np.zeros((2, 3)), -2), ValueError,
     ["embedding_backward", "num_embeddings"]),
    (lambda: K.embedding_backward(np.array([0, 1]), np.zeros((2, 3)), 2.0), ValueError,
     ["embedding_backward", "num_embeddings"]),
])
def test_bad_input_raises_with_the_function_name(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# --------------------------------------------------------------- CUDA kernels vs the reference
# Through the public functions on device arrays: the CUDA source run by the emulator
# (tests/support/cuda_emulator.py), or on a GPU (the ``runner`` fixture, conftest.py).

@given(idx_shape=st.lists(st.integers(0, 6), min_size=1, max_size=2), v=st.integers(0, 12),
       d=st.integers(0, 20), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_cuda_embedding_backward_matches_reference(runner, idx_shape, v, d, dtype, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, max(v, 1), tuple(idx_shape)) if v else \
        np.zeros(tuple(idx_shape), np.int64)
    if v == 0 and idx.size:
        v = 1
    g = layouts(rng, tuple(idx_shape) + (d,), dtype)
    with runner as r:
        got = r.host(K.embedding_backward(r.dev(idx), r.dev(g), v))
    # Summed in position order, like np.add.at: equal bit for bit.
    close(got, embedding_backward_ref(idx, g, v), dtype, exact=True)


def test_cuda_embedding_backward_repeated_token_across_tiles(runner):
    """One token at many positions, spread over several tiles of the block scan."""
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 3, 300)
    g = rng.standard_normal((300, 5)).astype(np.float32)
    with runner as r:
        got = r.host(K.embedding_backward(r.dev(idx), r.dev(g), 4))
    close(got, embedding_backward_ref(idx, g, 4), np.float32, exact=True)
    assert (got[3] == 0).all()
