"""Self-prediction by autoregression: predict the next element of a sequence from the past.

Two models, one idea. The pseudo-label of position t is simply the element at t + 1, so any
unlabeled sequence supervises itself:

* ``CharGPT``: a causal transformer language model over characters (next-token prediction).
  Radford, Narasimhan, Salimans & Sutskever, "Improving Language Understanding by Generative
  Pre-Training" (GPT), 2018, and Radford et al., "Language Models are Unsupervised Multitask
  Learners" (GPT-2), 2019. Style and defaults follow Karpathy's nanoGPT (``model.py``: token
  and learned position embeddings, pre-LN blocks, final LayerNorm, linear head, N(0, 0.02)
  initialisation with the residual projections scaled by 1/sqrt(2 n_layer); ``generate``
  with temperature and top-k; ``train.py``'s ``estimate_loss``), scaled down for a CPU.
* ``ARModel``: the linear autoregressive model of a time series,
  x_t = sum_{k=1..p} a_k x_{t-k} + b + e_t (Box & Jenkins, *Time Series Analysis*, ch. 3),
  trained by next-value prediction with mean squared error. For a Gaussian AR(p) process the
  best linear predictor is the process itself, so training must recover its coefficients
  (``minissl.data.ar`` samples a process whose coefficients are known).

The GPT's loss is the cross-entropy of the next character, in nats per character:

    L = -1/(B T) sum_{b,t} log softmax(f(x_{b, <=t}))[x_{b, t+1}]

A model that ignores the context can do no better than the unigram entropy of the corpus,
H = -sum_c p(c) log p(c) (``unigram_entropy``); how far below it the validation loss goes is
what the context bought.
"""
import math
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from .. import distributed as dist, nn
from ..autograd import Tensor, no_grad
from ..backend import get_array_module, to_device
from ..random import get_generator
from .base import SSLMethod

__all__ = ["GPTConfig", "CharGPT", "ARConfig", "ARModel", "text_windows", "unigram_entropy",
           "gpt_init_", "build", "build_gpt", "build_ar"]


# ------------------------------------------------------------------------------------------
# Text helpers
# ------------------------------------------------------------------------------------------

def text_windows(ids, length):
    """Non-overlapping windows of ``length`` consecutive ids: int64 (N, length), N = len // length.

    With ``length = block_size + 1`` each row is one training example of ``CharGPT`` (inputs
    row[:-1], targets row[1:]), so ``train.pretrain(gpt, text_windows(corpus.train_ids,
    gpt.config.block_size + 1), ...)`` trains on every character once per epoch.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"text_windows: ids must be a 1-D integer array, got {ids.dtype} "
                         f"of shape {ids.shape}")
    if length < 1 or len(ids) < length:
        raise ValueError(f"text_windows: need 1 <= length <= len(ids), got length={length} for "
                         f"{len(ids)} ids")
    n = len(ids) // length
    return ids[:n * length].reshape(n, length).astype(np.int64)


def unigram_entropy(ids, vocab_size=None):
    """Entropy of the character frequencies of ``ids`` in nats: H = -sum_c p(c) log p(c).

    The loss of the best model that ignores context; a language model is worth its context
    only below it.
    """
    ids = np.asarray(ids).reshape(-1)
    if ids.size == 0:
        raise ValueError("unigram_entropy: ids is empty")
    counts = np.bincount(ids, minlength=vocab_size or 0).astype(np.float64)
    p = counts[counts > 0] / ids.size
    return float(-(p * np.log(p)).sum())


def _check_ids(fn, idx, vocab_size, max_len=None):
    """Int token ids (B, T) as an int64 array of their own device: ids in [0, vocab_size),
    T >= 1 and, when ``max_len`` is given, T <= max_len (a clear ValueError otherwise)."""
    if isinstance(idx, Tensor):
        idx = idx.data
    xp = get_array_module(idx)
    idx = xp.asarray(idx)
    if idx.ndim != 2 or idx.dtype.kind not in "iu":
        raise ValueError(f"{fn}: expected int token ids of shape (B, T), got {idx.dtype} of "
                         f"shape {tuple(idx.shape)}")
    if idx.shape[1] < 1 or (max_len is not None and idx.shape[1] > max_len):
        limit = f"[1, {max_len}]" if max_len is not None else ">= 1"
        raise ValueError(f"{fn}: sequence length {idx.shape[1]} is not in {limit} (ids of "
                         f"shape {tuple(idx.shape)})")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(f"{fn}: token ids must lie in [0, {vocab_size}), got range "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    return idx.astype(xp.int64, copy=False)


def gpt_init_(model, n_layer, rng=None):
    """GPT-2 / nanoGPT initialisation, in place: every Linear and Embedding weight ~ N(0, 0.02^2),
    biases 0, LayerNorms (1, 0); the residual projections (``attn.proj`` and the MLP's second
    Linear ``mlp.2``) ~ N(0, (0.02 / sqrt(2 n_layer))^2), so that the variance of the residual
    stream does not grow with depth (GPT-2 paper, Sec. 2.3)."""
    rng = get_generator(rng)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            if name.endswith("bias"):
                p.data[...] = 0
            continue
        std = 0.02
        if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
            std = 0.02 / math.sqrt(2 * n_layer)
        p.data[...] = rng.normal(0.0, std, size=p.shape).astype(p.dtype)


# ------------------------------------------------------------------------------------------
# CharGPT
# ------------------------------------------------------------------------------------------

@dataclass
class GPTConfig:
    vocab_size: int = 128     # number of distinct tokens (the corpus's characters)
    block_size: int = 64      # context length T (nanoGPT's shakespeare_char: 256)
    n_layer: int = 4          # transformer blocks (GPT-2 small: 12; shakespeare_char: 6)
    n_head: int = 4           # attention heads per block; n_embd must be divisible by it
    n_embd: int = 128         # width C of the residual stream (GPT-2 small: 768; char: 384)
    dropout: float = 0.0      # dropout after the embeddings (0 for pretraining, as nanoGPT)


class CharGPT(SSLMethod):
    """A nanoGPT-style causal transformer language model over token ids.

        x_0 = wte[idx] + wpe[0:T]                         (B, T, C)
        x_l = Block_l(x_{l-1}),  l = 1..n_layer           pre-LN, causal self-attention
        logits = lm_head(ln_f(x_L))                       (B, T, V)

    Differences from nanoGPT, on purpose: the head is not tied to ``wte`` (for a character
    vocabulary of ~100 the saving is negligible and the state_dict stays one-to-one), and
    dropout is applied after the embeddings only (``nn.TransformerBlock`` has no dropout).
    """

    name = "gpt"
    data_kind = "text"

    def __init__(self, config=None, rng=None, dtype=None):
        super().__init__()
        self.config = c = config or GPTConfig()
        rng = get_generator(rng)
        self.wte = nn.Embedding(c.vocab_size, c.n_embd, rng=rng, dtype=dtype)       # tokens
        self.wpe = nn.PositionalEmbedding(c.block_size, c.n_embd, rng=rng, dtype=dtype)
        self.drop = nn.Dropout(c.dropout)
        self.h = nn.ModuleList([nn.TransformerBlock(c.n_embd, c.n_head, causal=True, rng=rng,
                                                    dtype=dtype) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd, dtype=dtype)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False, rng=rng, dtype=dtype)
        gpt_init_(self, c.n_layer, rng)

    def training_data(self, corpus):
        """Non-overlapping windows of ``block_size + 1`` ids of the training split (N, T + 1):
        what ``train.pretrain`` iterates over (each character is a target once per epoch)."""
        return text_windows(corpus.train_ids, self.config.block_size + 1)

    def hidden(self, idx):
        """Final hidden states ln_f(x_L) (B, T, C) of int ids (B, T), T <= block_size."""
        idx = _check_ids(f"{type(self).__name__}", idx, self.config.vocab_size,
                         self.config.block_size)
        x = self.drop(self.wpe(self.wte(idx)))                 # (B, T, C)
        for block in self.h:
            x = block(x)                                        # (B, T, C)
        return self.ln_f(x)                                     # (B, T, C)

    def forward(self, idx):
        """Next-token logits (B, T, V): row t depends on idx[:, :t + 1] only."""
        return self.lm_head(self.hidden(idx))                   # (B, T, V)

    def loss(self, idx, targets):
        """Mean next-token cross-entropy (nats) of inputs (B, T) against targets (B, T)."""
        logits = self(idx)                                      # (B, T, V)
        B, T, V = logits.shape
        t = get_array_module(logits.data).asarray(targets)
        if tuple(t.shape) != (B, T):
            raise ValueError(f"{type(self).__name__}.loss: targets of shape {tuple(t.shape)} "
                             f"do not match inputs of shape {(B, T)}")
        return F.cross_entropy(logits.reshape(B * T, V), t.reshape(-1))

    def training_step(self, batch, rng=None):
        """``batch``: int ids (B, T + 1) (e.g. rows of ``text_windows``) or a pair ``(x, y)``
        of (B, T) arrays as ``TextCorpus.windows`` returns; inputs [:, :-1], targets [:, 1:]."""
        if isinstance(batch, (tuple, list)):
            x, y = dist.shard(*batch)                           # this rank's rows
        else:
            if getattr(batch, "ndim", 0) != 2 or batch.shape[1] < 2:
                raise ValueError(f"{type(self).__name__}.training_step: expected token ids "
                                 f"(B, T + 1) with T >= 1, got shape "
                                 f"{getattr(batch, 'shape', None)}")
            batch = dist.shard(batch)                           # this rank's rows
            x, y = batch[:, :-1], batch[:, 1:]                  # (B, T) each
        loss = self.loss(x, y)
        return loss, {"bits_per_char": loss.item() / math.log(2)}

    def features(self, x, batch_size=256):
        """Mean over positions of the final hidden states: float32 (N, n_embd) for ids (N, T)."""
        return self.map_batches(lambda b: self.hidden(b).mean(dim=1), x, batch_size)

    def estimate_loss(self, corpus, split="val", eval_iters=20, batch_size=32, seed=0):
        """Mean loss (nats/char) over ``eval_iters`` random windows of ``corpus``'s ``split``.

        The windows come from ``numpy.random.default_rng(seed)``, so two calls (before and
        after training) score the same text. Runs in eval mode without a graph.
        """
        rng = np.random.default_rng(seed)
        was_training = self.training
        self.eval()
        losses = []
        with no_grad():
            for _ in range(eval_iters):
                x, y = corpus.windows(split, batch_size, self.config.block_size, rng)
                losses.append(self.loss(x, y).item())
        self.train(was_training)
        return float(np.mean(losses))

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, rng=None):
        """Extend int ids (B, T0) by ``max_new_tokens`` sampled tokens: int64 (B, T0 + n) on
        the host.

        Each step feeds the last ``block_size`` ids, divides the last logits by
        ``temperature`` (< 1 sharpens, > 1 flattens), keeps the ``top_k`` largest if given,
        and samples from the softmax with ``rng`` (a Generator or seed; default: the
        library's generator).
        """
        if temperature <= 0:
            raise ValueError(f"generate: temperature must be > 0, got {temperature}")
        if top_k is not None and not 1 <= top_k:
            raise ValueError(f"generate: top_k must be >= 1, got {top_k}")
        if max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
        rng = get_generator(rng)
        idx = to_device(_check_ids("generate", idx, self.config.vocab_size), "cpu")
        V = self.config.vocab_size
        was_training = self.training
        self.eval()
        with no_grad():
            for _ in range(max_new_tokens):
                ctx = idx[:, -self.config.block_size:]                       # (B, <= T)
                logits = self(ctx).data[:, -1, :]                            # (B, V)
                logits = to_device(logits, "cpu").astype(np.float64) / temperature
                if top_k is not None and top_k < V:
                    kth = np.partition(logits, V - top_k, axis=1)[:, V - top_k][:, None]
                    logits = np.where(logits < kth, -np.inf, logits)
                p = np.exp(logits - logits.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)                            # (B, V)
                # Inverse-CDF sampling: the first id whose cumulative probability exceeds u.
                u = rng.random((len(p), 1))
                nxt = np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), V - 1)
                # (p has zeros after top-k; the min guards against cumsum rounding below u)
                idx = np.concatenate([idx, nxt[:, None].astype(np.int64)], axis=1)
        self.train(was_training)
        return idx

    def generate_text(self, corpus, n_chars, rng=None, prompt="\n", temperature=0.8,
                      top_k=None):
        """``prompt`` followed by ``n_chars`` sampled characters, decoded with ``corpus``."""
        out = self.generate(corpus.encode(prompt)[None], n_chars, temperature, top_k, rng)
        return corpus.decode(out[0])


def build_gpt(corpus, **overrides):
    """A ``CharGPT`` for a ``TextCorpus``: vocab_size from the corpus, ``overrides`` set other
    fields of ``GPTConfig`` (and may include ``rng``)."""
    rng = overrides.pop("rng", None)
    return CharGPT(GPTConfig(vocab_size=corpus.vocab_size, **overrides), rng=rng)


# ------------------------------------------------------------------------------------------
# ARModel
# ------------------------------------------------------------------------------------------

@dataclass
class ARConfig:
    order: int = 3            # p, the number of lags a_1..a_p (data.ar's default process: 3)
    bias: bool = True         # learn the intercept b (0 for the zero-mean data.ar process)


class ARModel(SSLMethod):
    """Linear AR(p) model trained by next-value prediction:

        x_hat_t = sum_{k=1..p} a_k x_{t-k} + b = Linear(p, 1)([x_{t-1}, ..., x_{t-p}])
        L = mean_t (x_hat_t - x_t)^2

    ``linear.weight[0, k - 1]`` is a_k. The loss is a convex quadratic, so gradient descent
    converges to the least-squares estimate (``least_squares``), which for a Gaussian AR
    process is the conditional maximum-likelihood estimate and tends to the true
    coefficients as the series grows. Weights start at zero (the problem is convex: no
    symmetry to break).
    """

    name = "ar"
    data_kind = "series"

    def __init__(self, config=None, dtype=None):
        super().__init__()
        self.config = c = config or ARConfig()
        if c.order < 1:
            raise ValueError(f"ARModel: order must be >= 1, got {c.order}")
        self.linear = nn.Linear(c.order, 1, bias=c.bias, dtype=dtype)
        self.linear.weight.data[...] = 0
        if c.bias:
            self.linear.bias.data[...] = 0

    def training_data(self, series):
        """The realisations of an ``ARSeries`` (n_series, length): each step gets a few."""
        return series.series

    @staticmethod
    def lagged(x, p):
        """Regression problem of a batch of series x (B, L): lags (B (L - p), p) with
        column k - 1 = x_{t-k}, and targets (B (L - p),) = x_t, for t = p..L-1."""
        xp = get_array_module(x)
        if x.ndim != 2 or x.shape[1] <= p:
            raise ValueError(f"ARModel: expected series (B, L) with L > order {p}, got shape "
                             f"{tuple(x.shape)}")
        L = x.shape[1]
        lags = xp.stack([x[:, p - k:L - k] for k in range(1, p + 1)], axis=-1)  # (B, L-p, p)
        return lags.reshape(-1, p), x[:, p:].reshape(-1)

    def training_step(self, batch, rng=None):
        p = self.config.order
        x = dist.shard(batch.data if isinstance(batch, Tensor) else batch)   # this rank's rows
        lags, y = self.lagged(x, p)                             # (M, p), (M,)
        pred = self.linear(self.as_input(lags)).reshape(-1)     # (M,)
        loss = F.mse_loss(pred, self.as_input(y))
        return loss, {}

    def predict(self, x):
        """One-step-ahead predictions x_hat_t for t = p..L-1 of series x (N, L): (N, L - p)."""
        p = self.config.order
        x = to_device(x.data if isinstance(x, Tensor) else x, "cpu")
        with no_grad():
            lags, _ = self.lagged(np.asarray(x, dtype=np.float64), p)
            out = self.linear(self.as_input(lags)).numpy()
        return out.reshape(len(x), -1)

    def features(self, x, batch_size=None):
        """The model's only learned representation of a series: its one-step-ahead
        predictions (N, L - p), float32."""
        return self.predict(x).astype(np.float32)

    @property
    def coefficients(self):
        """(a_1, ..., a_p) as a float64 host array."""
        return to_device(self.linear.weight.data[0], "cpu").astype(np.float64)

    @property
    def intercept(self):
        """b (0.0 without a bias)."""
        b = self.linear.bias
        return 0.0 if b is None else float(to_device(b.data, "cpu")[0])

    @staticmethod
    def least_squares(x, p, bias=True):
        """Closed-form ordinary least squares of the same regression on series x (N, L):
        ``(a, b)`` with a (p,) float64 and b a float (0.0 when ``bias`` is False)."""
        lags, y = ARModel.lagged(np.asarray(x, dtype=np.float64), p)
        if bias:
            lags = np.concatenate([lags, np.ones((len(lags), 1))], axis=1)
        sol = np.linalg.lstsq(lags, y, rcond=None)[0]
        return (sol[:p], float(sol[p])) if bias else (sol, 0.0)


def build_ar(series, **overrides):
    """An ``ARModel`` for an ``ARSeries`` (order = the process's order unless overridden)."""
    overrides.setdefault("order", series.order)
    return ARModel(ARConfig(**overrides))


def build(data, **overrides):
    """The autoregressive model for ``data``: an ``ARModel`` for an ``ARSeries`` (time series),
    a ``CharGPT`` for a ``TextCorpus``; ``overrides`` set fields of the model's config."""
    from ..data import ARSeries, TextCorpus
    if isinstance(data, ARSeries):
        return build_ar(data, **overrides)
    if isinstance(data, TextCorpus):
        return build_gpt(data, **overrides)
    raise TypeError(f"autoregressive.build: expected a TextCorpus or an ARSeries, got "
                    f"{type(data).__name__}")
