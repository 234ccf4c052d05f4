"""The conv family (minissl.kernels.conv): the image-by-image kernel against the reference
(im2col and products) over window geometries, dtypes, bias and which gradients are asked for;
the reference against the definition; bits independent of the threads; blocks of output rows;
input validation; dispatch; the GPU's lowering."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl.kernels import _dispatch
from minissl.kernels import conv as K
from minissl.kernels._dispatch import load, reference_forced
from support.cuda_emulator import close

DTYPES = [np.float32, np.float64]


def kernel_or_skip():
    ext = load("conv")
    if ext is None or K.compiled_kernel(np.zeros((1, 1, 1, 1), np.float32),
                                        np.zeros((1, 1, 1, 1), np.float32)) is None:
        pytest.skip("Cython build missing, reference forced, or no OpenBLAS")
    return ext


@st.composite
def problems(draw):
    """(x_shape, weight_shape, stride, padding, dilation) with an output grid of >= 1 x 1."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h = draw(st.integers(max(1, d[0] * (kh - 1) + 1 - 2 * p[0]), 12))
    w = draw(st.integers(max(1, d[1] * (kw - 1) + 1 - 2 * p[1]), 12))
    n, c, o = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    return (n, c, h, w), (o, c, kh, kw), s, p, d


def out_grid(x_shape, w_shape, s, p, d):
    return tuple((x_shape[2 + a] + 2 * p[a] - d[a] * (w_shape[2 + a] - 1) - 1) // s[a] + 1
                 for a in (0, 1))


def arrays(seed, x_shape, w_shape, s, p, d, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    g = rng.standard_normal((x_shape[0], w_shape[0]) + out_grid(x_shape, w_shape, s, p, d))
    return x, w, b, g.astype(dtype)


def conv_loops(x, w, b, s, p, d):
    """The definition, one output at a time (float64)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = out_grid(x.shape, w.shape, s, p, d)
    y = np.zeros((n, o, oh, ow))
    for m in range(n):
        for u in range(oh):
            for v in range(ow):
                for i in range(kh):
                    for j in range(kw):
                        hh, ww = u * s[0] - p[0] + i * d[0], v * s[1] - p[1] + j * d[1]
                        if 0 <= hh < h and 0 <= ww < wd:
                            y[m, :, u, v] += w[:, :, i, j] @ x[m, :, hh, ww]
    return y + (0 if b is None else b[:, None, None])


def test_reference_matches_the_definition():
    prob = ((2, 3, 7, 6), (4, 3, 3, 2), (2, 1), (1, 2), (1, 2))
    x, w, b, _ = arrays(0, *prob, np.float64)
    np.testing.assert_allclose(K.conv2d_forward_ref(x, w, b, *prob[2:]),
                               conv_loops(x, w, b, *prob[2:]), rtol=1e-12, atol=1e-12)


def test_reference_backward_is_the_adjoint():
    # <conv(x), g> is linear in x and in w: its gradients are the backward pass's.
    prob = ((2, 3, 7, 6), (4, 3, 3, 2), (2, 1), (1, 2), (1, 2))
    x, w, _, g = arrays(1, *prob, np.float64)
    gx, gw = K.conv2d_backward_ref(x, w, g, *prob[2:])
    dx, dw = arrays(2, *prob, np.float64)[:2]
    y = lambda x_, w_: float((K.conv2d_forward_ref(x_, w_, None, *prob[2:]) * g).sum())
    assert np.isclose(y(dx, w), float((gx * dx).sum()), rtol=1e-10)
    assert np.isclose(y(x, dw), float((gw * dw).sum()), rtol=1e-10)


@given(prob=problems(), dtype=st.sampled_from(DTYPES), bias=st.booleans(),
       need=st.sampled_from([(True, True), (True, False), (False, True)]),
       seed=st.integers(0, 2**31))
def test_kernel_matches_reference(prob, dtype, bias, need, seed):
    kernel_or_skip()
    x, w, b, g = arrays(seed, *prob, dtype)
    b = b if bias else None
    tol = dict(rtol=2e-5, atol=2e-5 * np.sqrt(w[0].size)) if dtype == np.float32 \
        else dict(rtol=1e-12, atol=1e-12)
    y = K.conv2d_forward(x, w, b, *prob[2:])
    assert y.dtype == dtype and y.flags.c_contiguous
    np.testing.assert_allclose(y, K.conv2d_forward_ref(x, w, b, *prob[2:]), **tol)
    gx, gw = K.conv2d_backward(x, w, g, *prob[2:], *need)
    rx, rw = K.conv2d_backward_ref(x, w, g, *prob[2:], *need)
    for got, ref in ((gx, rx), (gw, rw)):
        assert (got is None) == (ref is None)
        if ref is not None:
            assert got.dtype == dtype and got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=tol["rtol"],
                                       atol=tol["atol"] * np.sqrt(g.shape[0] * g[0, 0].size))


@pytest.mark.parametrize("prob", [
    ((3, 64, 40, 40), (16, 64, 3, 3), (1, 1), (1, 1), (1, 1)),   # many blocks of output rows
    ((2, 8, 33, 70), (5, 8, 5, 3), (3, 2), (2, 1), (2, 3)),      # uneven blocks, dilated
    ((37, 3, 9, 9), (6, 3, 3, 3), (2, 2), (1, 1), (1, 1)),       # more images than chunks
    ((70, 5, 5, 5), (7, 5, 3, 3), (1, 1), (1, 1), (1, 1)),       # chunks of 2 and 3 images
])
@pytest.mark.parametrize("need", [(True, True), (True, False), (False, True)])
def test_blocks_and_chunks_match_reference(prob, need):
    kernel_or_skip()
    x, w, b, g = arrays(3, *prob, np.float64)
    np.testing.assert_allclose(K.conv2d_forward(x, w, b, *prob[2:]),
                               K.conv2d_forward_ref(x, w, b, *prob[2:]), rtol=1e-12, atol=1e-11)
    for got, ref in zip(K.conv2d_backward(x, w, g, *prob[2:], *need),
                        K.conv2d_backward_ref(x, w, g, *prob[2:], *need)):
        assert (got is None) == (ref is None)
        if ref is not None:
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-10)


def test_bits_do_not_depend_on_threads():
    kernel_or_skip()
    prob = ((40, 16, 20, 20), (32, 16, 3, 3), (2, 2), (1, 1), (1, 1))
    x, w, b, g = arrays(4, *prob, np.float32)
    runs = []
    previous = _dispatch.set_num_threads(1)
    try:
        for threads in (1, 2, 3):
            _dispatch.set_num_threads(threads)
            runs.append((K.conv2d_forward(x, w, b, *prob[2:]),)
                        + K.conv2d_backward(x, w, g, *prob[2:]))
    finally:
        _dispatch.set_num_threads(previous)
    for run in runs[1:]:
        for a, c in zip(runs[0], run):
            np.testing.assert_array_equal(a, c)


def test_strided_inputs_and_other_dtypes():
    kernel_or_skip()
    prob = ((3, 4, 9, 8), (5, 4, 3, 3), (1, 2), (1, 0), (1, 1))
    x, w, b, g = arrays(5, *prob, np.float64)
    xs = np.asfortranarray(x)
    x.flags.writeable = w.flags.writeable = False          # read-only inputs are fine too
    np.testing.assert_array_equal(K.conv2d_forward(x, w, b, *prob[2:]),
                                  K.conv2d_forward(x.copy(), w.copy(), b, *prob[2:]))
    np.testing.assert_allclose(K.conv2d_forward(xs, w[:, :, ::-1], b, *prob[2:]),
                               K.conv2d_forward_ref(x, w[:, :, ::-1], b, *prob[2:]), rtol=1e-12)
    h = [a.astype(np.float16) for a in (x, w)]    # no kernel for float16: the reference runs
    assert K.compiled_kernel(*h) is None
    np.testing.assert_array_equal(K.conv2d_forward(*h, None, *prob[2:]),
                                  K.conv2d_forward_ref(*h, None, *prob[2:]))


X = np.zeros((2, 3, 5, 5), np.float32)
W = np.zeros((4, 3, 3, 3), np.float32)


@pytest.mark.parametrize("call,error,match", [
    (lambda: K.conv2d_forward(X, W[:, :2]), ValueError, r"conv2d_forward.*3 channels"),
    (lambda: K.conv2d_forward(X, W.astype(np.float64)), TypeError, "conv2d_forward.*float64"),
    (lambda: K.conv2d_forward(X, W, np.zeros(3, np.float32)), ValueError,
     r"conv2d_forward: bias must have shape \(4,\)"),
    (lambda: K.conv2d_forward(X, W, padding=-1), ValueError, "conv2d_forward.*padding"),
    (lambda: K.conv2d_forward(X[:, :, :2], W), ValueError, "conv2d_forward.*does not fit"),
    (lambda: K.conv2d_forward(X[0], W), ValueError, "conv2d_forward: x must have 4"),
    (lambda: K.conv2d_backward(X, W, np.zeros((2, 4, 4, 4), np.float32)), ValueError,
     r"conv2d_backward: grad_out has shape \(2, 4, 4, 4\).*expected \(2, 4, 3, 3\)"),
])
def test_bad_input_raises_naming_the_function(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_compiled_kernels_check_shapes_themselves():
    # Called directly (bypassing the wrappers), the Cython functions raise, never crash.
    ext = kernel_or_skip()
    e = np.empty(0, np.float32)
    w2 = W.reshape(4, 27)
    with pytest.raises(ValueError, match="conv._cpu"):      # output of the wrong size
        ext.forward(X, w2, e, np.empty((2, 4, 4, 4), np.float32), 3, 3, 1, 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="conv._cpu"):      # weight of the wrong width
        ext.forward(X, W.reshape(4, 27)[:, :26].copy(), e, np.empty((2, 4, 3, 3), np.float32),
                    3, 3, 1, 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="conv._cpu.forward: bias"):
        ext.forward(X, w2, np.zeros(3, np.float32), np.empty((2, 4, 3, 3), np.float32),
                    3, 3, 1, 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="conv._cpu.backward: gw_parts"):
        ext.backward(X, w2, np.zeros((2, 4, 3, 3), np.float32), np.empty_like(X),
                     np.empty((3, 4, 27), np.float32), 3, 3, 1, 1, 0, 0, 1, 1, True, True)
    with pytest.raises(ValueError, match="conv._cpu.backward: gx"):
        ext.backward(X, w2, np.zeros((2, 4, 3, 3), np.float32), np.empty((1, 1, 1, 1), np.float32),
                     np.empty((2, 4, 27), np.float32), 3, 3, 1, 1, 0, 0, 1, 1, True, True)
    with pytest.raises(ValueError, match="conv._cpu"):      # stride 0
        ext.forward(X, w2, e, np.empty((2, 4, 3, 3), np.float32), 3, 3, 0, 1, 0, 0, 1, 1)
    with pytest.raises((TypeError, ValueError)):             # mixed dtypes match no signature
        ext.forward(X, w2.astype(np.float64), e, np.empty((2, 4, 3, 3), np.float32),
                    3, 3, 1, 1, 0, 0, 1, 1)


def test_conv2d_op_runs_the_kernel_when_built(monkeypatch):
    ext = kernel_or_skip()
    import minissl as ms
    import minissl.functional as F
    calls = []
    for name in ("forward", "backward"):
        real = getattr(ext, name)
        monkeypatch.setattr(ext, name, lambda *a, _real=real, _name=name:
                            (calls.append(_name), _real(*a))[1])
    x = ms.tensor(np.ones((2, 3, 6, 6), np.float32), requires_grad=True)
    w = ms.tensor(np.ones((4, 3, 3, 3), np.float32), requires_grad=True)
    F.conv2d(x, w, padding=1).sum().backward()
    assert calls == ["forward", "backward"]


def test_reference_forced_by_environment(monkeypatch):
    monkeypatch.setenv("MINISSL_REFERENCE", "1")
    assert K.compiled_kernel(X, W) is None and reference_forced()


# ------------------------------------------------------------ the GPU's lowering (cuda.py)

@given(prob=problems(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_cuda_lowering_matches_reference(runner, prob, dtype, seed):
    x, w, b, g = arrays(seed, *prob, dtype)
    with runner as r:
        y = r.host(K.conv2d_forward(r.dev(x), r.dev(w), r.dev(b), *prob[2:]))
        gx, gw = (r.host(a) for a in K.conv2d_backward(r.dev(x), r.dev(w), r.dev(g), *prob[2:]))
    ref = K.conv2d_forward_ref(x, w, b, *prob[2:])
    rx, rw = K.conv2d_backward_ref(x, w, g, *prob[2:])
    for got, want in ((y, ref), (gx, rx), (gw, rw)):
        close(got, want, dtype)
