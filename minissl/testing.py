"""Hypothesis strategies and a gradient-check assertion for testing ops built on minissl.

Property tests of a differentiable op ask three things of their inputs: shapes of every kind
(scalars, size-1 and size-0 dims, shapes that broadcast against each other), values in
float64 (finite differences need it), and values away from the op's kinks, where the
derivative jumps and a central difference straddling the kink means nothing. Steering the
values (``away_from``, ``min_gap``) keeps the tolerances tight instead of loosening them::

    from hypothesis import given
    from minissl.testing import assert_gradcheck, tensors

    @given(tensors(away_from=0.0))               # |x| >= 0.1: never on relu's kink
    def test_relu(x):
        assert_gradcheck(lambda x: x.relu(), x)

    @given(tensors(shape=(3, 4), min_gap=1e-3))  # distinct values: max has no ties
    def test_max(x):
        assert_gradcheck(lambda x: x.max(dim=1), x)

Hypothesis (``pip install hypothesis``) is needed by this module only, not by minissl.
"""
import math

import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as e:  # pragma: no cover - hypothesis is a test dependency
    raise ImportError("minissl.testing needs hypothesis: pip install hypothesis") from e

from .autograd import Tensor
from .gradcheck import gradcheck

__all__ = ["shapes", "broadcastable_shapes", "arrays", "tensors", "assert_gradcheck"]


def shapes(min_dims=0, max_dims=4, min_side=0, max_side=5):
    """Shapes (tuples of ints) with ``min_dims..max_dims`` dims of ``min_side..max_side`` each.

    With the defaults this includes the scalar shape ``()`` and dims of size 0 and 1.
    """
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable_shapes(n=2, min_dims=0, max_dims=4, min_side=0, max_side=5):
    """Tuples of ``n`` shapes that broadcast together (NumPy rules).

    The shapes may differ in length (missing leading dims) and may have size 1 where another
    has any size, including 0: ``((2, 1, 3), (4, 3))``, ``((0, 3), (1, 3))``, ``((), (2,))``.
    """
    return hnp.mutually_broadcastable_shapes(
        num_shapes=n, min_dims=min_dims, max_dims=max_dims, min_side=min_side,
        max_side=max_side).map(lambda b: b.input_shapes)


def _push_away(x, points, margin):
    """Move every value of ``x`` out of ``(k - margin, k + margin)`` for each kink ``k``.

    A strictly increasing map, so distinct values stay distinct and keep their order: below
    the first kink ``v -> v - margin``, from the last kink on ``v -> v + margin`` (pure shifts,
    which only widen the gaps between values), and between two neighbouring kinks p < q the
    interval ``[p, q)`` is squeezed linearly onto ``[p + margin, q - margin)`` (gaps there
    shrink by the factor ``1 - 2 margin / (q - p)``). A value exactly on a kink goes to its
    right.
    """
    ks = sorted(set(float(p) for p in points))
    for p, q in zip(ks, ks[1:]):
        if q - p <= 2 * margin:
            raise ValueError(f"arrays: kinks {p} and {q} are closer than 2 * margin = "
                             f"{2 * margin}; no value can keep that margin from both")
    out = np.where(x < ks[0], x - margin, x + margin)
    for p, q in zip(ks, ks[1:]):
        inside = (x >= p) & (x < q)
        out = np.where(inside, p + margin + (x - p) * ((q - p - 2 * margin) / (q - p)), out)
    return out


def _spread(x, gap):
    """Make the values of ``x`` pairwise at least ``gap`` apart, keeping their order.

    Walking the sorted values, each is raised to at least ``previous + gap``: the smallest
    change to the sorted sequence with that property. Ties are broken by position.
    """
    flat = x.ravel()
    order = np.argsort(flat, kind="stable")
    s = flat[order]
    for i in range(1, s.size):
        if s[i] < s[i - 1] + gap:
            s[i] = s[i - 1] + gap
    out = np.empty_like(flat)
    out[order] = s
    return out.reshape(x.shape)


@st.composite
def arrays(draw, shape, dtype=np.float64, elements=None, away_from=None, margin=0.1,
           min_gap=None, min_value=-3.0, max_value=3.0):
    """NumPy arrays of ``shape`` (a tuple or a strategy of tuples) and ``dtype``.

    ``elements``: a strategy for the entries; default finite floats in
    ``[min_value, max_value]``. ``away_from``: a number or a sequence of numbers (kinks); every
    value is moved out of ``(k - margin, k + margin)`` of each kink ``k`` (so the range widens
    by ``margin`` per kink). ``min_gap``: values pairwise at least ``min_gap`` apart (no ties,
    e.g. for max; it suffices that ``min_gap`` exceeds the finite-difference step), applied
    first, so a kink margin never brings two values closer.
    """
    if not isinstance(shape, tuple):
        shape = draw(shape)
    dtype = np.dtype(dtype)
    if elements is None:
        if dtype.kind == "f":
            elements = st.floats(min_value, max_value, allow_nan=False, allow_infinity=False,
                                 allow_subnormal=False, width=min(dtype.itemsize * 8, 64))
        elif dtype.kind in "iu":
            elements = st.integers(int(math.ceil(min_value)), int(math.floor(max_value)))
        elif dtype.kind == "b":
            elements = st.booleans()
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    if min_gap is not None and x.size > 1:
        x = _spread(x.astype(np.float64), min_gap).astype(dtype)
    if away_from is not None:
        points = [away_from] if np.ndim(away_from) == 0 else list(away_from)
        x = _push_away(x.astype(np.float64), points, margin).astype(dtype)
    return x


@st.composite
def tensors(draw, shape=None, dtype=np.float64, requires_grad=True, **array_kwargs):
    """``minissl.Tensor`` leaves (float64 and requiring grad by default) of ``shape``.

    ``shape``: a tuple, a strategy of tuples, or None for :func:`shapes` with its defaults.
    Other keyword arguments go to :func:`arrays` (``elements``, ``away_from``, ``margin``,
    ``min_gap``, ``min_value``, ``max_value``).
    """
    if shape is None:
        shape = shapes()
    data = draw(arrays(shape, dtype=dtype, **array_kwargs))
    return Tensor(data, requires_grad=bool(requires_grad) and np.dtype(dtype).kind == "f")


def assert_gradcheck(fn, *tensors, **kwargs):
    """Assert that ``fn(*tensors)`` has correct gradients (see :func:`minissl.gradcheck`).

    Keyword arguments go to ``gradcheck`` (``eps``, ``atol``, ``rtol``, ``mode``, ``seed``).
    Raises ``minissl.GradcheckError`` (an AssertionError) naming the input, the element and
    the analytic and numeric values when they disagree; the message also gives the shapes.
    """
    try:
        ok = gradcheck(fn, list(tensors), **kwargs)
    except AssertionError as e:
        shapes_ = ", ".join(str(t.shape) for t in tensors)
        raise type(e)(f"{e}\n  (inputs of shapes {shapes_})") from None
    assert ok is True
