"""Every Tensor method and operator and every ``minissl.functional`` op: forward values
against plain NumPy formulas, gradients against finite differences (float64), over
hypothesis-drawn shapes and values steered away from kinks.

Ops that run a kernel are parametrised over the kernel paths: ``compiled`` (the Cython build),
``reference`` (the NumPy reference, forced with MINISSL_REFERENCE=1, which ``_dispatch.load``
reads on every call; no kernel module caches its result) and ``cuda`` (skipped without CuPy).
``test_kernel_paths_agree`` runs the same inputs through both CPU paths and compares.
"""
import contextlib
import math
import os

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.lib.stride_tricks import sliding_window_view

import minissl as ms
import minissl.functional as F
from minissl.backend import to_device
from minissl.kernels._dispatch import load, reference_forced
from minissl.random import manual_seed
from minissl.ops import conv as conv_ops
from minissl.ops.attention import packed_self_attention
from minissl.testing import arrays, assert_gradcheck, broadcastable_shapes, shapes

ENV = "MINISSL_REFERENCE"
PATHS = ["compiled", "reference", "cuda"]


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def dev(request):
    """The device, for ops that run no kernel."""
    if request.param == "cuda" and not ms.is_cuda_available():
        pytest.skip("CuPy or a CUDA GPU is not available")
    return request.param


@pytest.fixture(scope="module", params=PATHS)
def path(request):
    """The kernel path, for ops that run one."""
    if request.param == "cuda" and not ms.is_cuda_available():
        pytest.skip("CuPy or a CUDA GPU is not available")
    if request.param == "compiled" and reference_forced():
        pytest.skip(f"{ENV}=1 forces the reference kernels")
    return request.param


@contextlib.contextmanager
def on_path(path, *families):
    """Run the body on one kernel path; yields its device ("cpu" or "cuda")."""
    saved = os.environ.get(ENV)
    if path == "reference":
        os.environ[ENV] = "1"
    try:
        for fam in families:
            mod = load(fam)
            if path == "compiled" and mod is None:
                pytest.skip(f"the compiled {fam} kernels are not built")
            if path == "reference":
                assert mod is None
        yield "cuda" if path == "cuda" else "cpu"
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved


def T(a, device="cpu", requires_grad=True):
    return ms.tensor(np.asarray(a), requires_grad=requires_grad, device=device)


def host(a):
    return np.asarray(to_device(a, "cpu"))


def check(fn, *ts, full_limit=3000, **kw):
    """Gradcheck: the full Jacobian when it is small, a random projection otherwise."""
    with ms.no_grad():
        n_out = fn(*ts).data.size
    n_in = sum(t.data.size for t in ts if t.requires_grad)
    mode = "full" if n_out * n_in <= full_limit else "projection"
    seed = int(sum(float(abs(host(t.data)).sum()) for t in ts) * 1e6) % 2 ** 32
    assert_gradcheck(fn, *ts, mode=mode, seed=seed, **kw)


def close(a, b, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(host(a.data if isinstance(a, ms.Tensor) else a), b,
                               rtol=rtol, atol=atol)


small = dict(max_dims=3, max_side=4)


# =========================================================================== elementwise

UNARY = {
    # name: (tensor fn, numpy fn, arrays kwargs)
    "exp": (lambda x: x.exp(), np.exp, {}),
    "log": (lambda x: x.log(), np.log, dict(min_value=0.1)),
    "sqrt": (lambda x: x.sqrt(), np.sqrt, dict(min_value=0.1)),
    "abs": (lambda x: x.abs(), np.abs, dict(away_from=0.0)),
    "tanh": (lambda x: x.tanh(), np.tanh, {}),
    "sigmoid": (lambda x: x.sigmoid(), lambda a: 1 / (1 + np.exp(-a)), {}),
    "relu": (lambda x: x.relu(), lambda a: np.maximum(a, 0), dict(away_from=0.0)),
    "neg": (lambda x: -x, np.negative, {}),
    "pos": (lambda x: +x * 1, lambda a: a, {}),
    "pow2": (lambda x: x ** 2, lambda a: a ** 2, {}),
    "pow3": (lambda x: x ** 3, lambda a: a ** 3, {}),
    "pow_half": (lambda x: x ** 0.5, np.sqrt, dict(min_value=0.1)),
    "pow_neg": (lambda x: x ** -1.5, lambda a: a ** -1.5, dict(min_value=0.2)),
    "rpow": (lambda x: 2.0 ** x, lambda a: 2.0 ** a, {}),
    "rdiv": (lambda x: 1.5 / x, lambda a: 1.5 / a, dict(away_from=0.0, margin=0.3)),
    "clamp": (lambda x: x.clamp(-1.0, 0.5), lambda a: np.clip(a, -1.0, 0.5),
              dict(away_from=(-1.0, 0.5))),
    "clamp_min": (lambda x: x.clamp(min=0.2), lambda a: np.maximum(a, 0.2),
                  dict(away_from=0.2)),
    "clamp_max": (lambda x: x.clamp(max=-0.3), lambda a: np.minimum(a, -0.3),
                  dict(away_from=-0.3)),
    "F.relu": (F.relu, lambda a: np.maximum(a, 0), dict(away_from=0.0)),
    "F.sigmoid": (F.sigmoid, lambda a: 1 / (1 + np.exp(-a)), {}),
    "F.tanh": (F.tanh, np.tanh, {}),
    "double_cast": (lambda x: x.float().double() * 1, lambda a: a.astype(np.float32), {}),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data(), shape=shapes(**small))
def test_unary(dev, name, data, shape):
    fn, ref, kw = UNARY[name]
    x = T(data.draw(arrays(shape, **kw)), dev)
    close(fn(x), ref(x.numpy()), rtol=1e-6 if name == "double_cast" else 1e-12)
    if name != "double_cast":
        check(fn, x)
    else:                                  # a float32 round trip: gradient exactly one
        fn(x).sum().backward()
        close(x.grad, np.ones(shape))


@given(x=arrays(shapes(**small)))
def test_gelu(path, x):
    with on_path(path, "activation") as device:
        t = T(x, device)
        erf = np.vectorize(math.erf, otypes=[np.float64])
        close(F.gelu(t), x * 0.5 * (1 + erf(x / math.sqrt(2))), rtol=1e-12, atol=1e-15)
        check(F.gelu, t)


def test_sigmoid_and_gelu_do_not_overflow():
    x = T(np.array([-1e4, -50.0, 0.0, 50.0, 1e4]))
    s = F.sigmoid(x)
    close(s, [0.0, 1.9287498479639178e-22, 0.5, 1.0, 1.0], rtol=1e-12, atol=0)
    g = F.gelu(x)
    assert np.isfinite(host(g.data)).all()
    (s.sum() + g.sum()).backward()
    assert np.isfinite(x.grad).all()


@given(data=st.data(), shape=shapes(min_dims=1, **small))
def test_masked_fill(dev, data, shape):
    x = T(data.draw(arrays(shape)), dev)
    # Each mask dim is the tensor's or 1, and leading dims may be missing.
    keep = data.draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))
    mshape = tuple(s if k else 1 for s, k in zip(shape, keep))[data.draw(
        st.integers(0, len(shape))):]
    mask = data.draw(arrays(mshape, dtype=bool))
    value = data.draw(st.sampled_from([0.0, -1e9, 2.5, -np.inf]))
    y = x.masked_fill(ms.tensor(mask, device=dev), value)
    close(y, np.where(mask, value, x.numpy()), rtol=0, atol=0)
    check(lambda x: x.masked_fill(ms.tensor(mask, device=dev), 7.0), x)
    with pytest.raises(TypeError, match="masked_fill.*bool"):
        x.masked_fill(np.zeros(shape, dtype=np.int64), 1.0)


def test_masked_fill_rejects_a_mask_that_enlarges():
    with pytest.raises(ValueError, match=r"masked_fill.*\(2, 3\).*\(3,\)"):
        T(np.ones(3)).masked_fill(np.ones((2, 3), bool), 0.0)


@given(data=st.data(), m=st.integers(1, 5), n=st.integers(1, 5))
def test_fill_diagonal(dev, data, m, n):
    x = T(data.draw(arrays((m, n))), dev)
    value = data.draw(st.sampled_from([0.0, -1e9, 2.5, -np.inf]))
    before = x.numpy().copy()
    want = before.copy()
    want[np.arange(min(m, n)), np.arange(min(m, n))] = value
    close(x.fill_diagonal(value), want, rtol=0, atol=0)
    close(x, before, rtol=0, atol=0)             # x itself is untouched
    check(lambda x: x.fill_diagonal(7.0), x)


def test_fill_diagonal_needs_a_matrix():
    with pytest.raises(ValueError, match=r"fill_diagonal.*\(3,\)"):
        T(np.ones(3)).fill_diagonal(0.0)


@given(data=st.data(), shapes_=broadcastable_shapes(3, **small))
def test_where(dev, data, shapes_):
    c = data.draw(arrays(shapes_[0], dtype=bool))
    a, b = (T(data.draw(arrays(s)), dev) for s in shapes_[1:])
    y = ms.where(ms.tensor(c, device=dev), a, b)
    close(y, np.where(c, a.numpy(), b.numpy()), rtol=0, atol=0)
    check(lambda a, b: ms.where(c, a, b), a, b)
    # Either branch may be a Python number or an ndarray.
    close(ms.where(c, a, 0.0), np.where(c, a.numpy(), 0.0), rtol=0, atol=0)
    close(ms.where(c, 1.0, b), np.where(c, 1.0, b.numpy()), rtol=0, atol=0)


OPERATORS = {
    "+": (lambda a, b: a + b, {}, {}),
    "-": (lambda a, b: a - b, {}, {}),
    "*": (lambda a, b: a * b, {}, {}),
    "/": (lambda a, b: a / b, {}, dict(away_from=0.0, margin=0.4)),
    "**": (lambda a, b: a ** b, dict(min_value=0.3, max_value=2.0), {}),
}


@pytest.mark.parametrize("op", sorted(OPERATORS))
@given(data=st.data(), shapes_=broadcastable_shapes(2, **small))
def test_binary_operators(dev, op, data, shapes_):
    fn, ka, kb = OPERATORS[op]
    a = T(data.draw(arrays(shapes_[0], **ka)), dev)
    b = T(data.draw(arrays(shapes_[1], **kb)), dev)
    ref = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "**": np.power}[op]
    close(fn(a, b), ref(a.numpy(), b.numpy()), rtol=1e-12)
    check(fn, a, b)


def test_pow_at_zero_base_has_finite_exponent_gradient():
    a, b = T(np.array([0.0, 2.0])), T(np.array([2.0, 3.0]))
    (a ** b).sum().backward()
    np.testing.assert_allclose(a.grad, [0.0, 12.0])
    np.testing.assert_allclose(b.grad, [0.0, 8 * np.log(2)])


# =========================================================================== reductions

def dims_for(ndim):
    """None, one dim (maybe negative) or a tuple of distinct dims of a tensor with ndim dims."""
    if ndim == 0:
        return st.sampled_from([None, 0, -1])
    one = st.integers(-ndim, ndim - 1)
    many = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(
        lambda ds: tuple(d - ndim if i % 2 else d for i, d in enumerate(ds)))
    return st.one_of(st.none(), one, many)


def np_axes(dim, ndim):
    """The same reduction as NumPy's ``axis`` (a 0-d tensor accepts dim 0 and -1, as torch)."""
    if dim is None or ndim == 0:
        return None
    return dim if isinstance(dim, tuple) else (dim,)


@pytest.mark.parametrize("op", ["sum", "mean"])
@given(data=st.data(), shape=shapes(**small), keepdim=st.booleans())
def test_sum_mean(dev, op, data, shape, keepdim):
    dim = data.draw(dims_for(len(shape)))
    axes = np_axes(dim, len(shape))
    if op == "mean":
        n = int(np.prod([shape[a] for a in (axes if axes is not None else range(len(shape)))]))
        assume(n > 0)
    x = T(data.draw(arrays(shape)), dev)
    fn = lambda x: getattr(x, op)(dim=dim, keepdim=keepdim)  # noqa: E731
    close(fn(x), getattr(np, op)(x.numpy(), axis=axes, keepdims=keepdim), rtol=1e-12)
    check(fn, x)


@given(data=st.data(), shape=shapes(min_side=1, **small), keepdim=st.booleans())
def test_max(dev, data, shape, keepdim):
    dim = data.draw(dims_for(len(shape)))
    x = T(data.draw(arrays(shape, min_gap=1e-3)), dev)     # no ties
    fn = lambda x: x.max(dim=dim, keepdim=keepdim)         # noqa: E731
    axes = np_axes(dim, len(shape))
    close(fn(x), np.max(x.numpy(), axis=axes, keepdims=keepdim), rtol=0, atol=0)
    check(fn, x)


def test_max_splits_the_gradient_between_ties_and_rejects_empty():
    x = T(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]]))
    x.max(dim=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"max.*\(0, 3\)"):
        T(np.ones((0, 3))).max()


@pytest.mark.parametrize("unbiased", [True, False])
@given(data=st.data(), shape=shapes(min_side=1, **small), keepdim=st.booleans())
def test_var_std(dev, unbiased, data, shape, keepdim):
    dim = data.draw(dims_for(len(shape)))
    axes = np_axes(dim, len(shape))
    axes_ = axes if axes is not None else tuple(range(len(shape)))
    n = int(np.prod([shape[a] for a in axes_]))
    assume(n - unbiased > 0)
    x = T(data.draw(arrays(shape, min_gap=0.05)), dev)     # a spread: std away from 0
    fn = lambda x: x.var(dim=dim, keepdim=keepdim, unbiased=unbiased)   # noqa: E731
    close(fn(x), np.var(x.numpy(), axis=axes, keepdims=keepdim, ddof=int(unbiased)),
          rtol=1e-10)
    check(fn, x)
    assume(n > 1)
    check(lambda x: x.std(dim=dim, keepdim=keepdim, unbiased=unbiased), x)


def test_reduction_dim_errors():
    with pytest.raises(ValueError, match="sum: dim 2 is out of range"):
        T(np.ones((2, 3))).sum(dim=2)
    with pytest.raises(ValueError, match="var: dim -3"):
        T(np.ones((2, 3))).var(dim=-3)


# =========================================================================== shapes

@given(data=st.data(), shape=shapes(**small))
def test_reshape_flatten_unsqueeze_squeeze(dev, data, shape):
    x = T(data.draw(arrays(shape)), dev)
    target = list(data.draw(st.permutations(shape))) + [1] * data.draw(st.integers(0, 1))
    if x.data.size > 0 and target and data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    close(x.reshape(*target), x.numpy().reshape(target), rtol=0, atol=0)
    check(lambda x: x.reshape(tuple(target)), x)
    check(lambda x: x.flatten(), x)
    d = data.draw(st.integers(-len(shape) - 1, len(shape)))
    assert x.unsqueeze(d).shape == np.expand_dims(x.numpy(), d).shape
    check(lambda x: x.unsqueeze(d).squeeze(d), x)
    if len(shape) >= 2:
        check(lambda x: x.flatten(1), x)
        assert x.flatten(1).shape == (shape[0], int(np.prod(shape[1:])))


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=4, max_side=4))
def test_transpose_permute(dev, data, shape):
    x = T(data.draw(arrays(shape)), dev)
    nd = len(shape)
    d0, d1 = data.draw(st.integers(-nd, nd - 1)), data.draw(st.integers(-nd, nd - 1))
    close(x.transpose(d0, d1), np.swapaxes(x.numpy(), d0, d1), rtol=0, atol=0)
    check(lambda x: x.transpose(d0, d1), x)
    perm = data.draw(st.permutations(range(nd)))
    close(x.permute(*perm), x.numpy().transpose(perm), rtol=0, atol=0)
    close(x.permute(perm), x.numpy().transpose(perm), rtol=0, atol=0)
    check(lambda x: x.permute(*perm) * 2, x)
    check(lambda x: x.T, x)
    with pytest.raises(ValueError, match="permute"):
        x.permute(*([0] * nd)) if nd > 1 else x.permute(0, 0)


@given(data=st.data(), shape=shapes(min_dims=1, **small))
def test_getitem_basic(dev, data, shape):
    x = T(data.draw(arrays(shape)), dev)
    key = data.draw(hnp.basic_indices(shape, allow_newaxis=True))
    close(x[key], x.numpy()[key], rtol=0, atol=0)
    check(lambda x: x[key], x)


@given(data=st.data(), shape=shapes(min_dims=1, min_side=1, **small))
def test_getitem_integer_arrays_with_repeats(dev, data, shape):
    x = T(data.draw(arrays(shape)), dev)
    n = shape[0]
    idx = data.draw(arrays(st.tuples(st.integers(0, 6)), dtype=np.int64, min_value=-n,
                           max_value=n - 1))
    close(x[idx], x.numpy()[idx], rtol=0, atol=0)
    check(lambda x: x[idx], x)
    check(lambda x: x[ms.tensor(idx)], x)       # a Tensor of indices works the same
    check(lambda x: x[idx.tolist()], x)         # and so does a list
    if len(shape) >= 2:
        m = shape[1]
        j = data.draw(arrays(idx.shape, dtype=np.int64, min_value=0, max_value=m - 1))
        close(x[:, j], x.numpy()[:, j], rtol=0, atol=0)
        check(lambda x: x[:, j], x)
        check(lambda x: x[idx, j], x)            # paired (gather) indexing


def test_getitem_repeated_index_accumulates():
    x = T(np.arange(4.0))
    x[np.array([0, 0, 3, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad, [3, 0, 0, 1])


@given(data=st.data(), shape=shapes(min_dims=1, **small))
def test_getitem_boolean_mask(dev, data, shape):
    x = T(data.draw(arrays(shape)), dev)
    k = data.draw(st.integers(1, len(shape)))
    mask = data.draw(arrays(shape[:k], dtype=bool))
    close(x[mask], x.numpy()[mask], rtol=0, atol=0)
    check(lambda x: x[mask], x)
    check(lambda x: x[ms.tensor(mask)], x)


@pytest.mark.parametrize("op", ["cat", "stack"])
@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3, max_side=3),
       n=st.integers(1, 3))
def test_cat_stack(dev, op, data, shape, n):
    nd = len(shape)
    if op == "cat":
        dim = data.draw(st.integers(-nd, nd - 1))
        shapes_ = [tuple(data.draw(st.integers(0, 3)) if i == dim % nd else s
                         for i, s in enumerate(shape)) for _ in range(n)]
    else:
        dim = data.draw(st.integers(-nd - 1, nd))
        shapes_ = [shape] * n
    xs = [T(data.draw(arrays(s)), dev) for s in shapes_]
    fn = ms.cat if op == "cat" else ms.stack
    ref = np.concatenate if op == "cat" else np.stack
    close(fn(xs, dim=dim), ref([x.numpy() for x in xs], axis=dim), rtol=0, atol=0)
    check(lambda *xs: fn(list(xs), dim=dim), *xs)


def test_cat_stack_errors():
    a, b = T(np.ones((2, 3))), T(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"stack.*\(2, 3\).*\(2, 4\)"):
        ms.stack([a, b])
    with pytest.raises(ValueError, match="cat.*non-empty"):
        ms.cat([])
    with pytest.raises(TypeError, match="cat.*dtype"):
        ms.cat([a, T(np.ones((2, 3), np.float32))])


@given(data=st.data(), shape=shapes(min_dims=1, min_side=1, max_dims=3, max_side=5))
def test_split_chunk(dev, data, shape):
    x = T(data.draw(arrays(shape)), dev)
    dim = data.draw(st.integers(0, len(shape) - 1))
    size = data.draw(st.integers(1, shape[dim]))
    parts = x.split(size, dim)
    for p, r in zip(parts, np.array_split(x.numpy(), range(size, shape[dim], size), dim)):
        close(p, r, rtol=0, atol=0)
    check(lambda x: ms.cat([p * (i + 1) for i, p in enumerate(x.split(size, dim))], dim), x)
    chunks = x.chunk(size, dim)
    assert sum(c.shape[dim] for c in chunks) == shape[dim]


# =========================================================================== linear algebra

MATMUL_SHAPES = [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((2, 3), (3, 4)),
                 ((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 4, 3)), ((2, 2, 3), (3,)),
                 ((1, 2, 3), (4, 3, 2)), ((0, 3), (3, 2)), ((2, 0), (0, 3)),
                 # a stack against one matrix: the path that multiplies all rows at once
                 ((2, 3, 4), (4, 5)), ((2, 2, 1, 3), (3, 2)), ((2, 0, 3), (3, 2))]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
@given(data=st.data())
def test_matmul(dev, sa, sb, data):
    a, b = T(data.draw(arrays(sa)), dev), T(data.draw(arrays(sb)), dev)
    close(a @ b, a.numpy() @ b.numpy(), rtol=1e-12)
    check(lambda a, b: a @ b, a, b)


@given(data=st.data(), batch=shapes(max_dims=2, max_side=3), n_in=st.integers(0, 4),
       n_out=st.integers(1, 4), bias=st.booleans())
def test_linear(dev, data, batch, n_in, n_out, bias):
    x = T(data.draw(arrays(batch + (n_in,))), dev)
    w = T(data.draw(arrays((n_out, n_in))), dev)
    b = T(data.draw(arrays((n_out,))), dev) if bias else None
    ref = x.numpy() @ w.numpy().T + (b.numpy() if bias else 0)
    close(F.linear(x, w, b), ref, rtol=1e-12)
    if bias:
        check(lambda x, w, b: F.linear(x, w, b), x, w, b)
    else:
        check(lambda x, w: F.linear(x, w), x, w)


def test_linear_errors():
    with pytest.raises(ValueError, match=r"linear.*\(2, 3\).*\(4, 5\)"):
        F.linear(T(np.ones((2, 3))), T(np.ones((4, 5))))
    with pytest.raises(ValueError, match=r"linear: bias of shape \(3,\)"):
        F.linear(T(np.ones((2, 5))), T(np.ones((4, 5))), T(np.ones(3)))
    with pytest.raises(TypeError, match="linear: bias dtype float32 differs from weight dtype "
                                        "float64"):
        F.linear(T(np.ones((2, 5))), T(np.ones((4, 5))), T(np.ones(4, np.float32)))


# =========================================================================== convolution

def conv2d_ref(x, w, b, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = sliding_window_view(xp, w.shape[2:], axis=(2, 3))[:, :, ::sh, ::sw]
    y = np.einsum("nchwij,ocij->nohw", win, w)
    return y if b is None else y + b[None, :, None, None]


def conv_transpose2d_ref(x, w, b, stride, padding, output_padding):
    """By definition: input pixel (i, j) adds x[n, c, i, j] w[c, :, a, b] at output
    (i s + a - p, j s + b - p)."""
    N, C, H, W = x.shape
    _, O, kh, kw = w.shape
    (sh, sw), (ph, pw), (oph, opw) = stride, padding, output_padding
    OH, OW = (H - 1) * sh - 2 * ph + kh + oph, (W - 1) * sw - 2 * pw + kw + opw
    full = np.zeros((N, O, (H - 1) * sh + kh + oph, (W - 1) * sw + kw + opw))
    for a in range(kh):
        for c in range(kw):
            full[:, :, a:a + sh * H:sh, c:c + sw * W:sw] += np.einsum("nchw,co->nohw", x,
                                                                       w[:, :, a, c])
    y = full[:, :, ph:ph + OH, pw:pw + OW]
    return y if b is None else y + b[None, :, None, None]


@st.composite
def conv_cases(draw, transpose=False):
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    if transpose:
        oph, opw = draw(st.integers(0, sh - 1)), draw(st.integers(0, sw - 1))
        h = draw(st.integers(1, 4))
        w = draw(st.integers(1, 4))
        assume((h - 1) * sh - 2 * ph + kh + oph >= 1 and (w - 1) * sw - 2 * pw + kw + opw >= 1)
        return (n, c, h, w), (c, o, kh, kw), (sh, sw), (ph, pw), (oph, opw)
    h = draw(st.integers(max(1, kh - 2 * ph), 6))
    w = draw(st.integers(max(1, kw - 2 * pw), 6))
    return (n, c, h, w), (o, c, kh, kw), (sh, sw), (ph, pw), None


def _stride_arg(s, data):
    """An int when both entries are equal (half the time), else the pair."""
    return s[0] if s[0] == s[1] and data.draw(st.booleans()) else s


@contextlib.contextmanager
def conv_products(ratio, chunk_bytes, fused=True):
    """Force conv2d's per-image products (ratio 0) or its single products (ratio inf), and
    with chunk_bytes 1 its input gradient one image at a time. Those are the op's own
    lowering, which the CPU runs only where the conv family's kernel does not: ``fused=False``
    makes it run here too."""
    kernels = conv_ops.conv_kernels
    saved = conv_ops.PER_IMAGE_RATIO, conv_ops.CHUNK_BYTES, kernels.compiled_kernel
    conv_ops.PER_IMAGE_RATIO, conv_ops.CHUNK_BYTES = ratio, chunk_bytes
    if not fused:
        kernels.compiled_kernel = lambda x, weight: None
    try:
        yield
    finally:
        conv_ops.PER_IMAGE_RATIO, conv_ops.CHUNK_BYTES, kernels.compiled_kernel = saved


@given(case=conv_cases(), bias=st.booleans(), ratio=st.sampled_from([0, math.inf]),
       chunk_bytes=st.sampled_from([conv_ops.CHUNK_BYTES, 1]), fused=st.booleans(),
       data=st.data())
def test_conv2d(path, case, bias, ratio, chunk_bytes, fused, data):
    xs, ws, stride, padding, _ = case
    with on_path(path, "im2col") as device, conv_products(ratio, chunk_bytes, fused):
        x, w = T(data.draw(arrays(xs)), device), T(data.draw(arrays(ws)), device)
        b = T(data.draw(arrays((ws[0],))), device) if bias else None
        s, p = _stride_arg(stride, data), _stride_arg(padding, data)
        y = F.conv2d(x, w, b, stride=s, padding=p)
        close(y, conv2d_ref(x.numpy(), w.numpy(), None if b is None else b.numpy(), stride,
                            padding), rtol=1e-10)
        if bias:
            check(lambda x, w, b: F.conv2d(x, w, b, s, p), x, w, b)
        else:
            check(lambda x, w: F.conv2d(x, w, stride=s, padding=p), x, w)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("ratio", [0, math.inf])
@pytest.mark.parametrize("xs,ws", [((0, 2, 4, 4), (3, 2, 3, 3)), ((2, 0, 4, 4), (3, 0, 3, 3)),
                                   ((2, 2, 4, 4), (0, 2, 3, 3))])
def test_conv2d_size_zero(ratio, xs, ws, fused):
    """No images, no input channels or no filters: the right shapes both ways, zeros."""
    with conv_products(ratio, conv_ops.CHUNK_BYTES, fused):
        x, w = T(np.ones(xs)), T(np.ones(ws))
        y = F.conv2d(x, w, padding=1)
        assert y.shape == (xs[0], ws[0], 4, 4)
        close(y, np.zeros(y.shape))
        y.sum().backward()
        assert x.grad.shape == xs and w.grad.shape == ws
        close(x.grad, np.zeros(xs))


@given(case=conv_cases(transpose=True), bias=st.booleans(), data=st.data())
def test_conv_transpose2d(path, case, bias, data):
    xs, ws, stride, padding, out_pad = case
    with on_path(path, "im2col") as device:
        x, w = T(data.draw(arrays(xs)), device), T(data.draw(arrays(ws)), device)
        b = T(data.draw(arrays((ws[1],))), device) if bias else None
        y = F.conv_transpose2d(x, w, b, stride, padding, out_pad)
        close(y, conv_transpose2d_ref(x.numpy(), w.numpy(), None if b is None else b.numpy(),
                                      stride, padding, out_pad), rtol=1e-10)
        if bias:
            check(lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding, out_pad),
                  x, w, b)
        else:
            check(lambda x, w: F.conv_transpose2d(x, w, None, stride, padding, out_pad), x, w)


def test_conv_errors():
    x = T(np.ones((1, 3, 5, 5)))
    with pytest.raises(ValueError, match=r"conv2d.*\(1, 3, 5, 5\).*3 channels.*\(2, 4, 3, 3\)"):
        F.conv2d(x, T(np.ones((2, 4, 3, 3))))
    with pytest.raises(ValueError, match=r"conv2d.*\(1, 3, 5, 5\)"):
        F.conv2d(x, T(np.ones((2, 3, 7, 7))))
    with pytest.raises(ValueError, match="conv2d.*4-D"):
        F.conv2d(T(np.ones((3, 5, 5))), T(np.ones((2, 3, 3, 3))))
    with pytest.raises(ValueError, match="conv_transpose2d: output_padding"):
        F.conv_transpose2d(x, T(np.ones((3, 2, 3, 3))), stride=2, output_padding=2)
    with pytest.raises(TypeError, match="conv2d.*dtype"):
        F.conv2d(x, T(np.ones((2, 3, 3, 3), np.float32)))


# =========================================================================== pooling

def pool_ref(x, k, s, p, op):
    fill = -np.inf if op == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=fill)
    win = sliding_window_view(xp, k, axis=(2, 3))[:, :, ::s[0], ::s[1]]
    return win.max(axis=(4, 5)) if op == "max" else win.mean(axis=(4, 5))


@st.composite
def pool_cases(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))   # PyTorch's rule
    h = draw(st.integers(max(1, kh - 2 * ph), 6))
    w = draw(st.integers(max(1, kw - 2 * pw), 6))
    stride = draw(st.sampled_from([None, (sh, sw)]))
    return (n, c, h, w), (kh, kw), stride, (ph, pw)


@pytest.mark.parametrize("op", ["max", "avg"])
@given(case=pool_cases(), data=st.data())
def test_pool2d(path, op, case, data):
    xs, k, stride, padding = case
    with on_path(path, "pool") as device:
        x = T(data.draw(arrays(xs, min_gap=1e-3 if op == "max" else None)), device)
        fn = F.max_pool2d if op == "max" else F.avg_pool2d
        y = fn(x, k, stride, padding)
        close(y, pool_ref(x.numpy(), k, stride or k, padding, op), rtol=1e-12)
        check(lambda x: fn(x, k, stride, padding), x)


@given(data=st.data(), n=st.integers(1, 2), c=st.integers(1, 2), h=st.integers(1, 6),
       w=st.integers(1, 6))
def test_adaptive_avg_pool2d(dev, data, n, c, h, w):
    x = T(data.draw(arrays((n, c, h, w))), dev)
    close(F.adaptive_avg_pool2d(x, 1), x.numpy().mean(axis=(2, 3), keepdims=True), rtol=1e-12)
    check(lambda x: F.adaptive_avg_pool2d(x, 1), x)
    oh, ow = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    ref = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, r1 = i * h // oh, -(-(i + 1) * h // oh)
            c0, c1 = j * w // ow, -(-(j + 1) * w // ow)
            ref[:, :, i, j] = x.numpy()[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    close(F.adaptive_avg_pool2d(x, (oh, ow)), ref, rtol=1e-12)
    check(lambda x: F.adaptive_avg_pool2d(x, (oh, ow)), x)


def test_pool_errors():
    with pytest.raises(ValueError, match=r"max_pool2d.*\(3, 4, 4\)"):
        F.max_pool2d(T(np.ones((3, 4, 4))), 2)
    with pytest.raises(ValueError, match="adaptive_avg_pool2d"):
        F.adaptive_avg_pool2d(T(np.ones((1, 1, 4, 4))), 0)


# =========================================================================== normalisation

def opt(t):
    """The host array of an optional Tensor."""
    return None if t is None else t.numpy()


def bn_ref(x, w, b, mean, var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y


def check_batch_norm(x, w, b, stats=(None, None), **kwargs):
    """gradcheck of F.batch_norm with respect to x and whichever of w, b are given."""
    def fn(*ts):
        it = iter(ts)
        x_ = next(it)
        w_ = next(it) if w is not None else None
        b_ = next(it) if b is not None else None
        return F.batch_norm(x_, *stats, w_, b_, **kwargs)

    check(fn, *[t for t in (x, w, b) if t is not None], full_limit=2000)


@st.composite
def bn_shapes(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rest = draw(st.lists(st.integers(1, 3), max_size=2))
    shape = (n, c, *rest)
    assume(int(np.prod(shape)) // c > 1)
    return shape


@given(shape=bn_shapes(), affine=st.sampled_from(["both", "weight", "bias", "none"]),
       momentum=st.sampled_from([0.1, 0.5]), data=st.data())
def test_batch_norm_train(path, shape, affine, momentum, data):
    with on_path(path, "norm") as device:
        c = shape[1]
        x = T(data.draw(arrays(shape, min_gap=0.1)), device)   # spread: var away from 0
        w = T(data.draw(arrays((c,))), device) if affine in ("both", "weight") else None
        b = T(data.draw(arrays((c,))), device) if affine in ("both", "bias") else None
        rm0, rv0 = np.linspace(-1, 1, c), np.linspace(0.5, 2, c)
        rm, rv = ms.tensor(rm0, device=device), ms.tensor(rv0, device=device)
        y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, eps=1e-5)
        axes = (0,) + tuple(range(2, len(shape)))
        xn = x.numpy()
        mean, var = xn.mean(axis=axes), xn.var(axis=axes)
        close(y, bn_ref(xn, opt(w), opt(b), mean, var, 1e-5), rtol=1e-9, atol=1e-10)
        n = xn.size // c
        close(rm, (1 - momentum) * rm0 + momentum * mean, rtol=1e-12)
        close(rv, (1 - momentum) * rv0 + momentum * var * n / (n - 1), rtol=1e-12)  # unbiased
        check_batch_norm(x, w, b, training=True)


@given(shape=bn_shapes(), affine=st.booleans(), data=st.data())
def test_batch_norm_eval(path, shape, affine, data):
    with on_path(path, "norm") as device:
        c = shape[1]
        x = T(data.draw(arrays(shape)), device)
        rm = data.draw(arrays((c,)))
        rv = data.draw(arrays((c,), min_value=0.2, max_value=3.0))
        w = T(data.draw(arrays((c,))), device) if affine else None
        b = T(data.draw(arrays((c,))), device) if affine else None
        rm_t, rv_t = ms.tensor(rm, device=device), ms.tensor(rv, device=device)
        y = F.batch_norm(x, rm_t, rv_t, w, b, training=False)
        close(y, bn_ref(x.numpy(), opt(w), opt(b), rm, rv, 1e-5), rtol=1e-10, atol=1e-12)
        close(rm_t, rm, rtol=0, atol=0)             # eval never touches the running stats
        close(rv_t, rv, rtol=0, atol=0)
        if affine:
            check(lambda x, w, b: F.batch_norm(x, rm_t, rv_t, w, b), x, w, b)
        else:
            check(lambda x: F.batch_norm(x, rm_t, rv_t), x)


@given(shape=bn_shapes(), affine=st.sampled_from(["both", "weight", "bias", "none"]),
       training=st.booleans(), data=st.data())
def test_batch_norm_fused_relu(path, shape, affine, training, data):
    """batch_norm(..., relu=True) = relu(batch_norm(...)): values, running statistics and
    gradients (gradcheck away from the ReLU's kink)."""
    with on_path(path, "norm") as device:
        c = shape[1]
        x = T(data.draw(arrays(shape, min_gap=0.1)), device)
        w = T(data.draw(arrays((c,))), device) if affine in ("both", "weight") else None
        b = T(data.draw(arrays((c,))), device) if affine in ("both", "bias") else None
        rm, rv = np.linspace(-1, 1, c), np.linspace(0.5, 2, c)
        axes = (0,) + tuple(range(2, len(shape)))
        xn = x.numpy()
        mean, var = (xn.mean(axis=axes), xn.var(axis=axes)) if training else (rm, rv)
        pre = bn_ref(xn, opt(w), opt(b), mean, var, 1e-5)
        assume(np.abs(pre).min() > 1e-3)
        fused_stats = [ms.tensor(a.copy(), device=device) for a in (rm, rv)]
        plain_stats = [ms.tensor(a.copy(), device=device) for a in (rm, rv)]
        y = F.batch_norm(x, *fused_stats, w, b, training=training, relu=True)
        close(y, np.maximum(pre, 0), rtol=1e-9, atol=1e-10)
        F.batch_norm(x, *plain_stats, w, b, training=training)
        for f, p in zip(fused_stats, plain_stats):
            close(f, p.numpy(), rtol=0, atol=0)
        stats = (None, None) if training else [ms.tensor(a, device=device) for a in (rm, rv)]
        check_batch_norm(x, w, b, stats, training=training, relu=True)


def test_batch_norm_errors():
    x = T(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"batch_norm: weight of shape \(2,\).*\(4, 3\)"):
        F.batch_norm(x, None, None, T(np.ones(2)), training=True)
    with pytest.raises(ValueError, match="batch_norm.*more than 1 value"):
        F.batch_norm(T(np.ones((1, 3))), None, None, training=True)
    with pytest.raises(ValueError, match="batch_norm: eval mode needs"):
        F.batch_norm(x, None, None)


@given(data=st.data(), lead=shapes(max_dims=2, max_side=3),
       norm_shape=shapes(min_dims=1, max_dims=2, min_side=1, max_side=4),
       affine=st.sampled_from(["both", "weight", "none"]))
def test_layer_norm(path, data, lead, norm_shape, affine):
    assume(int(np.prod(norm_shape)) > 1)
    with on_path(path, "norm") as device:
        x = T(data.draw(arrays(lead + norm_shape, min_gap=0.1)), device)
        w = T(data.draw(arrays(norm_shape)), device) if affine != "none" else None
        b = T(data.draw(arrays(norm_shape)), device) if affine == "both" else None
        ns = norm_shape[0] if len(norm_shape) == 1 and data.draw(st.booleans()) else norm_shape
        axes = tuple(range(len(lead), len(lead) + len(norm_shape)))
        xn = x.numpy()
        ref = (xn - xn.mean(axis=axes, keepdims=True)) / np.sqrt(
            xn.var(axis=axes, keepdims=True) + 1e-5)
        if w is not None:
            ref = ref * w.numpy()
        if b is not None:
            ref = ref + b.numpy()
        close(F.layer_norm(x, ns, w, b), ref, rtol=1e-9, atol=1e-10)
        ts = [t for t in (x, w, b) if t is not None]
        check(lambda *ts: F.layer_norm(ts[0], ns, *ts[1:]), *ts, full_limit=2000)


def test_layer_norm_errors():
    with pytest.raises(ValueError, match=r"layer_norm.*\(3,\).*\(2, 4\)"):
        F.layer_norm(T(np.ones((2, 4))), 3)
    with pytest.raises(ValueError, match=r"layer_norm: weight of shape \(3,\)"):
        F.layer_norm(T(np.ones((2, 4))), 4, T(np.ones(3)))


@given(data=st.data(), shape=shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
def test_normalize(dev, data, shape):
    nd = len(shape)
    dim = data.draw(st.integers(-nd, nd - 1))
    x = T(data.draw(arrays(shape, away_from=0.0, margin=0.2)), dev)   # norms away from 0
    xn = x.numpy()
    close(F.normalize(x, dim=dim),
          xn / np.maximum(np.linalg.norm(xn, axis=dim, keepdims=True), 1e-12), rtol=1e-12)
    check(lambda x: F.normalize(x, dim=dim), x)
    close(F.normalize(x, p=1, dim=dim), xn / np.abs(xn).sum(axis=dim, keepdims=True),
          rtol=1e-12)
    check(lambda x: F.normalize(x, p=1, dim=dim), x)


def test_normalize_all_zero_row_has_a_finite_gradient():
    x = T(np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]]))
    y = F.normalize(x, dim=1)
    close(y, [[0, 0, 0], [0.6, 0.8, 0]], rtol=1e-15)
    g = np.array([[1.0, -2.0, 0.5], [1.0, 1.0, 1.0]])
    y.backward(g)
    assert np.isfinite(x.grad).all()
    # At the clamped row y = x / eps: the gradient is g / eps, as in PyTorch.
    np.testing.assert_allclose(x.grad[0], g[0] / 1e-12)
    yv = np.array([0.6, 0.8, 0.0])
    np.testing.assert_allclose(x.grad[1], (g[1] - yv * (g[1] @ yv)) / 5.0)
    # With a loss that cannot explode (cosine of a zero row), the gradient is exactly finite.
    z = T(np.zeros((2, 4)))
    F.cosine_similarity(z, T(np.ones((2, 4)))).sum().backward()
    assert np.isfinite(z.grad).all()


def test_cosine_similarity_broadcasts_along_dim_before_taking_norms():
    # (1, 1) against (1, 2): the first is the vector (0.2, 0.2) there, so the cosine is 1.
    a, b = T(np.array([[0.2]])), T(np.array([[0.2, 0.2]]))
    close(F.cosine_similarity(a, b), [1.0], rtol=1e-15)
    check(lambda a, b: F.cosine_similarity(a, b), a, b)


@given(data=st.data(), shapes_=broadcastable_shapes(2, min_dims=1, max_dims=3, min_side=1,
                                                    max_side=4))
def test_cosine_similarity(dev, data, shapes_):
    nd = min(len(s) for s in shapes_)
    dim = data.draw(st.integers(-nd, -1))
    a, b = (T(data.draw(arrays(s, away_from=0.0, margin=0.2)), dev) for s in shapes_)
    an, bn = np.broadcast_arrays(a.numpy(), b.numpy())
    ref = (an * bn).sum(axis=dim) / (np.linalg.norm(an, axis=dim) * np.linalg.norm(bn, axis=dim))
    close(F.cosine_similarity(a, b, dim=dim), ref, rtol=1e-10)
    check(lambda a, b: F.cosine_similarity(a, b, dim=dim), a, b)


# =========================================================================== embedding

@given(data=st.data(), num=st.integers(1, 6), dim=st.integers(0, 4),
       idx_shape=shapes(max_dims=2, max_side=5))
def test_embedding(path, data, num, dim, idx_shape):
    with on_path(path, "embedding") as device:
        w = T(data.draw(arrays((num, dim))), device)
        idx = data.draw(arrays(idx_shape, dtype=np.int64, min_value=0, max_value=num - 1))
        y = F.embedding(ms.tensor(idx, device=device), w)
        close(y, w.numpy()[idx], rtol=0, atol=0)
        check(lambda w: F.embedding(idx, w), w)


def test_embedding_repeated_indices_accumulate_and_errors():
    w = T(np.arange(6.0).reshape(3, 2))
    F.embedding(np.array([[0, 2], [0, 0]]), w).sum().backward()
    np.testing.assert_array_equal(w.grad, [[3, 3], [0, 0], [1, 1]])
    with pytest.raises(ValueError, match=r"embedding.*\[0, 3\).*\[0, 3\]"):
        F.embedding(np.array([0, 3]), w)
    with pytest.raises(TypeError, match="embedding.*integer"):
        F.embedding(np.array([0.0]), w)


# =========================================================================== dropout

def test_dropout_p0_p1_and_eval():
    x = T(np.random.default_rng(0).standard_normal((4, 5)))
    assert F.dropout(x, 0.0) is x
    assert F.dropout(x, 0.7, training=False) is x
    y = F.dropout(x, 1.0)
    close(y, np.zeros((4, 5)), rtol=0, atol=0)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="dropout.*1.5"):
        F.dropout(x, 1.5)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics_and_mask_reuse(p):
    manual_seed(1)
    x = T(np.random.default_rng(123).uniform(0.5, 1.5, (200, 500)))
    y = F.dropout(x, p)
    yv, xv = y.numpy(), x.numpy()
    kept = yv != 0
    n = kept.size
    # The fraction dropped is Binomial(n, p) / n: within 6 standard deviations.
    assert abs((1 - kept.mean()) - p) < 6 * math.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(yv[kept], xv[kept] / (1 - p), rtol=1e-12)
    assert abs(yv.mean() / xv.mean() - 1) < 0.02        # expectation preserved
    g = np.random.default_rng(2).standard_normal(x.shape)
    y.backward(g)
    # The backward uses the forward's mask: dx = g m / (1 - p), zero exactly where y is.
    np.testing.assert_allclose(x.grad, np.where(kept, g / (1 - p), 0.0), rtol=1e-12)
    # A new call draws a new mask; reseeding reproduces the old one.
    assert not np.array_equal(F.dropout(x, p).numpy() != 0, kept)
    manual_seed(1)
    np.testing.assert_array_equal(F.dropout(x, p).numpy(), yv)


def test_dropout_gradcheck_with_a_fixed_mask():
    x = T(np.random.default_rng(3).standard_normal((3, 4)))

    def fn(x):
        manual_seed(5)              # the same mask in every evaluation
        return F.dropout(x, 0.4)

    check(fn, x)
    assert F.dropout(T(np.ones(3, np.float32)), 0.5).dtype == np.float32


# =========================================================================== softmax

@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@given(data=st.data(), shape=shapes(min_dims=1, max_dims=4, max_side=4))
def test_softmax_log_softmax(path, op, data, shape):
    nd = len(shape)
    dim = data.draw(st.integers(-nd, nd - 1))
    with on_path(path, "softmax") as device:
        x = T(data.draw(arrays(shape, min_value=-5, max_value=5)), device)
        xn = x.numpy()
        e = np.exp(xn - (xn.max(axis=dim, keepdims=True) if xn.size else 0))
        sm = e / e.sum(axis=dim, keepdims=True)
        fn = getattr(F, op)
        close(fn(x, dim), sm if op == "softmax" else np.log(sm), rtol=1e-10, atol=1e-12)
        check(lambda x: fn(x, dim), x)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_is_stable(op):
    x = T(np.array([[1e4, 0.0, -1e4], [-np.inf, 1.0, 1.0], [1e308, 1e308, 0.0]]))
    y = getattr(F, op)(x, 1).numpy()
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.5, 0.0]])
    if op == "softmax":
        np.testing.assert_allclose(y, ref, atol=1e-300)
    else:
        np.testing.assert_allclose(y[:, 1:][ref[:, 1:] > 0], np.log(0.5), rtol=1e-12)
        assert y[0, 0] == 0.0 and y[1, 0] == -np.inf


# =========================================================================== losses

@st.composite
def ce_cases(draw):
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    extra = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    logits = draw(arrays((n, c) + extra, min_value=-4, max_value=4))
    target = draw(arrays((n,) + extra, dtype=np.int64, min_value=0, max_value=c - 1))
    ignore = draw(st.sampled_from([-100, 0, 2]))
    if ignore == -100:   # also use the default ignore_index in the targets
        drop = draw(arrays(target.shape, dtype=bool))
        target = np.where(drop, -100, target)
    return logits, target, ignore


def ce_ref(x, t, ignore, reduction):
    if x.ndim > 2:
        x = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    shape = t.shape
    t = t.reshape(-1)
    m = x.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
    keep = t != ignore
    loss = np.where(keep, lse - x[np.arange(len(t)), np.where(keep, t, 0)], 0.0)
    if reduction == "none":
        return loss.reshape(shape)
    return loss.sum() if reduction == "sum" else loss.sum() / keep.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(case=ce_cases())
def test_cross_entropy(path, reduction, case):
    logits, target, ignore = case
    if reduction == "mean":
        assume((target != ignore).any())
    with on_path(path, "softmax") as device:
        x = T(logits, device)
        t = ms.tensor(target, device=device)
        y = F.cross_entropy(x, t, reduction=reduction, ignore_index=ignore)
        close(y, ce_ref(logits, target, ignore, reduction), rtol=1e-10, atol=1e-12)
        check(lambda x: F.cross_entropy(x, t, reduction=reduction, ignore_index=ignore), x)


def test_cross_entropy_extreme_logits():
    x = T(np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0]]))
    t = np.array([0, 2])
    y = F.cross_entropy(x, t, reduction="none")
    np.testing.assert_allclose(y.numpy(), [0.0, 1e4])
    y.sum().backward()
    assert np.isfinite(x.grad).all()
    np.testing.assert_allclose(x.grad, [[0, 0, 0], [0, 1, -1]], atol=1e-300)
    for dt in (np.float32, np.float64):
        z = ms.tensor(np.array([[1e4, -1e4]], dt), requires_grad=True)
        F.cross_entropy(z, np.array([1])).backward()
        assert np.isfinite(z.numpy()).all() and np.isfinite(z.grad).all()


def test_cross_entropy_with_minus_inf_entries():
    mask = np.array([[False, True, False], [True, False, False]])
    x = T(np.array([[0.5, 0.0, -0.3], [0.0, 1.2, 0.4]]))
    t = np.array([0, 2])
    fn = lambda x: F.cross_entropy(x.masked_fill(mask, -np.inf), t)  # noqa: E731
    y = fn(x)
    ref = ce_ref(np.where(mask, -np.inf, x.numpy()), t, -100, "mean")
    assert np.isfinite(y.item())
    np.testing.assert_allclose(y.item(), ref, rtol=1e-12)
    y.backward()
    assert np.isfinite(x.grad).all() and (x.grad[mask] == 0).all()
    check(fn, x)
    # -inf straight in the logits: finite loss, gradient 0 there.
    z = T(np.where(mask, -np.inf, x.numpy()))
    F.cross_entropy(z, t).backward()
    assert np.isfinite(z.grad).all() and (z.grad[mask] == 0).all()


def test_cross_entropy_mean_of_only_ignored_targets_is_nan():
    y = F.cross_entropy(T(np.zeros((2, 3))), np.array([-100, -100]))
    assert np.isnan(y.item())


def test_cross_entropy_errors():
    x = T(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"cross_entropy.*target\[1\] = 3.*\(2, 3\)"):
        F.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(ValueError, match="cross_entropy: reduction"):
        F.cross_entropy(x, np.array([0, 1]), reduction="avg")
    with pytest.raises(ValueError, match=r"cross_entropy.*\(2, 3\).*\(2, 3, 4\).*\(2, 4\)"):
        F.cross_entropy(T(np.zeros((2, 3, 4))), np.zeros((2, 4), np.int64)[:, :3])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(data=st.data(), shape=shapes(**small))
def test_mse_loss(dev, reduction, data, shape):
    if reduction == "mean":
        assume(int(np.prod(shape)) > 0)
    a, b = T(data.draw(arrays(shape)), dev), T(data.draw(arrays(shape)), dev)
    sq = (a.numpy() - b.numpy()) ** 2
    ref = sq.mean() if reduction == "mean" else sq.sum() if reduction == "sum" else sq
    close(F.mse_loss(a, b, reduction), ref, rtol=1e-12)
    check(lambda a, b: F.mse_loss(a, b, reduction), a, b)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(data=st.data(), shape=shapes(**small))
def test_binary_cross_entropy_with_logits(dev, reduction, data, shape):
    if reduction == "mean":
        assume(int(np.prod(shape)) > 0)
    x = T(data.draw(arrays(shape, min_value=-8, max_value=8)), dev)
    y = T(data.draw(arrays(shape, min_value=0, max_value=1)), dev)
    s = 1 / (1 + np.exp(-x.numpy()))
    per = -(y.numpy() * np.log(s) + (1 - y.numpy()) * np.log1p(-s))
    ref = per.mean() if reduction == "mean" else per.sum() if reduction == "sum" else per
    close(F.binary_cross_entropy_with_logits(x, y, reduction), ref, rtol=1e-9, atol=1e-12)
    check(lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction), x, y)


def test_binary_cross_entropy_with_logits_is_stable():
    x = T(np.array([-1e4, 1e4, 0.0]))
    y = F.binary_cross_entropy_with_logits(x, np.array([0.0, 0.0, 1.0]), reduction="none")
    np.testing.assert_allclose(y.numpy(), [0.0, 1e4, np.log(2)])
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [0.0, 1.0, -0.5])


def test_loss_shape_errors():
    with pytest.raises(ValueError, match=r"mse_loss.*\(2, 3\).*\(3,\)"):
        F.mse_loss(T(np.ones((2, 3))), T(np.ones(3)))
    with pytest.raises(ValueError, match=r"binary_cross_entropy_with_logits.*\(2,\).*\(3,\)"):
        F.binary_cross_entropy_with_logits(T(np.ones(2)), T(np.ones(3)))


# =========================================================================== attention

def sdpa_ref(q, k, v, mask=None, causal=False):
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tri(*s.shape[-2:], dtype=bool), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(axis=-1, keepdims=True)) @ v


@given(data=st.data(), batch=shapes(max_dims=2, min_side=1, max_side=2),
       L=st.integers(1, 4), S=st.integers(1, 4), E=st.integers(1, 3), Ev=st.integers(1, 3),
       kind=st.sampled_from(["none", "causal", "bool", "float"]))
def test_scaled_dot_product_attention(path, data, batch, L, S, E, Ev, kind):
    with on_path(path, "softmax") as device:
        q = T(data.draw(arrays(batch + (L, E))), device)
        k = T(data.draw(arrays(batch + (S, E))), device)
        v = T(data.draw(arrays(batch + (S, Ev))), device)
        mask = None
        if kind == "bool":
            mask = data.draw(arrays((L, S), dtype=bool))
            mask[:, 0] = True                   # every query attends somewhere (else NaN)
        elif kind == "float":
            mask = data.draw(arrays(data.draw(st.sampled_from([(L, S), (1, S), batch + (L, S)]))))
        causal = kind == "causal"
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        close(y, sdpa_ref(q.numpy(), k.numpy(), v.numpy(), mask, causal), rtol=1e-10,
              atol=1e-12)
        check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask, causal), q, k, v)


@given(data=st.data(), B=st.integers(1, 2), T_=st.integers(1, 4), H=st.integers(1, 3),
       D=st.integers(1, 3), kind=st.sampled_from(["none", "causal", "bool", "float"]))
def test_packed_self_attention(path, data, B, T_, H, D, kind):
    """The packed op equals split -> scaled_dot_product_attention -> merge, values and
    gradients, and passes gradcheck itself."""
    C = H * D
    with on_path(path, "softmax") as device:
        qkv = T(data.draw(arrays((B, T_, 3 * C))), device)
        mask = None
        if kind == "bool":
            mask = data.draw(arrays((T_, T_), dtype=bool))
            mask[:, 0] = True
        elif kind == "float":
            mask = data.draw(arrays((T_, T_)))
        causal = kind == "causal"
        y = packed_self_attention(qkv, H, attn_mask=mask, is_causal=causal)
        heads = qkv.numpy().reshape(B, T_, 3, H, D).transpose(2, 0, 3, 1, 4)
        want = sdpa_ref(heads[0], heads[1], heads[2], mask, causal)        # (B, H, T, D)
        close(y, want.transpose(0, 2, 1, 3).reshape(B, T_, C), rtol=1e-10, atol=1e-12)
        check(lambda t: packed_self_attention(t, H, mask, causal), qkv)


def test_attention_errors():
    q = T(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"scaled_dot_product_attention.*\(2, 3, 4\).*\(2, 3, 5\)"):
        F.scaled_dot_product_attention(q, T(np.ones((2, 3, 5))), q)
    with pytest.raises(ValueError, match="not both"):
        F.scaled_dot_product_attention(q, q, q, np.ones((3, 3), bool), is_causal=True)
    with pytest.raises(ValueError, match=r"packed_self_attention.*num_heads=5.*\(2, 3, 4\)"):
        packed_self_attention(q, 5)


# =========================================================================== float32

FLOAT32_CASES = {
    "gelu": (lambda x: F.gelu(x), [(3, 5)]),
    "softmax": (lambda x: F.softmax(x, 0), [(3, 5)]),
    "log_softmax": (lambda x: F.log_softmax(x, -1), [(3, 5)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, np.array([0, 4, 2])), [(3, 5)]),
    "conv2d": (lambda x, w: F.conv2d(x, w, stride=(2, 1), padding=1), [(2, 3, 5, 4),
                                                                      (4, 3, 3, 2)]),
    "conv_transpose2d": (lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1,
                                                         output_padding=1),
                         [(2, 3, 4, 3), (3, 2, 3, 3)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, (2, 3), 1, (1, 1)), [(2, 3, 5, 6)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, 1), [(2, 3, 5, 6)]),
    "batch_norm": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                   [(4, 3, 2, 2), (3,), (3,)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (2, 3), w, b), [(4, 2, 3), (2, 3),
                                                                   (2, 3)]),
    "embedding": (lambda w: F.embedding(np.array([[0, 1, 1], [4, 0, 0]]), w), [(5, 3)]),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                  [(2, 4, 3), (2, 4, 3), (2, 4, 2)]),
    "normalize": (lambda x: F.normalize(x), [(3, 4)]),
}
KERNEL_FAMILY = {"gelu": "activation", "softmax": "softmax", "log_softmax": "softmax",
                 "cross_entropy": "softmax", "attention": "softmax", "conv2d": "im2col",
                 "conv_transpose2d": "im2col", "max_pool2d": "pool", "avg_pool2d": "pool",
                 "batch_norm": "norm", "layer_norm": "norm", "embedding": "embedding",
                 "normalize": None}


def _run(fn, arrays_, dtype, device="cpu"):
    ts = [ms.tensor(a.astype(dtype), requires_grad=True, device=device) for a in arrays_]
    y = fn(*ts)
    g = np.random.default_rng(7).standard_normal(y.shape)
    y.backward(g.astype(dtype))
    return y, ts


@pytest.mark.parametrize("name", sorted(FLOAT32_CASES))
def test_float32_stays_float32_and_matches_float64(path, name):
    fn, shapes_ = FLOAT32_CASES[name]
    fams = [KERNEL_FAMILY[name]] if KERNEL_FAMILY[name] else []
    with on_path(path, *fams) as device:
        rng = np.random.default_rng(11)
        arrays_ = [rng.uniform(-2, 2, s) for s in shapes_]
        y32, t32 = _run(fn, arrays_, np.float32, device)
        y64, t64 = _run(fn, arrays_, np.float64, device)
        assert y32.dtype == np.float32
        np.testing.assert_allclose(y32.numpy(), y64.numpy(), rtol=2e-4, atol=2e-5)
        for a, b in zip(t32, t64):
            assert a.grad.dtype == np.float32
            np.testing.assert_allclose(host(a.grad), host(b.grad), rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(n for n, f in KERNEL_FAMILY.items() if f))
def test_kernel_paths_agree(name, dtype):
    """The same inputs through the Cython kernels and the NumPy reference."""
    if reference_forced():
        pytest.skip(f"{ENV}=1 forces the reference kernels")
    fn, shapes_ = FLOAT32_CASES[name]
    rng = np.random.default_rng(13)
    arrays_ = [rng.uniform(-2, 2, s) for s in shapes_]
    with on_path("compiled", KERNEL_FAMILY[name]):
        yc, tc = _run(fn, arrays_, dtype)
    with on_path("reference", KERNEL_FAMILY[name]):
        yr, tr = _run(fn, arrays_, dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(yc.numpy(), yr.numpy(), **tol)
    for a, b in zip(tc, tr):
        np.testing.assert_allclose(a.grad, b.grad, **tol)
