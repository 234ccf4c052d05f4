"""im2col / col2im: every implementation against the NumPy reference, the reference against
brute-force loops and PyTorch, the adjoint identity, input validation and dispatch."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl.kernels import im2col as K
from minissl.kernels._dispatch import load, reference_forced
from support.helpers import assert_close, make_array
from minissl.kernels.im2col import col2im_ref, im2col_ref
from support.cuda_emulator import close, layouts, windows

DTYPES = [np.float32, np.float64]

LAYOUTS = ["contiguous", "transposed", "sliced", "fortran", "readonly"]


# ----------------------------------------------------------------------------- helpers

def compiled_module():
    """The built Cython module, or None (not built, or the reference is forced)."""
    return load("im2col")


@st.composite
def geometries(draw, min_size=0):
    """(x_shape, kernel, stride, padding, dilation) with an output grid of at least 1 x 1."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(min_size, dh * (kh - 1) + 1 - 2 * ph), 11))
    w = draw(st.integers(max(min_size, dw * (kw - 1) + 1 - 2 * pw), 11))
    n, c = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    return (n, c, h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw)


def out_size(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def grid(shape, k, s, p, d=(1, 1)):
    return (out_size(shape[2], k[0], s[0], p[0], d[0]), out_size(shape[3], k[1], s[1], p[1], d[1]))


def im2col_loops(x, k, s, p, d=(1, 1)):
    """The definition, one entry at a time."""
    n, c, h, w = x.shape
    oh, ow = grid(x.shape, k, s, p, d)
    cols = np.zeros((n * oh * ow, c * k[0] * k[1]), dtype=x.dtype)
    for b in range(n):
        for y in range(oh):
            for z in range(ow):
                for ch in range(c):
                    for i in range(k[0]):
                        for j in range(k[1]):
                            hh, ww = y * s[0] - p[0] + i * d[0], z * s[1] - p[1] + j * d[1]
                            if 0 <= hh < h and 0 <= ww < w:
                                cols[(b * oh + y) * ow + z, (ch * k[0] + i) * k[1] + j] = \
                                    x[b, ch, hh, ww]
    return cols


def col2im_loops(cols, x_shape, k, s, p, d=(1, 1)):
    """The adjoint by its definition: scatter every entry back to the pixel it came from."""
    n, c, h, w = x_shape
    oh, ow = grid(x_shape, k, s, p, d)
    x = np.zeros(x_shape, dtype=cols.dtype)
    for b in range(n):
        for y in range(oh):
            for z in range(ow):
                for ch in range(c):
                    for i in range(k[0]):
                        for j in range(k[1]):
                            hh, ww = y * s[0] - p[0] + i * d[0], z * s[1] - p[1] + j * d[1]
                            if 0 <= hh < h and 0 <= ww < w:
                                x[b, ch, hh, ww] += \
                                    cols[(b * oh + y) * ow + z, (ch * k[0] + i) * k[1] + j]
    return x


# ----------------------------------------------------------------------------- agreement

@given(geo=geometries(), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**32 - 1))
def test_im2col_every_version_matches_reference(geo, dtype, layout, seed):
    shape, k, s, p, d = geo
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, layout)
    expected = K.im2col_ref(x, k, s, p, d)
    oh, ow = grid(shape, k, s, p, d)
    assert expected.shape == (shape[0] * oh * ow, shape[1] * k[0] * k[1])
    got = K.im2col(x, k, s, p, d)
    assert got.flags.c_contiguous and got.dtype == dtype
    np.testing.assert_array_equal(got, expected)             # a pure copy: exact
    ext = compiled_module()
    if ext is not None:
        out = np.full(expected.shape, np.nan, dtype=dtype)  # every entry must be written
        ext.im2col(np.ascontiguousarray(x), out, *k, *s, *p, *d)
        np.testing.assert_array_equal(out, expected)


@given(geo=geometries(), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**32 - 1))
def test_col2im_every_version_matches_reference(geo, dtype, layout, seed):
    shape, k, s, p, d = geo
    rng = np.random.default_rng(seed)
    rows = shape[0] * np.prod(grid(shape, k, s, p, d))
    cols = make_array(rng, (rows, shape[1] * k[0] * k[1]), dtype, layout)
    expected = K.col2im_ref(cols, shape, k, s, p, d)
    assert expected.shape == shape and expected.dtype == dtype
    got = K.col2im(cols, shape, k, s, p, d)
    assert got.flags.c_contiguous
    assert_close(got, expected, dtype)
    ext = compiled_module()
    if ext is not None:
        out = np.full(shape, np.nan, dtype=dtype)
        ext.col2im(np.ascontiguousarray(cols), out, *k, *s, *p, *d)
        assert_close(out, expected, dtype)


@pytest.mark.parametrize("shape,k,s,p", [
    ((4, 8, 32, 32), (3, 3), (1, 1), (1, 1)),        # above the threshold for threads
    ((3, 16, 17, 15), (3, 2), (2, 3), (1, 0)),
    ((2, 32, 16, 16), (5, 5), (2, 2), (2, 2)),
    ((2, 8, 12, 20), (1, 1), (1, 1), (0, 0)),
])
@pytest.mark.parametrize("d", [(1, 1), (2, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_shapes_use_threads_and_agree(shape, k, s, p, d, dtype):
    rng = np.random.default_rng(1)
    x = make_array(rng, shape, dtype)
    cols = K.im2col(x, k, s, p, d)
    np.testing.assert_array_equal(cols, K.im2col_ref(x, k, s, p, d))
    c = make_array(rng, cols.shape, dtype)
    assert_close(K.col2im(c, shape, k, s, p, d), K.col2im_ref(c, shape, k, s, p, d), dtype)


@pytest.mark.parametrize("shape,k,s,p,d", [
    ((2, 2, 3, 4), (2, 2), (1, 1), (0, 0), (1, 1)),
    ((1, 3, 4, 3), (3, 2), (2, 1), (1, 1), (1, 1)),
    ((2, 1, 5, 5), (3, 3), (3, 2), (2, 0), (1, 1)),
    ((1, 2, 2, 2), (1, 3), (1, 2), (0, 1), (1, 1)),
    ((1, 1, 0, 2), (2, 2), (1, 1), (1, 1), (1, 1)),          # an empty plane: all padding
    ((2, 2, 7, 6), (3, 2), (1, 2), (1, 0), (2, 3)),          # dilated
    ((1, 1, 1, 9), (1, 3), (1, 1), (0, 2), (1, 4)),          # conv1d-like, dilation 4
    ((1, 2, 5, 5), (2, 2), (2, 1), (2, 2), (5, 3)),          # dilated span past the input
])
def test_reference_matches_brute_force_loops(shape, k, s, p, d):
    rng = np.random.default_rng(2)
    x = make_array(rng, shape, np.float64)
    expected = im2col_loops(x, k, s, p, d)
    np.testing.assert_array_equal(K.im2col_ref(x, k, s, p, d), expected)
    np.testing.assert_array_equal(K.im2col(x, k, s, p, d), expected)
    cols = make_array(rng, expected.shape, np.float64)
    np.testing.assert_allclose(K.col2im_ref(cols, shape, k, s, p, d),
                               col2im_loops(cols, shape, k, s, p, d), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(K.col2im(cols, shape, k, s, p, d),
                               col2im_loops(cols, shape, k, s, p, d), rtol=1e-12, atol=1e-12)


@given(geo=geometries(), seed=st.integers(0, 2**32 - 1))
def test_col2im_is_the_adjoint_of_im2col(geo, seed):
    # <im2col(x), c> = <x, col2im(c)> for every x and c: col2im is im2col's transpose.
    shape, k, s, p, d = geo
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, np.float64)
    cols = K.im2col(x, k, s, p, d)
    c = make_array(rng, cols.shape, np.float64)
    lhs = np.vdot(cols, c)
    rhs = np.vdot(x, K.col2im(c, shape, k, s, p, d))
    assert abs(lhs - rhs) <= 1e-10 * (1 + np.abs(cols).sum() * np.abs(c).max(initial=0))


def test_conv2d_as_matrix_product_matches_direct_sum():
    # cols @ weight.reshape(O, -1).T is conv2d in (N, OH, OW, O) layout.
    rng = np.random.default_rng(3)
    x = make_array(rng, (2, 3, 6, 5), np.float64)
    weight = make_array(rng, (4, 3, 3, 2), np.float64)
    k, s, p = (3, 2), (2, 1), (1, 1)
    out = K.im2col(x, k, s, p) @ weight.reshape(4, -1).T
    oh, ow = out_size(6, 3, 2, 1), out_size(5, 2, 1, 1)
    out = out.reshape(2, oh, ow, 4)
    x_pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for y in range(oh):
        for z in range(ow):
            window = x_pad[:, :, y * 2:y * 2 + 3, z:z + 2]          # (N, C, kh, kw)
            direct = np.einsum("nchw,ochw->no", window, weight)
            np.testing.assert_allclose(out[:, y, z], direct, rtol=1e-12, atol=1e-12)


@pytest.mark.torch
@given(geo=geometries(min_size=1), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**32 - 1))
def test_matches_torch_unfold_and_fold(geo, dtype, seed):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape, k, s, p, d = geo
    n, c, h, w = shape
    if n == 0 or c == 0:
        return                                            # torch's unfold rejects them
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype)
    # unfold: (N, C kh kw, L) with L = OH OW; our rows are (n, l), so transpose per image.
    unf = F.unfold(torch.from_numpy(x), k, dilation=d, padding=p, stride=s).numpy()
    expected = unf.transpose(0, 2, 1).reshape(-1, unf.shape[1])
    np.testing.assert_array_equal(K.im2col(x, k, s, p, d), expected)
    cols = make_array(rng, expected.shape, dtype)
    folded = F.fold(torch.from_numpy(cols.reshape(n, -1, cols.shape[1]).transpose(0, 2, 1)),
                    (h, w), k, dilation=d, padding=p, stride=s).numpy()
    assert_close(K.col2im(cols, shape, k, s, p, d), folded, dtype)


# ----------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 0, 5, 5), (0, 0, 4, 4)])
def test_empty_batch_or_channels(shape):
    x = np.zeros(shape, np.float32)
    cols = K.im2col(x, (3, 3), (1, 1), (1, 1))
    assert cols.shape == (shape[0] * 25, shape[1] * 9) and cols.dtype == np.float32
    back = K.col2im(cols, shape, (3, 3), (1, 1), (1, 1))
    assert back.shape == shape and back.dtype == np.float32


def test_other_float_dtypes_take_the_reference_path():
    rng = np.random.default_rng(4)
    x = make_array(rng, (2, 3, 5, 4), np.float16)
    cols = K.im2col(x, (2, 2), (1, 2), (1, 0))
    assert cols.dtype == np.float16
    np.testing.assert_array_equal(cols, K.im2col_ref(x, (2, 2), (1, 2), (1, 0)))
    big_endian = x.astype(">f8")
    np.testing.assert_array_equal(K.im2col(big_endian, (2, 2), (1, 2), (1, 0)),
                                  K.im2col_ref(x.astype(np.float64), (2, 2), (1, 2), (1, 0)))


def test_int_arguments_mean_both_axes():
    x = make_array(np.random.default_rng(5), (1, 2, 6, 6), np.float64)
    np.testing.assert_array_equal(K.im2col(x, 3, 2, 1), K.im2col(x, (3, 3), (2, 2), (1, 1)))


# ----------------------------------------------------------------------------- bad input

X = np.zeros((2, 3, 5, 5), np.float32)


@pytest.mark.parametrize("call,error,match", [
    (lambda: K.im2col(X[0], (3, 3), (1, 1), (0, 0)), ValueError, r"im2col.*\(3, 5, 5\)"),
    (lambda: K.im2col(X.astype(np.int64), (3, 3), (1, 1), (0, 0)), TypeError, "im2col.*int64"),
    (lambda: K.im2col(X.tolist(), (3, 3), (1, 1), (0, 0)), TypeError, "im2col.*ndarray"),
    (lambda: K.im2col(X, (6, 3), (1, 1), (0, 0)), ValueError, r"im2col.*\(2, 3, 5, 5\)"),
    (lambda: K.im2col(X, (3, 3), (0, 1), (0, 0)), ValueError, "im2col.*stride"),
    (lambda: K.im2col(X, (3, 3), (1, 1), (-1, 0)), ValueError, "im2col.*padding"),
    (lambda: K.im2col(X, (3, 3), (1, 1), (0, 0), (0, 1)), ValueError, "im2col.*dilation"),
    (lambda: K.im2col(X, (3, 3), (1, 1), (0, 0), (1.5, 1)), TypeError, "im2col.*dilation"),
    (lambda: K.im2col(X, (3, 3), (1, 1), (0, 0), (3, 1)), ValueError,
     r"im2col.*dilation=\(3, 1\).*\(2, 3, 5, 5\)"),
    (lambda: K.im2col(X, (3, 3, 3), (1, 1), (0, 0)), TypeError, "im2col.*kernel_size"),
    (lambda: K.im2col(X, (3.0, 3), (1, 1), (0, 0)), TypeError, "im2col.*kernel_size"),
    (lambda: K.im2col(X, (True, 3), (1, 1), (0, 0)), TypeError, "im2col.*kernel_size"),
    (lambda: K.col2im(np.zeros((5, 27), np.float32), (2, 3, 5, 5), (3, 3), (1, 1), (0, 0)),
     ValueError, r"col2im.*\(5, 27\).*\(18, 27\)"),
    (lambda: K.col2im(np.zeros((18, 27), np.float32), (2, 3, 5), (3, 3), (1, 1), (0, 0)),
     ValueError, "col2im.*x_shape"),
    (lambda: K.col2im(np.zeros((18, 27), np.float32), (2, 3, 5, 5.0), (3, 3), (1, 1), (0, 0)),
     TypeError, "col2im.*x_shape"),
    (lambda: K.col2im(np.zeros((18, 27, 1), np.float32), (2, 3, 5, 5), (3, 3), (1, 1), (0, 0)),
     ValueError, "col2im.*cols"),
    (lambda: K.col2im(np.zeros((18, 27), np.int32), (2, 3, 5, 5), (3, 3), (1, 1), (0, 0)),
     TypeError, "col2im.*int32"),
])
def test_bad_input_raises_naming_the_function(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_compiled_kernels_check_shapes_themselves():
    # Called directly (bypassing the wrappers), the Cython functions raise, never crash.
    ext = compiled_module()
    if ext is None:
        pytest.skip("Cython build not available (or MINISSL_REFERENCE=1)")
    with pytest.raises(ValueError, match="im2col"):
        ext.im2col(X, np.empty((18, 26), np.float32), 3, 3, 1, 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="col2im"):
        ext.col2im(np.empty((17, 27), np.float32), np.empty_like(X), 3, 3, 1, 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="im2col"):
        ext.im2col(X, np.empty((18, 27), np.float32), 9, 3, 1, 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="im2col"):
        ext.im2col(X, np.empty((18, 27), np.float32), 3, 3, 0, 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="im2col.*dilation"):
        ext.im2col(X, np.empty((18, 27), np.float32), 3, 3, 1, 1, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="col2im.*dilated"):  # the span 5 does not fit 5 + 0
        ext.col2im(np.empty((2, 27), np.float32), np.empty_like(X), 3, 3, 1, 1, 0, 0, 3, 1)
    with pytest.raises((TypeError, ValueError)):          # mixed dtypes match no signature
        ext.im2col(X, np.empty((18, 27), np.float64), 3, 3, 1, 1, 0, 0, 1, 1)


# ----------------------------------------------------------------------------- dispatch

def test_compiled_module_is_used_when_built(monkeypatch):
    if reference_forced():
        pytest.skip("MINISSL_REFERENCE=1 forces the reference path")
    ext = compiled_module()
    if ext is None:
        pytest.skip("Cython build not available")
    calls = []
    for name in ("im2col", "col2im"):
        real = getattr(ext, name)
        monkeypatch.setattr(ext, name, lambda *a, _real=real, _name=name:
                            (calls.append(_name), _real(*a))[1])
    x = make_array(np.random.default_rng(6), (2, 3, 5, 5), np.float32)
    cols = K.im2col(x, (3, 3), (1, 1), (1, 1))
    K.col2im(cols, x.shape, (3, 3), (1, 1), (1, 1))
    assert calls == ["im2col", "col2im"]


def test_reference_forced_by_environment(monkeypatch):
    monkeypatch.setenv("MINISSL_REFERENCE", "1")
    assert load("im2col") is None
    x = make_array(np.random.default_rng(7), (2, 3, 5, 5), np.float32)
    np.testing.assert_array_equal(K.im2col(x, (3, 3), (2, 1), (1, 0)),
                                  K.im2col_ref(x, (3, 3), (2, 1), (1, 0)))


# --------------------------------------------------------------- CUDA kernels vs the reference
# Through the public functions on device arrays: the CUDA source run by the emulator
# (tests/support/cuda_emulator.py), or on a GPU (the ``runner`` fixture, conftest.py).

@given(g=windows(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_cuda_im2col_col2im_match_reference(runner, g, dtype, seed):
    xs, ks, st_, pad, (oh, ow) = g
    rng = np.random.default_rng(seed)
    x = layouts(rng, xs, dtype)
    cols_shape = (xs[0] * oh * ow, xs[1] * ks[0] * ks[1])
    cols = layouts(rng, cols_shape, dtype)
    with runner as r:
        got = r.host(K.im2col(r.dev(x), ks, st_, pad))
        back = r.host(K.col2im(r.dev(cols), xs, ks, st_, pad))
    close(got, im2col_ref(x, ks, st_, pad), dtype, exact=True)
    # A gather in the reference's (i, j) order: the same sums, bit for bit.
    close(back, col2im_ref(cols, xs, ks, st_, pad), dtype, exact=True)


@st.composite
def dilated_windows(draw):
    """A window geometry with dilation (the emulator's ``windows`` has none)."""
    xs, ks, st_, pad, _ = draw(windows())
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h = max(xs[2], d[0] * (ks[0] - 1) + 1 - 2 * pad[0])
    w = max(xs[3], d[1] * (ks[1] - 1) + 1 - 2 * pad[1])
    return (xs[0], xs[1], h, w), ks, st_, pad, d


@given(g=dilated_windows(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_cuda_dilated_im2col_col2im_match_reference(runner, g, dtype, seed):
    xs, ks, st_, pad, d = g
    rng = np.random.default_rng(seed)
    x = layouts(rng, xs, dtype)
    cols = layouts(rng, (xs[0] * np.prod(grid(xs, ks, st_, pad, d)), xs[1] * ks[0] * ks[1]),
                   dtype)
    with runner as r:
        got = r.host(K.im2col(r.dev(x), ks, st_, pad, d))
        back = r.host(K.col2im(r.dev(cols), xs, ks, st_, pad, d))
    close(got, im2col_ref(x, ks, st_, pad, d), dtype, exact=True)
    close(back, col2im_ref(cols, xs, ks, st_, pad, d), dtype, exact=True)
