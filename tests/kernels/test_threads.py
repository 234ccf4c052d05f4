"""The compiled kernels give the same bits on 1 and on 2 threads.

Serial is the default (``minissl.runtime.set_num_threads``); these tests run every family's
parallel loops, forward and backward, on shapes above their parallel thresholds, and compare
them bit for bit with the serial run."""
import os
import time

import numpy as np
import pytest

import minissl as ms
import minissl.functional as F
from minissl import optim
from minissl.kernels import _dispatch

FAMILIES = ("softmax", "norm", "activation", "embedding", "optim", "pool", "im2col")
pytestmark = pytest.mark.skipif(any(_dispatch.load(f) is None for f in FAMILIES),
                                reason="Cython build missing or reference forced")


def leaf(a):
    return ms.tensor(a, requires_grad=True)


def run(case, threads):
    previous = _dispatch.set_num_threads(threads)
    try:
        return case()
    finally:
        _dispatch.set_num_threads(previous)


def forward_backward(fn, *arrays):
    def case():
        ts = [leaf(a.copy()) for a in arrays]
        y = fn(*ts)
        (y * y).sum().backward()
        return [y.data.copy()] + [t.grad.copy() for t in ts]
    return case


rng = np.random.default_rng(0)
x2 = rng.standard_normal((256, 320)).astype(np.float32)
x4 = rng.standard_normal((16, 24, 20, 20)).astype(np.float32)
w4 = rng.standard_normal((32, 24, 3, 3)).astype(np.float32) * 0.1
tokens = ms.tensor(rng.integers(0, 64, (512,)))
gamma, beta = rng.standard_normal(320).astype(np.float32), rng.standard_normal(320).astype(np.float32)
CASES = {
    "softmax": forward_backward(lambda t: F.softmax(t, dim=1), x2),
    "log_softmax": forward_backward(lambda t: F.log_softmax(t, dim=1), x2),
    "cross_entropy": forward_backward(
        lambda t: F.cross_entropy(t, ms.tensor(np.arange(256) % 320)), x2),
    "layer_norm": forward_backward(lambda t, w, b: F.layer_norm(t, (320,), w, b), x2, gamma, beta),
    "batch_norm_1d": forward_backward(
        lambda t, w, b: F.batch_norm(t, np.zeros(320, np.float32), np.ones(320, np.float32),
                                     w, b, training=True), x2, gamma, beta),
    "batch_norm_2d": forward_backward(
        lambda t: F.batch_norm(t, np.zeros(24, np.float32), np.ones(24, np.float32),
                               training=True), x4),
    "gelu": forward_backward(F.gelu, x2),
    "embedding": forward_backward(
        lambda w: F.embedding(tokens, w),
        rng.standard_normal((64, 256)).astype(np.float32)),
    "max_pool2d": forward_backward(lambda t: F.max_pool2d(t, 2), x4),
    "avg_pool2d": forward_backward(lambda t: F.avg_pool2d(t, 3, 2, 1), x4),
    "conv2d": forward_backward(lambda t, w: F.conv2d(t, w, stride=1, padding=1), x4, w4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_threads_give_the_bits_of_one(name):
    serial, parallel = run(CASES[name], 1), run(CASES[name], 2)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_adam_step_on_two_threads_gives_the_bits_of_one():
    def case():
        p = ms.nn.Parameter(np.linspace(-1, 1, 1 << 18, dtype=np.float32))
        opt = optim.Adam([p], lr=1e-2)
        for k in range(3):
            p.grad = np.cos(np.arange(1 << 18, dtype=np.float32) * (k + 1))
            opt.step()
        return p.data.copy()
    np.testing.assert_array_equal(run(case, 1), run(case, 2))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_serial_by_default_and_set_num_threads_starts_a_worker():
    """Counted in a fresh process: the kernels start no thread of their own until asked (so
    nothing spins beside NumPy's BLAS pool); after ``set_num_threads(2)`` they do. Without
    this, the comparisons above could pass with two serial runs."""
    import subprocess
    import sys
    code = (
        "import os, numpy as np, minissl as ms, minissl.functional as F\n"
        "from minissl import runtime\n"
        "tasks = lambda: len(os.listdir('/proc/self/task'))\n"
        "x = ms.tensor(np.ones((512, 512), np.float32))\n"
        "F.softmax(x, dim=1); before = tasks()\n"
        "for _ in range(3): F.softmax(x, dim=1)\n"
        "serial = tasks()\n"
        "runtime.set_num_threads(2); F.softmax(x, dim=1)\n"
        "print(before, serial, tasks())\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    before, serial, parallel = map(int, out.stdout.split())
    assert serial == before and parallel > serial


@pytest.fixture
def default_threads(monkeypatch):
    """The default thread count (no set_num_threads) of 2 on a 2-core machine, restored after."""
    monkeypatch.setattr(_dispatch, "_threads", 2)
    monkeypatch.setattr(_dispatch, "_explicit", False)
    monkeypatch.setattr(_dispatch, "_cores", 2)
    monkeypatch.setattr(_dispatch, "_running", 2)
    yield
    _dispatch._push(_dispatch.get_num_threads())


class Machine:
    """A fake cpu_times(): advance(seconds, others, own) runs the clock on, with the other
    processes keeping ``others`` cores busy and this one ``own``."""

    def __init__(self):
        self.wall = self.busy = self.own = 0.0

    def advance(self, seconds, others, own=2.0):
        self.wall += seconds
        self.busy += seconds * (others + own)
        self.own += seconds * own

    def __call__(self):
        return self.wall, self.busy, self.own


def test_load_guard_goes_serial_while_neighbours_want_the_cores(default_threads, monkeypatch):
    monkeypatch.setattr(_dispatch, "_last", None)
    m = Machine()
    _dispatch._guard(sample=m)                   # first look: nothing to compare with yet
    assert _dispatch.running_threads() == 2
    m.advance(0.25, others=0.0)                  # minissl's two threads alone
    _dispatch._guard(sample=m)
    assert _dispatch.running_threads() == 2
    m.advance(0.25, others=1.0)                  # a busy neighbour: 1 + 2 threads > 2 cores
    _dispatch._guard(sample=m)
    assert _dispatch.running_threads() == 1
    m.advance(0.25, others=1.0, own=1.0)         # serial now; the neighbour is still there
    _dispatch._guard(sample=m)
    assert _dispatch.running_threads() == 1
    m.advance(0.25, others=0.0, own=1.0)         # the neighbour is gone
    _dispatch._guard(sample=m)
    assert _dispatch.running_threads() == 2
    _dispatch._guard(sample=lambda: None)        # unreadable: no change
    assert _dispatch.running_threads() == 2


def test_load_guard_ignores_a_brief_blip(default_threads, monkeypatch):
    """A shell or a monitor running for a few milliseconds is not a neighbour: the first guard
    (a snapshot of the runnable tasks) went serial on such blips a sixth of the time on a
    quiet machine. What counts is the others' average use since the last look."""
    monkeypatch.setattr(_dispatch, "_last", None)
    m = Machine()
    _dispatch._guard(sample=m)
    m.advance(0.24, others=0.0)
    m.advance(0.01, others=1.0)                  # 10 ms of one core: 0.04 cores on average
    _dispatch._guard(sample=m)
    assert _dispatch.running_threads() == 2
    m.advance(0.25, others=0.4)                  # a light neighbour, under NEIGHBOUR_CORES
    _dispatch._guard(sample=m)
    assert _dispatch.running_threads() == 2


def test_load_guard_judges_the_cores_by_now_not_by_a_pause(default_threads, monkeypatch):
    """minissl paused (a user reading a notebook's output, another library's turn in a
    benchmark) while a neighbour used the cores: that is history, not load. The guard keeps
    the threads, takes a new sample and decides on a fresh window; a neighbour still busy is
    caught by that look."""
    monkeypatch.setattr(_dispatch, "_last", None)
    monkeypatch.setattr(_dispatch, "_deferred", False)
    m = Machine()
    _dispatch._guard(sample=m)
    m.advance(0.25, others=0.0)
    _dispatch._guard(sample=m)
    assert _dispatch.running_threads() == 2
    m.advance(2.0, others=2.0, own=0.0)          # minissl paused; a neighbour had both cores
    _dispatch._guard(sample=m, paused=True)
    assert _dispatch.running_threads() == 2
    assert _dispatch._next_check - time.monotonic() <= _dispatch.FRESH_SECONDS
    m.advance(_dispatch.FRESH_SECONDS, others=0.0)   # it has gone
    _dispatch._guard(sample=m)
    assert _dispatch.running_threads() == 2
    m.advance(2.0, others=2.0, own=0.0)          # again, but this time it stays
    _dispatch._guard(sample=m, paused=True)
    assert _dispatch.running_threads() == 2
    m.advance(_dispatch.FRESH_SECONDS, others=2.0)
    _dispatch._guard(sample=m)
    assert _dispatch.running_threads() == 1


def test_load_guard_puts_a_decision_off_once_only(default_threads, monkeypatch):
    """Kernel calls in bursts with pauses between them must not put the decision off for
    ever: a look after a deferral decides, pause or not."""
    monkeypatch.setattr(_dispatch, "_last", None)
    monkeypatch.setattr(_dispatch, "_deferred", False)
    m = Machine()
    _dispatch._guard(sample=m)
    m.advance(0.3, others=2.0, own=0.5)
    _dispatch._guard(sample=m, paused=True)
    assert _dispatch.running_threads() == 2
    m.advance(0.3, others=2.0, own=0.5)
    _dispatch._guard(sample=m, paused=True)
    assert _dispatch.running_threads() == 1


def test_a_kernel_lookup_tells_the_guard_whether_minissl_paused(monkeypatch):
    looks = []
    monkeypatch.setattr(_dispatch, "_guard", lambda paused=False: looks.append(paused))
    x = np.ones((4, 4), dtype=np.float32)
    monkeypatch.setattr(_dispatch, "_last_call", time.monotonic() - 1.0)
    monkeypatch.setattr(_dispatch, "_next_check", 0.0)
    _dispatch.compiled("softmax", x)             # the last lookup a second ago: a pause
    monkeypatch.setattr(_dispatch, "_next_check", 0.0)
    _dispatch.compiled("softmax", x)             # just now: none
    assert looks == [True, False]


def test_load_guard_leaves_an_explicit_count_alone(default_threads, monkeypatch):
    monkeypatch.setattr(_dispatch, "_last", None)
    previous = _dispatch.set_num_threads(2)
    try:
        m = Machine()
        _dispatch._guard(sample=m)
        m.advance(0.25, others=50.0)
        _dispatch._guard(sample=m)
        assert _dispatch.running_threads() == 2
    finally:
        _dispatch.set_num_threads(previous)
        _dispatch._explicit = False


def test_cpu_times_reads_this_machine():
    first = _dispatch.cpu_times()
    if first is None:
        pytest.skip("no /proc/stat here")
    sum(i * i for i in range(200_000))           # some CPU time of our own
    second = _dispatch.cpu_times()
    wall, busy, own = (b - a for a, b in zip(first, second))
    assert wall > 0 and own >= 0 and busy >= 0
    assert second[2] > 0


def test_products_are_the_same_bits_whatever_the_threads():
    from minissl.kernels import gemm
    rng = np.random.default_rng(0)
    cases = [(rng.standard_normal((300, 200), dtype=np.float32),
              rng.standard_normal((200, 400), dtype=np.float32)),
             (rng.standard_normal((6, 64, 48)), rng.standard_normal((6, 48, 80)))]
    results = []
    for threads in (1, 2):
        previous = _dispatch.set_num_threads(threads)
        try:
            results.append([gemm.matmul(a, b) for a, b in cases])
        finally:
            _dispatch.set_num_threads(previous)
            _dispatch._explicit = False
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
