"""Shape ops: reshape, permute, indexing, concatenation, stacking, device moves.

None of these changes a value, so each backward moves the gradient back where the value came
from: reshape back, permute by the inverse permutation, scatter-add into the indexed places,
split a concatenation.
"""
import numpy as np

from ..autograd import Function, Tensor
from ..backend import get_array_module, to_device


class Reshape(Function):
    """y = x viewed with another shape (same elements, row-major order);  dx = g reshaped back."""

    integer_inputs = True

    __slots__ = ("shape", "in_shape")

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view a tensor of shape {tuple(x.shape)} "
                             f"({x.size} elements) as {tuple(self.shape)}") from None

    def backward(self, g):
        return g.reshape(self.in_shape)


def reshape(x, shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape(tuple(shape))(x)


def flatten(x, start_dim=0, end_dim=-1):
    nd = max(x.ndim, 1)
    s, e = start_dim % nd, end_dim % nd
    shape = x.shape[:s] + (-1,) + x.shape[e + 1:] if x.ndim else (1,)
    if x.numel() == 0:
        n = 1
        for d in x.shape[s:e + 1]:
            n *= d
        shape = x.shape[:s] + (n,) + x.shape[e + 1:]
    return Reshape(shape)(x)


def unsqueeze(x, dim):
    dim = dim % (x.ndim + 1)
    return Reshape(x.shape[:dim] + (1,) + x.shape[dim:])(x)


def squeeze(x, dim):
    dim = dim % max(x.ndim, 1)
    if x.shape[dim] != 1:
        return x
    return Reshape(x.shape[:dim] + x.shape[dim + 1:])(x)


class Permute(Function):
    """y = x with its axes reordered by ``dims``;  dx = g permuted by the inverse order."""

    integer_inputs = True

    __slots__ = ("dims", "inverse")

    def __init__(self, dims):
        self.dims = tuple(dims)

    def forward(self, x):
        nd = x.ndim
        dims = tuple(d % nd if nd else d for d in self.dims)
        if sorted(dims) != list(range(nd)):
            raise ValueError(f"permute: {self.dims} is not a permutation of the {nd} dims of a "
                             f"tensor of shape {tuple(x.shape)}")
        self.dims = dims
        self.inverse = tuple(np.argsort(dims))
        return x.transpose(dims)

    def backward(self, g):
        return g.transpose(self.inverse)


def transpose(x, dim0, dim1):
    nd = x.ndim
    if not (-nd <= dim0 < nd and -nd <= dim1 < nd):
        raise ValueError(f"transpose: dims ({dim0}, {dim1}) out of range for shape {x.shape}")
    dims = list(range(nd))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return Permute(dims)(x)


def _index_key(key, xp):
    """Convert Tensor indices to arrays and reject float indices; True if any index is advanced."""
    items = key if isinstance(key, tuple) else (key,)
    out, advanced = [], False
    for k in items:
        if isinstance(k, Tensor):
            k = k.data
        if isinstance(k, list):
            # An empty list is an empty integer index (NumPy's and torch's reading).
            k = np.asarray(k) if k else np.zeros(0, dtype=np.intp)
        if hasattr(k, "dtype") and hasattr(k, "shape") and not isinstance(k, np.generic):
            if k.dtype.kind not in "iub":
                raise TypeError(f"getitem: tensors used as indices must be integer or boolean, "
                                f"got {k.dtype}")
            k = xp.asarray(k)
            advanced = True
        elif isinstance(k, (float, np.floating)):
            raise TypeError(f"getitem: index {k!r} is a float; indices must be integers, "
                            "slices, None, Ellipsis or integer/boolean arrays")
        out.append(k)
    return (tuple(out) if isinstance(key, tuple) else out[0]), advanced


class GetItem(Function):
    """y = x[key];  dx = zeros with g added at the indexed places.

    With integer-array (advanced) indices an element may be picked twice; its gradient is then
    the sum of both picks, which ``add.at`` (unbuffered) gives and plain assignment would not.
    """

    integer_inputs = True

    __slots__ = ("key", "advanced", "shape", "dtype")

    def __init__(self, key, advanced):
        self.key, self.advanced = key, advanced

    def forward(self, x):
        self.shape, self.dtype = x.shape, x.dtype
        try:
            return x[self.key]
        except IndexError as e:
            raise IndexError(f"getitem: {e} (tensor of shape {tuple(x.shape)})") from None

    def backward(self, g):
        xp = get_array_module(g)
        gx = xp.zeros(self.shape, dtype=self.dtype)
        if self.advanced:
            xp.add.at(gx, self.key, g)
        else:
            gx[self.key] = g
        return gx


def getitem(x, key):
    key, advanced = _index_key(key, get_array_module(x.data))
    return GetItem(key, advanced)(x)


class Cat(Function):
    """y = concatenation of the inputs along ``dim``;  dx_i = the slice of g that x_i became."""

    integer_inputs = True

    __slots__ = ("dim", "sizes")

    def __init__(self, dim):
        self.dim = dim

    def forward(self, *xs):
        xp = get_array_module(xs[0])
        self.sizes = [x.shape[self.dim] for x in xs]
        return xp.concatenate(xs, axis=self.dim)

    def backward(self, g):
        xp = get_array_module(g)
        cuts = np.cumsum(self.sizes)[:-1].tolist()
        return tuple(xp.split(g, cuts, axis=self.dim))


def _check_same(tensors, op, dim, skip_dim):
    if not tensors:
        raise ValueError(f"{op}: expected a non-empty sequence of tensors")
    tensors = [t if isinstance(t, Tensor) else Tensor(get_array_module(t).asarray(t))
               for t in tensors]
    nd = tensors[0].ndim
    shapes = [t.shape for t in tensors]
    for t in tensors:
        if t.ndim != nd:
            raise ValueError(f"{op}: tensors must have the same number of dims, got {shapes}")
    rng = nd if skip_dim else nd + 1
    if not -rng <= dim < rng:
        raise ValueError(f"{op}: dim {dim} out of range for shapes {shapes}")
    d = dim % rng
    ref = [s for i, s in enumerate(shapes[0]) if not (skip_dim and i == d)]
    for s in shapes[1:]:
        if [v for i, v in enumerate(s) if not (skip_dim and i == d)] != ref:
            raise ValueError(f"{op}: shapes {shapes} do not match outside dim {dim}")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"{op}: tensors must share one dtype, got {sorted(map(str, dtypes))}")
    return tensors, d


def cat(tensors, dim=0):
    """Concatenate tensors of equal shape except along ``dim`` (like ``torch.cat``)."""
    tensors, d = _check_same(list(tensors), "cat", dim, skip_dim=True)
    return Cat(d)(*tensors)


class Stack(Function):
    """y = the inputs stacked along a new axis ``dim``;  dx_i = g[..., i, ...] along that axis."""

    integer_inputs = True

    __slots__ = ("dim",)

    def __init__(self, dim):
        self.dim = dim

    def forward(self, *xs):
        return get_array_module(xs[0]).stack(xs, axis=self.dim)

    def backward(self, g):
        xp = get_array_module(g)
        return tuple(xp.take(g, i, axis=self.dim) for i in range(g.shape[self.dim]))


def stack(tensors, dim=0):
    """Stack tensors of one shape along a new dimension (like ``torch.stack``)."""
    tensors, d = _check_same(list(tensors), "stack", dim, skip_dim=False)
    return Stack(d)(*tensors)


def split(x, split_size, dim=0):
    """Pieces of ``split_size`` along ``dim`` (the last may be smaller), like ``torch.split``."""
    n = x.shape[dim]
    sizes = [split_size] * (n // split_size) + ([n % split_size] if n % split_size else []) \
        if isinstance(split_size, int) else list(split_size)
    out, start = [], 0
    index = [slice(None)] * x.ndim
    for s in sizes:
        index[dim] = slice(start, start + s)
        out.append(x[tuple(index)])
        start += s
    return tuple(out)


def chunk(x, chunks, dim=0):
    n = x.shape[dim]
    return split(x, -(-n // chunks), dim)


class ToDevice(Function):
    """y = x copied to another device;  dx = g copied back."""

    integer_inputs = True

    __slots__ = ("device", "src")

    def __init__(self, device):
        self.device = device

    def forward(self, x):
        self.src = "cpu" if get_array_module(x) is np else "cuda"
        return to_device(x, self.device)

    def backward(self, g):
        return to_device(g, self.src)



class Pad(Function):
    """Constant padding of the last dims: y = value everywhere, then y[dst] = x[src];
    dx = g[dst] in x's places src, zero elsewhere.

    A negative amount crops, as in PyTorch, so ``src`` and ``dst`` are the box of x that
    survives and where it lands in y; the padding is a constant and gets no gradient."""

    __slots__ = ("src", "dst", "tail", "value", "x_shape")

    def __init__(self, src, dst, tail, value):
        self.src, self.dst, self.tail, self.value = src, dst, tail, value

    def forward(self, x):
        self.x_shape = x.shape
        y = get_array_module(x).full(x.shape[:x.ndim - len(self.tail)] + self.tail, self.value,
                                     dtype=x.dtype)
        y[(Ellipsis,) + self.dst] = x[(Ellipsis,) + self.src]
        return y

    def backward(self, g):
        gx = get_array_module(g).zeros(self.x_shape, dtype=g.dtype)
        gx[(Ellipsis,) + self.src] = g[(Ellipsis,) + self.dst]
        return gx


def pad(input, pad, mode="constant", value=None):
    """``torch.nn.functional.pad``, constant mode: ``pad = (left, right)`` pads the last dim,
    ``(left, right, top, bottom)`` the last two, and so on; negative amounts crop. A causal
    conv1d is ``conv1d(pad(x, ((k - 1) * dilation, 0)), w, dilation=dilation)``."""
    if mode != "constant":
        raise NotImplementedError(f"pad: mode {mode!r} is not implemented (only 'constant')")
    pad = tuple(pad) if isinstance(pad, (tuple, list)) else pad
    if not isinstance(pad, tuple) or len(pad) % 2 or not all(
            isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in pad):
        raise ValueError(f"pad: pad must be an even number of ints (left, right, ...), "
                         f"got {pad!r}")
    if len(pad) // 2 > input.ndim:
        raise ValueError(f"pad: {len(pad)} pad values for an input of shape "
                         f"{tuple(input.shape)} ({input.ndim} dims)")
    src, dst, tail = [], [], []
    for i in range(len(pad) // 2):            # (pad[2i], pad[2i+1]) pads dim -1 - i
        lo, hi = int(pad[2 * i]), int(pad[2 * i + 1])
        size = input.shape[input.ndim - 1 - i]
        if size + lo + hi < 0:
            raise ValueError(f"pad: padding ({lo}, {hi}) of dim {input.ndim - 1 - i} of an "
                             f"input of shape {tuple(input.shape)} gives a negative size")
        a = max(0, -lo)                       # x[a:b] survives the cropping ...
        b = max(a, size - max(0, -hi))
        start = max(0, lo)                    # ... and lands at y[start:start + b - a]
        src.insert(0, slice(a, b))
        dst.insert(0, slice(start, start + b - a))
        tail.insert(0, size + lo + hi)
    v = 0 if value is None else value
    return Pad(tuple(src), tuple(dst), tuple(tail), v)(input)
