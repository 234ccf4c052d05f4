"""VideoMAE: tubelets, tube masking, the loss and the CLI (minissl/methods/videomae.py)."""
import json

import numpy as np
import pytest

from minissl import cli, data, methods, optim
from minissl.autograd import tensor
from minissl.gradcheck import gradcheck
from minissl.methods.videomae import (TubeletEmbed, tubelet_embed, VideoMAE, VideoMAEConfig, mask_indices,
                                      random_token_mask, sinusoid_table, tube_mask,
                                      tubelet_patchify, tubelet_unpatchify)
from minissl.random import manual_seed

SMALL = dict(embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
             decoder_num_heads=2)


@pytest.fixture(scope="module")
def clips():
    return data.moving_shapes(n_train=16, n_test=8, frames=4, size=8, seed=0)


def test_tubelet_patchify_order_and_inverse():
    x = np.random.default_rng(0).random((2, 3, 4, 8, 8))
    tok = tubelet_patchify(x, 2, 4)
    assert tok.shape == (2, 2 * 2 * 2, 2 * 4 * 4 * 3)
    # Token 3 = time slice 0, row 1, column 1; its values in (frame, row, column, channel).
    want = x[0, :, 0:2, 4:8, 4:8].transpose(1, 2, 3, 0).reshape(-1)
    np.testing.assert_array_equal(tok[0, 3], want)
    # Token 4 = time slice 1, row 0, column 0.
    np.testing.assert_array_equal(tok[1, 4], x[1, :, 2:4, 0:4, 0:4].transpose(1, 2, 3, 0)
                                  .reshape(-1))
    np.testing.assert_array_equal(tubelet_unpatchify(tok, 2, 4, (3, 4, 8, 8)), x)
    with pytest.raises(ValueError, match="divisible"):
        tubelet_patchify(x, 3, 4)


def test_tubelet_embed_is_conv3d_with_kernel_equal_stride():
    manual_seed(0)
    emb = TubeletEmbed(2, 5, 2, 2, rng=0, dtype=np.float64)
    x = np.random.default_rng(1).random((1, 2, 4, 4, 4))
    out = emb(tensor(x)).numpy()                              # (1, 8, 5)
    w, b = emb.weight.numpy(), emb.bias.numpy()              # (5, 2, 2, 2, 2)
    n = 0
    for t in range(2):
        for i in range(2):
            for j in range(2):
                block = x[0, :, 2 * t:2 * t + 2, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                np.testing.assert_allclose(out[0, n], np.einsum("dctij,ctij->d", w, block) + b)
                n += 1
    w, b = tensor(w, requires_grad=True), tensor(b, requires_grad=True)
    assert gradcheck(lambda wt, bt: tubelet_embed(x, wt, bt), [w, b])


def test_sinusoid_table_values():
    t = sinusoid_table(3, 8)
    assert t.shape == (3, 8)
    np.testing.assert_allclose(t[0], [0, 1] * 4)
    np.testing.assert_allclose(t[1, :4], [np.sin(1), np.cos(1), np.sin(1 / 10000 ** (2 / 8)),
                                          np.cos(1 / 10000 ** (2 / 8))])


def test_tube_mask_hides_the_same_places_in_every_time_slice():
    noise = np.random.default_rng(0).random((5, 16))
    m = tube_mask(noise, 4, 14)
    assert m.shape == (5, 64)
    per_slice = m.reshape(5, 4, 16)
    assert (per_slice == per_slice[:, :1]).all() and (per_slice.sum(2) == 14).all()
    # The hidden places are those of the largest noise.
    np.testing.assert_array_equal(per_slice[:, 0] == 0, noise <= np.sort(noise, 1)[:, 1:2])
    r = random_token_mask(np.random.default_rng(1).random((5, 64)), 48)
    assert (r.sum(1) == 48).all() and not (r.reshape(5, 4, 16) == r.reshape(5, 4, 16)[:, :1]
                                           ).all()
    keep, restore = mask_indices(m)
    assert keep.shape == (5, 8) and (np.take_along_axis(m, keep, 1) == 0).all()
    assert (np.diff(keep, axis=1) > 0).all()                 # the visible tokens in order
    shuffled = np.argsort(m, axis=1, kind="stable")
    np.testing.assert_array_equal(np.take_along_axis(shuffled, restore, 1),
                                  np.tile(np.arange(64), (5, 1)))


def test_config_masks_counts(clips):
    tube = VideoMAE(clips.video_shape, VideoMAEConfig(patch_size=2, **SMALL))
    assert (tube.num_tokens, tube.num_masked) == (2 * 16, int(0.9 * 16))
    m = tube.masks(3, np.random.default_rng(0))
    assert (m.sum(1) == 2 * 14).all()
    frame = VideoMAE(clips.video_shape, VideoMAEConfig(patch_size=2, tubelet_size=1,
                                                       mask_type="random", mask_ratio=0.75,
                                                       **SMALL))
    assert frame.num_tokens == 64 and (frame.masks(3, 0).sum(1) == 48).all()
    with pytest.raises(ValueError, match="tubelet_size 3"):
        VideoMAE(clips.video_shape, VideoMAEConfig(tubelet_size=3))
    with pytest.raises(ValueError, match="mask_type"):
        VideoMAE(clips.video_shape, VideoMAEConfig(patch_size=2, mask_type="frames"))


def test_hidden_tubelets_do_not_reach_the_prediction(clips):
    """Changing the pixels of hidden tubelets changes nothing the model computes: the encoder
    sees the visible tokens only."""
    manual_seed(0)
    m = VideoMAE(clips.video_shape, VideoMAEConfig(patch_size=2, **SMALL))
    m.eval()
    x = clips.train_x[:3].astype(np.float64)
    mask = m.masks(3, np.random.default_rng(0))
    tok = tubelet_patchify(x, 2, 2)
    tok2 = tok + mask[:, :, None] * np.random.default_rng(1).random(tok.shape)
    x2 = tubelet_unpatchify(tok2, 2, 2, clips.video_shape).astype(np.float32)
    np.testing.assert_allclose(m(m.as_input(x.astype(np.float32)), mask).numpy(),
                               m(m.as_input(x2), mask).numpy(), rtol=1e-5, atol=1e-6)


def test_loss_decreases_and_baselines(clips):
    manual_seed(0)
    m = VideoMAE(clips.video_shape, VideoMAEConfig(patch_size=2, norm_pix=True, **SMALL))
    opt = optim.Adam(m.trainable_parameters(), lr=3e-3)
    x, out = clips.train_x, []
    for _ in range(30):
        opt.zero_grad()
        loss, _ = m.training_step(x, np.random.default_rng(0))
        loss.backward()
        opt.step()
        out.append(loss.item())
    assert np.mean(out[-5:]) < 0.7 * np.mean(out[:3])
    # norm_pix: predicting 0 (each tubelet's own mean) scores the mean square of standardised
    # values, (P - 1) / P up to the 1e-6 of the variance.
    P = 2 * 2 * 2
    assert m.baseline_mse(clips.test_x) == pytest.approx((P - 1) / P, rel=1e-3)
    assert m.reconstruction_mse(clips.test_x) == pytest.approx(
        m.reconstruction_mse(clips.test_x, batch_size=3))
    pred, mask = m.reconstruct(clips.test_x[:2])
    assert pred.shape == mask.shape == (2,) + clips.video_shape
    assert m.features(clips.test_x).shape == (8, m.num_tokens * 16)


def test_features_all_tokens_or_the_official_fc_norm_of_their_mean(clips):
    """pool="tokens": the encoder's output tokens in (time, row, column) order, so the probe
    sees when and where each was; pool="mean": VideoMAE's fine-tuning read-out, a LayerNorm
    (weight 1, bias 0, eps 1e-6) of the mean of the tokens before the encoder's last norm."""
    x = clips.test_x[:3]
    for pool in ("tokens", "mean"):
        manual_seed(0)
        m = VideoMAE(clips.video_shape, VideoMAEConfig(patch_size=2, pool=pool, **SMALL))
        f = m.features(x)
        assert f.shape == (3, m.feature_dim) and f.dtype == np.float32
        if pool == "tokens":
            assert m.feature_dim == m.num_tokens * 16
            want = m.encode(m.as_input(x)).numpy()                 # (3, N, D)
            np.testing.assert_allclose(f.reshape(3, m.num_tokens, 16), want, rtol=1e-6)
        else:
            assert m.feature_dim == 16
            h = m.encode(m.as_input(x), final_norm=False).numpy().astype(np.float64).mean(1)
            want = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + 1e-6)
            np.testing.assert_allclose(f, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pool must be 'tokens' or 'mean', got 'max'"):
        VideoMAE(clips.video_shape, VideoMAEConfig(patch_size=2, pool="max", **SMALL))


def test_baseline_without_norm_pix_fills_the_visible_mean(clips):
    m = VideoMAE(clips.video_shape, VideoMAEConfig(patch_size=2, norm_pix=False, **SMALL))
    x = clips.test_x.astype(np.float64)
    mask = m.masks(len(x), np.random.default_rng(m.eval_seed))
    tok = tubelet_patchify(x, 2, 2)
    visible = tok[mask == 0].reshape(len(x), -1).mean(1)
    err = ((tok - visible[:, None, None]) ** 2).mean(-1)
    assert m.baseline_mse(x) == pytest.approx((err * mask).sum() / mask.sum())


def test_cli_pretrain_eval_embed(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["pretrain", "videomae", "--data", "moving_shapes", "--epochs", "1",
                     "--limit", "32", "--batch-size", "16", "--set", "depth=1",
                     "--set", "decoder_depth=1", "--knn-every", "1", "--out", str(out),
                     "--no-progress"]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["test_mse"]) and 0 <= record["knn_acc"] <= 1
    ckpt = str(out / "checkpoint.npz")
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", ckpt, "--labels-per-class", "5",
                     "--draws", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "linear" and 0 <= result["accuracy"] <= 1
    assert cli.main(["eval", "--checkpoint", ckpt, "--protocol", "finetune"]) == 2
    assert "no separate encoder" in capsys.readouterr().err
    assert cli.main(["embed", "--checkpoint", ckpt, "--out", str(tmp_path / "e.npz")]) == 0
    with np.load(tmp_path / "e.npz") as z:
        # The default read-out: all 64 tokens of width 64.
        assert z["train_features"].shape == (2000, 64 * 64) and z["test_labels"].shape == (500,)


def test_cli_refuses_the_wrong_kind_of_data(tmp_path, capsys):
    assert cli.main(["pretrain", "videomae", "--data", "shapes", "--out",
                     str(tmp_path / "a")]) == 2
    assert "videomae trains on video, but 'shapes' is images" in capsys.readouterr().err
    assert cli.main(["pretrain", "mae", "--data", "moving_shapes", "--out",
                     str(tmp_path / "b")]) == 2
    assert "methods for video: videomae" in capsys.readouterr().err
