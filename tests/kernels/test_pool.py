"""Max / average pooling kernels: every implementation against the NumPy reference, the
reference against brute-force loops and PyTorch, adjoint identities of the backward passes,
ties and NaN like PyTorch, input validation and dispatch."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl.kernels import pool as P
from minissl.kernels._dispatch import load, reference_forced
from support.helpers import assert_close, make_array
from minissl.kernels.pool import avg_pool2d_backward_ref, avg_pool2d_forward_ref, max_pool2d_backward_ref, max_pool2d_forward_ref
from support.cuda_emulator import close, layouts, windows as cuda_windows

DTYPES = [np.float32, np.float64]

LAYOUTS = ["contiguous", "transposed", "sliced", "fortran", "readonly"]


# ----------------------------------------------------------------------------- helpers

def out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


@st.composite
def geometries(draw):
    """(x_shape, kernel, stride, padding) valid for PyTorch pooling: padding <= kernel / 2."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    n, c = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    return (n, c, h, w), (kh, kw), (sh, sw), (ph, pw)


def windows(shape, k, s, p):
    """Yield (n, c, oh, ow, [(h, w) of the in-bounds window pixels in row-major order])."""
    n, c, h, w = shape
    for b in range(n):
        for ch in range(c):
            for y in range(out_size(h, k[0], s[0], p[0])):
                for z in range(out_size(w, k[1], s[1], p[1])):
                    pixels = [(y * s[0] - p[0] + i, z * s[1] - p[1] + j)
                              for i in range(k[0]) for j in range(k[1])]
                    yield b, ch, y, z, [(a, e) for a, e in pixels if 0 <= a < h and 0 <= e < w]


def max_pool_loops(x, k, s, p):
    shape = x.shape
    oh, ow = out_size(shape[2], k[0], s[0], p[0]), out_size(shape[3], k[1], s[1], p[1])
    out = np.empty(shape[:2] + (oh, ow), x.dtype)
    arg = np.empty(out.shape, np.int64)
    for b, ch, y, z, pixels in windows(shape, k, s, p):
        best = max(pixels, key=lambda q: x[b, ch, q[0], q[1]])    # first maximum wins
        out[b, ch, y, z] = x[b, ch, best[0], best[1]]
        arg[b, ch, y, z] = best[0] * shape[3] + best[1]
    return out, arg


def max_pool_backward_loops(grad_out, argmax, x_shape, k, s, p):
    grad_x = np.zeros(x_shape, grad_out.dtype)
    for b, ch, y, z, _ in windows(x_shape, k, s, p):
        h, w = divmod(int(argmax[b, ch, y, z]), x_shape[3])
        grad_x[b, ch, h, w] += grad_out[b, ch, y, z]
    return grad_x


def avg_pool_loops(x, k, s, p):
    shape = x.shape
    oh, ow = out_size(shape[2], k[0], s[0], p[0]), out_size(shape[3], k[1], s[1], p[1])
    out = np.empty(shape[:2] + (oh, ow), x.dtype)
    for b, ch, y, z, pixels in windows(shape, k, s, p):
        out[b, ch, y, z] = sum(x[b, ch, h, w] for h, w in pixels) / (k[0] * k[1])
    return out


def avg_pool_backward_loops(grad_out, x_shape, k, s, p):
    grad_x = np.zeros(x_shape, grad_out.dtype)
    for b, ch, y, z, pixels in windows(x_shape, k, s, p):
        for h, w in pixels:
            grad_x[b, ch, h, w] += grad_out[b, ch, y, z] / (k[0] * k[1])
    return grad_x


# ----------------------------------------------------------------------------- agreement

@given(geo=geometries(), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**32 - 1))
def test_max_pool_every_version_matches_reference(geo, dtype, layout, seed):
    shape, k, s, p = geo
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, layout)
    out_ref, arg_ref = P.max_pool2d_forward_ref(x, k, s, p)
    assert arg_ref.dtype == np.int64 and out_ref.dtype == dtype
    out, arg = P.max_pool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(out, out_ref)               # a selection: exact
    np.testing.assert_array_equal(arg, arg_ref)
    g = make_array(rng, out.shape, dtype, layout)
    grad_ref = P.max_pool2d_backward_ref(g, arg, shape, k, s, p)
    assert_close(P.max_pool2d_backward(g, arg, shape, k, s, p), grad_ref, dtype)
    ext = load("pool")
    if ext is not None:
        o, a = np.full(out.shape, np.nan, dtype), np.full(out.shape, -7, np.int64)
        ext.max_pool2d_forward(np.ascontiguousarray(x), o, a, *k, *s, *p)
        np.testing.assert_array_equal(o, out_ref)
        np.testing.assert_array_equal(a, arg_ref)
        gx = np.full(shape, np.nan, dtype)
        ext.max_pool2d_backward(np.ascontiguousarray(g), arg, gx, *k, *s, *p)
        assert_close(gx, grad_ref, dtype)


@given(geo=geometries(), dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**32 - 1))
def test_avg_pool_every_version_matches_reference(geo, dtype, layout, seed):
    shape, k, s, p = geo
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, dtype, layout)
    out_ref = P.avg_pool2d_forward_ref(x, k, s, p)
    assert out_ref.dtype == dtype
    assert_close(P.avg_pool2d_forward(x, k, s, p), out_ref, dtype)
    g = make_array(rng, out_ref.shape, dtype, layout)
    grad_ref = P.avg_pool2d_backward_ref(g, shape, k, s, p)
    assert_close(P.avg_pool2d_backward(g, shape, k, s, p), grad_ref, dtype)
    ext = load("pool")
    if ext is not None:
        o = np.full(out_ref.shape, np.nan, dtype)
        ext.avg_pool2d_forward(np.ascontiguousarray(x), o, *k, *s, *p)
        assert_close(o, out_ref, dtype)
        gx = np.full(shape, np.nan, dtype)
        ext.avg_pool2d_backward(np.ascontiguousarray(g), gx, *k, *s, *p)
        assert_close(gx, grad_ref, dtype)


@pytest.mark.parametrize("shape,k,s,p", [
    ((4, 16, 32, 32), (2, 2), (2, 2), (0, 0)),       # above the threshold for threads
    ((3, 8, 33, 31), (3, 3), (2, 2), (1, 1)),
    ((2, 16, 20, 24), (3, 2), (1, 3), (1, 1)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_shapes_use_threads_and_agree(shape, k, s, p, dtype):
    rng = np.random.default_rng(1)
    x = make_array(rng, shape, dtype)
    out, arg = P.max_pool2d_forward(x, k, s, p)
    out_ref, arg_ref = P.max_pool2d_forward_ref(x, k, s, p)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    g = make_array(rng, out.shape, dtype)
    assert_close(P.max_pool2d_backward(g, arg, shape, k, s, p),
                 P.max_pool2d_backward_ref(g, arg, shape, k, s, p), dtype)
    assert_close(P.avg_pool2d_forward(x, k, s, p), P.avg_pool2d_forward_ref(x, k, s, p), dtype)
    assert_close(P.avg_pool2d_backward(g, shape, k, s, p),
                 P.avg_pool2d_backward_ref(g, shape, k, s, p), dtype)


@pytest.mark.parametrize("shape,k,s,p", [
    ((2, 2, 4, 4), (2, 2), (2, 2), (0, 0)),
    ((1, 3, 5, 4), (3, 2), (1, 2), (1, 1)),
    ((2, 1, 5, 6), (3, 3), (2, 1), (1, 0)),
    ((1, 2, 3, 3), (1, 4), (1, 1), (0, 2)),
    ((1, 1, 1, 1), (2, 2), (1, 1), (1, 1)),
])
@pytest.mark.parametrize("impl", ["dispatch", "reference"])
def test_matches_brute_force_loops(shape, k, s, p, impl):
    fwd_max, bwd_max, fwd_avg, bwd_avg = (
        (P.max_pool2d_forward, P.max_pool2d_backward, P.avg_pool2d_forward,
         P.avg_pool2d_backward) if impl == "dispatch" else
        (P.max_pool2d_forward_ref, P.max_pool2d_backward_ref, P.avg_pool2d_forward_ref,
         P.avg_pool2d_backward_ref))
    rng = np.random.default_rng(2)
    x = make_array(rng, shape, np.float64)
    out, arg = fwd_max(x, k, s, p)
    out_loops, arg_loops = max_pool_loops(x, k, s, p)
    np.testing.assert_array_equal(out, out_loops)
    np.testing.assert_array_equal(arg, arg_loops)
    g = make_array(rng, out.shape, np.float64)
    np.testing.assert_allclose(bwd_max(g, arg, shape, k, s, p),
                               max_pool_backward_loops(g, arg, shape, k, s, p), rtol=1e-12)
    np.testing.assert_allclose(fwd_avg(x, k, s, p), avg_pool_loops(x, k, s, p), rtol=1e-12)
    np.testing.assert_allclose(bwd_avg(g, shape, k, s, p),
                               avg_pool_backward_loops(g, shape, k, s, p), rtol=1e-12)


@given(geo=geometries(), seed=st.integers(0, 2**32 - 1))
def test_backward_passes_are_adjoints(geo, seed):
    # Average pooling is linear: <avg(x), g> = <x, avg_backward(g)>. Max pooling with its
    # argmax frozen is the linear selection out = x[argmax]: <x[argmax], g> = <x, backward(g)>.
    shape, k, s, p = geo
    rng = np.random.default_rng(seed)
    x = make_array(rng, shape, np.float64)
    out = P.avg_pool2d_forward(x, k, s, p)
    g = make_array(rng, out.shape, np.float64)
    scale = 1 + np.abs(x).sum() * np.abs(g).max(initial=0)
    assert abs(np.vdot(out, g) - np.vdot(x, P.avg_pool2d_backward(g, shape, k, s, p))) \
        <= 1e-12 * scale
    out, arg = P.max_pool2d_forward(x, k, s, p)
    n, c, h, w = shape
    flat_arg = arg.reshape(n, c, arg.shape[2] * arg.shape[3])
    picked = np.take_along_axis(x.reshape(n, c, h * w), flat_arg, axis=2)
    np.testing.assert_array_equal(picked.reshape(out.shape), out)
    assert abs(np.vdot(out, g) - np.vdot(x, P.max_pool2d_backward(g, arg, shape, k, s, p))) \
        <= 1e-12 * scale


def test_argmax_outside_its_window_selects_nothing():
    # The gather only looks at pixels a window covers: a corrupt argmax cannot write elsewhere.
    x = make_array(np.random.default_rng(3), (1, 1, 4, 4), np.float64)
    _, arg = P.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    bad = arg.copy()
    bad[0, 0, 0, 0] = 3                 # pixel (0, 3): a row the window covers, not a column
    bad[0, 0, 1, 0] = 15                # pixel (3, 3): likewise
    bad[0, 0, 1, 1] = -3                # no pixel at all
    g = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    g_valid = np.where(bad == arg, g, 0.0)          # what the intact windows send
    for backward in (P.max_pool2d_backward, P.max_pool2d_backward_ref):
        grad = backward(g, bad, x.shape, (2, 2), (2, 2), (0, 0))
        np.testing.assert_array_equal(grad, backward(g_valid, arg, x.shape, (2, 2), (2, 2),
                                                     (0, 0)))
        assert grad.sum() == g[0, 0, 0, 1]


# ----------------------------------------------------------------------------- PyTorch

@pytest.mark.torch
@given(geo=geometries(), dtype=st.sampled_from([np.float32, np.float64]),
       ties=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_matches_torch(geo, dtype, ties, seed):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape, k, s, p = geo
    if shape[0] == 0 or shape[1] == 0:
        return
    rng = np.random.default_rng(seed)
    # With ties (values in {0, 1, 2}) the first maximum must win, as in PyTorch.
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    out_t, arg_t = F.max_pool2d(xt, k, s, p, return_indices=True)
    out, arg = P.max_pool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(out, out_t.detach().numpy())
    np.testing.assert_array_equal(arg, arg_t.numpy())
    g = make_array(rng, out.shape, dtype)
    (grad_t,) = torch.autograd.grad(out_t, xt, torch.from_numpy(g))
    assert_close(P.max_pool2d_backward(g, arg, shape, k, s, p), grad_t.numpy(), dtype)

    xt = torch.tensor(x, requires_grad=True)
    avg_t = F.avg_pool2d(xt, k, s, p)                   # count_include_pad=True
    assert_close(P.avg_pool2d_forward(x, k, s, p), avg_t.detach().numpy(), dtype)
    (grad_t,) = torch.autograd.grad(avg_t, xt, torch.from_numpy(g))
    assert_close(P.avg_pool2d_backward(g, shape, k, s, p), grad_t.numpy(), dtype)


@pytest.mark.torch
@pytest.mark.parametrize("fill", [np.nan, -np.inf])
@pytest.mark.parametrize("forward", [P.max_pool2d_forward, P.max_pool2d_forward_ref])
def test_nan_and_minus_inf_like_torch(fill, forward):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 7))
    x[rng.random(x.shape) < 0.3] = fill                # NaN must propagate; -inf stays -inf
    x[1, 2] = fill                                     # a whole plane of it
    for k, s, p in [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 2), (1, 1)), ((3, 2), (2, 1), (1, 1))]:
        out_t, arg_t = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p,
                                                      return_indices=True)
        out, arg = forward(x, k, s, p)
        np.testing.assert_array_equal(out, out_t.numpy())
        np.testing.assert_array_equal(arg, arg_t.numpy())


# ----------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 0, 5, 5)])
def test_empty_batch_or_channels(shape):
    x = np.zeros(shape, np.float32)
    out, arg = P.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1))
    assert out.shape == arg.shape == shape[:2] + (3, 3)
    assert out.dtype == np.float32 and arg.dtype == np.int64
    assert P.max_pool2d_backward(out, arg, shape, (3, 3), (2, 2), (1, 1)).shape == shape
    avg = P.avg_pool2d_forward(x, (3, 3), (2, 2), (1, 1))
    assert avg.shape == shape[:2] + (3, 3) and avg.dtype == np.float32
    assert P.avg_pool2d_backward(avg, shape, (3, 3), (2, 2), (1, 1)).shape == shape


def test_other_float_dtypes_take_the_reference_path():
    x = make_array(np.random.default_rng(5), (2, 3, 6, 5), np.float16)
    out, arg = P.max_pool2d_forward(x, (2, 2), (2, 1), (1, 0))
    ref_out, ref_arg = P.max_pool2d_forward_ref(x, (2, 2), (2, 1), (1, 0))
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(arg, ref_arg)
    assert P.avg_pool2d_forward(x, (2, 2), (2, 1), (1, 0)).dtype == np.float16


# ----------------------------------------------------------------------------- bad input

X = np.zeros((2, 3, 6, 6), np.float32)
G = np.zeros((2, 3, 3, 3), np.float32)
A = np.zeros((2, 3, 3, 3), np.int64)


@pytest.mark.parametrize("call,error,match", [
    (lambda: P.max_pool2d_forward(X[0], (2, 2), (2, 2), (0, 0)), ValueError,
     r"max_pool2d_forward.*\(3, 6, 6\)"),
    (lambda: P.max_pool2d_forward(X.astype(np.int32), (2, 2), (2, 2), (0, 0)), TypeError,
     "max_pool2d_forward.*int32"),
    (lambda: P.max_pool2d_forward(X, (2, 2), (2, 2), (2, 0)), ValueError,
     r"max_pool2d_forward.*padding.*half"),
    (lambda: P.avg_pool2d_forward(X, (7, 2), (1, 1), (0, 0)), ValueError,
     r"avg_pool2d_forward.*\(2, 3, 6, 6\)"),
    (lambda: P.avg_pool2d_forward(X, (2, 2), (0, 1), (0, 0)), ValueError,
     "avg_pool2d_forward.*stride"),
    (lambda: P.avg_pool2d_forward(X, (2, "2"), (1, 1), (0, 0)), TypeError,
     "avg_pool2d_forward.*kernel_size"),
    (lambda: P.avg_pool2d_forward(X[:, :, :0], (2, 2), (1, 1), (1, 1)), ValueError,
     "avg_pool2d_forward.*empty"),
    (lambda: P.max_pool2d_backward(G, A, (2, 3, 6, 6), (2, 2), (1, 1), (0, 0)), ValueError,
     r"max_pool2d_backward.*\(2, 3, 3, 3\).*\(2, 3, 5, 5\)"),
    (lambda: P.max_pool2d_backward(G, A[:1], (2, 3, 6, 6), (2, 2), (2, 2), (0, 0)),
     ValueError, "max_pool2d_backward.*argmax"),
    (lambda: P.max_pool2d_backward(G, A.astype(np.int32), (2, 3, 6, 6), (2, 2), (2, 2),
                                   (0, 0)), TypeError, "max_pool2d_backward.*int64"),
    (lambda: P.max_pool2d_backward(G, A.astype(np.float32), (2, 3, 6, 6), (2, 2), (2, 2),
                                   (0, 0)), TypeError, "max_pool2d_backward.*int64"),
    (lambda: P.max_pool2d_backward(G, A, (2, 3, 6), (2, 2), (2, 2), (0, 0)), ValueError,
     "max_pool2d_backward.*x_shape"),
    (lambda: P.avg_pool2d_backward(G[..., :2], (2, 3, 6, 6), (2, 2), (2, 2), (0, 0)),
     ValueError, r"avg_pool2d_backward.*\(2, 3, 3, 2\)"),
    (lambda: P.avg_pool2d_backward(G.astype(bool), (2, 3, 6, 6), (2, 2), (2, 2), (0, 0)),
     TypeError, "avg_pool2d_backward.*bool"),
])
def test_bad_input_raises_naming_the_function(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_compiled_kernels_check_shapes_themselves():
    ext = load("pool")
    if ext is None:
        pytest.skip("Cython build not available (or MINISSL_REFERENCE=1)")
    with pytest.raises(ValueError, match="max_pool2d_forward"):
        ext.max_pool2d_forward(X, np.empty((2, 3, 3, 2), np.float32), A, 2, 2, 2, 2, 0, 0)
    with pytest.raises(ValueError, match="max_pool2d_forward"):          # padding > k / 2
        ext.max_pool2d_forward(X, G.copy(), A.copy(), 2, 2, 2, 2, 2, 0)
    with pytest.raises(ValueError, match="max_pool2d_backward"):
        ext.max_pool2d_backward(G, A[:1], np.empty_like(X), 2, 2, 2, 2, 0, 0)
    with pytest.raises(ValueError, match="avg_pool2d_forward"):
        ext.avg_pool2d_forward(X, np.empty((2, 3, 4, 3), np.float32), 2, 2, 2, 2, 0, 0)
    with pytest.raises(ValueError, match="avg_pool2d_backward"):
        ext.avg_pool2d_backward(G, np.empty((2, 3, 9, 6), np.float32), 2, 2, 2, 2, 0, 0)


# ----------------------------------------------------------------------------- dispatch

def test_compiled_module_is_used_when_built(monkeypatch):
    if reference_forced():
        pytest.skip("MINISSL_REFERENCE=1 forces the reference path")
    ext = load("pool")
    if ext is None:
        pytest.skip("Cython build not available")
    calls = []
    for name in ("max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
                 "avg_pool2d_backward"):
        real = getattr(ext, name)
        monkeypatch.setattr(ext, name, lambda *a, _real=real, _name=name:
                            (calls.append(_name), _real(*a))[1])
    x = make_array(np.random.default_rng(6), (2, 3, 6, 6), np.float32)
    out, arg = P.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    P.max_pool2d_backward(out, arg, x.shape, (2, 2), (2, 2), (0, 0))
    avg = P.avg_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    P.avg_pool2d_backward(avg, x.shape, (2, 2), (2, 2), (0, 0))
    assert calls == ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
                     "avg_pool2d_backward"]


def test_reference_forced_by_environment(monkeypatch):
    monkeypatch.setenv("MINISSL_REFERENCE", "1")
    assert load("pool") is None
    x = make_array(np.random.default_rng(7), (2, 3, 6, 6), np.float32)
    out, arg = P.max_pool2d_forward(x, (3, 3), (2, 1), (1, 0))
    ref_out, ref_arg = P.max_pool2d_forward_ref(x, (3, 3), (2, 1), (1, 0))
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(arg, ref_arg)


# --------------------------------------------------------------- CUDA kernels vs the reference
# Through the public functions on device arrays: the CUDA source run by the emulator
# (tests/support/cuda_emulator.py), or on a GPU (the ``runner`` fixture, conftest.py).

@given(g=cuda_windows(pooling=True), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       values=st.sampled_from(["normal", "ties", "special"]))
def test_cuda_pooling_matches_reference(runner, g, dtype, seed, values):
    xs, ks, st_, pad, (oh, ow) = g
    rng = np.random.default_rng(seed)
    x = layouts(rng, xs, dtype)
    if values == "ties":                       # repeated maxima: the first one wins
        x = np.round(x / 2).astype(dtype)
    elif values == "special":                  # all--inf windows and NaNs
        x = np.where(rng.random(xs) < 0.6, -np.inf, x).astype(dtype)
        x[rng.random(xs) < 0.1] = np.nan
    g_out = layouts(rng, (xs[0], xs[1], oh, ow), dtype)
    ref_out, ref_arg = max_pool2d_forward_ref(x, ks, st_, pad)
    with runner as r:
        out, arg = P.max_pool2d_forward(r.dev(x), ks, st_, pad)
        out, arg = r.host(out), r.host(arg)
        gx = r.host(P.max_pool2d_backward(r.dev(g_out), r.dev(ref_arg), xs, ks, st_, pad))
        avg = r.host(P.avg_pool2d_forward(r.dev(x), ks, st_, pad))
        gavg = r.host(P.avg_pool2d_backward(r.dev(g_out), xs, ks, st_, pad))
    close(out, ref_out, dtype, exact=True)
    close(arg, ref_arg, np.int64, exact=True)
    close(gx, max_pool2d_backward_ref(g_out, ref_arg, xs, ks, st_, pad), dtype, exact=True)
    close(avg, avg_pool2d_forward_ref(x, ks, st_, pad), dtype, exact=True)
    close(gavg, avg_pool2d_backward_ref(g_out, xs, ks, st_, pad), dtype, exact=True)
