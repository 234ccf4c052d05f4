"""gradcheck itself: it passes on correct gradients and catches wrong ones, in both modes."""
import numpy as np
import pytest
from hypothesis import given

import minissl as ms
from minissl.testing import (arrays, assert_gradcheck, broadcastable_shapes, shapes,
                             tensors)


class Square(ms.Function):
    """y = x^2 with a correct (scale=2) or a wrong gradient."""

    def __init__(self, scale=2.0, bad_index=None):
        self.scale, self.bad_index = scale, bad_index

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        gx = g * self.scale * self.x
        if self.bad_index is not None:      # one wrong element only
            gx = gx.copy()
            gx[self.bad_index] += 0.01
        return gx


class MulWrongSecond(ms.Function):
    """y = a * b whose gradient for b is wrong (it uses a + 0.1 in place of a)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        return g * self.b, g * (self.a + 0.1)


def x64(shape, seed=0, requires_grad=True):
    data = np.random.default_rng(seed).uniform(0.5, 1.5, shape)
    return ms.tensor(data, requires_grad=requires_grad)


@pytest.mark.parametrize("mode", ["full", "projection", "auto"])
def test_passes_on_correct_gradients(mode):
    a, b = x64((3, 4), 0), x64((4,), 1)
    assert ms.gradcheck(lambda a, b: (a * b).exp() / (1 + b), [a, b], mode=mode) is True
    assert ms.gradcheck(lambda a: Square()(a), [a], mode=mode) is True


@given(tensors(shape=shapes(max_dims=3, max_side=4)))
def test_passes_on_drawn_shapes_including_scalars_and_empty(x):
    assert_gradcheck(lambda x: (x * x.exp()).sum(), x, mode="full")
    assert_gradcheck(lambda x: x * x.exp(), x, mode="full")
    assert_gradcheck(lambda x: Square()(x), x, mode="projection")


def test_full_mode_names_the_input_the_element_and_both_values():
    a = x64((2, 3))
    with pytest.raises(ms.GradcheckError) as e:
        ms.gradcheck(lambda a: Square(bad_index=(1, 2))(a), [a], mode="full")
    msg = str(e.value)
    assert "input 0" in msg and "(1, 2)" in msg and "analytic" in msg and "numeric" in msg
    # The numbers in the message are the two values: numeric 2 a, analytic 2 a + 0.01.
    v = 2 * a.data[1, 2]
    assert repr(v)[:6] in msg or f"{v:.6}"[:6] in msg


def test_full_mode_names_the_second_input_when_it_is_wrong():
    a, b = x64((3,), 0), x64((3,), 1)
    with pytest.raises(ms.GradcheckError, match=r"input 1 .*element \(0,\)"):
        ms.gradcheck(lambda a, b: MulWrongSecond()(a, b), [a, b], mode="full")


def test_projection_mode_catches_a_wrong_gradient():
    a, b = x64((20, 30), 0), x64((20, 30), 1)
    with pytest.raises(ms.GradcheckError, match="projection.*analytic.*numeric"):
        ms.gradcheck(lambda a, b: MulWrongSecond()(a, b), [a, b], mode="projection")
    with pytest.raises(ms.GradcheckError, match="projection"):
        ms.gradcheck(lambda a: Square(scale=2.01)(a), [a], mode="projection")


def test_auto_mode_takes_projection_for_large_inputs_and_still_catches_errors():
    a = x64((200, 150))        # 30 000 inputs x 30 000 outputs: far too big for full mode
    with pytest.raises(ms.GradcheckError, match="projection"):
        ms.gradcheck(lambda a: Square(scale=1.99)(a), [a])
    assert ms.gradcheck(lambda a: Square()(a), [a]) is True


@pytest.mark.parametrize("mode", ["full", "projection"])
def test_ops_whose_output_is_a_view_of_the_input(mode):
    # The perturbed output must be read before the input is restored: a view would follow.
    x = x64((3, 4))
    assert ms.gradcheck(lambda x: x[1:, ::2], [x], mode=mode)
    assert ms.gradcheck(lambda x: x.reshape(4, 3).T, [x], mode=mode)
    with pytest.raises(ms.GradcheckError):
        ms.gradcheck(lambda x: Square(scale=2.5)(x)[1:], [x], mode=mode)


def test_inputs_that_do_not_require_grad_are_constants():
    a, c = x64((3,), 0), x64((3,), 1, requires_grad=False)
    assert ms.gradcheck(lambda a, c: a * c, [a, c], mode="full")
    # A wrong gradient for the constant input is never asked for, so it cannot fail.
    assert ms.gradcheck(lambda a, c: MulWrongSecond()(a, c), [a, c], mode="full")


def test_non_float64_input_raises_type_error():
    x = ms.tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="input 0.*float32.*float64"):
        ms.gradcheck(lambda x: x * 2, [x])


def test_bad_arguments_are_rejected():
    x = x64((3,))
    with pytest.raises(TypeError, match="not a Tensor"):
        ms.gradcheck(lambda x: x, [np.ones(3)])
    with pytest.raises(TypeError, match="must return a Tensor"):
        ms.gradcheck(lambda x: x.data, [x], mode="full")
    with pytest.raises(ValueError, match="unknown mode"):
        ms.gradcheck(lambda x: x * 2, [x], mode="fast")
    with pytest.raises(ms.GradcheckError, match="does not require grad"):
        ms.gradcheck(lambda x: ms.tensor(np.ones(2)), [x], mode="full")


def test_gradcheck_leaves_the_inputs_usable_and_clean():
    x = x64((2, 2))
    before = x.data.copy()
    ms.gradcheck(lambda x: Square()(x), [x], mode="full")
    np.testing.assert_array_equal(x.data, before)     # every perturbation was undone
    assert x.grad is None


def test_gradcheck_error_is_an_assertion_error():
    assert issubclass(ms.GradcheckError, AssertionError)


def test_assert_gradcheck_reports_the_shapes():
    a = x64((2, 3))
    with pytest.raises(ms.GradcheckError, match=r"input 0.*\n.*inputs of shapes \(2, 3\)"):
        assert_gradcheck(lambda a: Square(bad_index=(0, 0))(a), a, mode="full")


# --------------------------------------------------------------------------- the strategies

@given(broadcastable_shapes(3, max_dims=3, max_side=3))
def test_broadcastable_shapes_broadcast(shs):
    assert len(shs) == 3
    np.broadcast_shapes(*shs)


@given(arrays(shapes(min_dims=1, max_dims=2, min_side=1), away_from=(-1.0, 0.0, 1.0),
              margin=0.2))
def test_arrays_keep_a_margin_from_every_kink(x):
    assert x.dtype == np.float64 and np.isfinite(x).all()
    for k in (-1.0, 0.0, 1.0):
        assert (np.abs(x - k) >= 0.2 - 1e-12).all()


@given(arrays(shapes(min_dims=1, max_dims=2, min_side=1), min_gap=1e-3, away_from=0.0))
def test_arrays_with_min_gap_have_no_near_ties(x):
    v = np.sort(x.ravel())
    assert (np.diff(v) >= 1e-3 - 1e-12).all()
    assert (np.abs(x) >= 0.1 - 1e-12).all()


def test_arrays_reject_kinks_closer_than_twice_the_margin():
    from hypothesis import Phase, settings

    @settings(max_examples=1, phases=[Phase.generate], database=None)
    @given(arrays((3,), away_from=(0.0, 0.1), margin=0.1))
    def draw(x):
        pass

    with pytest.raises(ValueError, match="closer than"):
        draw()


@given(tensors(shape=(2, 3)), tensors(shape=(2,), dtype=np.int64, min_value=0, max_value=4))
def test_tensors_strategy(t, i):
    assert isinstance(t, ms.Tensor) and t.requires_grad and t.dtype == np.float64
    assert t.shape == (2, 3)
    assert i.dtype == np.int64 and not i.requires_grad and ((i.data >= 0) & (i.data <= 4)).all()
