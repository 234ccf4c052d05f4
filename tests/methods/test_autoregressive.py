"""Autoregressive self-prediction: the causal character LM (CharGPT) and the linear AR model."""
import math

import numpy as np
import pytest

from minissl import data, optim
from minissl.methods import autoregressive as ar

TEXT = ("def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + b\n\n\n"
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n")


@pytest.fixture(scope="module")
def corpus():
    return data.TextCorpus.from_text(TEXT * 20, val_fraction=0.2)   # ~2.6k characters


def tiny_gpt(corpus, **kw):
    cfg = dict(block_size=16, n_layer=2, n_head=2, n_embd=32, rng=0)
    cfg.update(kw)
    return ar.build(corpus, **cfg)


def _mean_loss_drop(method, batch, steps, lr, device="cpu"):
    """Train on one fixed batch; the mean loss of the first and the last three steps."""
    opt = optim.Adam(method.trainable_parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = method.training_step(batch, np.random.default_rng(0))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.all(np.isfinite(losses))
    return np.mean(losses[:3]), np.mean(losses[-3:])


# ---------------------------------------------------------------------------- CharGPT

def test_gpt_training_lowers_loss(corpus, device):
    gpt = tiny_gpt(corpus).to(device)
    batch = ar.text_windows(corpus.train_ids, 17)[:16]            # (16, T + 1)
    first, last = _mean_loss_drop(gpt, batch, steps=15, lr=3e-3)
    assert last < first - 0.5, (first, last)


def test_gpt_initial_loss_is_log_vocab(corpus):
    # N(0, 0.02) weights make the logits nearly uniform: the loss starts at log V.
    gpt = tiny_gpt(corpus)
    loss = gpt.estimate_loss(corpus, "val", eval_iters=2, batch_size=8)
    assert abs(loss - math.log(corpus.vocab_size)) < 0.05


def test_gpt_batch_forms_agree(corpus):
    gpt = tiny_gpt(corpus)
    batch = ar.text_windows(corpus.train_ids, 17)[:4]
    a, _ = gpt.training_step(batch, None)
    b, _ = gpt.training_step((batch[:, :-1], batch[:, 1:]), None)
    assert a.item() == b.item()
    # Against a plain NumPy cross-entropy of the logits.
    logits = gpt(batch[:, :-1]).numpy().astype(np.float64)        # (B, T, V)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ref = -np.take_along_axis(logp, batch[:, 1:, None], axis=-1).mean()
    assert a.item() == pytest.approx(ref, rel=1e-5)


def test_gpt_is_causal(corpus, rng):
    gpt = tiny_gpt(corpus)
    idx = rng.integers(0, corpus.vocab_size, size=(3, 16))
    base = gpt(idx).numpy()
    for t in (0, 7, 15):
        changed = idx.copy()
        changed[:, t] = (changed[:, t] + 1) % corpus.vocab_size
        out = gpt(changed).numpy()
        np.testing.assert_allclose(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert np.abs(out[:, t:] - base[:, t:]).max() > 1e-4  # the future does see it


def test_gpt_generate_shapes_and_ids(corpus):
    gpt = tiny_gpt(corpus)
    prompt = corpus.encode("def ")[None].repeat(2, axis=0)         # (2, 4)
    out = gpt.generate(prompt, 30, rng=0)                          # past block_size: cropped
    assert out.shape == (2, 34) and out.dtype == np.int64
    assert (out[:, :4] == prompt).all()
    assert out.min() >= 0 and out.max() < corpus.vocab_size
    assert isinstance(corpus.decode(out[0]), str)
    # Seeded sampling is reproducible.
    np.testing.assert_array_equal(out, gpt.generate(prompt, 30, rng=0))
    assert gpt.generate(prompt, 0).shape == (2, 4)


def test_gpt_generate_top_k(corpus, rng):
    gpt = tiny_gpt(corpus)
    # Train a little so that the logits are far from uniform.
    batch = ar.text_windows(corpus.train_ids, 17)[:16]
    _mean_loss_drop(gpt, batch, steps=5, lr=3e-3)
    prompt = rng.integers(0, corpus.vocab_size, size=(4, 5))
    # top_k=1 is greedy decoding: each new token is the argmax given its prefix.
    out = gpt.generate(prompt, 6, top_k=1, rng=1)
    for t in range(5, 11):
        logits = gpt(out[:, max(0, t - 16):t]).numpy()[:, -1]
        np.testing.assert_array_equal(out[:, t], logits.argmax(-1))
    # top_k=3 only ever samples one of the 3 largest logits.
    out = gpt.generate(prompt, 1, top_k=3, temperature=5.0, rng=2)
    top3 = np.argsort(gpt(prompt).numpy()[:, -1], axis=-1)[:, -3:]
    assert all(out[b, -1] in top3[b] for b in range(4))


def test_gpt_features_and_bad_input(corpus, rng):
    gpt = tiny_gpt(corpus)
    x = rng.integers(0, corpus.vocab_size, size=(5, 16))
    f = gpt.features(x)
    assert f.shape == (5, 32) and f.dtype == np.float32 and np.isfinite(f).all()
    with pytest.raises(ValueError, match="token ids must lie in"):
        gpt(np.full((1, 4), corpus.vocab_size))
    with pytest.raises(ValueError, match="sequence length 17"):
        gpt(np.zeros((1, 17), dtype=np.int64))
    with pytest.raises(ValueError, match="int token ids"):
        gpt(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="temperature"):
        gpt.generate(x[:, :2], 1, temperature=0)


def test_gpt_state_dict_names(corpus):
    names = set(tiny_gpt(corpus).state_dict())
    assert {"wte.weight", "wpe.weight", "h.0.attn.qkv.weight", "h.1.mlp.2.weight",
            "ln_f.weight", "lm_head.weight"} <= names
    assert "lm_head.bias" not in names


def test_gpt_init_scales_residual_projections(corpus):
    gpt = ar.build(corpus, block_size=16, n_layer=8, n_head=2, n_embd=64, rng=0)
    sd = gpt.state_dict()
    assert sd["h.0.mlp.0.weight"].std() == pytest.approx(0.02, rel=0.05)
    assert sd["h.0.attn.proj.weight"].std() == pytest.approx(0.02 / 4, rel=0.1)  # sqrt(2*8)
    assert (sd["h.0.attn.qkv.bias"] == 0).all()


def test_text_helpers():
    ids = np.arange(10)
    np.testing.assert_array_equal(ar.text_windows(ids, 4), [[0, 1, 2, 3], [4, 5, 6, 7]])
    with pytest.raises(ValueError):
        ar.text_windows(ids, 11)
    assert ar.unigram_entropy(np.arange(8)) == pytest.approx(math.log(8))
    assert ar.unigram_entropy(np.zeros(5, dtype=np.int64)) == 0.0
    assert ar.unigram_entropy([0, 0, 1, 1]) == pytest.approx(math.log(2))


# ---------------------------------------------------------------------------- ARModel

def _fit_ar(series, steps=300, lr=0.05, **kw):
    model = ar.build(series, **kw)
    opt = optim.Adam(model.trainable_parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = model.training_step(series.series, None)
        loss.backward()
        opt.step()
    return model, loss.item()


@pytest.mark.parametrize("coefficients", [(0.6, -0.3, 0.2), (0.5, 0.3), (-0.7,)])
def test_ar_model_recovers_coefficients(coefficients):
    series = data.ar(n_series=64, length=256, coefficients=coefficients, seed=1)
    model, loss = _fit_ar(series)
    a_ls, b_ls = ar.ARModel.least_squares(series.series, series.order)
    # Gradient descent on the convex MSE reaches the least-squares solution ...
    np.testing.assert_allclose(model.coefficients, a_ls, atol=2e-3)
    assert model.intercept == pytest.approx(b_ls, abs=2e-3)
    # ... which, on 16k samples, is within a few standard errors (~0.01) of the truth.
    np.testing.assert_allclose(model.coefficients, coefficients, atol=0.04)
    assert abs(model.intercept) < 0.04
    assert loss == pytest.approx(1.0, abs=0.05)   # the innovation variance, noise_std = 1


def test_ar_model_lagged_matches_series_lagged(rng):
    series = data.ar(n_series=3, length=20, seed=0)
    X, y = ar.ARModel.lagged(series.series.astype(np.float64), 3)
    X_ref, y_ref = series.lagged()
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_ar_model_predict_and_errors():
    series = data.ar(n_series=4, length=50, seed=0)
    model, _ = _fit_ar(series, steps=50)
    pred = model.predict(series.series)
    assert pred.shape == (4, 47)
    X, _ = series.lagged()
    ref = X @ model.coefficients + model.intercept
    np.testing.assert_allclose(pred.reshape(-1), ref, rtol=1e-4, atol=1e-5)
    assert model.features(series.series).shape == (4, 47)
    with pytest.raises(ValueError, match="order 3"):
        model.training_step(np.zeros((2, 3), np.float32), None)
    with pytest.raises(ValueError, match="order must be"):
        ar.ARModel(ar.ARConfig(order=0))
    with pytest.raises(TypeError, match="TextCorpus or an ARSeries"):
        ar.build(np.zeros(3))


def test_registry_and_pretrain_loop(corpus):
    from minissl import methods
    from minissl.train import pretrain
    gpt = methods.build("gpt", corpus, block_size=16, n_layer=1, n_head=2, n_embd=16, rng=0)
    assert isinstance(gpt, ar.CharGPT) and gpt.data_kind == "text"
    windows = gpt.training_data(corpus)
    assert windows.shape[1] == 17 and windows.dtype == np.int64
    hist = pretrain(gpt, windows, epochs=2, batch_size=32, lr=3e-3, progress=False)
    assert hist[1]["loss"] < hist[0]["loss"] and "bits_per_char" in hist[0]
    series = data.ar(n_series=16, length=64, seed=0)
    model = methods.build("ar", series)
    assert isinstance(model, ar.ARModel) and model.data_kind == "series"
    hist = pretrain(model, model.training_data(series), epochs=20, batch_size=8, lr=0.05,
                    progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
