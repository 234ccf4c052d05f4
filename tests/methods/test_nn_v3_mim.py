"""NNCLR, MoCo v3 and SimMIM: each lowers its loss on tiny data; the stop-gradients hold (the
support set, the momentum network, the visible pixels); the support set and the momentum
follow their official updates; the state (queue, momentum) survives a state_dict round trip
and a killed-and-resumed CLI run bitwise."""
import json
import math

import numpy as np
import pytest

from minissl import cli, data, losses, methods, nn, optim, random
from minissl.autograd import no_grad
from minissl.methods import simmim
from minissl.methods.base import cosine_tau

import test_cli
from methods.test_contrastive import _steps
from test_cli import _interrupted_then_resumed, assert_same_state, losses_of

NEW = ["nnclr", "mocov3", "simmim"]
SMALL = {"nnclr": {"queue_size": 96},
         "mocov3": {"embed_dim": 16, "depth": 1, "num_heads": 2, "proj_hidden": 32},
         "simmim": {"embed_dim": 16, "depth": 1, "num_heads": 2}}


@pytest.fixture(scope="module")
def digits():
    return data.digits()


@pytest.mark.parametrize("name", NEW)
def test_registered_and_training_lowers_the_loss(name, digits):
    assert methods.data_kind(name) == "images" and methods.config_class(name) is not None
    random.manual_seed(0)
    m = methods.build(name, digits, **SMALL[name])
    x = digits.train_x[:32]
    losses = _steps(m, x, 20, lr=3e-3)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:3]) - 1e-3, losses
    f = m.features(x)
    assert f.shape[0] == 32 and f.dtype == np.float32 and np.isfinite(f).all()


# ----------------------------------------------------------------------------------- NNCLR

def test_nnclr_heads_and_support_set_as_solo_learn(digits):
    random.manual_seed(0)
    m = methods.build("nnclr", digits, queue_size=40, proj_hidden=16, proj_dim=8,
                      pred_hidden=12)
    kinds = [type(layer).__name__ for layer in m.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    assert [type(layer).__name__ for layer in m.predictor] == ["Linear", "BatchNorm1d",
                                                                 "ReLU", "Linear"]
    assert m.queue.shape == (40, 8)
    np.testing.assert_allclose(np.linalg.norm(m.queue.numpy(), axis=1), 1, rtol=1e-6)


def test_nnclr_neighbours_come_from_the_queue_and_get_no_gradient(digits):
    random.manual_seed(0)
    m = methods.build("nnclr", digits, queue_size=32, proj_dim=8)
    before = m.queue.numpy().copy()
    loss, metrics = m.training_step(digits.train_x[:16], np.random.default_rng(1))
    loss.backward()
    assert m.queue.grad is None and -1 <= metrics["nn_cos"] <= 1
    np.testing.assert_array_equal(m.queue.numpy(), before)      # untouched until step end
    # The enqueued rows are this step's normalised z1: a second lookup of the same views
    # finds them (cosine 1) once they are in the support set.
    m.on_step_end(0, 2)
    assert int(m.queue_ptr.numpy()[0]) == 16
    assert not np.array_equal(m.queue.numpy()[:16], before[:16])
    np.testing.assert_array_equal(m.queue.numpy()[16:], before[16:])
    np.testing.assert_allclose(np.linalg.norm(m.queue.numpy()[:16], axis=1), 1, rtol=1e-6)
    m.eval()   # batch-norm running statistics: the same z1 as a function of the input only
    with no_grad():
        _, metrics = m.training_step(digits.train_x[:16], np.random.default_rng(1))
    m.train()
    assert metrics["nn_cos"] > 0.5


def test_nnclr_queue_wraps(digits):
    random.manual_seed(0)
    m = methods.build("nnclr", digits, queue_size=20, proj_dim=8)
    for i in range(3):
        loss, _ = m.training_step(digits.train_x[:8], np.random.default_rng(i))
        m.on_step_end(i, 3)
    assert int(m.queue_ptr.numpy()[0]) == 24 % 20


# --------------------------------------------------------------------------------- MoCo v3

def test_mocov3_heads_and_frozen_patch_projection_as_official(digits):
    random.manual_seed(0)
    m = methods.build("mocov3", digits, **SMALL["mocov3"])
    kinds = [type(layer).__name__ for layer in m.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    assert all(layer.bias is None for layer in m.projector if type(layer) is nn.Linear)
    assert m.projector[-1].weight is None                           # affine=False
    # MoCo_ViT's predictor ends with BN(affine=False) too, MoCo_ResNet's does not.
    assert [type(layer).__name__ for layer in m.predictor] == ["Linear", "BatchNorm1d",
                                                                 "ReLU", "Linear", "BatchNorm1d"]
    assert m.predictor[-1].weight is None
    trained = {id(p) for p in m.trainable_parameters()}
    assert all(id(p) not in trained for p in m.encoder.patch_embed.parameters())
    assert all(id(p) not in trained for p in m.momentum_encoder.parameters())
    mlp = methods.build("mocov3", digits, encoder=nn.MLPEncoder(64, (32,)), feature_dim=32)
    assert sum(type(layer) is nn.Linear for layer in mlp.projector) == 2   # ResNet recipe
    assert type(mlp.predictor[-1]) is nn.Linear


def test_mocov3_momentum_network_moves_only_by_the_scheduled_ema(digits):
    random.manual_seed(0)
    m = methods.build("mocov3", digits, encoder=nn.MLPEncoder(64, (16,)), feature_dim=16,
                      proj_hidden=16, proj_dim=8, base_momentum=0.9)
    opt = optim.SGD(m.trainable_parameters(), lr=0.5)
    total = 4
    for step in range(total):
        online = [p.data.copy() for p in m.encoder.parameters()]
        target = [p.data.copy() for p in m.momentum_encoder.parameters()]
        mom = cosine_tau(0.9, step, total)
        assert float(m.momentum.numpy()[0]) == pytest.approx(mom, rel=1e-12)
        opt.zero_grad()
        loss, metrics = m.training_step(digits.train_x[:16], np.random.default_rng(step))
        loss.backward()
        assert all(p.grad is None for p in m.momentum_encoder.parameters())
        # Updated BEFORE the keys, from the online weights of before this step's SGD update.
        for t, o, new in zip(target, online, m.momentum_encoder.parameters()):
            np.testing.assert_allclose(new.data, mom * t + (1 - mom) * o, rtol=1e-5,
                                       atol=1e-7)
        opt.step()
        m.on_step_end(step, total)
    assert float(m.momentum.numpy()[0]) == pytest.approx(1.0)      # the cosine's end


def test_mocov3_loss_is_symmetric_and_2t_scaled(digits):
    random.manual_seed(0)
    m = methods.build("mocov3", digits, encoder=nn.MLPEncoder(64, (16,)), feature_dim=16,
                      proj_hidden=16, proj_dim=8, temperature=0.5)
    # With an all-zero predictor output, every logit is 0: each half is 2T log N.
    for layer in m.predictor:
        if type(layer) is nn.Linear:
            layer.weight.data[...] = 0
    loss, _ = m.training_step(digits.train_x[:16], np.random.default_rng(0))
    assert loss.item() == pytest.approx(2 * (2 * 0.5 * math.log(16)), rel=1e-5)


# ---------------------------------------------------------------------------------- SimMIM

def test_mask_generator_as_official():
    rng = np.random.default_rng(0)
    masks = simmim.mask_generator(rng, 5, 8, 4, 2, 0.6)           # 2x2 squares of 2x2 patches
    assert masks.shape == (5, 4, 4) and masks.dtype == np.int64
    assert (masks.reshape(5, -1).sum(1) == math.ceil(4 * 0.6) * 4).all()
    # Each 2x2 square is all masked or all visible.
    blocks = masks.reshape(5, 2, 2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(5, 4, 4)
    assert set(np.unique(blocks.sum(-1))) <= {0, 4}
    # The draws: one permutation per image, the first ceil(count * ratio) squares masked.
    again = np.random.default_rng(0)
    first = np.zeros(4, dtype=np.int64)
    first[again.permutation(4)[:3]] = 1
    np.testing.assert_array_equal(masks[0, ::2, ::2].reshape(-1), first)
    with pytest.raises(ValueError, match="mask_generator"):
        simmim.mask_generator(rng, 1, 8, 3, 1, 0.5)


def test_pixel_shuffle_as_torch_layout():
    x = np.arange(2 * 12 * 2 * 3, dtype=np.float64).reshape(2, 12, 2, 3)   # C=3, r=2
    got = simmim.PixelShuffle(2)(nn.Parameter(x)).numpy()
    want = np.empty((2, 3, 4, 6))
    for c in range(3):
        for i in range(2):
            for j in range(2):
                want[:, c, i::2, j::2] = x[:, c * 4 + i * 2 + j]
    np.testing.assert_array_equal(got, want)


def test_simmim_mask_token_replaces_masked_patches_only(digits):
    random.manual_seed(0)
    m = methods.build("simmim", digits, **SMALL["simmim"]).double()
    x = digits.train_x[:4].astype(np.float64)
    mask = np.zeros((4, 4, 4), dtype=np.int64)
    mask[:, :2] = 1
    base = m.reconstruct(x, mask).numpy()
    # The masked patches' pixels do not matter (the mask token stands in for them).
    x2 = x.copy()
    x2[:, :, :4] = 5.0
    np.testing.assert_allclose(m.reconstruct(x2, mask).numpy(), base, atol=1e-12)
    # Without a mask the token is unused: its gradient is zero.
    out = m.reconstruct(x, np.zeros_like(mask))
    out.sum().backward()
    assert np.abs(m.encoder.mask_token.grad).max() == 0


def test_simmim_loss_counts_masked_pixels_only(digits):
    random.manual_seed(0)
    m = methods.build("simmim", digits, **SMALL["simmim"]).double()
    m.transform = lambda x, rng: x                                 # no augmentation
    x = digits.train_x[:4].astype(np.float64)
    rng = np.random.default_rng(3)
    loss, _ = m.training_step(x, rng)
    mask = m.masks(4, np.random.default_rng(3))
    pix = mask.repeat(2, 1).repeat(2, 2)[:, None]
    rec = m.reconstruct(x, mask).numpy()
    want = (np.abs(rec - x) * pix).sum() / (pix.sum() + 1e-5)
    assert loss.item() == pytest.approx(want, rel=1e-10)


def test_simmim_with_norm_targets_predicts_the_standardised_pixels(digits):
    # norm_target_window: the official NORM_TARGET option; the loss is the L1 to the
    # standardised pixels, the reconstruction picture shows them as the target.
    random.manual_seed(0)
    m = methods.build("simmim", digits, norm_target_window=3, **SMALL["simmim"]).double()
    m.transform = lambda x, rng: x                                 # no augmentation
    x = digits.train_x[:4].astype(np.float64)
    loss, _ = m.training_step(x, np.random.default_rng(3))
    mask = m.masks(4, np.random.default_rng(3))
    pix = mask.repeat(2, 1).repeat(2, 2)[:, None]
    rec = m.reconstruct(x, mask).numpy()
    target = losses.simmim_norm_targets(x, 3)
    want = (np.abs(rec - target) * pix).sum() / (pix.sum() + 1e-5)
    assert loss.item() == pytest.approx(want, rel=1e-10)
    assert loss.item() != pytest.approx((np.abs(rec - x) * pix).sum() / (pix.sum() + 1e-5))
    rows, names = m.picture_rows(x, rng=0)
    np.testing.assert_allclose(rows[2], target.astype(np.float32), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="norm_target_window must be 0 or an odd number"):
        methods.build("simmim", digits, norm_target_window=4, **SMALL["simmim"])


def _small_cnn(in_channels=3):
    # bench_shapes.py's CNN, narrower: conv-BN-ReLU stem at stride 1, two stride-2 layers.
    layers, c = [], in_channels
    for w, s in zip((4, 8, 8), (1, 2, 2)):
        layers += [nn.Conv2d(c, w, 3, s, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.fixture(scope="module")
def shapes8():
    return data.shapes(n_train=16, n_test=4, size=8, seed=0)


def test_simmim_on_a_cnn_masks_at_the_stem_and_decodes_at_the_last_stride(shapes8):
    random.manual_seed(0)
    enc = _small_cnn()
    m = methods.build("simmim", shapes8, encoder=enc).double()
    assert m.encoder is enc and (m.patch_size, m.stride, m.mask_patch_size) == (1, 4, 4)
    assert m.mask_token.shape == (1, 4, 1, 1) and m.decoder[0].weight.shape == (48, 8, 1, 1)
    x = shapes8.train_x[:4].astype(np.float64)
    mask = np.zeros((4, 8, 8), dtype=np.int64)
    mask[:, :4, 4:] = 1                                           # one 4x4 square
    base = m.reconstruct(x, mask).numpy()
    # No pixel of the square reaches the encoder, not even through the rim of the stem's 3x3
    # windows beside it: the mask token stands in for all of them.
    x2 = x.copy()
    x2[:, :, :4, 4:] = 5.0
    np.testing.assert_allclose(m.reconstruct(x2, mask).numpy(), base, atol=1e-12)
    m.reconstruct(x, np.zeros_like(mask)).sum().backward()
    assert np.abs(m.mask_token.grad).max() == 0
    np.testing.assert_array_equal(m.features(x), enc.eval()(m.as_input(x)).numpy()
                                  .astype(np.float32))


def test_simmim_trains_a_resnet_encoder_from_the_cli(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["pretrain", "simmim", "--data", "shapes", "--image-size", "8", "--limit",
                     "32", "--batch-size", "16", "--epochs", "1", "--no-progress",
                     "--no-plots", "--encoder", "resnet", "--widths", "4,8",
                     "--out", str(out)]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["loss"]) and record["embedding_std"] > 0


@pytest.mark.parametrize("encoder,match", [
    (nn.MLPEncoder(192, (8,)), "SimMIM: a custom encoder must be an nn.ConvEncoder"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)),
     "SimMIM: the conv encoder must keep maps whose size divides")])
def test_simmim_rejects_an_encoder_it_cannot_mask(encoder, match, shapes8):
    with pytest.raises(ValueError, match=match):
        methods.build("simmim", shapes8, encoder=encoder)


# ------------------------------------------------------------------------ state round trip

@pytest.mark.parametrize("name", NEW)
def test_state_dict_round_trip_restores_queue_and_momentum(name, digits):
    random.manual_seed(0)
    a = methods.build(name, digits, **SMALL[name])
    _steps(a, digits.train_x[:16], 3)
    random.manual_seed(1)
    b = methods.build(name, digits, **SMALL[name])
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v, err_msg=k)
    la, _ = a.training_step(digits.train_x[:16], np.random.default_rng(5))
    lb, _ = b.training_step(digits.train_x[:16], np.random.default_rng(5))
    assert la.item() == lb.item()


@pytest.mark.parametrize("name", NEW)
def test_killed_cli_run_resumes_bitwise(name, tmp_path, monkeypatch, capsys):
    sets = [a for k, v in SMALL[name].items() for a in ("--set", f"{k}={v}")]
    extra = ["--data", "digits", "--batch-size", "32", "--limit", "64", *sets]
    monkeypatch.setattr(test_cli, "QUICK", ["--no-progress", "--seed", "3", "--no-plots"])
    resumed, straight = _interrupted_then_resumed(name, tmp_path, monkeypatch, extra=extra)
    assert_same_state(resumed / "checkpoint.npz", straight / "checkpoint.npz")
    assert losses_of(resumed) == losses_of(straight)


def test_cli_list_shows_the_settings(capsys):
    assert cli.main(["list", "mocov3"]) == 0
    out = capsys.readouterr().out
    assert "base_momentum" in out and "freeze_patch_embed" in out


@pytest.mark.parametrize("name,bad,match", [
    ("nnclr", {"temperature": 0.0}, "NNCLR: queue_size must be at least 1 and temperature"),
    ("nnclr", {"queue_size": 0}, "NNCLR: queue_size"),
    ("mocov3", {"base_momentum": 1.5}, "MoCoV3: temperature must be positive and base_mom"),
    ("mocov3", {"temperature": -1.0}, "MoCoV3: temperature"),
    ("simmim", {"mask_ratio": 1.0}, "SimMIM: mask_ratio"),
    ("simmim", {"mask_patch_size": 3}, "SimMIM: needs square images")])
def test_bad_settings_fail_at_build_with_the_method_named(name, bad, match, digits):
    with pytest.raises(ValueError, match=match):
        methods.build(name, digits, **bad)


@pytest.mark.parametrize("name", NEW)
def test_pretrains_on_shapes_from_the_cli_with_collapse_diagnostics(name, tmp_path, capsys):
    sets = [a for k, v in SMALL[name].items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / name
    assert cli.main(["pretrain", name, "--data", "shapes", "--image-size", "8", "--limit", "32",
                     "--batch-size", "16", "--epochs", "1", "--no-progress", "--no-plots",
                     "--out", str(out), *sets]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["loss"]) and record["embedding_std"] > 0
