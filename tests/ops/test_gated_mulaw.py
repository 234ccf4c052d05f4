"""glu and gated_tanh (values, gradcheck, odd sizes) and mu-law companding: against the
formula and against torchaudio's code transcribed (torchaudio is not a dependency)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minissl.functional as F
from minissl.testing import arrays

from .test_ops import T, check, close


def sigmoid(b):
    return 1 / (1 + np.exp(-b))


@pytest.mark.parametrize("op,f", [("glu", lambda a: a), ("gated_tanh", np.tanh)])
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3), data=st.data())
def test_gated_values_and_gradient(op, f, shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    shape[dim] *= 2
    x = T(data.draw(arrays(tuple(shape))))
    a, b = np.split(x.numpy(), 2, axis=dim)
    fn = getattr(F, op)
    close(fn(x, dim), f(a) * sigmoid(b))
    check(lambda x: fn(x, dim), x)


def test_gated_tanh_defaults_to_channels_and_saturates_cleanly():
    x = T(np.array([[[1e4], [-1e4], [3.0], [-1e4]]]))    # a = (1e4, -1e4), b = (3, -1e4)
    y = F.gated_tanh(x)                                   # no overflow in sigmoid(-1e4)
    assert y.shape == (1, 2, 1)
    close(y, np.array([[[sigmoid(3.0)], [0.0]]]))
    y.sum().backward()
    assert np.isfinite(x.grad).all()


def test_gated_errors():
    with pytest.raises(ValueError, match=r"gated_tanh: halving dimension 1.*\(2, 3\).*3"):
        F.gated_tanh(T(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"glu: dim 2 out of range.*\(2, 4\)"):
        F.glu(T(np.ones((2, 4))), 2)


# ----------------------------------------------------------------------------- mu-law

def torchaudio_encoding(x, quantization_channels):
    """torchaudio.functional.mu_law_encoding, line for line in NumPy."""
    mu = quantization_channels - 1.0
    x_mu = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return ((x_mu + 1) / 2 * mu + 0.5).astype(np.int64)


def torchaudio_decoding(x_mu, quantization_channels):
    mu = quantization_channels - 1.0
    x = (x_mu.astype(np.float32) / np.float32(mu)) * 2 - 1.0
    return np.sign(x) * (np.exp(np.abs(x) * np.log1p(np.float32(mu))) - 1.0) / np.float32(mu)


@pytest.mark.parametrize("channels", [256, 16, 2])
def test_mu_law_against_formula_and_torchaudio(channels):
    x = np.concatenate([[-1.0, -0.5, 0.0, 1e-4, 0.5, 1.0],
                        np.random.default_rng(0).uniform(-1, 1, 200)])
    q = F.mu_law_encoding(x, channels)
    assert q.dtype == np.int64 and not q.requires_grad
    mu = channels - 1
    np.testing.assert_array_equal(q.numpy(), torchaudio_encoding(x, channels))
    assert q.numpy().min() >= 0 and q.numpy().max() <= mu
    # The formula: codes of f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu) rounded on a grid.
    f = np.sign(x) * np.log(1 + mu * np.abs(x)) / np.log(1 + mu)
    np.testing.assert_array_equal(q.numpy(), np.floor((f + 1) / 2 * mu + 0.5))
    y = F.mu_law_decoding(q, channels)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), torchaudio_decoding(q.numpy(), channels), rtol=1e-6,
                               atol=1e-7)
    # Expansion inverts companding up to half a code: |f(decode(q)) - f(x)| <= 1 / mu.
    fy = np.sign(y.numpy()) * np.log1p(mu * np.abs(y.numpy())) / np.log1p(mu)
    assert np.abs(fy - f).max() <= 1 / mu + 1e-5


def test_mu_law_codes_round_trip_exactly():
    q = np.arange(256)
    np.testing.assert_array_equal(F.mu_law_encoding(F.mu_law_decoding(q).numpy()).numpy(), q)


def test_mu_law_errors():
    with pytest.raises(ValueError, match="mu_law_encoding: quantization_channels must be"):
        F.mu_law_encoding(np.zeros(3), 1)
    with pytest.raises(ValueError, match="mu_law_decoding: quantization_channels must be"):
        F.mu_law_decoding(np.zeros(3, np.int64), 2.5)
