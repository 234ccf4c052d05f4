"""Rotation prediction, RotNet (minissl/methods/rotation.py)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl import augment, optim
from minissl.backend import to_device
from minissl.methods.rotation import (RotNet, RotNetConfig, all_rotations, build,
                                      random_rotations)
from minissl.random import manual_seed


@pytest.fixture(scope="module")
def digits():
    data = pytest.importorskip("minissl.data")
    pytest.importorskip("sklearn")
    return data.digits()


@given(b=st.integers(1, 5), c=st.integers(1, 3), h=st.integers(1, 6), seed=st.integers(0, 99))
def test_all_rotations_labels_undo_the_rotation(b, c, h, seed):
    x = np.random.default_rng(seed).random((b, c, h, h)).astype(np.float32)
    x4, k = all_rotations(x)
    assert x4.shape == (4 * b, c, h, h) and k.shape == (4 * b,) and k.dtype == np.int64
    # Image-major, as the official loader: rows 4i..4i+3 are image i turned 0, 1, 2, 3 times.
    assert np.array_equal(k, np.tile(np.arange(4), b))
    assert np.array_equal(np.bincount(k, minlength=4), [b] * 4)        # exactly 1/4 each
    back = augment.rot90(x4, -k)                                       # rotate back by label
    assert np.array_equal(back, np.repeat(x, 4, axis=0))
    for i in range(b):
        for r in range(4):
            assert np.array_equal(x4[4 * i + r], np.rot90(x[i], r, axes=(1, 2)))


def test_a_quarter_turn_is_counter_clockwise():
    """The official rotate_img(img, 90) is flipud(transpose(img)): counter-clockwise."""
    x = np.array([[1, 2], [3, 4]], np.float32)[None, None]
    x4, _ = all_rotations(x)
    assert np.array_equal(x4[1, 0], [[2, 4], [1, 3]])
    assert np.array_equal(x4[1, 0], np.flipud(x[0, 0].T))
    assert np.array_equal(x4[2, 0], [[4, 3], [2, 1]])
    assert np.array_equal(x4[3, 0], [[3, 1], [4, 2]])


def test_random_rotations_labels_undo_and_balance():
    rng = np.random.default_rng(0)
    x = rng.random((4000, 1, 3, 3)).astype(np.float32)
    xr, k = random_rotations(x, rng)
    assert np.array_equal(augment.rot90(xr, -k), x)
    frac = np.bincount(k, minlength=4) / len(k)
    # Binomial(4000, 1/4): std of a fraction 0.0068; 4 sigma.
    assert np.all(np.abs(frac - 0.25) < 0.028), frac


# (head, augmentation, required last/first loss ratio, required final rotation accuracy).
# Measured over 3 seeds: ratios 0.03 / 0.008 / 0.50 and accuracies 1.0 / 1.0 / 0.69-0.73.
CASES = [(None, False, 0.2, 0.95), (256, False, 0.2, 0.95), (256, True, 0.75, 0.5)]


@pytest.mark.parametrize("head_hidden,augment,ratio,accuracy", CASES)
def test_training_lowers_the_loss(head_hidden, augment, ratio, accuracy, digits, device):
    manual_seed(0)
    method = RotNet((1, 8, 8), RotNetConfig(head_hidden=head_hidden, augment=augment))
    method = method.to(device)
    x = to_device(digits.train_x[:64], device)
    opt = optim.Adam(method.trainable_parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    out, accs = [], []
    for _ in range(30):
        opt.zero_grad()
        loss, m = method.training_step(x, rng)
        loss.backward()
        opt.step()
        out.append(loss.item())
        accs.append(m["rotation_acc"])
    assert np.all(np.isfinite(out))
    assert abs(out[0] - np.log(4)) < 0.35                       # chance at initialisation
    assert np.mean(out[-3:]) < ratio * np.mean(out[:3]), out
    assert np.mean(accs[-3:]) > accuracy                        # the task is learnable
    assert all(0.0 <= a <= 1.0 for a in accs)


def test_augmentation_comes_before_the_rotation(digits):
    manual_seed(0)
    plain = build(digits, augment=False)
    assert plain.transform is None
    x = digits.train_x[:5]
    xr, k = plain.rotate(x, np.random.default_rng(0))
    assert np.array_equal(xr, all_rotations(x)[0]) and np.array_equal(k, all_rotations(x)[1])
    # With the default augmentation the four rows of an image are the same augmented image,
    # turned 0, 1, 2, 3 times: rotating back by the label gives four identical copies.
    method = build(digits)
    shifts = [t.max_shift for t in method.transform.transforms if hasattr(t, "max_shift")]
    assert shifts == [1]                                           # H // 8 = 1 on 8x8
    xr, k = method.rotate(x, np.random.default_rng(0))
    back = augment.rot90(xr, -k).reshape(5, 4, 1, 8, 8)
    assert np.array_equal(back, np.broadcast_to(back[:, :1], back.shape))
    assert not np.array_equal(back[:, 0], x)                       # it did augment
    big = RotNet((3, 32, 32))
    assert [t.max_shift for t in big.transform.transforms if hasattr(t, "max_shift")] == [4]


def test_one_random_rotation_per_image_mode(digits):
    manual_seed(0)
    method = build(digits, all_four=False)
    loss, m = method.training_step(digits.train_x[:32], np.random.default_rng(0))
    assert np.isfinite(loss.item())
    assert np.isclose(m["rotation_acc"] * 32, round(m["rotation_acc"] * 32))  # over B rows


def test_features_and_logits_shapes(digits):
    manual_seed(0)
    method = build(digits)
    assert method.features(digits.test_x[:10]).shape == (10, 256)
    assert method(digits.test_x[:10]).shape == (10, 4)
    linear = build(digits, head_hidden=None)
    assert [p.shape for p in linear.head.parameters()] == [(4, 256), (4,)]


def test_conv_encoder_on_rgb_images():
    manual_seed(0)
    method = RotNet((3, 12, 12))
    x = np.random.default_rng(0).random((3, 3, 12, 12), dtype=np.float32)
    loss, _ = method.training_step(x, np.random.default_rng(0))
    loss.backward()
    assert np.isfinite(loss.item())
    assert method.features(x).shape == (3, 128)


def test_bad_input_is_a_clear_error(digits):
    with pytest.raises(ValueError, match="square"):
        RotNet((1, 8, 6))
    with pytest.raises(ValueError, match="all_rotations: rotations by 90 degrees need square"):
        all_rotations(np.zeros((2, 1, 8, 6), np.float32))
    with pytest.raises(ValueError, match=r"all_rotations: expected images"):
        all_rotations(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"RotNet.training_step: expected images \(B, 1, 8, 8\)"):
        build(digits).training_step(np.zeros((4, 1, 7, 7), np.float32), np.random.default_rng(0))
