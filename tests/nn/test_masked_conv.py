"""MaskedConv2d: the masks of PixelCNN's table, a Conv2d's state_dict, zero gradients on the
masked taps, and each stack's receptive field checked exactly with autograd."""
import numpy as np
import pytest

import minissl as ms
from minissl import nn
from minissl.nn.masked_conv import causal_mask
from minissl.testing import assert_gradcheck


def receptive_field(conv, shape, i, j):
    """The input pixels (as a set of (row, col)) whose value reaches output pixel (i, j)."""
    x = ms.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32),
                  requires_grad=True)
    conv(x)[0, :, i, j].sum().backward()
    return {tuple(p) for p in np.argwhere(np.abs(x.grad[0]).sum(axis=0) > 0)}


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("stack", ["full", "vertical", "horizontal"])
def test_each_stack_reads_what_the_table_says(mask_type, stack):
    conv = nn.MaskedConv2d(2, 3, (5, 3), mask_type, stack, rng=0)
    i, j = 4, 3
    got = receptive_field(conv, (1, 2, 9, 7), i, j)
    rows = range(i - 2, i + 3)
    cols = range(j - 1, j + 2)
    before = {(r, c) for r in rows for c in cols if (r, c) < (i, j)}   # raster order
    if stack == "vertical":
        want = {(r, c) for r in rows for c in cols if r < i or (mask_type == "B" and r == i)}
    elif stack == "horizontal":
        want = {(i, c) for c in cols if c < j or (mask_type == "B" and c == j)}
    else:
        want = before | ({(i, j)} if mask_type == "B" else set())
    assert got == want
    if stack != "vertical":        # only the vertical stack of type B reads later pixels
        assert all(p <= (i, j) for p in got)


def test_masks_and_layout():
    np.testing.assert_array_equal(causal_mask((3, 3), "A"), [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(causal_mask((3, 3), "B"), [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    conv = nn.MaskedConv2d(3, 4, 3, "A", rng=1)
    plain = nn.Conv2d(3, 4, 3, padding=1, rng=1)
    assert list(conv.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    assert conv.weight.shape == plain.weight.shape == (4, 3, 3, 3)
    np.testing.assert_array_equal(conv.weight.numpy()[:, :, 1, 1:], 0)   # zero from the start
    x = ms.tensor(np.ones((2, 3, 5, 5), np.float32))
    conv(x).sum().backward()
    assert np.all(conv.weight.grad[:, :, 2] == 0) and np.all(conv.weight.grad[:, :, 1, 1:] == 0)
    assert np.all(conv.weight.grad[:, :, 0] != 0)
    plain.load_state_dict(conv.state_dict())        # the same tensors, loadable both ways
    assert "mask_type='A', stack='full'" in repr(conv)


def test_bad_arguments():
    with pytest.raises(ValueError, match="MaskedConv2d: mask_type must be one of"):
        nn.MaskedConv2d(1, 2, 3, "C")
    with pytest.raises(ValueError, match="MaskedConv2d: mask_type.*stack one of"):
        nn.MaskedConv2d(1, 2, 3, "A", "diagonal")
    with pytest.raises(ValueError, match="MaskedConv2d: kernel_size must be odd"):
        nn.MaskedConv2d(1, 2, (3, 4))


@pytest.mark.parametrize("stack", ["full", "vertical", "horizontal"])
def test_gradcheck(stack):
    conv = nn.MaskedConv2d(2, 3, 3, "A", stack, rng=2).double()
    x = ms.tensor(np.random.default_rng(3).standard_normal((2, 2, 4, 5)), requires_grad=True)
    assert_gradcheck(lambda x, w, b: conv(x), x, conv.weight, conv.bias)
