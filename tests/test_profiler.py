"""minissl.profiler: per-op self times of a step, by op name and phase."""
import threading

import numpy as np
import pytest

import minissl as ms
from minissl import autograd, nn, optim, profiler


def _step_parts():
    ms.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = optim.Adam(model.parameters(), 1e-3)
    x = ms.tensor(np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32))

    def step():
        opt.zero_grad()
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
        return float(loss.data)
    return step


def test_counts_calls_per_op_and_phase():
    step = _step_parts()
    with profiler.profile() as prof:
        for _ in range(3):
            step()
    calls = {(r.name, r.phase): r.calls for r in prof.rows()}
    assert calls[("Linear", "forward")] == 6 and calls[("Linear", "backward")] == 6
    assert calls[("Adam", "step")] == 3
    assert all(r.seconds >= 0 for r in prof.rows())
    assert 0 < prof.total() <= prof.wall
    assert prof.total("backward") <= prof.total()
    text = prof.table(steps=3)
    assert "Linear.backward" in text and "Adam.step" in text and "(outside the ops)" in text


def test_profiling_changes_no_result():
    a, b = _step_parts(), _step_parts()
    plain = [a() for _ in range(3)]
    with profiler.profile():
        profiled = [b() for _ in range(3)]
    assert plain == profiled


class _Inner(autograd.Function):
    def forward(self, x):
        return x + 1

    def backward(self, g):
        return g


class _Outer(autograd.Function):
    """An op whose forward calls another op: its self time excludes the inner op's."""
    def forward(self, x):
        return _Inner()(ms.tensor(x)).data * 2

    def backward(self, g):
        return 2 * g


def test_self_time_excludes_the_ops_an_op_calls():
    ticks = iter(range(100))
    with profiler.profile(clock=lambda: float(next(ticks))) as prof:
        _Outer()(ms.tensor(np.ones(3, np.float32)))
    # clock: 0 open, 1 outer starts, 2 inner starts, 3 inner ends, 4 outer ends, 5 close
    got = {(r.name, r.phase): (r.calls, r.seconds) for r in prof.rows()}
    assert got == {("_Inner", "forward"): (1, 1.0), ("_Outer", "forward"): (1, 2.0)}
    assert prof.wall == 5.0 and prof.total() == 3.0


def test_group_by_shape_keeps_layers_apart():
    step = _step_parts()
    with profiler.profile(group_by_shape=True) as prof:
        step()
    shapes = {r.shapes for r in prof.rows() if (r.name, r.phase) == ("Linear", "backward")}
    assert len(shapes) == 2   # the two layers, labelled by their inputs (not the gradient)
    assert ((5, 8), (16, 8), (16,)) in shapes


def test_closed_after_an_error_and_one_at_a_time():
    with pytest.raises(ValueError):
        with profiler.profile():
            raise ValueError("boom")
    assert autograd._profile is None
    with profiler.profile():
        with pytest.raises(RuntimeError, match="already open"):
            with profiler.profile():
                pass
    assert autograd._profile is None


def test_other_threads_run_untimed():
    x = ms.tensor(np.ones(4, np.float32), requires_grad=True)
    with profiler.profile() as prof:
        t = threading.Thread(target=lambda: (x * 3).sum().backward())
        t.start()
        t.join()
    assert prof.rows() == []
    np.testing.assert_array_equal(x.grad, np.full(4, 3.0, np.float32))
