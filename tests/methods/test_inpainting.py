"""Inpainting and colourisation with a U-Net (minissl/methods/inpainting.py)."""
import os

import numpy as np
import pytest

from minissl import data, methods, optim
from minissl.autograd import tensor
from minissl.gradcheck import gradcheck
from minissl.methods.inpainting import (Colorization, ColorizationConfig, Inpainting,
                                        InpaintingConfig, UNet, luma, psnr, random_boxes)
from minissl.random import manual_seed


@pytest.fixture(scope="module")
def tiny_shapes():
    return data.shapes(n_train=16, n_test=8, size=16, seed=0)


def _losses(method, x, steps, lr=3e-3):
    opt = optim.Adam(method.trainable_parameters(), lr=lr)
    out = []
    for step in range(steps):
        opt.zero_grad()
        # The same masks each step: the decrease measures fitting, not luck of the draw.
        loss, _ = method.training_step(x, np.random.default_rng(0))
        loss.backward()
        opt.step()
        out.append(loss.item())
    assert np.all(np.isfinite(out))
    return np.array(out)


# ------------------------------------------------------------------------------ the pieces

def test_random_boxes_are_rectangles_of_the_asked_sides():
    rng = np.random.default_rng(0)
    m = random_boxes(200, (16, 12), rng, num_boxes=1, min_frac=0.25, max_frac=0.5)
    assert m.shape == (200, 1, 16, 12) and m.dtype == np.float32
    assert set(np.unique(m)) <= {0.0, 1.0}
    for mask in m[:, 0]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        h, w = len(rows), len(cols)
        assert 4 <= h <= 8 and 3 <= w <= 6                   # round(0.25 * 12) = 3
        assert mask.sum() == h * w                           # one filled rectangle
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
    # Every place a box fits is drawn: corners included, over enough draws.
    assert m[:, 0, 0, 0].any() and m[:, 0, -1, -1].any()


def test_random_boxes_is_a_function_of_the_seed_and_refuses_bad_sizes():
    a = random_boxes(5, (8, 8), np.random.default_rng(3), num_boxes=3)
    b = random_boxes(5, (8, 8), np.random.default_rng(3), num_boxes=3)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="random_boxes"):
        random_boxes(2, (8, 8), 0, min_frac=0.6, max_frac=0.5)


def test_luma_and_psnr_values():
    x = np.zeros((1, 3, 2, 2), np.float32)
    x[0, 0] = 1.0                                           # pure red
    np.testing.assert_allclose(luma(x), 0.299, rtol=1e-6)
    t = np.full((2, 3, 4, 4), 0.5)
    assert psnr(t + 0.1, t) == pytest.approx(20.0)          # MSE 0.01
    assert psnr(t, t) == pytest.approx(100.0)               # capped, not infinite
    two = np.stack([t[0] + 0.1, t[0] + 0.01])               # per image, then the mean
    assert psnr(two, t) == pytest.approx((20.0 + 40.0) / 2)
    with pytest.raises(ValueError, match="luma"):
        luma(np.zeros((1, 1, 2, 2)))


def test_unet_shapes_and_skips():
    manual_seed(0)
    net = UNet(4, 3, widths=(4, 8, 16))
    x = tensor(np.random.default_rng(0).random((2, 4, 8, 12)).astype(np.float32))
    assert net(x).shape == (2, 3, 8, 12)
    assert net.features(x).shape == (2, 16)
    assert [s.shape[1:] for s in net.encode(x)] == [(4, 8, 12), (8, 4, 6), (16, 2, 3)]
    with pytest.raises(ValueError, match="divisible by 4"):
        net(tensor(np.zeros((1, 4, 6, 8), np.float32)))


def test_unet_gradcheck():
    manual_seed(0)
    net = UNet(2, 1, widths=(2, 3)).to(dtype=np.float64)
    net.eval()   # BatchNorm with running statistics: a smooth function of its input
    x = tensor(np.random.default_rng(1).random((1, 2, 4, 4)), requires_grad=True)
    assert gradcheck(lambda t: net(t), [x], atol=1e-6)


# ------------------------------------------------------------------------------ inpainting

def test_inpainting_input_fills_only_the_hidden_pixels(tiny_shapes):
    m = methods.build("inpainting", tiny_shapes)
    x = tiny_shapes.train_x[:4]
    inputs, mask = m.corrupt(x, np.random.default_rng(0))
    assert inputs.shape == (4, 4, 16, 16) and mask.shape == (4, 1, 16, 16)
    np.testing.assert_array_equal(inputs[:, 3:], mask)      # the mask channel
    fill = tiny_shapes.train_x.mean(axis=(0, 2, 3))
    keep = np.broadcast_to(mask == 0, x.shape)
    np.testing.assert_array_equal(inputs[:, :3][keep], x[keep])
    hidden = np.broadcast_to(mask == 1, x.shape)
    np.testing.assert_allclose(inputs[:, :3][hidden],
                               np.broadcast_to(fill[None, :, None, None], x.shape)[hidden],
                               rtol=1e-6)


def test_inpainting_loss_is_the_squared_error_on_the_hidden_pixels(tiny_shapes):
    manual_seed(0)
    m = methods.build("inpainting", tiny_shapes, widths=(4, 8))
    x = tiny_shapes.train_x[:4]
    loss, _ = m.training_step(x, np.random.default_rng(5))
    inputs, mask = m.corrupt(x, np.random.default_rng(5))
    out = 1 / (1 + np.exp(-m.net(tensor(inputs)).numpy()))
    want = (((out - x) ** 2) * mask).sum() / (mask.sum() * 3)
    assert loss.item() == pytest.approx(want, rel=1e-4)


def test_inpainting_baseline_and_completion_keep_visible_pixels(tiny_shapes):
    m = methods.build("inpainting", tiny_shapes, widths=(4, 8))
    x = tiny_shapes.test_x
    mask = m.masks(len(x), np.random.default_rng(m.eval_seed))   # the figures' masks
    base = m.baseline(x)
    fill = tiny_shapes.train_x.mean(axis=(0, 2, 3))[None, :, None, None]
    np.testing.assert_allclose(base, x * (1 - mask) + fill * mask, rtol=1e-6)
    assert m.baseline_psnr(x) == pytest.approx(psnr(x * (1 - mask) + fill * mask, x))
    shown, done = m.complete(x)
    keep = np.broadcast_to(mask == 0, x.shape)
    np.testing.assert_array_equal(done[keep], x[keep])
    assert shown.shape == x.shape and m.psnr(x) == pytest.approx(psnr(done, x))


def test_inpainting_model_and_baseline_see_the_same_masks_in_any_batching(tiny_shapes):
    m = methods.build("inpainting", tiny_shapes, widths=(4, 8))
    x = tiny_shapes.test_x                                   # 8 images in batches of 3
    shown, _ = m.complete(x, batch_size=3)
    np.testing.assert_array_equal(shown, m.baseline(x))


def test_inpainting_loss_decreases(tiny_shapes):
    manual_seed(0)
    m = methods.build("inpainting", tiny_shapes, widths=(8, 16))
    out = _losses(m, tiny_shapes.train_x[:8], 40)
    assert out[-5:].mean() < 0.6 * out[:3].mean()


def test_inpainting_checks_its_input(tiny_shapes):
    with pytest.raises(ValueError, match="divisible by 4"):
        Inpainting((3, 10, 10), np.zeros(3), InpaintingConfig())
    with pytest.raises(ValueError, match="fill"):
        Inpainting((3, 16, 16), np.zeros(2))
    m = methods.build("inpainting", tiny_shapes, widths=(4, 8))
    with pytest.raises(ValueError, match=r"Inpainting.training_step.*\(B, 3, 16, 16\)"):
        m.training_step(np.zeros((4, 1, 16, 16), np.float32), 0)


# --------------------------------------------------------------------------- colourisation

def test_colorization_sees_the_luma_and_its_baseline_is_grey(tiny_shapes):
    m = methods.build("colorization", tiny_shapes, widths=(4, 8))
    x = tiny_shapes.test_x
    inputs, weight = m.corrupt(x, None)
    assert weight is None and inputs.shape == (8, 1, 16, 16)
    np.testing.assert_allclose(inputs[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1]
                               + 0.114 * x[:, 2], rtol=1e-5)
    grey = np.repeat(inputs, 3, axis=1)
    np.testing.assert_allclose(m.baseline(x), grey)
    assert m.baseline_psnr(x) == pytest.approx(psnr(grey, x))
    assert m.features(x).shape == (8, 8)


def test_colorization_loss_decreases_and_refuses_grey_images(tiny_shapes):
    manual_seed(0)
    m = methods.build("colorization", tiny_shapes, widths=(8, 16))
    out = _losses(m, tiny_shapes.train_x[:8], 40)
    assert out[-5:].mean() < 0.6 * out[:3].mean()
    with pytest.raises(ValueError, match="RGB"):
        Colorization((1, 8, 8), ColorizationConfig())


def test_both_on_cifar10_from_local_files(tmp_path):
    """CIFAR-10 from the binary files (tiny fake ones, as tests/data writes them)."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, 4, dtype=np.uint8)
        pixels = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
    d = data.cifar10(root=str(tmp_path))
    for name in ("inpainting", "colorization"):
        manual_seed(0)
        m = methods.build(name, d, widths=(4, 8))
        loss, _ = m.training_step(d.train_x[:4], np.random.default_rng(0))
        loss.backward()
        assert np.isfinite(loss.item())
        assert np.isfinite(m.psnr(d.test_x)) and np.isfinite(m.baseline_psnr(d.test_x))


# ------------------------------------------------------------------------------------- CLI

def test_pretrain_from_the_cli_logs_psnr_and_draws_the_picture(tmp_path):
    from minissl import cli
    out = tmp_path / "run"
    assert cli.main(["pretrain", "inpainting", "--data", "shapes", "--epochs", "1",
                     "--limit", "64", "--batch-size", "32", "--set", "widths=4,8",
                     "--out", str(out), "--no-progress"]) == 0
    import json
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["test_psnr"]) and np.isfinite(record["baseline_psnr"])
    pytest.importorskip("matplotlib")
    assert os.path.isfile(out / "reconstructions.png")
