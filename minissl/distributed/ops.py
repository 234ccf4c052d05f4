"""The collectives a data-parallel step needs, on Tensors and Modules.

``all_gather`` is differentiable (an autograd ``Function``); the others act on raw arrays
outside the graph (parameters, gradients, metrics).
"""
import numpy as np

from ..autograd import Function, Tensor
from ..backend import get_array_module
from . import backends


def _world():
    from . import backend
    return backend()


class AllGather(Function):
    """y = concat_r(x_r) along dim 0, in rank order (first dims may differ between ranks).

    Backward: rank r's input x_r reaches the loss L_s of EVERY rank s through y, so
        dx_r = sum_s (dL_s/dy)[rows of r],
    a reduce-scatter (sum) of the output gradients: each rank receives the sum of its own
    rows only (half the bytes of an all-reduce followed by a slice). With gradients averaged over ranks afterwards, a loss computed on the
    gathered rows trains exactly as one process holding all of them.
    """

    def forward(self, x):
        world = _world()
        parts = world.allgather(x)
        self.counts = [len(p) for p in parts]
        return get_array_module(x).concatenate(parts, axis=0)

    def backward(self, grad):
        return _world().reduce_scatter_sum(grad, self.counts)


def all_gather(tensor):
    """Every rank's ``tensor`` (n_r, *S) concatenated along dim 0 in rank order:
    (sum_r n_r, *S), differentiable (see ``AllGather``). Trailing shapes and dtypes must
    agree (DistributedError otherwise). In a single process: the tensor itself."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"all_gather: expected a Tensor, got {type(tensor).__name__}")
    if tensor.ndim == 0:
        raise ValueError("all_gather: expected a Tensor with a first dim, got a scalar")
    if _world().size == 1:
        return tensor
    return AllGather()(tensor)


def all_reduce(value, op="mean"):
    """Sum or mean over ranks of an array or a Python float (no graph): for metrics, counts,
    statistics. Returns the same kind (float for a float)."""
    if op not in ("sum", "mean"):
        raise ValueError(f"all_reduce: op must be 'sum' or 'mean', got {op!r}")
    world = _world()
    scalar = not hasattr(value, "shape")
    a = np.asarray([value], dtype=np.float64) if scalar else value
    if world.size > 1:
        a = world.allreduce_sum(a)
        if op == "mean":
            a = a / world.size
    return float(a[0]) if scalar else a


def group_rows(n, groups=1, rank=None, size=None):
    """The rows (a host int array) of a global batch of ``n`` that rank ``rank`` (default:
    this rank) of ``size`` ranks holds. ``groups=1``: the contiguous rows [r n/N, (r+1) n/N).
    ``groups=G > 1``: the batch is normalised in G groups as ``nn.SplitBatchNorm`` with G
    splits groups it in one process (row i in group i mod G), every group stays on one rank,
    and rank r holds groups [r G/N, (r+1) G/N): its rows in order, so that a SplitBatchNorm
    with G/N splits on the rank computes exactly those groups (local row j is in group
    r G/N + j mod (G/N))."""
    world = _world()
    r = world.rank if rank is None else rank
    N = world.size if size is None else size
    if n % N:
        raise ValueError(f"shard: a global batch of {n} rows does not split evenly over {N} "
                         f"ranks; use a batch size divisible by the number of ranks")
    if groups == 1:
        return np.arange(r * (n // N), (r + 1) * (n // N))
    if groups % N or n % groups:
        raise ValueError(f"shard: {groups} batch-norm groups of a batch of {n} rows cannot "
                         f"be spread over {N} ranks: the groups must be a multiple of the "
                         f"ranks and divide the batch")
    g = groups // N
    i = np.arange(n)
    return i[(i % groups) // g == r]


def shard(*arrays, groups=1):
    """This rank's rows of arrays holding the whole global batch: rows ``group_rows(B,
    groups)`` of each, by default [r B/N, (r + 1) B/N) (B must be divisible by N). One array
    in, one out; several in, a tuple out. The single-process path returns the arrays
    themselves.

    Every rank draws the randomness of the WHOLE global batch from the same generator and
    keeps its rows, so N ranks see exactly the views, masks and noise that one process with
    the global batch sees (the cost: augmentation is repeated on every rank).
    """
    world = _world()
    out = []
    for a in arrays:
        if world.size > 1:
            rows = group_rows(len(a), groups)
            if groups == 1:
                a = a[rows[0]:rows[-1] + 1]
            else:
                a = a[get_array_module(a.data if isinstance(a, Tensor) else a).asarray(rows)]
        out.append(a)
    return out[0] if len(out) == 1 else tuple(out)


def broadcast_parameters(module, root=0):
    """Overwrite every parameter and buffer of ``module`` (in ``state_dict`` order) with rank
    ``root``'s values, in place: all ranks start from one model."""
    world = _world()
    if world.size == 1:
        return
    for t in list(module.parameters()) + [b for b in module.buffers() if b is not None]:
        if not t.data.flags.c_contiguous:
            t.data = get_array_module(t.data).ascontiguousarray(t.data)
        world.broadcast(t.data, root)


def all_reduce_gradients(params, bucket_bytes=25 * 2 ** 20):
    """Replace each ``p.grad`` by its average over ranks, in place.

    Gradients are packed into flat buckets of at most ``bucket_bytes`` (one dtype each) so
    that a model of many small tensors costs a few large messages, not one latency per
    tensor (PyTorch DDP's default bucket is 25 MiB too). Parameters without a gradient are
    skipped: they must be the same on every rank (they are: the ranks run the same graph).
    """
    world = _world()
    if world.size == 1:
        return
    params = [p for p in params if p.grad is not None]
    buckets, current, size = [], [], 0
    for p in params:
        nbytes = p.grad.nbytes
        if current and (size + nbytes > bucket_bytes or p.grad.dtype != current[0].grad.dtype):
            buckets.append(current)
            current, size = [], 0
        current.append(p)
        size += nbytes
    if current:
        buckets.append(current)
    for bucket in buckets:
        xp = get_array_module(bucket[0].grad)
        flat = xp.concatenate([p.grad.reshape(-1) for p in bucket])
        flat = world.allreduce_sum(flat)
        flat /= world.size
        offset = 0
        for p in bucket:
            n = p.grad.size
            p.grad = flat[offset:offset + n].reshape(p.grad.shape)
            offset += n


__all__ = ["AllGather", "all_gather", "all_reduce", "shard", "group_rows",
           "broadcast_parameters", "all_reduce_gradients", "backends"]
