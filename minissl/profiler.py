"""Where a training step's time goes: the wall time of every op's forward and backward pass
and of every optimiser step, summed per op, as ``torch.profiler`` does for PyTorch.

>>> from minissl import profiler
>>> with profiler.profile() as prof:      # doctest: +SKIP
...     step()                            # forward, loss, backward, optimiser step
>>> print(prof.table())                   # doctest: +SKIP

What is timed. Each ``Function``'s ``forward`` (when it is called) and ``backward`` (inside
``Tensor.backward``), by the op's name (``Conv2d``, ``Linear``, ...), and each call of an
optimiser's ``step`` (``Adam.step``). Times are *self* times: an op's time excludes the ops it
calls itself. What no op accounts for (the engine's bookkeeping, summing gradients, Python
between ops, data preparation) is the table's last line, the wall time of the ``with`` block
minus the ops' times. Only the thread that opened the profile is timed (ops of other threads
run untimed), and one profile is open at a time.

On the GPU, kernels run asynchronously: a profile there synchronises the device before and
after each op whose arrays live on it, so each op is charged its own kernels (this makes the
step slower than it runs unprofiled; the shares are what the table is for).

``group_by_shape=True`` keeps one row per op *and* input shapes (each layer of a network
apart), as ``torch.profiler``'s ``group_by_input_shape``.
"""
import threading
import time
from collections import namedtuple
from contextlib import contextmanager

from . import autograd
from .backend import cupy, device_of

__all__ = ["profile", "Profile", "OpTime"]

OpTime = namedtuple("OpTime", "name phase shapes calls seconds")
OpTime.__doc__ = """One row of a profile: ``calls`` of ``name``'s ``phase`` ('forward',
'backward' or 'step') with inputs of ``shapes`` (None unless grouped by shape), taking
``seconds`` of self time in all."""


class Profile:
    """The times recorded by ``profile()``: ``rows()``, ``total(phase=None)``, ``wall``
    (seconds inside the ``with`` block) and ``table()``."""

    def __init__(self, group_by_shape=False, clock=time.perf_counter):
        self.group_by_shape = group_by_shape
        self.wall = 0.0
        self._clock = clock
        self._records = {}      # (name, phase, shapes) -> [calls, seconds]
        self._children = []     # per open op: time spent in the ops it called
        self._thread = threading.get_ident()

    def run(self, name, phase, call, arrays, inputs=None):
        """``call(*arrays)`` timed as ``name``'s ``phase`` (the engine's hook); ``inputs``
        (default ``arrays``) are what its row is labelled by when grouped by shape: a
        backward pass's are its op's inputs, not the gradient it receives."""
        if threading.get_ident() != self._thread:
            return call(*arrays)
        sync = _synchronizer(arrays)
        self._children.append(0.0)
        sync()
        start = self._clock()
        try:
            return call(*arrays)
        finally:
            sync()
            spent = self._clock() - start
            inner = self._children.pop()
            if self._children:
                self._children[-1] += spent
            shapes = None
            if self.group_by_shape:
                shapes = tuple(tuple(a.shape) for a in (arrays if inputs is None else inputs)
                               if hasattr(a, "shape"))
            entry = self._records.setdefault((name, phase, shapes), [0, 0.0])
            entry[0] += 1
            entry[1] += spent - inner

    def rows(self):
        """The recorded ``OpTime`` rows, longest first."""
        rows = [OpTime(n, p, s, c, t) for (n, p, s), (c, t) in self._records.items()]
        return sorted(rows, key=lambda r: (-r.seconds, r.name, r.phase))

    def total(self, phase=None):
        """Seconds in the ops (of one ``phase``, or all)."""
        return sum(t for (_, p, _), (_, t) in self._records.items() if phase in (None, p))

    def table(self, steps=1, limit=None):
        """The rows as a text table, in ms per step (divide by ``steps`` when the block ran
        several), with each row's share of the wall time; ``limit`` keeps the longest."""
        rows = self.rows()
        shown = rows[:limit] if limit else rows
        wall = max(self.wall, 1e-12)
        lines = []
        for r in shown:
            label = f"{r.name}.{r.phase}" + (f" {r.shapes}" if r.shapes is not None else "")
            lines.append((label, f"{r.calls / steps:g}", f"{1e3 * r.seconds / steps:.2f}",
                          f"{100 * r.seconds / wall:.1f}"))
        if len(shown) < len(rows):
            rest = sum(r.seconds for r in rows[len(shown):])
            lines.append((f"({len(rows) - len(shown)} more ops)", "",
                          f"{1e3 * rest / steps:.2f}", f"{100 * rest / wall:.1f}"))
        outside = self.wall - self.total()
        lines.append(("(outside the ops)", "", f"{1e3 * outside / steps:.2f}",
                      f"{100 * outside / wall:.1f}"))
        lines.append(("(wall)", "", f"{1e3 * self.wall / steps:.2f}", "100.0"))
        head = ("op", "calls", "ms", "%")
        widths = [max(len(x[i]) for x in lines + [head]) for i in range(4)]

        def fmt(cells):
            return "  ".join([cells[0].ljust(widths[0])]
                             + [v.rjust(w) for v, w in zip(cells[1:], widths[1:])])
        return "\n".join([fmt(head)] + [fmt(x) for x in lines])


def _no_sync():
    pass


def _synchronizer(arrays):
    for a in arrays:
        if hasattr(a, "shape") and device_of(a) == "cuda":
            return cupy().cuda.get_current_stream().synchronize
    return _no_sync


@contextmanager
def profile(group_by_shape=False, clock=time.perf_counter):
    """Time every op and optimiser step run inside the block (see the module docstring);
    yields the ``Profile``. ``clock`` is the timer (seconds; tests pass a fake one)."""
    prof = Profile(group_by_shape, clock)
    with autograd._profile_lock:
        if autograd._profile is not None:
            raise RuntimeError("profile: a profile is already open (one at a time)")
        autograd._profile = prof
    start = clock()
    try:
        yield prof
    finally:
        prof.wall = clock() - start
        autograd._profile = None
