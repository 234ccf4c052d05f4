"""Masking self-prediction: the masked language model (BERT 80/10/10) and the masked
autoencoder (MAE)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl import data, losses, optim
from minissl.autograd import Tensor
from minissl.methods import masked
from minissl.methods.autoregressive import text_windows

TEXT = ("import os\n\ndef walk(top):\n    for name in os.listdir(top):\n"
        "        yield os.path.join(top, name)\n\n")


@pytest.fixture(scope="module")
def corpus():
    return data.TextCorpus.from_text(TEXT * 30)                   # ~2.4k characters


@pytest.fixture(scope="module")
def digits():
    return data.digits()


@pytest.fixture(scope="module")
def digits64(digits):
    return digits.train_x[:64]                                     # (64, 1, 8, 8)


def tiny_mlm(vocab_size=20, **kw):
    cfg = dict(vocab_size=vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)
    cfg.update(kw)
    return masked.MaskedLM(masked.MaskedLMConfig(**cfg), rng=0)


def tiny_mae(image_shape=(1, 8, 8), **kw):
    cfg = dict(patch_size=2, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
               decoder_depth=1, decoder_num_heads=2)
    cfg.update(kw)
    return masked.MAE(image_shape, masked.MAEConfig(**cfg), rng=0)


def _train(method, batch, steps, lr):
    opt = optim.Adam(method.trainable_parameters(), lr=lr)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = method.training_step(batch, np.random.default_rng(0))  # same masks each step
        loss.backward()
        opt.step()
        out.append(loss.item())
    assert np.all(np.isfinite(out))
    return np.mean(out[:3]), np.mean(out[-3:])


# ---------------------------------------------------------------------------- MaskedLM

def test_mlm_masking_rule_in_distribution():
    V, B, T = 1000, 2000, 64
    mlm = tiny_mlm(vocab_size=V, block_size=T)
    ids = np.random.default_rng(1).integers(0, V, size=(B, T))
    inputs, targets = mlm.mask_tokens(ids, np.random.default_rng(2))
    chosen = targets != -100
    # Exactly round(0.15 T) = 10 chosen positions in every row, spread uniformly over T.
    assert (chosen.sum(1) == round(0.15 * T)).all()
    np.testing.assert_allclose(chosen.mean(0), 0.15, atol=0.035)   # 4 sigma of 2000 draws
    # Targets: the original token where chosen, ignore_index elsewhere; inputs untouched there.
    np.testing.assert_array_equal(targets[chosen], ids[chosen])
    np.testing.assert_array_equal(inputs[~chosen], ids[~chosen])
    # Among the 20000 chosen: 80 % [MASK], 10 % unchanged, 10 % a random token (which
    # equals the original with probability 1/V).
    n = chosen.sum()
    is_mask = inputs[chosen] == mlm.mask_id
    same = inputs[chosen] == ids[chosen]
    other = ~is_mask & ~same
    assert is_mask.sum() / n == pytest.approx(0.8, abs=0.01)
    assert same.sum() / n == pytest.approx(0.1 + 0.1 / V, abs=0.01)
    assert other.sum() / n == pytest.approx(0.1 * (1 - 1 / V), abs=0.01)
    # Random tokens are real tokens, uniform over [0, V) (never [MASK]).
    rand = inputs[chosen][other]
    assert rand.min() >= 0 and rand.max() < V
    assert rand.mean() == pytest.approx((V - 1) / 2, rel=0.05)
    assert (inputs[~chosen] != mlm.mask_id).all()


@pytest.mark.parametrize("T, n", [(1, 1), (3, 1), (10, 2), (32, 5)])
def test_mlm_number_of_chosen_positions(T, n):
    mlm = tiny_mlm()
    _, targets = mlm.mask_tokens(np.zeros((7, T), dtype=np.int64), 0)
    assert ((targets != -100).sum(1) == n).all()          # BERT: max(1, round(0.15 T))


def test_mlm_loss_is_cross_entropy_at_chosen_positions_only():
    mlm = tiny_mlm()
    ids = np.random.default_rng(0).integers(0, 20, size=(4, 32))
    loss, _ = mlm.training_step(ids, np.random.default_rng(5))
    inputs, targets = mlm.mask_tokens(ids, np.random.default_rng(5))   # the same draw
    logits = mlm(inputs).numpy().astype(np.float64)                    # (B, T, V)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    chosen = targets != -100
    ce = -np.take_along_axis(logp, np.where(chosen, targets, 0)[..., None], -1)[..., 0]
    assert loss.item() == pytest.approx(ce[chosen].mean(), rel=1e-5)
    assert abs(ce[chosen].mean() - ce.mean()) > 1e-4       # so the test can tell them apart


def test_mlm_training_lowers_loss(corpus, device):
    mlm = masked.build(corpus, block_size=32, n_layer=1, n_head=2, n_embd=32, rng=0)
    mlm.to(device)
    batch = text_windows(corpus.train_ids, 32)[:16]
    first, last = _train(mlm, batch, steps=15, lr=3e-3)
    assert last < first - 0.5, (first, last)


def test_mlm_is_bidirectional_and_features(rng):
    mlm = tiny_mlm()
    idx = rng.integers(0, 20, size=(2, 32))
    base = mlm(idx).numpy()
    changed = idx.copy()
    changed[:, -1] = (changed[:, -1] + 1) % 20
    assert np.abs(mlm(changed).numpy()[:, 0] - base[:, 0]).max() > 1e-5  # sees the future
    f = mlm.features(idx)
    assert f.shape == (2, 32) and np.isfinite(f).all()
    assert mlm.state_dict()["wte.weight"].shape == (21, 32)               # + [MASK]
    with pytest.raises(ValueError, match="token ids must lie in"):
        mlm.mask_tokens(np.full((1, 4), 20), 0)
    with pytest.raises(ValueError, match="mask_token_prob"):
        tiny_mlm(mask_token_prob=0.95, random_token_prob=0.1)


def test_two_phase_windows_short_then_full_at_the_same_ids_per_step():
    ids = np.arange(640)
    phases = masked.TwoPhaseWindows(ids, steps=10, block_size=64, batch_size=4,
                                    short_block=16, short_fraction=0.9)
    rng = np.random.default_rng(0)
    shapes = [phases(step, rng).shape for step in range(10)]
    assert phases.switch == 9 and shapes == [(16, 16)] * 9 + [(4, 64)]
    w = phases(0, np.random.default_rng(1))                  # whole non-overlapping windows
    assert (w[:, 0] % 16 == 0).all() and (np.diff(w, axis=1) == 1).all()
    one = masked.TwoPhaseWindows(ids, 10, 64, 4, short_fraction=0)
    assert one.switch == 0 and one(0, rng).shape == (4, 64)
    with pytest.raises(ValueError, match="short_block"):
        masked.TwoPhaseWindows(ids, 10, 64, 4, short_block=128)
    with pytest.raises(ValueError, match="short_fraction"):
        masked.TwoPhaseWindows(ids, 10, 64, 4, short_fraction=1.5)


# ---------------------------------------------------------------------------- MAE helpers

@given(B=st.integers(1, 3), C=st.sampled_from([1, 3]), p=st.sampled_from([1, 2, 4]),
       h=st.integers(1, 4), w=st.integers(1, 4))
def test_patchify_round_trip_and_layout(B, C, p, h, w):
    imgs = np.random.default_rng(0).random((B, C, h * p, w * p))
    x = masked.patchify(imgs, p)
    assert x.shape == (B, h * w, p * p * C)
    # The official layout: einsum('nchpwq->nhwpqc').
    ref = np.einsum("nchpwq->nhwpqc", imgs.reshape(B, C, h, p, w, p)).reshape(B, h * w, -1)
    np.testing.assert_array_equal(x, ref)
    # Patch (i, j) is the pixels imgs[:, :, i p:(i+1) p, j p:(j+1) p], channels innermost.
    i, j = h - 1, w - 1
    np.testing.assert_array_equal(
        x[:, i * w + j], imgs[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]
        .transpose(0, 2, 3, 1).reshape(B, -1))
    np.testing.assert_array_equal(masked.unpatchify(x, p, C, grid=(h, w)), imgs)


def test_patchify_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible by the patch size 3"):
        masked.patchify(np.zeros((1, 1, 8, 8)), 3)
    with pytest.raises(ValueError, match="do not form"):
        masked.unpatchify(np.zeros((1, 5, 4)), 2, 1)


@pytest.mark.parametrize("image_size, patch, L", [(8, 2, 16), (32, 4, 64), (12, 2, 36)])
def test_mae_random_masking(image_size, patch, L):
    mae = tiny_mae((1, image_size, image_size), patch_size=patch)
    B = 5
    ids_keep, mask, ids_restore = mae.random_masking(B, np.random.default_rng(3))
    K = L - round(0.75 * L)
    assert mae.num_patches == L and ids_keep.shape == (B, K)
    assert mask.shape == ids_restore.shape == (B, L)
    assert (mask.sum(1) == round(0.75 * L)).all()                 # exactly 75 % per sample
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert (np.take_along_axis(mask, ids_keep, 1) == 0).all()     # kept = unmasked
    # The same noise, sorted: ids_keep is its first K, ids_restore inverts the shuffle.
    ids_shuffle = np.argsort(np.random.default_rng(3).random((B, L)), axis=1)
    np.testing.assert_array_equal(ids_keep, ids_shuffle[:, :K])
    np.testing.assert_array_equal(np.take_along_axis(ids_shuffle, ids_restore, 1),
                                  np.broadcast_to(np.arange(L), (B, L)))
    # Unshuffling [kept ; removed] with ids_restore puts every patch back in place.
    x = np.random.default_rng(0).random((B, L, 3))
    shuffled = np.take_along_axis(x, ids_shuffle[..., None], 1)
    np.testing.assert_array_equal(np.take_along_axis(shuffled, ids_restore[..., None], 1), x)
    # Per-sample: the masks of different samples differ.
    assert len({tuple(m) for m in mask}) > 1


def test_sincos_pos_embed():
    e = masked.sincos_pos_embed_2d(8, 3)                           # (9, 8)
    assert e.shape == (9, 8)
    np.testing.assert_allclose(e[0], [0, 0, 1, 1, 0, 0, 1, 1])     # position (0, 0)
    # Column index in the first half, row index in the second (patch 1 = row 0, column 1).
    np.testing.assert_allclose(e[1, :4], [np.sin(1), np.sin(0.01), np.cos(1), np.cos(0.01)])
    np.testing.assert_allclose(e[1, 4:], [0, 0, 1, 1])
    np.testing.assert_allclose(e[3, :4], e[0, :4])                 # row 1, column 0
    assert len({tuple(r) for r in e.round(6)}) == 9


def test_build_picks_patch_size(digits):
    assert masked.choose_patch_size(8) == 2
    assert masked.choose_patch_size(32) == 4
    assert masked.choose_patch_size(28) == 4
    mae = masked.build(digits, embed_dim=16, depth=1, decoder_embed_dim=16, decoder_depth=1)
    assert mae.config.patch_size == 2 and mae.num_patches == 16 and mae.len_keep == 4
    shapes = data.shapes(n_train=10, n_test=10, size=32)
    m = masked.build(shapes, embed_dim=16, depth=1, decoder_embed_dim=16, decoder_depth=1)
    assert m.config.patch_size == 4 and m.num_patches == 64 and m.image_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="square"):
        masked.MAE((1, 8, 6))
    with pytest.raises(ValueError, match="does not divide"):
        masked.MAE((1, 8, 8), masked.MAEConfig(patch_size=3))
    with pytest.raises(ValueError, match="none visible"):
        masked.MAE((1, 4, 4), masked.MAEConfig(patch_size=4, embed_dim=16, num_heads=2))


# ---------------------------------------------------------------------------- MAE

def test_mae_encoder_sees_only_visible_patches(digits64):
    mae = tiny_mae()
    x = digits64[:4].copy()
    pred, mask = mae(x, np.random.default_rng(7))
    # Change every removed patch: the prediction (encoder + decoder) must not move at all.
    mask_img = masked.unpatchify(np.repeat(mask[..., None], 4, axis=2), 2, 1)
    x_masked_changed = x + mask_img.astype(np.float32) * 0.5
    pred2, mask2 = mae(x_masked_changed, np.random.default_rng(7))
    np.testing.assert_array_equal(mask, mask2)
    np.testing.assert_array_equal(pred.numpy(), pred2.numpy())
    # Change a visible patch instead: now it does.
    pred3, _ = mae(x + (1 - mask_img.astype(np.float32)) * 0.5, np.random.default_rng(7))
    assert np.abs(pred3.numpy() - pred.numpy()).max() > 1e-4


def test_mae_decoder_unshuffles_tokens(digits64):
    # With no decoder blocks every position is decoded on its own, so the prediction at a
    # removed patch l must be that of (mask token + position l), and at a kept patch l that
    # of (its encoded patch + position l): this pins the ids_restore unshuffle.
    mae = tiny_mae(decoder_depth=0)
    x = digits64[:3]
    pred, mask = mae(x, np.random.default_rng(2))
    ids_keep, _, _ = mae.random_masking(3, np.random.default_rng(2))   # the same draw
    latent = mae.encoder.forward_tokens(mae.as_input(x), ids_keep)       # (B, K, D)
    pos = mae.decoder_pos_embed.numpy()[0]                                # (L, Dd)

    def decode(tokens):                                                   # (n, Dd) -> (n, P)
        return mae.decoder_pred(mae.decoder_norm(mae.as_input(tokens))).numpy()

    pred = pred.numpy()
    for b in range(3):
        removed = np.flatnonzero(mask[b])
        np.testing.assert_allclose(pred[b, removed],
                                   decode(mae.mask_token.numpy()[0] + pos[removed]),
                                   rtol=1e-5, atol=1e-6)
        kept = ids_keep[b]
        np.testing.assert_allclose(
            pred[b, kept], decode(mae.decoder_embed(latent[b]).numpy() + pos[kept]),
            rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_loss_counts_masked_patches_only(digits64, norm_pix):
    mae = tiny_mae(norm_pix=norm_pix)
    x = digits64[:8]
    loss, _ = mae.training_step(x, np.random.default_rng(4))
    rng = np.random.default_rng(4)                                 # the same draws:
    x = mae.transform(x, rng)                                      # crop and flip,
    pred, mask = mae(x, rng)                                       # then the masks
    target = masked.patchify(x.astype(np.float64), 2)
    if norm_pix:
        target = (target - target.mean(-1, keepdims=True)) / np.sqrt(
            target.var(-1, ddof=1, keepdims=True) + 1e-6)
    per_patch = ((pred.numpy().astype(np.float64) - target) ** 2).mean(-1)   # (B, L)
    ref = (per_patch * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert abs(ref - per_patch.mean()) > 1e-4        # visible patches would change it
    assert loss.item() == pytest.approx(
        losses.mae_loss(pred, Tensor(target.astype(np.float32)), mask).item(), rel=1e-5)


def test_mae_training_lowers_loss(digits64, device):
    mae = tiny_mae().to(device)
    first, last = _train(mae, digits64, steps=15, lr=2e-3)
    assert last < 0.6 * first, (first, last)


def test_mae_features_reconstruct(digits64):
    mae = tiny_mae()
    f = mae.features(digits64[:10])
    assert f.shape == (10, 32) and f.dtype == np.float32 and np.isfinite(f).all()
    np.testing.assert_array_equal(f, mae.features(digits64[:10]))  # no masking: deterministic
    prediction, mask_img, pasted = mae.reconstruct(digits64[:6], 0)
    assert prediction.shape == pasted.shape == (6, 1, 8, 8) and mask_img.shape == (6, 1, 8, 8)
    assert (mask_img.reshape(6, -1).sum(1) == 12 * 4).all()       # 12 of 16 patches, 4 px each
    vis = mask_img == 0
    np.testing.assert_array_equal(pasted[vis], digits64[:6][vis])
    np.testing.assert_array_equal(pasted[~vis], prediction[~vis])
    err = mae.reconstruction_mse(digits64[:6], 0)
    assert err == pytest.approx(float((((prediction - digits64[:6]) ** 2)[~vis]).mean()),
                                rel=1e-5)
    with pytest.raises(ValueError, match=r"expected images \(B, 1, 8, 8\)"):
        mae.training_step(np.zeros((2, 1, 8, 9), np.float32), 0)


def test_registry_and_pretrain_loop(corpus, digits):
    from minissl import methods
    from minissl.train import pretrain
    mlm = methods.build("mlm", corpus, block_size=16, n_layer=1, n_head=2, n_embd=16, rng=0)
    assert isinstance(mlm, masked.MaskedLM) and mlm.training_data(corpus).shape[1] == 16
    hist = pretrain(mlm, mlm.training_data(corpus), epochs=2, batch_size=32, lr=3e-3,
                    progress=False)
    assert np.isfinite(hist[-1]["loss"]) and "mlm_accuracy" in hist[-1]
    mae = methods.build("mae", digits, embed_dim=16, depth=1, num_heads=2,
                        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, rng=0)
    assert isinstance(mae, masked.MAE)
    hist = pretrain(mae, mae.training_data(digits)[:256], epochs=2, batch_size=64, lr=2e-3,
                    progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
