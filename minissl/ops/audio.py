"""mu-law companding and expansion, with torchaudio's names and semantics
(``torchaudio.functional.mu_law_encoding`` / ``mu_law_decoding``; ITU-T G.711).

With mu = quantization_channels - 1, a signal x in [-1, 1] is companded and quantised as
    f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu),    q = int((f(x) + 1) / 2 mu + 0.5)
(an int64 in [0, mu]), and a code q expands back as
    y = 2 q / mu - 1,    x = sign(y) ((1 + mu)^|y| - 1) / mu.
The log spreads the quiet samples that dominate audio over many codes: WaveNet's 256-way
softmax over 8-bit mu-law codes (van den Oord et al. 2016, section 2.2). Neither is
differentiable in its code, so both return tensors without gradient.
"""
import numpy as np

from ..autograd import Tensor
from ..backend import get_array_module


def _channels(op, quantization_channels):
    if isinstance(quantization_channels, bool) or not isinstance(
            quantization_channels, (int, np.integer)) or quantization_channels < 2:
        raise ValueError(f"{op}: quantization_channels must be an int >= 2, got "
                         f"{quantization_channels!r}")
    return float(quantization_channels - 1)


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def mu_law_encoding(x, quantization_channels=256):
    """Codes (int64, in [0, quantization_channels - 1]) of the signal ``x`` in [-1, 1]."""
    mu = _channels("mu_law_encoding", quantization_channels)
    a = _data(x)
    xp = get_array_module(a)
    a = a if a.dtype.kind == "f" else a.astype(np.float32)
    mu_ = a.dtype.type(mu)
    f = xp.sign(a) * xp.log1p(mu_ * xp.abs(a)) / xp.log1p(mu_)
    return Tensor(((f + 1) / 2 * mu_ + a.dtype.type(0.5)).astype(np.int64))


def mu_law_decoding(x_mu, quantization_channels=256):
    """The signal in [-1, 1] that the codes ``x_mu`` stand for (float32 from integer codes,
    as torchaudio; a floating input keeps its dtype)."""
    mu = _channels("mu_law_decoding", quantization_channels)
    q = _data(x_mu)
    xp = get_array_module(q)
    q = q if q.dtype.kind == "f" else q.astype(np.float32)
    mu_ = q.dtype.type(mu)
    y = q / mu_ * 2 - 1
    return Tensor(xp.sign(y) * (xp.exp(xp.abs(y) * xp.log1p(mu_)) - 1) / mu_)
