"""The autodiff engine: ``Tensor``, ``Function``, reverse-mode backward, ``no_grad``.

A ``Tensor`` wraps an ndarray (numpy on the CPU, cupy on the GPU) and, when it was produced by
a differentiable op, a reference ``_ctx`` to the ``Function`` that made it. A ``Function``
holds its input Tensors and whatever it saved in ``forward``; it does NOT hold its output, so
the graph has no reference cycles and is freed by plain reference counting.

``Function.forward`` and ``Function.backward`` work on raw arrays of the inputs' array module
(``xp``): backward builds no graph (double backward is a deliberate non-goal, see docs/design.md).

Reverse mode (the chain rule, from the output back): for ``y = f(x1, .., xn)`` and a scalar
loss ``L``, ``backward`` receives ``dL/dy`` and returns ``dL/dxi = (dy/dxi)^T dL/dy`` for every
input, i.e. the vector-Jacobian product.
"""
import threading

import numpy as np

from .backend import device_of, get_array_module, to_device, xp_for
from .kernels import memory as _memory


class _GradMode(threading.local):
    # Per thread, as PyTorch's: an evaluation thread inside ``no_grad`` must not switch off
    # the graph of a training step in another thread. Each thread starts with grad enabled.
    enabled = True


_grad_mode = _GradMode()

# The open minissl.profiler.Profile, or None: when set, ops' forward and backward passes run
# through its ``run`` (timed); when None (always, unless a profile is open) they are called
# directly.
_profile = None
_profile_lock = threading.Lock()


def is_grad_enabled():
    """Whether ops called from this thread record a graph (see ``no_grad``)."""
    return _grad_mode.enabled


class no_grad:
    """Context manager (and decorator): no graph is recorded inside, in the calling thread.

    >>> with no_grad():
    ...     y = model(x)          # y.requires_grad is False, nothing is saved for backward
    """

    __slots__ = ("_prev",)

    def __enter__(self):
        self._prev = _grad_mode.enabled
        _grad_mode.enabled = False
        return self

    def __exit__(self, *exc):
        _grad_mode.enabled = self._prev
        return False

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = getattr(fn, "__doc__", None)
        return wrapper


class Function:
    """A differentiable op. Subclasses define ``forward(*arrays)`` and ``backward(grad)``.

    ``forward`` gets the raw arrays of the input Tensors (in call order) and returns one array;
    it may save what backward needs on ``self``. ``backward`` gets the gradient of the output
    (an array of the output's shape) and returns one gradient per input (a tuple, or a bare
    array for a single input), or None for an input that needs none; ``self.needs_grad[i]``
    says whether input ``i`` requires one, so work can be skipped.

    Parameters of an op that are not tensors (a dim, a stride) are passed to ``__init__``:
    ``Sum(dim=1, keepdim=False)(x)``.
    """

    # Subclasses with __slots__ stay lean; those without get a __dict__ for their saved arrays.
    __slots__ = ("inputs", "needs_grad", "__dict__")
    # The dtype policy, applied here for every op: inputs are float32 or float64; integer and
    # bool inputs only for the ops that are exact on them (+ - *, negation, sum, max, shape
    # and indexing ops, where, masked_fill, casts), which set this to True. Anything else
    # (float16, whose sums and norms overflow; an int fed to sigmoid or a mean) is refused
    # with a TypeError naming the op and the dtype, never computed wrongly.
    integer_inputs = False

    def __call__(self, *inputs):
        arrays = [t.data for t in inputs]
        for a in arrays:
            if a.dtype.char not in "fd":
                _check_dtype(self, a.dtype)
        # The arrays an op allocates come from minissl's caching allocator (kernels/memory):
        # a training step frees and allocates the same large arrays every step, and reusing
        # them saves a page fault per 4 KiB that glibc would otherwise return to the system.
        token = _memory.enter()
        try:
            if _profile is None:
                out = self.forward(*arrays)
            else:
                out = _profile.run(self.name, "forward", self.forward, arrays)
        finally:
            _memory.leave(token)
        if isinstance(out, np.generic):
            # NumPy returns scalars, not 0-d arrays, from ops on 0-d arrays and full
            # reductions; a Tensor always holds an ndarray (in-place updates, .numpy(), dtype).
            out = np.asarray(out)
        if _grad_mode.enabled:
            for t in inputs:
                if t.requires_grad:
                    self.inputs = inputs
                    self.needs_grad = tuple(u.requires_grad for u in inputs)
                    return Tensor(out, True, self)
        return Tensor(out)

    def forward(self, *arrays):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    @property
    def name(self):
        return type(self).__name__


def _check_dtype(fn, dtype):
    if fn.integer_inputs and dtype.kind in "biu":
        return
    takes = "float32, float64 or integers" if fn.integer_inputs else "float32 or float64"
    raise TypeError(f"{fn.name}: got an input of dtype {dtype}; {fn.name} takes {takes} "
                    f"(cast first, e.g. x.float())")


def _topological_order(root):
    """Functions reachable from ``root``, every function after all of its inputs' creators.

    Why topological order rather than a plain depth-first walk: a node used twice (``b = a + a;
    c = b + b``) must receive ALL of its gradient, from every consumer, before it passes the
    sum on to its own inputs. Walking functions in reverse topological order guarantees that
    every consumer of a tensor has run before the tensor's creator does.
    """
    order = []
    seen = {root}
    stack = [(root, iter(root.inputs))]
    while stack:
        fn, it = stack[-1]
        for t in it:
            c = t._ctx
            if c is not None and c not in seen:
                if c.inputs is None:
                    raise RuntimeError(
                        f"backward through {c.name} a second time: its graph was released "
                        "after the first backward (pass retain_graph=True to keep it)")
                seen.add(c)
                stack.append((c, iter(c.inputs)))
                break
        else:
            stack.pop()
            order.append(fn)
    return order


def _check_grad(fn, i, g, t):
    """The engine's invariant: a gradient has its input's shape and dtype (names the op)."""
    if g.shape != t.data.shape or g.dtype != t.data.dtype:
        raise RuntimeError(
            f"{fn.name}.backward returned a gradient of shape {tuple(g.shape)} and dtype "
            f"{g.dtype} for input {i} of shape {tuple(t.data.shape)} and dtype {t.data.dtype}")


def _accumulate_leaf(t, g):
    # A new array, never in place: ``g`` may be shared with another input (Add passes the same
    # gradient to both sides), and the user may hold a reference to the previous ``.grad``.
    g = g if t.grad is None else t.grad + g
    t.grad = np.asarray(g) if isinstance(g, np.generic) else g  # an ndarray, never a scalar


_SAVED_SLOTS = {}


def _release(fn):
    """Drop what ``fn`` holds for backward: its inputs and every saved array.

    Saved state lives in ``__dict__`` or in a subclass's ``__slots__``; both are cleared, or
    the function of a tensor the user keeps (the loss, say) would keep its saved arrays alive.
    """
    fn.inputs = None
    fn.__dict__.clear()
    cls = type(fn)
    names = _SAVED_SLOTS.get(cls)
    if names is None:
        names = _SAVED_SLOTS[cls] = tuple(
            n for c in cls.__mro__ if c is not Function and issubclass(c, Function)
            for n in c.__dict__.get("__slots__", ()))
    for n in names:
        setattr(fn, n, None)


def run_backward(root, grad, retain_graph=False):
    """Propagate ``grad`` (dL/d root) to every leaf that requires grad, accumulating ``.grad``."""
    fn0 = root._ctx
    if fn0 is None:
        _accumulate_leaf(root, grad)
        return
    if fn0.inputs is None:
        raise RuntimeError(f"backward through {fn0.name} a second time: its graph was released "
                           "after the first backward (pass retain_graph=True to keep it)")
    order = _topological_order(fn0)
    grads = {fn0: grad}  # output gradient of each function, summed over its consumers
    for fn in reversed(order):
        g = grads.pop(fn)  # freed as soon as it is consumed
        if _profile is None:
            in_grads = fn.backward(g)
        else:
            in_grads = _profile.run(fn.name, "backward", fn.backward, (g,), fn.inputs)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        for i, (t, gi) in enumerate(zip(fn.inputs, in_grads)):
            if gi is None or not t.requires_grad:
                continue
            if isinstance(gi, np.generic):
                gi = np.asarray(gi)
            _check_grad(fn, i, gi, t)
            c = t._ctx
            if c is None:
                _accumulate_leaf(t, gi)
            elif c in grads:
                grads[c] = grads[c] + gi
            else:
                grads[c] = gi
        if not retain_graph:
            # Release the graph: inputs and saved arrays go as soon as they have been used.
            _release(fn)


class Tensor:
    """An n-dimensional array with an optional gradient (see ``minissl.tensor`` to make one).

    Attributes: ``data`` (numpy or cupy ndarray), ``grad`` (ndarray of the same shape or None),
    ``requires_grad``; properties ``shape``, ``ndim``, ``dtype``, ``device``, ``T``.
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "__weakref__")
    # Make ``ndarray (op) Tensor`` call Tensor's reflected operator instead of numpy's ufunc.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad=False, _ctx=None):
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self._ctx = _ctx

    # ----------------------------------------------------------------- properties
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self):
        return device_of(self.data)

    @property
    def is_leaf(self):
        return self._ctx is None

    @property
    def T(self):
        """All dimensions reversed (``x.T`` of a matrix is its transpose), like torch."""
        return self.permute(*reversed(range(self.ndim)))

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self):
        return int(self.data.size)

    def dim(self):
        return self.data.ndim

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == "cpu" else f", device='{self.device}'"
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{dev}{extra})"

    # ----------------------------------------------------------------- autodiff
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf), times ``grad``, into the ``.grad`` of every leaf.

        ``grad`` defaults to one for a scalar output and is required otherwise.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad and has no graph "
                               "(did you compute it under no_grad, or from detached inputs?)")
        xp = get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward: a gradient must be given for a non-scalar output "
                                 f"of shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = xp.asarray(grad.data if isinstance(grad, Tensor) else grad)
            if grad.shape != self.data.shape:
                raise ValueError(f"backward: gradient of shape {tuple(grad.shape)} given for an "
                                 f"output of shape {self.shape}")
            grad = grad.astype(self.data.dtype, copy=False)
        token = _memory.enter()      # gradients from the caching allocator, as in forward
        try:
            run_backward(self, grad, retain_graph)
        finally:
            _memory.leave(token)

    def detach(self):
        """The same data, cut from the graph (shares memory, never requires grad)."""
        return Tensor(self.data)

    def requires_grad_(self, flag=True):
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"requires_grad_: only floating tensors can require grad, "
                            f"got {self.dtype}")
        self.requires_grad = flag
        return self

    def zero_grad(self):
        self.grad = None

    # ----------------------------------------------------------------- host / device
    def numpy(self):
        """A host (numpy) copy-or-view of the data, detached from the graph."""
        return to_device(self.data, "cpu")

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item: only a one-element tensor converts to a Python number, "
                             f"got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device):
        """A copy on ``device`` ('cpu' or 'cuda'), differentiable (gradients flow back)."""
        if device == self.device:
            return self
        return _shape.ToDevice(device)(self)

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def astype(self, dtype):
        dtype = np.dtype(dtype)
        if dtype == self.data.dtype:
            return self
        if dtype.kind != "f" or self.data.dtype.kind != "f":
            return Tensor(self.data.astype(dtype))
        return _ew.Cast(dtype)(self)

    # ----------------------------------------------------------------- operators
    def __add__(self, other):
        return _ew.add(self, other)

    def __radd__(self, other):
        return _ew.add(other, self)

    def __sub__(self, other):
        return _ew.sub(self, other)

    def __rsub__(self, other):
        return _ew.sub(other, self)

    def __mul__(self, other):
        return _ew.mul(self, other)

    def __rmul__(self, other):
        return _ew.mul(other, self)

    def __truediv__(self, other):
        return _ew.div(self, other)

    def __rtruediv__(self, other):
        return _ew.div(other, self)

    def __pow__(self, other):
        return _ew.pow(self, other)

    def __rpow__(self, other):
        return _ew.pow(other, self)

    def __matmul__(self, other):
        return _linalg.matmul(self, other)

    def __rmatmul__(self, other):
        return _linalg.matmul(other, self)

    def __neg__(self):
        return _ew.Neg()(self)

    def __pos__(self):
        return self

    def __getitem__(self, key):
        return _shape.getitem(self, key)

    # Comparisons give boolean tensors without gradient (useful for masks).
    def _cmp(self, other, op):
        o = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, o))

    def __lt__(self, other):
        return self._cmp(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._cmp(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._cmp(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._cmp(other, lambda a, b: a >= b)

    def eq(self, other):
        return self._cmp(other, lambda a, b: a == b)

    __hash__ = object.__hash__

    # ----------------------------------------------------------------- math methods
    def exp(self):
        return _ew.Exp()(self)

    def log(self):
        return _ew.Log()(self)

    def sqrt(self):
        return _ew.Sqrt()(self)

    def abs(self):
        return _ew.Abs()(self)

    def tanh(self):
        return _ew.Tanh()(self)

    def sigmoid(self):
        return _ew.Sigmoid()(self)

    def relu(self):
        return _ew.ReLU()(self)

    def clamp(self, min=None, max=None):
        return _ew.clamp(self, min, max)

    def masked_fill(self, mask, value):
        return _ew.masked_fill(self, mask, value)

    def fill_diagonal(self, value):
        return _ew.fill_diagonal(self, value)

    def sum(self, dim=None, keepdim=False):
        return _reduce.Sum(dim, keepdim)(self)

    def mean(self, dim=None, keepdim=False):
        return _reduce.Mean(dim, keepdim)(self)

    def max(self, dim=None, keepdim=False):
        return _reduce.Max(dim, keepdim)(self)

    def var(self, dim=None, keepdim=False, unbiased=True):
        return _reduce.Var(dim, keepdim, unbiased)(self)

    def std(self, dim=None, keepdim=False, unbiased=True):
        return self.var(dim, keepdim, unbiased).sqrt()

    def argmax(self, dim=None):
        return Tensor(self.data.argmax(axis=dim))

    # ----------------------------------------------------------------- shape methods
    def reshape(self, *shape):
        return _shape.reshape(self, shape)

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        return _shape.flatten(self, start_dim, end_dim)

    def unsqueeze(self, dim):
        return _shape.unsqueeze(self, dim)

    def squeeze(self, dim):
        return _shape.squeeze(self, dim)

    def transpose(self, dim0, dim1):
        return _shape.transpose(self, dim0, dim1)

    def permute(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        return _shape.Permute(dims)(self)

    def split(self, split_size, dim=0):
        return _shape.split(self, split_size, dim)

    def chunk(self, chunks, dim=0):
        return _shape.chunk(self, chunks, dim)


def tensor(data, requires_grad=False, dtype=None, device="cpu"):
    """Make a Tensor, like ``torch.tensor``: the data are copied.

    An ndarray keeps its dtype (float64 stays float64); Python floats and lists of them become
    float32; integer data becomes int64 and never requires grad; bools stay bool.
    """
    if isinstance(data, Tensor):
        data = data.data
    src = get_array_module(data)
    if src is not np or isinstance(data, np.ndarray):
        arr = data.copy()
    elif isinstance(data, np.generic):  # a NumPy scalar keeps its dtype, like an ndarray
        arr = np.array(data)
    else:
        arr = np.array(data)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
        elif arr.dtype.kind not in "b":
            raise TypeError(f"tensor: cannot make a tensor of {type(data).__name__} "
                            f"(numpy dtype {arr.dtype})")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    arr = to_device(arr, device)
    if requires_grad and arr.dtype.kind != "f":
        raise TypeError(f"tensor: only floating tensors can require grad, got {arr.dtype}")
    return Tensor(arr, bool(requires_grad))


def as_tensor_like(x, like):
    """Wrap a non-Tensor operand (a Python number or an ndarray) for a binary op with ``like``.

    A Python number takes the floating dtype of ``like`` (float32 stays float32, as in PyTorch);
    an ndarray keeps its dtype and is moved to ``like``'s device.
    """
    if isinstance(x, Tensor):
        return x
    xp = get_array_module(like.data)
    if isinstance(x, (bool, int, float)) and not isinstance(x, np.generic):
        dt = like.data.dtype
        if dt.kind != "f" and isinstance(x, float):
            dt = np.float32
        return Tensor(xp.asarray(x, dtype=dt))
    if isinstance(x, np.generic):
        return Tensor(xp.asarray(x))
    if get_array_module(x) is not xp:
        raise ValueError(f"operands on different devices: {device_of(x)} and {like.device}")
    return Tensor(x)


# Op modules are imported last: they import Function and Tensor from this module.
from .ops import elementwise as _ew  # noqa: E402
from .ops import linalg as _linalg  # noqa: E402
from .ops import reduce as _reduce  # noqa: E402
from .ops import shape as _shape  # noqa: E402
