"""conv2d's textbook reference (Conv2dRef: im2col, one product, NCHW) against the fast Conv2d,
and MINISSL_REFERENCE=1 selecting it like every other kernel."""
import numpy as np
import pytest

import minissl as ms
import minissl.functional as F
from minissl.ops import conv


def _grads(op, x, w, b, stride, padding, cot):
    xs = [ms.tensor(a, requires_grad=True) for a in (x, w) + ((b,) if b is not None else ())]
    fn = op(tuple(w.shape[2:]), (stride, stride), (padding, padding), b is not None)
    y = fn(*xs)
    y.backward(cot)
    return [y.numpy()] + [t.grad for t in xs]


@pytest.mark.parametrize("shape, filters, k, stride, padding, bias", [
    ((2, 3, 9, 9), 4, 3, 1, 1, True),       # per image: OH*OW >= 4 * C*kh*kw
    ((3, 8, 5, 6), 5, 3, 2, 0, False),      # one transposed product
    ((2, 2, 4, 4), 3, (1, 2), 1, 1, True),  # a rectangular window
])
def test_reference_equals_the_fast_convolution(shape, filters, k, stride, padding, bias):
    rng = np.random.default_rng(0)
    k = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal(shape)
    w = rng.standard_normal((filters, shape[1], *k))
    b = rng.standard_normal(filters) if bias else None
    oh = (shape[2] + 2 * padding - k[0]) // stride + 1
    ow = (shape[3] + 2 * padding - k[1]) // stride + 1
    cot = rng.standard_normal((shape[0], filters, oh, ow))
    ref = _grads(conv.Conv2dRef, x, w, b, stride, padding, cot)
    fast = _grads(conv.Conv2d, x, w, b, stride, padding, cot)
    for r, f in zip(ref, fast):
        np.testing.assert_allclose(f, r, rtol=1e-12, atol=1e-12)


def test_reference_in_chunks_regime(monkeypatch):
    """The chunked input gradient of Conv2d (large dcols) equals the reference's."""
    monkeypatch.setattr(conv, "CHUNK_BYTES", 64)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((5, 4, 6, 6)), rng.standard_normal((3, 4, 3, 3))
    cot = rng.standard_normal((5, 3, 4, 4))
    for r, f in zip(_grads(conv.Conv2dRef, x, w, None, 1, 0, cot),
                    _grads(conv.Conv2d, x, w, None, 1, 0, cot)):
        np.testing.assert_allclose(f, r, rtol=1e-12, atol=1e-12)


def test_reference_forced_by_environment(monkeypatch):
    monkeypatch.delenv("MINISSL_REFERENCE", raising=False)
    x = ms.tensor(np.ones((1, 1, 4, 4)), requires_grad=True)
    w = ms.tensor(np.ones((2, 1, 3, 3)), requires_grad=True)
    assert type(F.conv2d(x, w)._ctx) is conv.Conv2d
    monkeypatch.setenv("MINISSL_REFERENCE", "1")
    y = F.conv2d(x, w, padding=1)
    assert type(y._ctx) is conv.Conv2dRef
    assert ms.gradcheck(lambda a, b: F.conv2d(a, b, padding=1), [x, w])
