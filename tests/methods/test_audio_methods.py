"""The audio methods: WaveNet, CPC and the denoising autoencoder of waveforms."""
import math
import wave

import numpy as np
import pytest

import minissl as ms
from minissl import data, methods
from minissl.gradcheck import gradcheck
from minissl import nn
from minissl.methods.cpc import CPC, ChannelNorm, CPCConfig
from minissl.methods.denoising_audio import add_noise, snr_db
from minissl.methods.wavenet import WaveNet, WaveNetConfig, marginal_nll

from .test_autoregressive import _mean_loss_drop   # mean loss of the first, last 3 steps


@pytest.fixture(scope="module")
def clips():
    return data.audio(n_per_class=4, clip_length=512, seed=0)     # 32 train, 8 test clips


def _tiny_wavenet(**kw):
    cfg = dict(residual_channels=4, dilation_channels=4, skip_channels=6, layers=3, stacks=2,
               quantization_channels=16, window=64)
    cfg.update(kw)
    return WaveNet(WaveNetConfig(**cfg))


def test_registry_data_kind_and_settings(clips):
    for name in ("wavenet", "cpc", "denoising_audio"):
        assert methods.data_kind(name) == "audio"
        assert methods.build(name, clips).data_kind == "audio"
    assert methods.config_class("wavenet") is WaveNetConfig


# ------------------------------------------------------------------------------ WaveNet

def test_wavenet_is_causal_exactly_with_its_receptive_field():
    # The gradient of output t reaches the inputs t - rf + 1 .. t, and nothing else: exactly
    # zero (not small) after t and before the receptive field.
    ms.random.manual_seed(0)
    net = _tiny_wavenet()
    rf, T, t = net.receptive_field, 40, 30
    assert rf == 2 + 2 * (1 + 2 + 4)
    e = ms.tensor(np.random.default_rng(0).standard_normal((1, 4, T)), requires_grad=True)
    net.double()
    net.skips(e)[:, :, t].sum().backward()
    reach = np.abs(e.grad).sum(axis=(0, 1))                          # (T,)
    assert (reach[t + 1:] == 0).all()
    assert (reach[:t - rf + 1] == 0).all()
    assert (reach[t - rf + 1:t + 1] > 0).all()


def test_wavenet_stepper_equals_the_parallel_network(rng):
    net = _tiny_wavenet()
    codes = rng.integers(0, 16, (1, 50))
    parallel = net.logits(ms.tensor(codes)).numpy()[0]               # (Q, T)
    step = net.stepper()
    sequential = np.stack([step(c) for c in codes[0]], axis=1)
    np.testing.assert_allclose(sequential, parallel, rtol=1e-4, atol=1e-5)


def test_wavenet_loss_is_the_nll_of_the_next_code(clips):
    net = _tiny_wavenet(window=10_000)                                # the whole clip
    x = clips.train_x[:3]
    loss, metrics = net.training_step(x, np.random.default_rng(0))
    codes = ms.functional.mu_law_encoding(x, 16).data
    logits = net.logits(ms.tensor(codes[:, :-1])).numpy().astype(np.float64)   # (B, Q, T-1)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ref = -np.take_along_axis(logp, codes[:, None, 1:], axis=1).mean()
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert net.nll(x) == pytest.approx(ref, rel=1e-5)
    assert metrics["bits_per_sample"] == pytest.approx(ref / math.log(2), rel=1e-5)


def test_wavenet_gradcheck():
    net = _tiny_wavenet(layers=2, stacks=1).double()
    e = ms.tensor(np.random.default_rng(1).standard_normal((2, 4, 9)), requires_grad=True)
    params = list(net.parameters())
    assert gradcheck(lambda e, *p: net.skips(e), [e] + params, mode="projection")


def test_wavenet_training_lowers_loss_and_beats_the_marginal(clips):
    ms.random.manual_seed(0)
    net = _tiny_wavenet(window=128)
    first, last = _mean_loss_drop(net, clips.train_x[:8], steps=40, lr=1e-2)
    assert last < first - 0.5, (first, last)
    assert marginal_nll(clips.train_x, clips.test_x, 16) < math.log(16)


def test_wavenet_generates_audio_and_writes_wav(tmp_path, clips):
    net = _tiny_wavenet()
    out = net.generate(100, np.random.default_rng(0))
    assert out.shape == (100,) and out.dtype == np.float32 and np.abs(out).max() <= 1
    again = net.generate(100, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)
    pytest.importorskip("matplotlib")
    written = net.save_examples(str(tmp_path), clips, seconds=0.01)
    with wave.open(written[0]) as w:
        assert (w.getframerate(), w.getnframes(), w.getsampwidth()) == (8000, 80, 2)
    with pytest.raises(ValueError, match="WaveNet.generate"):
        net.generate(0, np.random.default_rng(0))


# ---------------------------------------------------------------------------------- CPC

def test_cpc_shapes_and_minimum_length():
    net = CPC(CPCConfig(channels=4, context_layers=2, prediction_steps=3))
    n = net.min_length()
    assert net.frames(n) == 4 and net.frames(n - 1) == 3
    assert net.encode(np.zeros((2, n), np.float32)).shape == (2, 4, 4)
    with pytest.raises(ValueError, match=f"L >= {n}"):
        net.training_step(np.zeros((2, n - 1), np.float32))
    assert net.features(np.zeros((3, 1000), np.float32)).shape == (3, 4)


def test_cpc_context_is_causal(rng):
    net = CPC(CPCConfig(channels=4, context_layers=3, prediction_steps=2)).double()
    z = ms.tensor(rng.standard_normal((1, 4, 12)), requires_grad=True)
    net.aggregate(z)[:, :, 5].sum().backward()
    reach = np.abs(z.grad).sum(axis=(0, 1))
    assert (reach[6:] == 0).all() and (reach[:6] > 0).all()


@pytest.mark.parametrize("norm,negatives", [("channel", "batch"), ("none", "batch"),
                                            ("channel", "sequence")])
def test_cpc_gradcheck(rng, norm, negatives):
    net = CPC(CPCConfig(channels=3, context_layers=1, prediction_steps=2, norm=norm,
                        negatives=negatives)).double()
    x = ms.tensor(rng.standard_normal((2, net.min_length() + 40)) * 0.5)
    assert gradcheck(lambda x, *p: net.training_step(x.data)[0], [x] + list(net.parameters()),
                     mode="projection")


def test_cpc_channel_norm_normalises_each_frame_over_its_channels(rng):
    # CPC_audio's ChannelNorm: mean 0 and (biased) variance 1 over C, for every (b, t); the
    # encoder's scale is then fixed whatever the clip's loudness
    net = CPC(CPCConfig(channels=6, context_layers=1, prediction_steps=2)).double()
    assert isinstance(net.encoder[1], ChannelNorm) and isinstance(net.encoder[2], nn.ReLU)
    y = net.encoder[1](ms.tensor(rng.standard_normal((2, 6, 9)) * 5 + 3)).data
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=1), 1, atol=1e-4)
    assert len(CPC(CPCConfig(norm="none")).encoder) == 6
    with pytest.raises(ValueError, match="CPC: norm must be 'channel' or 'none'"):
        CPC(CPCConfig(norm="group"))


def test_cpc_sequence_negatives_never_see_the_other_clips(rng):
    # wav2vec's candidates: each clip is scored against its own frames only, so the loss of
    # a batch is the mean of its clips' losses; with the batch's frames it is not
    x = rng.standard_normal((3, 700)) * 0.5
    for negatives, alone in (("sequence", True), ("batch", False)):
        ms.random.manual_seed(0)
        net = CPC(CPCConfig(channels=4, context_layers=1, prediction_steps=2,
                            negatives=negatives)).double()
        whole = float(net.training_step(x)[0].data)
        each = np.mean([float(net.training_step(x[i:i + 1])[0].data) for i in range(3)])
        assert (abs(whole - each) < 1e-12) == alone, (negatives, whole, each)
    with pytest.raises(ValueError, match="CPC: negatives must be 'batch' or 'sequence'"):
        CPC(CPCConfig(negatives="queue"))


def test_cpc_training_lowers_loss(clips):
    ms.random.manual_seed(0)
    net = CPC(CPCConfig(channels=16, context_layers=2, prediction_steps=3))
    first, last = _mean_loss_drop(net, clips.train_x[:8], steps=30, lr=3e-3)
    assert last < first - 0.3, (first, last)



def test_cpc_starts_at_chance(rng):
    # CPC_audio scores a candidate by the MEAN over channels of prediction * candidate: at
    # init every candidate is about as likely, loss ~ log(B T). With the plain sum over 64
    # channels the init loss was 10.3 for log(B T) = 7.36 on the bench's batches, and Adam's
    # first steps went into shrinking those confident wrong scores, to the uniform loss.
    x = data.audio(n_per_class=2, clip_length=2048, seed=0).train_x[:16]
    for seed in range(3):
        ms.random.manual_seed(seed)
        net = CPC()
        T = net.frames(x.shape[1])
        loss = float(net.training_step(x)[0].data)
        assert abs(loss - math.log(len(x) * T)) < 0.2, (seed, loss, math.log(len(x) * T))
    with pytest.raises(ValueError, match="CPC: score must be 'mean' or 'sum'"):
        CPC(CPCConfig(score="dot"))


def test_cpc_logs_the_infonce_top1_of_each_step(rng):
    # the fraction of anchors whose positive z_{b,t+k} scores highest among the loss's
    # candidates, for every k: brute force here
    x = rng.standard_normal((3, 900)) * 0.5
    for negatives in ("batch", "sequence"):
        ms.random.manual_seed(0)
        net = CPC(CPCConfig(channels=4, context_layers=1, prediction_steps=3,
                            negatives=negatives)).double()
        _, metrics = net.training_step(x)
        z = net.encode_frames(x).data                                  # (B, C, T)
        B, C, T = z.shape
        p = net.predict(net.aggregate(net.encode_frames(x))).data.reshape(B, 3, C, T)
        for k in (1, 2, 3):
            hits = []
            for b in range(B):
                for t in range(T - k):
                    cands = [(b2, t2) for b2 in range(B) for t2 in range(T)
                             if negatives == "batch" or b2 == b]
                    scores = [p[b, k - 1, :, t] @ z[b2, :, t2] for b2, t2 in cands]
                    hits.append(cands[int(np.argmax(scores))] == (b, t + k))
            assert metrics[f"top1_k{k}"] == pytest.approx(np.mean(hits)), (negatives, k)


def test_cpc_features_are_the_encoders_time_averaged_frames(rng):
    # the probe reads z (see CPCConfig.features); "context" reads c
    x = rng.standard_normal((2, 800)).astype(np.float32) * 0.5
    net = CPC(CPCConfig(channels=4, context_layers=1, prediction_steps=2))
    z = net.encode_frames(x)
    np.testing.assert_allclose(net.features(x), z.data.mean(axis=2), rtol=1e-5, atol=1e-6)
    net = CPC(CPCConfig(channels=4, context_layers=1, prediction_steps=2, features="context"))
    c = net.aggregate(net.encode_frames(x))
    np.testing.assert_allclose(net.features(x), c.data.mean(axis=2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="CPC: features must be 'encoder' or 'context'"):
        CPC(CPCConfig(features="z"))

# ------------------------------------------------------------------------- denoising audio

def test_add_noise_hits_the_snr_and_snr_db(rng):
    x = rng.standard_normal((4, 20000)).astype(np.float32) * np.array([[0.1], [0.5], [1], [2]],
                                                                      np.float32)
    noisy = add_noise(x, np.array([0.0, 5.0, 10.0, 20.0]), rng)
    assert noisy.dtype == np.float32
    np.testing.assert_allclose(snr_db(x, noisy), [0, 5, 10, 20], atol=0.1)
    assert snr_db(x, x * 0.9).tolist() == pytest.approx([20.0] * 4)


def test_denoiser_starts_as_the_identity_and_learns(clips):
    ms.random.manual_seed(0)
    dae = methods.build("denoising_audio", clips, channels=8, dilations=(1, 2, 4))
    snr_in, snr_out = dae.snr_in_out(clips.test_x)
    assert snr_in == pytest.approx(5.0, abs=0.2) and snr_out == pytest.approx(snr_in)
    first, last = _mean_loss_drop(dae, clips.train_x[:8], steps=40, lr=3e-3)
    assert last < 0.7 * first, (first, last)
    assert dae.snr_in_out(clips.test_x)[1] > snr_in + 1.0
