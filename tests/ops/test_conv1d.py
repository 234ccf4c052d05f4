"""conv1d, conv2d with dilation and groups, and F.pad: values against direct sums written with
NumPy, gradients against finite differences, over hypothesis-drawn geometries and every kernel
path (as tests/ops/test_ops.py does for conv2d), size 0, and errors that name the op."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minissl as ms
import minissl.functional as F
from minissl.ops import conv as conv_ops
from minissl.testing import arrays

from .test_ops import T, check, close, conv_products, on_path, path  # noqa: F401 (fixture)


def conv2d_direct(x, w, b, stride, padding, dilation, groups):
    """The definition: y[n, o, p, q] = sum over the group's channels and taps."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((N, O, OH, OW))
    Og = O // groups
    for o in range(O):
        cs = slice(o // Og * Cg, (o // Og + 1) * Cg)
        for i in range(kh):
            for j in range(kw):
                win = xp[:, cs, i * dh:i * dh + sh * OH:sh, j * dw:j * dw + sw * OW:sw]
                y[:, o] += np.einsum("nchw,c->nhw", win, w[o, :, i, j])
    return y if b is None else y + b[None, :, None, None]


@st.composite
def grouped_cases(draw, one_d=False):
    g = draw(st.integers(1, 3))
    n, cg, og = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kh, kw = (1 if one_d else draw(st.integers(1, 3))), draw(st.integers(1, 3))
    sh, sw = (1 if one_d else draw(st.integers(1, 2))), draw(st.integers(1, 3))
    ph, pw = (0 if one_d else draw(st.integers(0, 2))), draw(st.integers(0, 2))
    dh, dw = (1 if one_d else draw(st.integers(1, 3))), draw(st.integers(1, 3))
    h = 1 if one_d else draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 7))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 8))
    return (n, g * cg, h, w), (g * og, cg, kh, kw), (sh, sw), (ph, pw), (dh, dw), g


@given(case=grouped_cases(), bias=st.booleans(), ratio=st.sampled_from([0, math.inf]),
       fused=st.booleans(), data=st.data())
def test_conv2d_dilation_groups(path, case, bias, ratio, fused, data):
    xs, ws, s, p, d, g = case
    with on_path(path, "im2col") as device, conv_products(ratio, conv_ops.CHUNK_BYTES, fused):
        x, w = T(data.draw(arrays(xs)), device), T(data.draw(arrays(ws)), device)
        b = T(data.draw(arrays((ws[0],))), device) if bias else None
        y = F.conv2d(x, w, b, s, p, d, g)
        close(y, conv2d_direct(x.numpy(), w.numpy(), None if b is None else b.numpy(),
                               s, p, d, g))
        args = (x, w) + ((b,) if bias else ())
        check(lambda x, w, *b: F.conv2d(x, w, *(b or [None]), s, p, d, g), *args)


@given(case=grouped_cases(one_d=True), bias=st.booleans(), data=st.data())
def test_conv1d(path, case, bias, data):
    xs, ws, s, p, d, g = case
    xs, ws = (xs[0], xs[1], xs[3]), (ws[0], ws[1], ws[3])
    with on_path(path, "im2col") as device:
        x, w = T(data.draw(arrays(xs)), device), T(data.draw(arrays(ws)), device)
        b = T(data.draw(arrays((ws[0],))), device) if bias else None
        y = F.conv1d(x, w, b, stride=s[1], padding=p[1], dilation=d[1], groups=g)
        expected = conv2d_direct(x.numpy()[:, :, None], w.numpy()[:, :, None],
                                 None if b is None else b.numpy(), s, p, d, g)[:, :, 0]
        assert y.shape == expected.shape
        close(y, expected)
        args = (x, w) + ((b,) if bias else ())
        check(lambda x, w, *b: F.conv1d(x, w, *(b or [None]), s[1], (p[1],), d[1], g), *args)


def test_causal_conv1d_sees_no_future():
    """conv1d(pad(x, ((k-1) d, 0)), dilation=d): output t depends on x[:t + 1] only, exactly
    the taps t, t - d, ..., t - (k-1) d."""
    k, d, L = 3, 2, 12
    x = T(np.random.default_rng(0).standard_normal((1, 1, L)))
    w = T(np.ones((1, 1, k)), requires_grad=False)
    assert F.conv1d(F.pad(x, ((k - 1) * d, 0)), w, dilation=d).shape == (1, 1, L)
    for t in range(L):
        x.grad = None
        F.conv1d(F.pad(x, ((k - 1) * d, 0)), w, dilation=d)[0, 0, t].backward()
        taps = {t - i * d for i in range(k) if t - i * d >= 0}
        assert set(np.flatnonzero(x.grad[0, 0])) == taps


@pytest.mark.parametrize("xs,ws", [((0, 2, 5), (3, 2, 3)), ((2, 0, 5), (3, 0, 3)),
                                   ((2, 2, 5), (0, 2, 3))])
def test_conv1d_size_zero(xs, ws):
    x, w = T(np.ones(xs)), T(np.ones(ws))
    y = F.conv1d(x, w, padding=1)
    assert y.shape == (xs[0], ws[0], 5)
    y.sum().backward()
    assert x.grad.shape == xs and w.grad.shape == ws
    close(x.grad, np.zeros(xs))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("ratio", [0, math.inf])
def test_dilated_conv2d_fast_path_equals_reference(ratio, fused):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 2))
    ys, gs = [], []
    for op in (conv_ops.Conv2d, conv_ops.Conv2dRef):
        with conv_products(ratio, conv_ops.CHUNK_BYTES, fused):
            xt, wt = T(x), T(w)
            y = op((3, 2), (2, 1), (1, 2), False, (2, 3))(xt, wt)
            y.backward(np.ones(y.shape))
            ys.append(y.numpy())
            gs.append((xt.grad, wt.grad))
    close(ys[0], ys[1])
    close(gs[0][0], gs[1][0])
    close(gs[0][1], gs[1][1])


# --------------------------------------------------------------------------------- pad

@pytest.mark.parametrize("shape,pad", [((2, 5), (2, 0)), ((1, 2, 3, 4), (1, 2, 0, 3)),
                                       ((3, 4), (-1, 2)), ((2, 3, 4), (1, 1, -1, -2, 0, 1)),
                                       ((4,), (0, 0)), ((0, 3), (1, 1))])
def test_pad_values_and_gradient(shape, pad):
    x = T(np.random.default_rng(2).standard_normal(shape))
    y = F.pad(x, pad, value=1.5)
    width = [(0, 0)] * (len(shape) - len(pad) // 2) + \
        [(pad[2 * i], pad[2 * i + 1]) for i in reversed(range(len(pad) // 2))]
    # np.pad takes no negative widths: pad the positive parts, then crop the negative ones.
    expected = np.pad(x.numpy(), [(max(a, 0), max(b, 0)) for a, b in width],
                      constant_values=1.5)
    crop = tuple(slice(max(-a, 0), expected.shape[i] - max(-b, 0))
                 for i, (a, b) in enumerate(width))
    close(y, expected[crop])
    if x.numpy().size:
        check(lambda x: F.pad(x, pad, value=1.5), x)


def test_pad_errors():
    x = T(np.ones((2, 3)))
    with pytest.raises(ValueError, match="pad: pad must be an even number"):
        F.pad(x, (1,))
    with pytest.raises(ValueError, match=r"pad: 6 pad values.*\(2, 3\)"):
        F.pad(x, (1, 1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="pad: padding \\(-2, -2\\) of dim 1.*negative"):
        F.pad(x, (-2, -2))
    with pytest.raises(NotImplementedError, match="pad: mode 'reflect'"):
        F.pad(x, (1, 1), mode="reflect")


# --------------------------------------------------------------------------------- errors

def test_conv1d_and_grouped_conv_errors():
    x = T(np.ones((1, 4, 6)))
    with pytest.raises(ValueError, match=r"conv1d.*\(N, C, L\).*\(1, 4, 6, 1\)"):
        F.conv1d(T(np.ones((1, 4, 6, 1))), T(np.ones((2, 4, 3))))
    with pytest.raises(ValueError, match=r"conv1d.*\(1, 4, 6\) has 4 channels.*\(2, 3, 3\)"):
        F.conv1d(x, T(np.ones((2, 3, 3))))
    with pytest.raises(ValueError, match=r"conv1d: kernel size 3 with dilation 3.*\(1, 4, 6\)"):
        F.conv1d(x, T(np.ones((2, 4, 3))), dilation=3)
    with pytest.raises(ValueError, match="conv1d: dilation must be >= 1"):
        F.conv1d(x, T(np.ones((2, 4, 3))), dilation=0)
    with pytest.raises(ValueError, match="conv1d: padding must be >= 0"):
        F.conv1d(x, T(np.ones((2, 4, 3))), padding=-1)
    with pytest.raises(TypeError, match="conv1d: stride must be an int"):
        F.conv1d(x, T(np.ones((2, 4, 3))), stride=(1, 1))
    with pytest.raises(ValueError, match=r"conv1d: groups=3 must divide.*\(4, input"):
        F.conv1d(x, T(np.ones((3, 1, 3))), groups=3)
    with pytest.raises(ValueError, match=r"conv2d: groups=2 must divide.*output channels \(3"):
        F.conv2d(T(np.ones((1, 4, 5, 5))), T(np.ones((3, 2, 3, 3))), groups=2)
    with pytest.raises(ValueError, match="conv2d: groups must be a positive int"):
        F.conv2d(T(np.ones((1, 4, 5, 5))), T(np.ones((2, 4, 3, 3))), groups=0)
    with pytest.raises(ValueError, match=r"conv2d.*dilation=\(3, 3\).*\(1, 4, 5, 5\)"):
        F.conv2d(T(np.ones((1, 4, 5, 5))), T(np.ones((2, 4, 3, 3))), dilation=3)
    with pytest.raises(ValueError, match="conv2d: need dilation >= 1"):
        F.conv2d(T(np.ones((1, 4, 5, 5))), T(np.ones((2, 4, 3, 3))), dilation=(1, 0))


def test_nn_conv1d_and_grouped_conv2d_layers():
    conv = ms.nn.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2, rng=0)
    assert conv.weight.shape == (6, 2, 3) and conv.bias.shape == (6,)
    bound = 1 / math.sqrt(2 * 3)                                  # fan_in = in / groups * k
    assert np.abs(conv.weight.numpy()).max() <= bound
    assert conv(T(np.ones((2, 4, 7), np.float32))).shape == (2, 6, 7)
    assert "dilation=(2,), groups=2" in repr(conv)
    conv2 = ms.nn.Conv2d(4, 8, 3, 1, 1, 2, 4, False, rng=0)      # PyTorch's positional order
    assert conv2.dilation == (2, 2) and conv2.groups == 4 and conv2.bias is None
    assert conv2.weight.shape == (8, 1, 3, 3)
    with pytest.raises(ValueError, match="Conv2d: groups=3 must divide in_channels=4"):
        ms.nn.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(TypeError, match="Conv1d: kernel_size must be an int or a 1-tuple"):
        ms.nn.Conv1d(4, 6, (3, 3))
