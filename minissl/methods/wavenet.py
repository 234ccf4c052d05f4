"""WaveNet: an autoregressive model of raw audio, one 8-bit mu-law sample at a time.

van den Oord, Dieleman, Zen, Simonyan, Vinyals, Graves, Kalchbrenner, Senior, Kavukcuoglu,
"WaveNet: A Generative Model for Raw Audio", arXiv:1609.03499, 2016. DeepMind released no
code; the reference implementations read here are ibab/tensorflow-wavenet (``wavenet/model.py``:
``_create_causal_layer``, ``_create_dilation_layer``, one-hot input, 256-way mu-law softmax)
and r9y9/wavenet_vocoder (``wavenet_vocoder/wavenet.py``, ``ResidualConv1dGLU``).

The waveform is factorised as p(x) = prod_t p(x_t | x_1 .. x_{t-1}) (eq. 1), each factor a
softmax over the 256 mu-law codes of x_t (section 2.2: f(x) = sign(x) ln(1 + mu |x|) /
ln(1 + mu), mu = 255, ``F.mu_law_encoding``). The network:

    e   = Embedding(Q, R)(codes)                  (B, R, T)  the one-hot input times a matrix
    h   = CausalConv1d(R, R, k=2)(e)              (B, R, T)  output t sees inputs t-1, t
    for each layer with dilation d (1, 2, .., 2^(layers-1), repeated ``stacks`` times):
        z    = gated_tanh(Conv1d(R, 2D, 2, dilation d)(pad_left(h, d)))      (B, D, T)
                                                  tanh(W_f * h) . sigmoid(W_g * h), eq. 2
        skip = skip + Conv1d(D, S, 1)(z)          (B, S, T)  skip connections (fig. 4)
        h    = h + Conv1d(D, R, 1)(z)             (B, R, T)  residual connections (not
                                                             after the last layer: unused)
    logits = Conv1d(S, Q, 1)(ReLU(Conv1d(S, S, 1)(ReLU(skip))))               (B, Q, T)

Logits at position t predict the code at t + 1; the loss is the mean cross-entropy (nats per
sample) over every position of a training window. A causal convolution with kernel 2 and
dilation d reads x_{t-d} and x_t; padding d zeros on the left (``F.pad``) keeps the length,
so the receptive field is 1 + 1 + sum of the dilations (``receptive_field``).

Generation (``generate``) runs the network one sample at a time and keeps, for each layer, the
last d inputs it will need again (the queues of "Fast WaveNet", Paine et al. 2016), so a step
costs one column of every layer instead of a pass over the whole receptive field.

Differences from the paper: it gives no sizes for these experiments; these are small (R = D =
32, S = 64, two stacks of dilations 1..128) for 8 kHz clips and one CPU core. No global or
local conditioning (speaker, text). Training windows are random crops of the clips (the paper
and ibab pad sample-by-sample streams; here each crop starts with a zero-padded history).
Features for the probe are the time-averaged ReLU(skip) (``AudioMethod``), not something the
paper evaluates: WaveNet's own figure is the test NLL (``nll``) against the marginal mu-law
distribution (``marginal_nll``).
"""
import math
from dataclasses import dataclass

import numpy as np

from .. import distributed as dist, nn
from .. import functional as F
from ..autograd import no_grad
from ..backend import get_array_module
from .base import AudioMethod

__all__ = ["WaveNetConfig", "WaveNet", "marginal_nll", "build"]


@dataclass
class WaveNetConfig:
    quantization_channels: int = 256  # Q, mu-law codes = softmax width (the paper's 8 bits)
    residual_channels: int = 32       # R, width of the residual stream h
    dilation_channels: int = 32       # D, width of the gated unit's output z
    skip_channels: int = 64           # S, width of the skip sum and the output layers
    layers: int = 8                   # dilations 1, 2, .., 2^(layers-1) in one stack (paper: 10)
    stacks: int = 2                   # stacks of those layers: receptive field 2 + 510 = 512
    window: int = 512                 # samples of the random crop each clip trains on


class WaveNet(AudioMethod):
    """WaveNet over mu-law codes of 8 kHz clips (see the module docstring)."""

    name = "wavenet"

    def __init__(self, config=None):
        super().__init__()
        self.config = c = config or WaveNetConfig()
        if min(c.residual_channels, c.dilation_channels, c.skip_channels, c.layers,
               c.stacks) < 1 or c.quantization_channels < 2 or c.window < 2:
            raise ValueError(f"WaveNet: every width, layers and stacks must be >= 1, "
                             f"quantization_channels >= 2 and window >= 2, got {c}")
        Q, R, D, S = (c.quantization_channels, c.residual_channels, c.dilation_channels,
                      c.skip_channels)
        self.dilations = [2 ** i for _ in range(c.stacks) for i in range(c.layers)]
        self.embed = nn.Embedding(Q, R)                 # one-hot input x a (Q, R) matrix
        self.causal = nn.Conv1d(R, R, 2)                 # the first causal layer
        self.dilated = nn.ModuleList([nn.Conv1d(R, 2 * D, 2, dilation=d)
                                      for d in self.dilations])
        # The last layer's output feeds only the skip sum: it has no residual conv.
        self.residual = nn.ModuleList([nn.Conv1d(D, R, 1) for _ in self.dilations[1:]])
        self.skip = nn.ModuleList([nn.Conv1d(D, S, 1) for _ in self.dilations])
        self.out1 = nn.Conv1d(S, S, 1)
        self.out2 = nn.Conv1d(S, Q, 1)

    @property
    def receptive_field(self):
        """Samples that one output sees: the causal layer's 2 plus every dilation."""
        return 2 + sum(self.dilations)

    def codes(self, x):
        """mu-law codes (B, L) int64, same array module, of clips x (B, L) in [-1, 1]."""
        return F.mu_law_encoding(x, self.config.quantization_channels).data

    def skips(self, e):
        """The skip sum (B, S, T) of embedded inputs e (B, R, T): the causal stack."""
        h = self.causal(F.pad(e, (1, 0)))                                   # (B, R, T)
        skip = 0
        for i, (d, conv, sk) in enumerate(zip(self.dilations, self.dilated, self.skip)):
            z = F.gated_tanh(conv(F.pad(h, (d, 0))), dim=1)                 # (B, D, T)
            skip = skip + sk(z)                                             # (B, S, T)
            if i < len(self.residual):
                h = h + self.residual[i](z)                                 # (B, R, T)
        return skip

    def logits(self, codes):
        """Logits (B, Q, T) of codes (B, T): column t is the distribution of code t + 1."""
        e = self.embed(codes).transpose(1, 2)                               # (B, R, T)
        return self.out2(F.relu(self.out1(F.relu(self.skips(e)))))          # (B, Q, T)

    def encode(self, x):
        """ReLU(skip sum) (B, S, L) of clips x (B, L): the features, averaged over time."""
        self.as_clips(x)
        e = self.embed(self.codes(self.as_input(x).data)).transpose(1, 2)
        return F.relu(self.skips(e))

    def _nll(self, codes):
        """Mean cross-entropy (nats) of codes 1..T-1 given their past, codes (B, T)."""
        B, T = codes.shape
        z = self.logits(codes[:, :-1])                                      # (B, Q, T-1)
        z = z.transpose(1, 2).reshape(B * (T - 1), self.config.quantization_channels)
        return F.cross_entropy(z, codes[:, 1:].reshape(-1))

    def training_step(self, x, rng):
        self.as_clips(x, min_length=2)
        L, w = x.shape[1], min(self.config.window, x.shape[1])
        start = rng.integers(0, L - w + 1, len(x))                          # a crop per clip
        xp = get_array_module(x)
        crops = x[xp.arange(len(x))[:, None], xp.asarray(start)[:, None] + xp.arange(w)]
        loss = self._nll(self.codes(dist.shard(crops)))                     # this rank's rows
        return loss, {"bits_per_sample": loss.item() / math.log(2)}

    def nll(self, x, batch_size=64):
        """Test negative log-likelihood: mean nats per sample of every code after the first
        of clips x (N, L), whole clips (no crop), eval mode."""
        total, n = 0.0, 0
        with no_grad():
            for i in range(0, len(x), batch_size):
                b = x[i:i + batch_size]
                total += self._nll(self.codes(self.as_input(b).data)).item() * len(b)
                n += len(b)
        return total / n

    def test_metrics(self, data):
        """Test NLL (nats and bits per sample) and that of the marginal baseline."""
        nll = self.nll(data.test_x)
        base = marginal_nll(data.train_x, data.test_x, self.config.quantization_channels)
        return {"test_nll": nll, "test_bits_per_sample": nll / math.log(2),
                "marginal_nll": base}

    # --------------------------------------------------------------------- generation

    def _weights(self):
        """The parameters as host float64 arrays, for the step-by-step generator."""
        def w(m):
            return m.weight.numpy().astype(np.float64), m.bias.numpy().astype(np.float64)
        return {"embed": self.embed.weight.numpy().astype(np.float64),
                "causal": w(self.causal), "dilated": [w(m) for m in self.dilated],
                "residual": [w(m) for m in self.residual],
                "skip": [w(m) for m in self.skip], "out1": w(self.out1), "out2": w(self.out2)}

    def stepper(self):
        """A function code -> logits (Q,) of the next code, fed one code at a time: the
        network's column t, computed from queues of the past (see the module docstring)."""
        W = self._weights()
        R = self.config.residual_channels
        prev_e = np.zeros(R)                                  # e_{t-1}: zero padding at first
        queues = [np.zeros((d, R)) for d in self.dilations]   # h_{t-d}, .., h_{t-1} per layer
        t = [0]

        def conv2(wb, past, now):                             # kernel 2: taps t - d and t
            return wb[0][:, :, 0] @ past + wb[0][:, :, 1] @ now + wb[1]

        def step(code):
            nonlocal prev_e
            e = W["embed"][int(code)]
            h = conv2(W["causal"], prev_e, e)
            prev_e = e
            skip = 0.0
            for i, d in enumerate(self.dilations):
                q = queues[i]
                past, q[t[0] % d] = q[t[0] % d].copy(), h     # read h_{t-d}, store h_t
                a = conv2(W["dilated"][i], past, h)
                f, g = np.split(a, 2)
                z = np.tanh(f) / (1 + np.exp(-g))
                skip = skip + W["skip"][i][0][:, :, 0] @ z + W["skip"][i][1]
                if i < len(W["residual"]):
                    h = h + W["residual"][i][0][:, :, 0] @ z + W["residual"][i][1]
            t[0] += 1
            o = W["out1"][0][:, :, 0] @ np.maximum(skip, 0) + W["out1"][1]
            return W["out2"][0][:, :, 0] @ np.maximum(o, 0) + W["out2"][1]
        return step

    def generate(self, n, rng, temperature=1.0):
        """``n`` new samples in [-1, 1] (float32 host array), each drawn from the softmax
        of the logits / ``temperature`` given the ones before; starts from silence."""
        if int(n) != n or n < 1 or not temperature > 0:
            raise ValueError(f"WaveNet.generate: n must be a positive integer and temperature "
                             f"> 0, got {n!r}, {temperature!r}")
        step, Q = self.stepper(), self.config.quantization_channels
        code, out = F.mu_law_encoding(np.zeros(1), Q).data[0], np.empty(int(n), np.int64)
        for i in range(int(n)):
            z = step(code) / temperature
            p = np.exp(z - z.max())
            code = out[i] = rng.choice(Q, p=p / p.sum())
        return F.mu_law_decoding(out, Q).data.astype(np.float32)

    def save_examples(self, out, data, seconds=2.0):
        """Two seconds of generated audio: a WAV file and a picture of its waveform."""
        import os

        from ..data.user import write_wav
        from ..plots import waveforms
        clip = self.generate(int(seconds * data.sample_rate), np.random.default_rng(0))
        path = os.path.join(out, "generated.wav")
        write_wav(path, clip, data.sample_rate)
        return [path, waveforms([clip[None]], os.path.join(out, "generated.png"),
                                f"{self.name}: {seconds:g} s generated", None,
                                data.sample_rate, n=1)]


def marginal_nll(train_x, test_x, quantization_channels=256):
    """The baseline: nats per sample of the test codes under the training codes' marginal
    distribution (counts + 1, Laplace's rule), the best model that ignores the past."""
    enc = [F.mu_law_encoding(np.asarray(x), quantization_channels).data.ravel()
           for x in (train_x, test_x)]
    p = np.bincount(enc[0], minlength=quantization_channels) + 1.0
    return float(-np.log(p / p.sum())[enc[1]].mean())


def build(data, **overrides):
    """A ``WaveNet`` for an ``AudioDataset``; ``overrides`` set ``WaveNetConfig``."""
    return WaveNet(WaveNetConfig(**overrides))
