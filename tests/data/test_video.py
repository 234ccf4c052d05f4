"""The procedural video data set (minissl/data/video.py)."""
import numpy as np
import pytest

from minissl import data
from minissl.data.video import DIRECTION_NAMES, VideoDataset, moving_shapes


def test_shapes_dtypes_balance_and_seed():
    d = moving_shapes(n_train=40, n_test=16, frames=6, size=12, seed=3)
    assert isinstance(d, VideoDataset) and d.video_shape == (1, 6, 12, 12)
    assert d.train_x.dtype == np.float32 and d.train_y.dtype == np.int64
    assert 0.0 <= d.train_x.min() and d.train_x.max() <= 1.0
    assert np.bincount(d.train_y, minlength=8).tolist() == [5] * 8
    assert d.num_classes == 8 and d.class_names == DIRECTION_NAMES
    again = moving_shapes(n_train=40, n_test=16, frames=6, size=12, seed=3)
    np.testing.assert_array_equal(d.train_x, again.train_x)
    # The training clips do not depend on the size of the test split.
    np.testing.assert_array_equal(d.train_x, moving_shapes(40, 3, 6, 12, seed=3).train_x)
    assert data.load("moving_shapes", n_train=2, n_test=2).video_shape == (1, 8, 16, 16)


def test_the_figure_moves_in_the_labelled_direction_and_stays_inside():
    d = moving_shapes(n_train=64, n_test=0, frames=8, size=16, seed=0, noise=0.0)
    for clip, label in zip(d.train_x[:, 0], d.train_y):
        bg = np.median(clip[0])
        fig = np.abs(clip - bg) > 0.2                         # (T, H, W)
        assert fig.any(axis=(1, 2)).all()
        # Inside every frame: no frame cuts a piece off the figure (up to rasterisation).
        sizes = fig.sum(axis=(1, 2))
        assert sizes.min() >= 0.6 * sizes.max()
        rows, cols = np.indices(fig.shape[1:])
        cen = np.array([[rows[f].mean(), cols[f].mean()] for f in fig])   # (T, 2)
        dy, dx = cen[-1] - cen[0]
        angle = np.degrees(np.arctan2(-dy, dx)) % 360          # screen rows grow downwards
        want = 45 * label
        assert min(abs(angle - want), 360 - abs(angle - want)) < 25, (angle, label)


def test_bad_arguments_and_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="moving_shapes"):
        moving_shapes(size=4)
    with pytest.raises(ValueError, match="moving_shapes"):
        moving_shapes(frames=1)
    x, y = np.zeros((2, 1, 4, 8, 8), np.float32), np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="train_x must be a float32 .N, C, T, H, W."):
        VideoDataset("v", x[:, 0], y, x, y, 1, ["a"])
    with pytest.raises(ValueError, match="class names"):
        VideoDataset("v", x, y, x, y, 2, ["a"])
