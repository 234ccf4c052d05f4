"""Every ``minissl.functional`` op against ``torch.nn.functional`` in float64: the same value
and the same input gradients (rtol 1e-7), on fixed and hypothesis-drawn shapes."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402
from hypothesis import assume, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import minissl as ms  # noqa: E402
import minissl.functional as F  # noqa: E402
from minissl.testing import arrays, broadcastable_shapes, shapes  # noqa: E402

pytestmark = pytest.mark.torch
RTOL, ATOL = 1e-7, 1e-10


def compare(ms_fn, torch_fn, *inputs, rtol=RTOL, atol=ATOL, seed=0):
    """Value and gradients of every float input; ``inputs`` are float64 ndarrays."""
    mt = [ms.tensor(np.asarray(a, np.float64), requires_grad=True) for a in inputs]
    tt = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in inputs]
    y, yt = ms_fn(*mt), torch_fn(*tt)
    assert y.shape == tuple(yt.shape), (y.shape, tuple(yt.shape))
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=rtol, atol=atol)
    g = np.random.default_rng(seed).standard_normal(y.shape)
    y.backward(g)
    yt.backward(torch.from_numpy(g))
    for i, (a, b) in enumerate(zip(mt, tt)):
        ga = np.zeros(a.shape) if a.grad is None else a.grad
        gb = np.zeros(a.shape) if b.grad is None else b.grad.numpy()
        np.testing.assert_allclose(ga, gb, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i}")


def rand(*shape, seed=0, lo=-2.0, hi=2.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape)


# --------------------------------------------------------------------------- linear, conv

@pytest.mark.parametrize("xs", [(5,), (4, 5), (2, 3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(xs, bias):
    args = [rand(*xs), rand(3, 5, seed=1)] + ([rand(3, seed=2)] if bias else [])
    compare(F.linear, TF.linear, *args)


CONV = [  # x shape, weight shape, stride, padding
    ((2, 3, 7, 6), (4, 3, 3, 2), 1, 0),
    ((1, 2, 8, 8), (3, 2, 3, 3), 2, 1),
    ((2, 1, 5, 9), (2, 1, 1, 4), (2, 3), (0, 2)),
    ((1, 3, 4, 4), (2, 3, 4, 4), 1, 2),
]


@pytest.mark.parametrize("xs,ws,stride,padding", CONV)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d(xs, ws, stride, padding, bias):
    args = [rand(*xs), rand(*ws, seed=1)] + ([rand(ws[0], seed=2)] if bias else [])
    compare(lambda x, w, *b: F.conv2d(x, w, *b, stride=stride, padding=padding),
            lambda x, w, *b: TF.conv2d(x, w, *b, stride=stride, padding=padding), *args)


CONVT = [  # x shape, weight shape, stride, padding, output_padding
    ((2, 3, 4, 5), (3, 2, 3, 3), 1, 0, 0),
    ((1, 2, 3, 3), (2, 4, 3, 2), 2, 1, 1),
    ((2, 2, 4, 3), (2, 3, 2, 4), (2, 3), (1, 0), (1, 2)),
    ((1, 1, 2, 2), (1, 1, 5, 5), 3, 2, 0),
]


@pytest.mark.parametrize("xs,ws,stride,padding,out_pad", CONVT)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose2d(xs, ws, stride, padding, out_pad, bias):
    args = [rand(*xs), rand(*ws, seed=1)] + ([rand(ws[1], seed=2)] if bias else [])
    compare(lambda x, w, *b: F.conv_transpose2d(x, w, *(b or [None]), stride, padding, out_pad),
            lambda x, w, *b: TF.conv_transpose2d(x, w, *(b or [None]), stride, padding,
                                                 out_pad), *args)


@given(data=st.data(), n=st.integers(1, 2), c=st.integers(1, 3), o=st.integers(1, 3),
       k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       p=st.tuples(st.integers(0, 2), st.integers(0, 2)))
def test_conv2d_drawn(data, n, c, o, k, s, p):
    h = data.draw(st.integers(max(1, k[0] - 2 * p[0]), 7))
    w = data.draw(st.integers(max(1, k[1] - 2 * p[1]), 7))
    x = data.draw(arrays((n, c, h, w)))
    wt = data.draw(arrays((o, c) + k))
    b = data.draw(arrays((o,)))
    compare(lambda x, w, b: F.conv2d(x, w, b, s, p), lambda x, w, b: TF.conv2d(x, w, b, s, p),
            x, wt, b)
    op = (data.draw(st.integers(0, s[0] - 1)), data.draw(st.integers(0, s[1] - 1)))
    out = [(hw - 1) * s[i] - 2 * p[i] + k[i] + op[i] for i, hw in enumerate((h, w))]
    assume(min(out) >= 1)
    wt2 = data.draw(arrays((c, o) + k))
    compare(lambda x, w, b: F.conv_transpose2d(x, w, b, s, p, op),
            lambda x, w, b: TF.conv_transpose2d(x, w, b, s, p, op), x, wt2, b)


@given(data=st.data(), n=st.integers(1, 2), g=st.integers(1, 3), cg=st.integers(1, 2),
       og=st.integers(1, 2), k=st.integers(1, 3), s=st.integers(1, 3), p=st.integers(0, 2),
       d=st.integers(1, 3), one_d=st.booleans())
def test_conv1d_conv2d_dilation_groups_drawn(data, n, g, cg, og, k, s, p, d, one_d):
    L = data.draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 9))
    spatial, kernel = ((L,), (k,)) if one_d else ((L, 4), (k, 2))
    x = data.draw(arrays((n, g * cg) + spatial))
    wt = data.draw(arrays((g * og, cg) + kernel))
    b = data.draw(arrays((g * og,)))
    ours, theirs = (F.conv1d, TF.conv1d) if one_d else (F.conv2d, TF.conv2d)
    compare(lambda x, w, b: ours(x, w, b, s, p, d, g),
            lambda x, w, b: theirs(x, w, b, s, p, d, g), x, wt, b)


@pytest.mark.parametrize("shape,pad,value", [((2, 3, 5), (2, 0), None),
                                             ((2, 3, 4), (1, -1, 2, 0), 0.5),
                                             ((2, 2, 3, 3), (0, 1, -1, 1, 1, 0), -1.0)])
def test_pad(shape, pad, value):
    compare(lambda x: F.pad(x, pad, value=value), lambda x: TF.pad(x, pad, value=value),
            rand(*shape))


def test_causal_dilated_conv1d():
    k, d = 3, 4
    compare(lambda x, w: F.conv1d(F.pad(x, ((k - 1) * d, 0)), w, dilation=d),
            lambda x, w: TF.conv1d(TF.pad(x, ((k - 1) * d, 0)), w, dilation=d),
            rand(2, 3, 20), rand(5, 3, k, seed=1))


@pytest.mark.parametrize("shape,dim", [((3, 4), -1), ((2, 6, 3), 1), ((2, 2, 4, 3), 2)])
def test_glu_and_gated_tanh(shape, dim):
    compare(lambda x: F.glu(x, dim), lambda x: TF.glu(x, dim), rand(*shape))

    def torch_gated_tanh(x):
        a, b = x.chunk(2, dim)
        return torch.tanh(a) * torch.sigmoid(b)
    compare(lambda x: F.gated_tanh(x, dim), torch_gated_tanh, rand(*shape))


# --------------------------------------------------------------------------- pooling

POOL = [((2, 3, 6, 6), 2, None, 0), ((1, 2, 7, 5), (3, 2), (2, 1), (1, 1)),
        ((2, 1, 5, 5), 3, 1, 1), ((1, 1, 4, 7), (1, 3), (1, 2), (0, 1))]


@pytest.mark.parametrize("xs,k,s,p", POOL)
@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pool2d(xs, k, s, p, op):
    x = np.random.default_rng(0).permutation(int(np.prod(xs))).reshape(xs) * 0.01  # no ties
    compare(lambda x: getattr(F, op)(x, k, s, p), lambda x: getattr(TF, op)(x, k, s, p), x)


@pytest.mark.parametrize("out", [1, (1, 1), (2, 3), (3, 2), (5, 7), (4, 4)])
def test_adaptive_avg_pool2d(out):
    compare(lambda x: F.adaptive_avg_pool2d(x, out), lambda x: TF.adaptive_avg_pool2d(x, out),
            rand(2, 3, 5, 7))


# --------------------------------------------------------------------------- normalisation

@pytest.mark.parametrize("xs", [(6, 3), (4, 3, 5), (3, 2, 4, 4)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_train_and_running_stats(xs, affine):
    c = xs[1]
    rm, rv = rand(c, seed=3), rand(c, seed=4, lo=0.5, hi=2.0)
    rm_ms, rv_ms = rm.copy(), rv.copy()
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    args = [rand(*xs)] + ([rand(c, seed=1), rand(c, seed=2)] if affine else [])
    compare(lambda x, *wb: F.batch_norm(x, rm_ms, rv_ms, *wb, training=True, momentum=0.3),
            lambda x, *wb: TF.batch_norm(x, rm_t, rv_t, *wb, training=True, momentum=0.3),
            *args)
    np.testing.assert_allclose(rm_ms, rm_t.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv_ms, rv_t.numpy(), rtol=1e-12)   # unbiased, as torch


@pytest.mark.parametrize("xs", [(6, 3), (4, 3, 5), (3, 2, 4, 4)])
def test_batch_norm_eval(xs):
    c = xs[1]
    rm, rv = rand(c, seed=3), rand(c, seed=4, lo=0.5, hi=2.0)
    compare(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, eps=1e-3),
            lambda x, w, b: TF.batch_norm(x, torch.tensor(rm), torch.tensor(rv), w, b, eps=1e-3),
            rand(*xs), rand(c, seed=1), rand(c, seed=2))


@pytest.mark.parametrize("xs,ns", [((4, 6), (6,)), ((2, 3, 4), (3, 4)), ((2, 2, 3, 2), (2,)),
                                   ((5,), 5)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm(xs, ns, affine):
    shape = (ns,) if isinstance(ns, int) else ns
    args = [rand(*xs)] + ([rand(*shape, seed=1), rand(*shape, seed=2)] if affine else [])
    compare(lambda x, *wb: F.layer_norm(x, ns, *wb), lambda x, *wb: TF.layer_norm(
        x, shape, *wb), *args)


@given(data=st.data(), shape=shapes(min_dims=2, max_dims=4, min_side=1, max_side=4))
def test_norms_drawn(data, shape):
    x = data.draw(arrays(shape, min_gap=0.05))
    c = shape[1]
    w, b = data.draw(arrays((c,))), data.draw(arrays((c,)))
    assume(x.size // c > 1)
    compare(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
            lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True), x, w, b)
    ns = shape[-data.draw(st.integers(1, len(shape))):]
    w2, b2 = data.draw(arrays(ns)), data.draw(arrays(ns))
    compare(lambda x, w, b: F.layer_norm(x, ns, w, b), lambda x, w, b: TF.layer_norm(x, ns, w, b),
            x, w2, b2)


@pytest.mark.parametrize("p", [2, 1])
@pytest.mark.parametrize("dim", [1, 0, -1])
def test_normalize(p, dim):
    x = rand(3, 4, 2)
    compare(lambda x: F.normalize(x, p=p, dim=dim), lambda x: TF.normalize(x, p=p, dim=dim), x)


def test_normalize_zero_rows():
    x = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 2.0], [0.0, 0.0, 0.0]])
    compare(lambda x: F.normalize(x, dim=1), lambda x: TF.normalize(x, dim=1), x, atol=1e-6)


@given(shs=broadcastable_shapes(2, min_dims=1, max_dims=3, min_side=1, max_side=4),
       data=st.data())
def test_cosine_similarity(shs, data):
    nd = min(len(s) for s in shs)
    dim = data.draw(st.integers(-nd, -1))
    a, b = (data.draw(arrays(s, away_from=0.0, margin=0.2)) for s in shs)
    compare(lambda a, b: F.cosine_similarity(a, b, dim=dim),
            lambda a, b: TF.cosine_similarity(a, b, dim=dim), a, b)


# --------------------------------------------------------------------------- embedding, dropout

@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 2)])
def test_fill_diagonal(shape):
    compare(lambda x: x.fill_diagonal(-3.0), lambda x: x.clone().fill_diagonal_(-3.0),
            rand(*shape))


def test_embedding():
    idx = np.array([[0, 3, 3], [1, 0, 3]])
    compare(lambda w: F.embedding(idx, w), lambda w: TF.embedding(torch.from_numpy(idx), w),
            rand(5, 4))
    compare(lambda w: F.embedding(np.array(2), w), lambda w: TF.embedding(torch.tensor(2), w),
            rand(5, 4))


def test_dropout_identity_cases_and_scaling():
    x = rand(4, 6)
    compare(lambda x: F.dropout(x, 0.0) * 1, lambda x: TF.dropout(x, 0.0), x)
    compare(lambda x: F.dropout(x, 0.4, training=False) * 1,
            lambda x: TF.dropout(x, 0.4, training=False), x)
    compare(lambda x: F.dropout(x, 1.0), lambda x: TF.dropout(x, 1.0), x)
    # Inverted dropout, as torch: the kept entries are x / (1 - p).
    y = F.dropout(ms.tensor(x), 0.25).numpy()
    yt = TF.dropout(torch.tensor(x), 0.25).numpy()
    np.testing.assert_allclose(y[y != 0], x[y != 0] / 0.75, rtol=1e-15)
    np.testing.assert_allclose(yt[yt != 0], x[yt != 0] / 0.75, rtol=1e-15)


# --------------------------------------------------------------------------- activations

ACTS = ["relu", "gelu", "sigmoid", "tanh"]


@pytest.mark.parametrize("name", ACTS)
def test_activation_fixed(name):
    x = np.array([-60.0, -40.0, -20.0, -3.0, -0.5, 0.3, 1.0, 4.0, 20.0, 60.0])
    compare(getattr(F, name), getattr(TF, name) if name != "sigmoid" else torch.sigmoid, x,
            atol=0)


@pytest.mark.parametrize("name", ACTS)
@given(x=arrays(shapes(max_dims=3, max_side=5), min_value=-10, max_value=10, away_from=0.0))
def test_activation_drawn(name, x):
    compare(getattr(F, name), getattr(TF, name) if name != "sigmoid" else torch.sigmoid, x)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@given(x=arrays(shapes(min_dims=1, max_dims=4, max_side=4), min_value=-8, max_value=8),
       data=st.data())
def test_softmax_drawn(op, x, data):
    dim = data.draw(st.integers(-x.ndim, x.ndim - 1))
    compare(lambda x: getattr(F, op)(x, dim), lambda x: getattr(TF, op)(x, dim), x)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_extreme(op):
    x = np.array([[1e4, 0.0, -1e4], [-np.inf, 2.0, 1.0], [3.0, 3.0, 3.0]])
    mt = ms.tensor(x, requires_grad=True)
    tt = torch.tensor(x, requires_grad=True)
    y, yt = getattr(F, op)(mt, 1), getattr(TF, op)(tt, 1)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=RTOL)
    g = rand(3, 3)
    y.backward(g)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(mt.grad, tt.grad.numpy(), rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- losses

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("xs,ts", [((4, 5), (4,)), ((2, 3, 4), (2, 4)), ((2, 4, 2, 3), (2, 2, 3)),
                                   ((5,), ())])
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_cross_entropy(reduction, xs, ts, ignore_index):
    rng = np.random.default_rng(5)
    t = rng.integers(0, xs[1] if len(xs) > 1 else xs[0], ts)
    if t.ndim and ignore_index == -100:
        t.reshape(-1)[::3] = -100
    compare(lambda x: F.cross_entropy(x, t, reduction=reduction, ignore_index=ignore_index),
            lambda x: TF.cross_entropy(x, torch.from_numpy(t), reduction=reduction,
                                       ignore_index=ignore_index), rand(*xs))


def test_cross_entropy_extreme_and_minus_inf():
    x = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, -np.inf], [-np.inf, 0.5, 0.2]])
    t = np.array([2, 0, 1])
    compare(lambda x: F.cross_entropy(x, t, reduction="none"),
            lambda x: TF.cross_entropy(x, torch.from_numpy(t), reduction="none"), x)


@given(data=st.data(), n=st.integers(1, 5), c=st.integers(1, 6),
       reduction=st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy_drawn(data, n, c, reduction):
    x = data.draw(arrays((n, c), min_value=-20, max_value=20))
    t = data.draw(arrays((n,), dtype=np.int64, min_value=0, max_value=c - 1))
    compare(lambda x: F.cross_entropy(x, t, reduction=reduction),
            lambda x: TF.cross_entropy(x, torch.from_numpy(t), reduction=reduction), x)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_and_bce_with_logits(reduction):
    x, y = rand(3, 4), rand(3, 4, seed=1)
    compare(lambda a, b: F.mse_loss(a, b, reduction), lambda a, b: TF.mse_loss(a, b,
                                                                              reduction=reduction),
            x, y)
    x = np.array([[-40.0, -3.0, 0.0, 2.0], [1e4, -1e4, 0.5, 30.0]])
    y = rand(2, 4, seed=2, lo=0.0, hi=1.0)
    compare(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction),
            lambda a, b: TF.binary_cross_entropy_with_logits(a, b, reduction=reduction), x, y)


# --------------------------------------------------------------------------- attention

@pytest.mark.parametrize("kind", ["none", "causal", "bool", "float", "float_broadcast"])
@pytest.mark.parametrize("qs,ks,vs", [((4, 3), (5, 3), (5, 2)), ((2, 4, 3), (2, 4, 3), (2, 4, 5)),
                                      ((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 3))])
def test_scaled_dot_product_attention(kind, qs, ks, vs):
    L, S = qs[-2], ks[-2]
    mask = None
    if kind == "bool":
        mask = np.random.default_rng(1).random((L, S)) > 0.4
        mask[:, 0] = True
    elif kind == "float":
        mask = rand(*qs[:-2], L, S, seed=4)
    elif kind == "float_broadcast":
        mask = rand(1, S, seed=4)
    causal = kind == "causal"
    mask_t = None if mask is None else torch.from_numpy(mask)
    compare(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal),
            lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, mask_t, is_causal=causal),
            rand(*qs), rand(*ks, seed=1), rand(*vs, seed=2))
