"""The engine's semantics: graph order, accumulation, release, no_grad, dtypes, errors."""
import gc
import weakref

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minissl as ms
from minissl.testing import arrays, assert_gradcheck, broadcastable_shapes


def leaf(values, dtype=np.float64, device="cpu"):
    return ms.tensor(np.asarray(values, dtype=dtype), requires_grad=True, device=device)


class Counting(ms.Function):
    """y = 3 x, counting its backward calls (to see that a reused node is visited once)."""

    calls = []

    def forward(self, x):
        return 3 * x

    def backward(self, g):
        Counting.calls.append(g.copy())
        return 3 * g


# --------------------------------------------------------------------------- graph order

def test_reused_node_receives_all_its_gradient_first(device):
    a = leaf(1.5, device=device)
    b = a + a
    c = b + b
    c.backward()
    assert float(ms.tensor(a.grad).item()) == 4.0


def test_reused_node_backward_runs_once_with_the_summed_gradient():
    Counting.calls.clear()
    a = leaf([1.0, 2.0])
    b = Counting()(a)
    c = (b * b + b).sum()             # dc/db = 2 b + 1, b = 3 a
    c.backward()
    assert len(Counting.calls) == 1   # one visit, after both consumers of b have run
    np.testing.assert_allclose(Counting.calls[0], 2 * 3 * np.array([1.0, 2.0]) + 1)
    np.testing.assert_allclose(a.grad, 3 * (2 * 3 * np.array([1.0, 2.0]) + 1))


def test_paths_of_different_lengths_all_reach_the_leaf():
    x = leaf([0.3, -0.7, 1.1])
    y = x.exp()
    z = ((y * 2).exp() + y.sum() * x).sum()    # y used at depths 1 and 2, x at depths 1 and 3
    z.backward()
    xv = x.data
    yv = np.exp(xv)
    expected = np.exp(2 * yv) * 2 * yv + yv * xv.sum() + yv.sum()
    np.testing.assert_allclose(x.grad, expected, rtol=1e-12)


def test_long_chain_does_not_hit_the_recursion_limit():
    x = leaf(1.0)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.backward()
    assert x.grad == 1.0


# --------------------------------------------------------------------------- accumulation

def test_gradients_accumulate_across_backward_calls_until_zeroed():
    x = leaf([1.0, -2.0])
    (x * x).sum().backward()
    first = x.grad
    np.testing.assert_allclose(first, [2.0, -4.0])
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad, [5.0, -1.0])
    np.testing.assert_allclose(first, [2.0, -4.0])   # the earlier array was not changed in place
    x.zero_grad()
    assert x.grad is None
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 3.0])


def test_a_leaf_used_by_both_operands_gets_a_private_gradient():
    # Add hands one gradient array to both inputs; accumulating into it in place would leak.
    x, y = leaf([1.0]), leaf([1.0])
    (x + y).sum().backward()
    (x * 2).sum().backward()
    np.testing.assert_allclose(x.grad, [3.0])
    np.testing.assert_allclose(y.grad, [1.0])


# --------------------------------------------------------------------------- graph release

def test_second_backward_raises_a_clear_error():
    x = leaf([1.0, 2.0])
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_second_backward_through_a_released_inner_node_raises():
    x = leaf([1.0, 2.0])
    h = x.exp()
    h.sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * 2).sum().backward()


def test_retain_graph_allows_a_second_backward_that_accumulates():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * 2 * x.data)


def test_intermediate_tensors_and_saved_arrays_are_freed_after_backward():
    x = leaf(np.linspace(-1, 1, 6))
    h1 = x.exp()
    h2 = h1 * h1
    loss = h2.max()                      # Max saves its input array
    refs = [weakref.ref(h1), weakref.ref(h2), weakref.ref(h2.data), weakref.ref(h1.data)]
    del h1, h2
    assert all(r() is not None for r in refs)   # the graph keeps them alive before backward
    loss.backward()
    # Plain reference counting frees them (no cycles): no gc.collect() needed.
    assert [r() for r in refs] == [None] * 4
    assert loss._ctx.inputs is None
    gc.collect()


def test_a_graph_without_backward_is_freed_by_reference_counting():
    gc.disable()
    try:
        x = leaf([1.0, 2.0])
        h = x.exp()
        y = (h * h).sum()
        r = weakref.ref(h)
        del h, y
        assert r() is None
    finally:
        gc.enable()


# --------------------------------------------------------------------------- no_grad, detach

def test_no_grad_records_no_graph_and_restores_the_flag():
    x = leaf([1.0, 2.0])
    assert ms.is_grad_enabled()
    with ms.no_grad():
        assert not ms.is_grad_enabled()
        y = x * 2 + 1
        with ms.no_grad():
            pass
        assert not ms.is_grad_enabled()   # nested exit restores the outer state
    assert ms.is_grad_enabled()
    assert not y.requires_grad and y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_restores_the_flag_after_an_exception():
    with pytest.raises(KeyError):
        with ms.no_grad():
            raise KeyError("boom")
    assert ms.is_grad_enabled()


def test_no_grad_as_decorator():
    @ms.no_grad()
    def double(t):
        """Doc."""
        assert not ms.is_grad_enabled()
        return t * 2

    x = leaf([1.0])
    y = double(x)
    assert not y.requires_grad and y._ctx is None
    assert ms.is_grad_enabled()
    assert double.__name__ == "double" and double.__doc__ == "Doc."
    np.testing.assert_allclose(y.data, [2.0])


def test_no_grad_in_one_thread_leaves_another_recording():
    """Grad mode is per thread (as PyTorch's): a thread inside no_grad does not switch off
    the graph of a training step running in another thread."""
    import threading
    inside, done = threading.Event(), threading.Event()

    def evaluator():
        with ms.no_grad():
            inside.set()
            done.wait(5)

    t = threading.Thread(target=evaluator)
    t.start()
    try:
        assert inside.wait(5)
        x = leaf([1.0, 2.0])
        y = (x * x).sum()
        assert ms.is_grad_enabled() and y.requires_grad
        y.backward()
        np.testing.assert_allclose(x.grad, [2.0, 4.0])
    finally:
        done.set()
        t.join()


def test_interleaved_no_grad_in_two_threads_restores_each_threads_mode():
    """Thread A enters, thread B enters, A exits, B exits: with one process-wide flag, B's
    exit restores A's "disabled" and leaves the whole process without gradients."""
    import threading
    steps = [threading.Event() for _ in range(4)]
    seen = {}

    def a():
        with ms.no_grad():
            steps[0].set()
            steps[1].wait(5)
        seen["a_after"] = ms.is_grad_enabled()
        steps[2].set()

    def b():
        steps[0].wait(5)
        with ms.no_grad():
            steps[1].set()
            steps[2].wait(5)
        seen["b_after"] = ms.is_grad_enabled()
        steps[3].set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"a_after": True, "b_after": True}
    assert ms.is_grad_enabled()


def test_detach_shares_data_and_stops_the_gradient():
    x = leaf([1.0, 2.0])
    d = (x * 2).detach()
    assert not d.requires_grad and d._ctx is None
    y = (x * d).sum()              # d is a constant: dy/dx = d
    y.backward()
    np.testing.assert_allclose(x.grad, [2.0, 4.0])
    x2 = leaf([3.0])
    assert np.shares_memory(x2.detach().data, x2.data)


def test_ops_on_tensors_that_do_not_require_grad_build_no_graph():
    a = ms.tensor(np.ones(3))
    b = a * 2 + a.exp()
    assert not b.requires_grad and b._ctx is None


# --------------------------------------------------------------------------- broadcasting

BINARY = {
    "add": (lambda a, b: a + b, {}, {}),
    "sub": (lambda a, b: a - b, {}, {}),
    "mul": (lambda a, b: a * b, {}, {}),
    "div": (lambda a, b: a / b, {}, dict(away_from=0.0, margin=0.5)),
    "pow": (lambda a, b: a ** b, dict(min_value=0.5, max_value=2.0), dict(min_value=-2.0,
                                                                          max_value=2.0)),
    "where": (lambda a, b: ms.where(ms.tensor(np.arange(
        int(np.prod(np.broadcast_shapes(a.shape, b.shape)))).reshape(
        np.broadcast_shapes(a.shape, b.shape)) % 3 == 0), a, b), {}, {}),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data(), shapes=broadcastable_shapes(2, max_dims=3, max_side=3))
def test_binary_op_gradients_broadcast(name, data, shapes):
    fn, kw_a, kw_b = BINARY[name]
    a = ms.tensor(data.draw(arrays(shapes[0], **kw_a)), requires_grad=True)
    b = ms.tensor(data.draw(arrays(shapes[1], **kw_b)), requires_grad=True)
    out = fn(a, b)
    assert out.shape == np.broadcast_shapes(shapes[0], shapes[1])
    (out * out).sum().backward()   # gradients of the input's shape, also for size-0 outputs
    assert a.grad.shape == a.shape and b.grad.shape == b.shape
    assert_gradcheck(fn, a, b, mode="full")


@given(shapes=broadcastable_shapes(2, max_dims=3, max_side=3, min_side=1), data=st.data())
def test_broadcast_gradient_sums_over_the_copied_axes(shapes, data):
    a = ms.tensor(data.draw(arrays(shapes[0])), requires_grad=True)
    b = ms.tensor(data.draw(arrays(shapes[1])), requires_grad=True)
    (a + b).sum().backward()
    out = np.broadcast_shapes(a.shape, b.shape)
    n = int(np.prod(out))
    # Every element of a is copied n / a.size times.
    np.testing.assert_allclose(a.grad, np.full(a.shape, n / max(a.data.size, 1)))
    np.testing.assert_allclose(b.grad, np.full(b.shape, n / max(b.data.size, 1)))


# --------------------------------------------------------------------------- dtypes

def test_tensor_dtype_rules():
    assert ms.tensor([1.0, 2.0]).dtype == np.float32          # Python floats -> float32
    assert ms.tensor(1.5).dtype == np.float32
    assert ms.tensor([[1, 2]]).dtype == np.int64              # Python ints -> int64
    assert ms.tensor(np.zeros(2, np.float64)).dtype == np.float64   # ndarray keeps its dtype
    assert ms.tensor(np.zeros(2, np.float16)).dtype == np.float16
    assert ms.tensor(np.zeros(2, np.int32)).dtype == np.int32
    assert ms.tensor([True, False]).dtype == bool
    assert ms.tensor([1, 2], dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="floating"):
        ms.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match="floating"):
        ms.tensor(np.arange(3)).requires_grad_()
    src = np.ones(3)
    t = ms.tensor(src)
    src[0] = 5.0
    assert t.data[0] == 1.0                                    # the data are copied


def test_data_and_grad_are_always_arrays_never_numpy_scalars():
    # NumPy returns scalars from full reductions and from ops on 0-d arrays.
    x = leaf(2.0)
    y = (x * x).exp() + leaf([1.0, 2.0]).sum()
    assert type(y.data) is np.ndarray and y.data.shape == ()
    y.backward()
    assert type(x.grad) is np.ndarray and x.grad.shape == ()
    y2 = x * 3
    y2.backward()
    assert type(x.grad) is np.ndarray
    assert type(y.numpy()) is np.ndarray
    assert ms.tensor(np.float64(1.5)).dtype == np.float64      # a NumPy scalar keeps its dtype
    assert ms.tensor(y.data).dtype == np.float64


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "**", "r+", "r-", "r*", "r/"])
def test_float32_stays_float32_with_python_scalars(op):
    x = ms.tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    y = {"+": lambda: x + 2.5, "-": lambda: x - 2.5, "*": lambda: x * 2.5,
         "/": lambda: x / 2.5, "**": lambda: x ** 2.5, "r+": lambda: 2.5 + x,
         "r-": lambda: 2.5 - x, "r*": lambda: 2 * x, "r/": lambda: 2.5 / x}[op]()
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_mixed_dtypes_give_gradients_in_each_inputs_dtype():
    a = ms.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    b = ms.tensor(np.ones(3, np.float64), requires_grad=True)
    y = a * b
    assert y.dtype == np.float64
    y.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64


def test_cast_is_differentiable():
    x = leaf([1.0, 2.0])
    y = x.float()
    assert y.dtype == np.float32
    (y * y).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad, [2.0, 4.0])


# --------------------------------------------------------------------------- operand kinds

@given(shapes=broadcastable_shapes(2, max_dims=3, max_side=3), data=st.data())
def test_operators_take_ndarrays_and_numbers_on_either_side(shapes, data):
    a_np = data.draw(arrays(shapes[0], min_value=0.5, max_value=2.0))
    b_np = data.draw(arrays(shapes[1], min_value=0.5, max_value=2.0))
    for left, right in (("t", "n"), ("n", "t")):
        a = ms.tensor(a_np, requires_grad=True) if left == "t" else a_np
        b = ms.tensor(b_np, requires_grad=True) if right == "t" else b_np
        t = a if left == "t" else b
        for op, ref in ((lambda u, v: u + v, np.add), (lambda u, v: u - v, np.subtract),
                        (lambda u, v: u * v, np.multiply), (lambda u, v: u / v, np.divide),
                        (lambda u, v: u ** v, np.power)):
            y = op(a, b)
            assert isinstance(y, ms.Tensor) and y.requires_grad
            np.testing.assert_allclose(y.data, ref(a_np, b_np), rtol=1e-12)
            assert_gradcheck(lambda t_: op(t_ if left == "t" else a, t_ if right == "t" else b),
                             t, mode="full")
    x = ms.tensor(a_np, requires_grad=True)
    for y, ref in ((x + 1, a_np + 1), (2 - x, 2 - a_np), (x * 3, a_np * 3), (1 / x, 1 / a_np),
                   (x ** 2, a_np ** 2), (2 ** x, 2.0 ** a_np), (-x, -a_np)):
        np.testing.assert_allclose(y.data, ref, rtol=1e-12)


def test_matmul_with_an_ndarray_on_either_side():
    rng = np.random.default_rng(0)
    a_np, b_np = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    a = ms.tensor(a_np, requires_grad=True)
    np.testing.assert_allclose((a @ b_np).data, a_np @ b_np)
    b = ms.tensor(b_np, requires_grad=True)
    np.testing.assert_allclose((a_np @ b).data, a_np @ b_np)
    (a_np @ b).sum().backward()
    np.testing.assert_allclose(b.grad, a_np.T @ np.ones((2, 4)))


# --------------------------------------------------------------------------- errors

def test_backward_on_a_non_scalar_needs_a_gradient():
    x = leaf(np.ones((2, 3)))
    y = x * 2
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        y.backward(np.ones(3))
    y.backward(ms.tensor(np.full((2, 3), 0.5)))
    np.testing.assert_allclose(x.grad, np.ones((2, 3)))


class WrongShape(ms.Function):
    def forward(self, x):
        return x * 2

    def backward(self, g):
        return g.sum(axis=0)


class WrongDtype(ms.Function):
    def forward(self, x):
        return x * 2

    def backward(self, g):
        return (2 * g).astype(np.float32)


def test_engine_names_the_op_that_returns_a_wrong_gradient_shape():
    x = leaf(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match=r"WrongShape.*\(3,\).*\(2, 3\)"):
        WrongShape()(x).sum().backward()


def test_engine_names_the_op_that_returns_a_wrong_gradient_dtype():
    x = leaf(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match=r"WrongDtype.*float32.*float64"):
        WrongDtype()(x).sum().backward()


def test_bad_inputs_raise_errors_naming_the_op_and_the_shapes():
    import minissl.functional as F

    a, b = leaf(np.ones((2, 3))), leaf(np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"matmul.*\(2, 3\).*\(4, 5\)"):
        a @ b
    with pytest.raises(ValueError, match=r"matmul.*\(2, 2, 3\).*\(3, 3, 4\)"):
        leaf(np.ones((2, 2, 3))) @ leaf(np.ones((3, 3, 4)))
    with pytest.raises(ValueError, match=r"add.*\(2, 3\).*\(4, 5\)"):
        a + b
    with pytest.raises(ValueError, match=r"mul.*\(2, 3\).*\(2,\)"):
        a * np.ones(2)
    with pytest.raises(TypeError, match="getitem.*float"):
        a[0.5]
    with pytest.raises(TypeError, match="getitem.*float"):
        a[np.array([0.0, 1.0])]
    with pytest.raises(ValueError, match=r"cross_entropy.*\(3,\).*\(2, 3\)"):
        F.cross_entropy(a, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="cross_entropy.*integer"):
        F.cross_entropy(a, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"reshape.*\(2, 3\).*\(4,\)"):
        a.reshape(4)
    with pytest.raises(ValueError, match=r"cat.*\(2, 3\).*\(4, 5\)"):
        ms.cat([a, b])


# --------------------------------------------------------------------------- tensor API

def test_T_item_numpy_to_and_properties(device):
    x = ms.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True, device=device)
    assert x.T.shape == (3, 2)
    np.testing.assert_array_equal(x.T.numpy(), np.arange(6.0).reshape(2, 3).T)
    x3 = ms.tensor(np.zeros((2, 3, 4)))
    assert x3.T.shape == (4, 3, 2)                     # all dims reversed, as torch
    (x.T * ms.tensor(np.arange(6.0).reshape(3, 2), device=device)).sum().backward()
    np.testing.assert_array_equal(ms.tensor(x.grad).numpy(), np.arange(6.0).reshape(3, 2).T)
    s = (x * 1).sum()
    assert s.item() == 15.0 and isinstance(s.item(), float)
    with pytest.raises(ValueError, match=r"item.*\(2, 3\)"):
        x.item()
    n = x.numpy()
    assert isinstance(n, np.ndarray) and n.shape == (2, 3)
    assert x.shape == (2, 3) and x.ndim == 2 and x.dtype == np.float64
    assert x.device == device
    assert x.to(device) is x
    c = x.to("cpu")
    assert c.device == "cpu" and isinstance(c.data, np.ndarray)
    with pytest.raises(ValueError, match="unknown device"):
        ms.tensor([1.0], device="tpu")
    assert "requires_grad=True" in repr(x)
