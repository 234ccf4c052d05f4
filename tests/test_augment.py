"""Tests of minissl.augment: exact identities, reference implementations, statistics, seeds."""
import colorsys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl import augment as A
from minissl.backend import to_device

TRANSFORMS = {
    "RandomResizedCrop": lambda: A.RandomResizedCrop(8),
    "RandomShift": lambda: A.RandomShift(2),
    "RandomHorizontalFlip": lambda: A.RandomHorizontalFlip(0.5),
    "RandomRotation": lambda: A.RandomRotation(30),
    "Rotate90": lambda: A.Rotate90(),
    "GaussianNoise": lambda: A.GaussianNoise(0.1),
    "GaussianBlur": lambda: A.GaussianBlur(3),
    "ColorJitter": lambda: A.ColorJitter(0.4, 0.4, 0.4, 0.1),
    "RandomGrayscale": lambda: A.RandomGrayscale(0.5),
    "PixelDropout": lambda: A.PixelDropout(0.1),
    "RandomApply": lambda: A.RandomApply(A.GaussianBlur(3), 0.5),
    "digits_simclr": A.digits_simclr,
    "image_simclr": lambda: A.image_simclr(8),
}


def _images(shape=(16, 3, 8, 8), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).random(shape).astype(dtype)


def _run(t, x, seed):
    return t(x, np.random.default_rng(seed))


# ----------------------------------------------------------------- contract of every transform

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_shape_dtype_seed_and_no_mutation(name, dtype):
    t = TRANSFORMS[name]()
    x = _images(dtype=dtype)
    before = x.copy()
    y = _run(t, x, 1)
    assert y.shape == x.shape and y.dtype == dtype
    assert np.array_equal(x, before)  # the input is not modified
    assert y is not x
    assert np.array_equal(_run(t, x, 1), y)  # the seed fixes the output
    assert not np.array_equal(_run(t, x, 2), y)  # and another seed changes it
    assert np.all(np.isfinite(y))


@given(b=st.integers(0, 4), c=st.sampled_from([1, 3]), h=st.integers(4, 11),
       w=st.integers(4, 11), name=st.sampled_from(sorted(TRANSFORMS)))
def test_any_batch_shape(b, c, h, w, name):
    x = _images((b, c, h, w), seed=b + h)
    if name == "Rotate90":
        x = x[..., :min(h, w), :min(h, w)]  # odd quarter turns need square images
    y = _run(TRANSFORMS[name](), x, 0)
    expected = (b, c, 8, 8) if name in ("RandomResizedCrop", "image_simclr") else x.shape
    assert y.shape == expected and y.dtype == x.dtype


def test_same_results_on_every_device(device):
    """Parameters are drawn on the host, so a seed gives the same views on CPU and GPU."""
    x = _images()
    for name in sorted(TRANSFORMS):
        t = TRANSFORMS[name]()
        expected = _run(t, x, 3)
        got = to_device(_run(t, to_device(x, device), 3), "cpu")
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_bad_input_is_named():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"RandomRotation: expected an image batch of shape "
                                         r"\(B, C, H, W\), got \(3, 8, 8\)"):
        A.RandomRotation(10)(np.zeros((3, 8, 8), np.float32), rng)
    with pytest.raises(TypeError, match="GaussianBlur: expected floating-point images, got "
                                        "dtype uint8"):
        A.GaussianBlur(3)(np.zeros((1, 1, 8, 8), np.uint8), rng)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        A.RandomShift(1)(np.zeros((1, 1, 8, 8), np.float32), 0)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd"):
        A.GaussianBlur(4)
    with pytest.raises(ValueError, match="too large for images 2x8"):
        A.GaussianBlur(5)(np.zeros((1, 1, 2, 8)), rng)
    with pytest.raises(ValueError, match="p must be in"):
        A.PixelDropout(1.5)
    with pytest.raises(ValueError, match=r"hue must be in \[0, 0.5\]"):
        A.ColorJitter(hue=0.7)
    with pytest.raises(ValueError, match="hue must be a pair"):
        A.ColorJitter(hue=(-0.7, 0.1))
    with pytest.raises(ValueError, match="RandomApply: RandomResizedCrop turned"):
        A.RandomApply(A.RandomResizedCrop(4), p=1.0)(_images(), rng)


# --------------------------------------------------------------------------- geometric

def test_flip_is_an_exact_mirror_per_sample():
    x = _images((64, 2, 5, 7))
    y = _run(A.RandomHorizontalFlip(0.5), x, 0)
    flipped = np.array([np.array_equal(y[b], x[b, :, :, ::-1]) for b in range(64)])
    kept = np.array([np.array_equal(y[b], x[b]) for b in range(64)])
    assert np.all(flipped ^ kept)
    assert 16 < flipped.sum() < 48
    assert np.array_equal(_run(A.RandomHorizontalFlip(1.0), x, 0), x[..., ::-1])
    assert np.array_equal(_run(A.RandomHorizontalFlip(0.0), x, 0), x)


@given(st.integers(0, 5), st.integers(1, 6), st.lists(st.integers(-5, 5), min_size=5,
                                                        max_size=5))
def test_rot90_is_numpy_rot90_per_sample(b, side, ks):
    x = np.arange(b * 2 * side * side, dtype=np.float64).reshape(b, 2, side, side)
    k = np.array(ks[:b], dtype=np.int64)
    y = A.rot90(x, k)
    for i in range(b):
        assert np.array_equal(y[i], np.rot90(x[i], k[i], axes=(1, 2)))


def test_rotate90_fixed_and_random_quarters():
    x = _images((40, 1, 6, 6))
    assert np.array_equal(_run(A.Rotate90(3), x, 0), np.rot90(x, 3, axes=(2, 3)))
    y = _run(A.Rotate90(), x, 0)
    quarters = [next(k for k in range(4) if np.array_equal(y[b], np.rot90(x[b], k, (1, 2))))
                for b in range(40)]
    assert set(quarters) == {0, 1, 2, 3}
    rect = _images((2, 1, 4, 6))
    assert np.array_equal(A.rot90(rect, 2), rect[..., ::-1, ::-1])
    with pytest.raises(ValueError, match="odd multiples of 90 degrees need square"):
        A.rot90(rect, [1, 0])


def test_rotation_by_zero_is_identity_and_quarter_turns_match_rot90():
    x = _images((4, 3, 7, 7), dtype=np.float64)
    assert np.array_equal(_run(A.RandomRotation(0), x, 0), x)
    np.testing.assert_allclose(_run(A.RandomRotation((90, 90)), x, 0),
                               np.rot90(x, 1, axes=(2, 3)), atol=1e-12)
    np.testing.assert_allclose(_run(A.RandomRotation((-90, -90)), x, 0),
                               np.rot90(x, -1, axes=(2, 3)), atol=1e-12)
    rect = _images((2, 1, 4, 6), dtype=np.float64)  # a half turn maps the grid onto itself
    np.testing.assert_allclose(_run(A.RandomRotation((180, 180)), rect, 0),
                               rect[..., ::-1, ::-1], atol=1e-12)


def test_rotation_fills_zeros_and_interpolates_bilinearly():
    x = np.ones((1, 1, 9, 9))
    y = _run(A.RandomRotation((45, 45)), x, 0)
    assert y[0, 0, 4, 4] == pytest.approx(1.0) and y[0, 0, 0, 0] == 0.0  # corner from outside
    # A point rotated by 45 degrees, checked against the tent-weight formula by hand.
    x = _images((1, 1, 9, 9), dtype=np.float64)
    y = _run(A.RandomRotation((45, 45)), x, 0)
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    dy, dx = 6 - 4, 5 - 4  # output pixel (6, 5) relative to the centre (4, 4)
    r, q = 4 + dy * c + dx * s, 4 + dx * c - dy * s
    r0, q0 = int(np.floor(r)), int(np.floor(q))
    fr, fq = r - r0, q - q0
    expected = ((1 - fr) * (1 - fq) * x[0, 0, r0, q0] + (1 - fr) * fq * x[0, 0, r0, q0 + 1]
                + fr * (1 - fq) * x[0, 0, r0 + 1, q0] + fr * fq * x[0, 0, r0 + 1, q0 + 1])
    assert y[0, 0, 6, 5] == pytest.approx(expected, rel=1e-12)


def test_shift_by_zero_is_identity():
    x = _images()
    assert np.array_equal(_run(A.RandomShift(0), x, 0), x)


@pytest.mark.parametrize("max_shift", [1, 2])
def test_shift_is_a_zero_filled_translation(max_shift):
    x = _images((200, 2, 5, 6)) + 1.0  # no zeros in the input, so padding is recognisable
    y = _run(A.RandomShift(max_shift), x, 0)
    m = max_shift
    padded = np.pad(x, ((0, 0), (0, 0), (m, m), (m, m)))
    seen = set()
    for b in range(len(x)):
        matches = [(dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1)
                   if np.array_equal(y[b], padded[b, :, m - dy:m - dy + 5, m - dx:m - dx + 6])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == (2 * m + 1) ** 2  # every shift occurs


def test_bilinear_sample_counts_outside_as_zero():
    x = np.ones((1, 2, 4, 4))
    rows = np.array([[[-5.0, -1.0, -0.5, 0.0, 1.25, 3.0, 3.5, 4.0, 10.0]]])
    y = A.bilinear_sample(x, rows, np.ones_like(rows))
    np.testing.assert_allclose(y[0, :, 0], [[0, 0, 0.5, 1, 1, 1, 0.5, 0, 0]] * 2, atol=1e-15)
    x = _images((2, 3, 5, 6), dtype=np.float64)
    r, c = np.meshgrid(np.arange(5.0), np.arange(6.0), indexing="ij")
    grid = np.broadcast_to(r, (2, 5, 6)), np.broadcast_to(c, (2, 5, 6))
    assert np.array_equal(A.bilinear_sample(x, *grid), x)  # integer points are exact
    y = A.bilinear_sample(x, grid[0] + 0.25, grid[1])  # a quarter pixel down
    np.testing.assert_allclose(y[:, :, :4], 0.75 * x[:, :, :4] + 0.25 * x[:, :, 1:], atol=1e-12)


def test_resized_crop_of_the_full_image_is_the_image():
    x = _images((8, 3, 12, 12), dtype=np.float64)
    y = _run(A.RandomResizedCrop(12, scale=(1.0, 1.0), ratio=(1.0, 1.0)), x, 0)
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-12)


def test_resized_crop_halving_is_two_by_two_average():
    # With half-pixel centres, output pixel p samples input coordinate 2p + 1/2: the mean of
    # input pixels 2p and 2p + 1 in each direction.
    x = _images((3, 2, 8, 6), dtype=np.float64)
    y = A.resized_crop(x, [0] * 3, [0] * 3, [8] * 3, [6] * 3, (4, 3))
    pooled = x.reshape(3, 2, 4, 2, 3, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(y, pooled, atol=1e-12)


def test_resized_crop_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = _images((5, 3, 10, 9), dtype=np.float64)
    top, left = np.array([0, 2, 5, 1, 3]), np.array([0, 1, 4, 0, 2])
    height, width = np.array([10, 5, 3, 7, 1]), np.array([9, 8, 5, 2, 4])
    y = A.resized_crop(x, top, left, height, width, (7, 6))
    for b in range(5):
        crop = torch.from_numpy(x[b:b + 1, :, top[b]:top[b] + height[b],
                                  left[b]:left[b] + width[b]].copy())
        expected = torch.nn.functional.interpolate(crop, size=(7, 6), mode="bilinear",
                                                   align_corners=False)
        np.testing.assert_allclose(y[b], expected[0].numpy(), atol=1e-12)


def test_random_resized_crop_boxes():
    t = A.RandomResizedCrop(8, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    top, left, h, w = t.get_params(20, 30, 500, np.random.default_rng(0))
    assert np.all((top >= 0) & (left >= 0) & (top + h <= 20) & (left + w <= 30))
    area = h * w / 600
    assert np.all((area > 0.2 - 0.05) & (area < 0.6 + 0.05))  # up to rounding of h, w
    assert np.all((w / h > 0.5 * 0.8) & (w / h < 2.0 * 1.25))
    assert len(set(zip(top, left))) > 100  # positions vary
    # No try can fit: the central crop with the closest allowed aspect ratio.
    t = A.RandomResizedCrop(4, scale=(1.0, 1.0), ratio=(2.0, 2.0))
    top, left, h, w = t.get_params(10, 10, 3, np.random.default_rng(0))
    assert np.all(h == 5) and np.all(w == 10) and np.all(top == 2) and np.all(left == 0)


# ------------------------------------------------------------------------------- filtering

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blur_keeps_a_constant_image(dtype):
    x = np.full((4, 3, 9, 7), 0.37, dtype=dtype)
    y = _run(A.GaussianBlur(5, sigma=(0.1, 3.0)), x, 0)
    np.testing.assert_allclose(y, x, rtol=1e-6 if dtype == np.float32 else 1e-13)


def test_blur_matches_a_direct_2d_convolution():
    x = _images((2, 2, 9, 8), dtype=np.float64)
    sigma, k = 1.3, 5
    y = _run(A.GaussianBlur(k, sigma=sigma), x, 0)
    t = np.arange(k) - k // 2
    g = np.exp(-t**2 / (2 * sigma**2))
    kernel = np.outer(g, g) / g.sum() ** 2
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    expected = np.zeros_like(x)
    for i in range(9):
        for j in range(8):
            expected[:, :, i, j] = np.sum(padded[:, :, i:i + k, j:j + k] * kernel, axis=(2, 3))
    np.testing.assert_allclose(y, expected, atol=1e-12)


def test_noise_has_the_requested_std():
    x = np.zeros((8, 3, 32, 32), np.float32)
    y = _run(A.GaussianNoise(0.1), x, 0)
    assert abs(y.std() / 0.1 - 1) < 0.02 and abs(y.mean()) < 0.002
    assert np.array_equal(_run(A.GaussianNoise(0.0), x + 0.5, 0), x + 0.5)


def test_pixel_dropout_rate_and_whole_pixels():
    x = _images((16, 3, 32, 32)) + 0.5
    y = _run(A.PixelDropout(0.1), x, 0)
    dropped = y == 0
    assert np.all(dropped.all(axis=1) == dropped.any(axis=1))  # all channels of a pixel
    rate = dropped[:, 0].mean()
    assert abs(rate - 0.1) < 0.01  # 16384 pixels: std of the rate is 0.0023
    assert np.array_equal(y[~dropped], x[~dropped])


# --------------------------------------------------------------------------------- colour

def test_hsv_matches_colorsys_and_round_trips():
    x = _images((3, 3, 4, 5), dtype=np.float64)
    x[0, :, 0, 0] = 0.5  # a grey pixel: hue and saturation 0
    x[0, :, 0, 1] = 0.0  # black
    hsv = A.rgb_to_hsv(x)
    for b, i, j in np.ndindex(3, 4, 5):
        np.testing.assert_allclose(hsv[b, :, i, j], colorsys.rgb_to_hsv(*x[b, :, i, j]),
                                   atol=1e-12)
    np.testing.assert_allclose(A.hsv_to_rgb(hsv), x, atol=1e-12)


def test_color_jitter_identities():
    x = _images()
    assert np.array_equal(_run(A.ColorJitter(), x, 0), x)
    red = np.zeros((1, 3, 2, 2))
    red[:, 0] = 1.0
    green = _run(A.ColorJitter(hue=(1 / 3, 1 / 3)), red, 0)
    np.testing.assert_allclose(green[0, :, 0, 0], [0, 1, 0], atol=1e-12)
    # Saturation 0 turns an image grey; contrast 0 turns it into its mean grey.
    grey = _run(A.ColorJitter(saturation=(0.0, 0.0)), x, 0)
    np.testing.assert_allclose(grey, np.repeat(A.rgb_to_grayscale(x), 3, axis=1), atol=1e-6)
    flat = _run(A.ColorJitter(contrast=(0.0, 0.0)), x, 0)
    means = A.rgb_to_grayscale(x).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(flat, np.broadcast_to(means[:, None, None, None], x.shape),
                               atol=1e-6)


def test_color_jitter_brightness_scales_each_image():
    x = _images(dtype=np.float64) * 0.5 + 0.1
    y = _run(A.ColorJitter(brightness=0.4), x, 0)
    ratio = y / x
    unclipped = y < 1.0
    for b in range(len(x)):
        r = ratio[b][unclipped[b]]
        assert np.allclose(r, r[0]) and 0.6 <= r[0] <= 1.4
    assert len({round(float(ratio[b].min()), 6) for b in range(len(x))}) > 1


def test_color_jitter_keeps_range_and_grey_images():
    x = _images()
    y = _run(A.ColorJitter(0.8, 0.8, 0.8, 0.2), x, 0)
    assert y.min() >= 0.0 and y.max() <= 1.0
    one_channel = _images((4, 1, 6, 6))
    assert np.array_equal(_run(A.ColorJitter(saturation=0.8, hue=0.3), one_channel, 0),
                          one_channel)


def test_random_grayscale():
    x = _images()
    y = _run(A.RandomGrayscale(1.0), x, 0)
    expected = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        np.testing.assert_allclose(y[:, c], expected, rtol=1e-6)
    assert np.array_equal(_run(A.RandomGrayscale(0.0), x, 0), x)
    grey = _images((4, 1, 8, 8))
    assert np.array_equal(_run(A.RandomGrayscale(1.0), grey, 0), grey)


# ---------------------------------------------------------------------------- composition

def test_random_apply_changes_only_the_chosen_samples():
    x = _images((64, 1, 6, 6))
    assert np.array_equal(_run(A.RandomApply(A.GaussianNoise(1.0), p=0.0), x, 0), x)
    assert np.array_equal(_run(A.RandomApply(A.Rotate90(1), p=1.0), x, 0),
                          np.rot90(x, 1, axes=(2, 3)))
    y = _run(A.RandomApply(A.Rotate90(2), p=0.5), x, 0)
    turned = np.array([np.array_equal(y[b], x[b, :, ::-1, ::-1]) for b in range(64)])
    kept = np.array([np.array_equal(y[b], x[b]) for b in range(64)])
    assert np.all(turned ^ kept) and 16 < turned.sum() < 48


def test_compose_applies_in_order():
    x = _images((4, 1, 5, 5))
    t = A.Compose([A.Rotate90(1), A.RandomHorizontalFlip(1.0)])
    y = _run(t, x, 0)
    assert np.array_equal(y, np.rot90(x, 1, axes=(2, 3))[..., ::-1])
    assert not np.array_equal(y, np.rot90(x[..., ::-1], 1, axes=(2, 3)))
    assert np.array_equal(_run(A.Compose([]), x, 0), x)
    assert "Rotate90(k=1)" in repr(t)


def test_two_views_are_independent_and_reproducible():
    x = _images((8, 1, 8, 8))
    v1, v2 = A.two_views(x, A.digits_simclr(), np.random.default_rng(0))
    assert v1.shape == v2.shape == x.shape and not np.allclose(v1, v2)
    w1, w2 = A.two_views(x, A.digits_simclr(), np.random.default_rng(0))
    assert np.array_equal(v1, w1) and np.array_equal(v2, w2)


def test_presets():
    digits = A.digits_simclr()
    assert [type(t).__name__ for t in digits.transforms] == [
        "RandomShift", "PixelDropout", "GaussianNoise"]
    assert (digits.transforms[0].max_shift, digits.transforms[1].p,
            digits.transforms[2].std) == (1, 0.1, 0.1)
    x = _images((16, 3, 32, 32))
    y = _run(A.image_simclr(24), x, 0)
    assert y.shape == (16, 3, 24, 24) and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0 + 1e-6  # every step keeps [0, 1]
    blur = A.image_simclr(32).transforms[-1].transform
    assert blur.kernel_size == 3 and A.image_simclr(224).transforms[-1].transform.kernel_size == 23
