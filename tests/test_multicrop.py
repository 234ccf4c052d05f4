"""minissl.multicrop: 2 global + K local views at two sizes."""
import numpy as np
import pytest

from minissl import augment, multicrop


def _images(n=5, c=3, s=32, seed=0):
    return np.random.default_rng(seed).random((n, c, s, s)).astype(np.float32)


@pytest.mark.parametrize("n_local", [0, 1, 6])
def test_image_multicrop_views_and_sizes(n_local):
    x = _images()
    views = multicrop.image_multicrop(32, n_local)(x, np.random.default_rng(0))
    assert len(views) == 2 + n_local
    assert all(v.shape == (5, 3, 32, 32) for v in views[:2])
    assert all(v.shape == (5, 3, 14, 14) for v in views[2:])        # round(32 * 96 / 224)
    assert all(v.dtype == np.float32 for v in views)
    assert multicrop.group_by_size(views) == [(0, 2)] + ([(2, 2 + n_local)] if n_local else [])


def test_views_are_seeded_and_distinct():
    x = _images()
    mc = multicrop.image_multicrop(32, 4)
    a = mc(x, np.random.default_rng(3))
    b = mc(x, np.random.default_rng(3))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[2], a[3])


def test_local_crops_cover_smaller_areas():
    # A ramp image: a crop's spread of values is about its side. Local crops (area <= 0.4)
    # span less of the ramp than global ones (area >= 0.4) on average.
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    x = np.broadcast_to(ramp, (64, 1, 32, 32)).copy()
    crop = multicrop.MultiCrop(augment.RandomResizedCrop(32, (0.4, 1.0)),
                               augment.RandomResizedCrop(14, (0.05, 0.4)), 2, 2)
    views = crop(x, np.random.default_rng(0))
    spread = [float(np.mean(v.max(axis=(1, 2, 3)) - v.min(axis=(1, 2, 3)))) for v in views]
    assert min(spread[:2]) > max(spread[2:])


def test_digits_multicrop_keeps_8x8():
    x = _images(4, 1, 8)
    views = multicrop.digits_multicrop(3)(x, np.random.default_rng(0))
    assert [v.shape for v in views] == [(4, 1, 8, 8)] * 5
    assert multicrop.group_by_size(views) == [(0, 5)]
    assert isinstance(multicrop.default_multicrop((1, 8, 8)).global_transform, augment.Compose)
    assert multicrop.default_multicrop((3, 32, 32), 2).n_local == 2


def test_view_pairs_skip_own_view():
    assert multicrop.view_pairs(2, 2) == [(0, 1), (1, 0)]
    assert multicrop.view_pairs(2, 4) == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    assert multicrop.local_size(224) == 96 and multicrop.local_size(32) == 14


def test_multicrop_rejects_bad_counts():
    g = augment.digits_simclr()
    with pytest.raises(ValueError, match="MultiCrop: need n_global >= 1"):
        multicrop.MultiCrop(g, g, 0, 2)
    with pytest.raises(ValueError, match="MultiCrop: need n_global >= 1"):
        multicrop.MultiCrop(g, g, 2, -1)
    with pytest.raises(ValueError, match="needs a local_transform"):
        multicrop.MultiCrop(g, None, 2, 1)
