"""``SyncBatchNorm``: batch normalisation over the global batch of all ranks.

Ioffe & Szegedy, "Batch Normalization", ICML 2015 (arXiv:1502.03167), with the statistics
of the union of the ranks' batches, as ``torch.nn.SyncBatchNorm`` (used by SimCLR's and
BYOL's official code: "global BN"). Plain BatchNorm on N ranks normalises each rank's B/N rows
by their own statistics: a different function of the data from one process with the global
batch, and for contrastive methods a leak (a batch's own statistics tell which rows belong
together). With SyncBatchNorm, N ranks compute exactly what one process computes.

Written on raw arrays and the backend's all-reduce (not on the batch-norm kernels): two
all-reduces forward (sums then centred squares: the two-pass variance, as exact as the
single-process op), one backward (the two sums of the input gradient's formula).

``nn.SplitBatchNorm`` with S splits (MoCo's shuffling BN) normalises S groups of the global
batch; on N ranks each rank holds S/N whole groups (``shard(..., groups=S)``), so the groups
need no collective; only the running statistics are averaged over the ranks
(``SyncSplitBatchNorm1d/2d``).
"""
from ..autograd import Function
from ..backend import get_array_module
from ..nn import Module, SplitBatchNorm1d, SplitBatchNorm2d
from ..nn.layers import _BatchNorm


def _world():
    from . import backend
    return backend()


class SyncBatchNormFn(Function):
    """y = (x - mu) / sqrt(var + eps) * weight + bias per channel, mu and the biased var over
    N and the spatial dims of ALL ranks (M values per channel in all).

    Backward (x_hat the normalised input, g = dL/dy, sums over all ranks' M values):
        dx = weight / sqrt(var + eps) * (g - sum(g) / M - x_hat * sum(g x_hat) / M)
        dweight = sum_local(g x_hat),  dbias = sum_local(g)   (averaged over ranks later)
    """

    def __init__(self, eps, affine):
        self.eps, self.affine = eps, affine

    def forward(self, x, weight=None, bias=None):
        xp = get_array_module(x)
        world = _world()
        C = x.shape[1]
        self.axes = (0,) + tuple(range(2, x.ndim))
        self.view = (1, C) + (1,) * (x.ndim - 2)
        n_local = x.size // C
        s = world.allreduce_sum(xp.concatenate([x.sum(self.axes), xp.asarray([n_local],
                                                                           x.dtype)]))
        self.count = float(s[-1])
        if self.count <= 1:
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel over all "
                             f"ranks when training, got {self.count:g} (input {x.shape})")
        self.mean = s[:C] / self.count
        xc = x - self.mean.reshape(self.view)
        self.var = world.allreduce_sum((xc * xc).sum(self.axes)) / self.count
        self.invstd = 1.0 / xp.sqrt(self.var + self.eps)
        self.xhat = xc * self.invstd.reshape(self.view)
        self.weight = weight
        if not self.affine:
            return self.xhat
        return self.xhat * weight.reshape(self.view) + bias.reshape(self.view)

    def backward(self, grad):
        xp = get_array_module(grad)
        C = grad.shape[1]
        sg = grad.sum(self.axes)
        sgx = (grad * self.xhat).sum(self.axes)
        both = _world().allreduce_sum(xp.concatenate([sg, sgx]))
        scale = self.invstd if self.weight is None else self.weight * self.invstd
        dx = scale.reshape(self.view) * (grad - (both[:C] / self.count).reshape(self.view)
                                         - self.xhat * (both[C:] / self.count).reshape(self.view))
        if not self.affine:
            return dx
        return dx, sgx, sg


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all ranks (inputs (N, C, *)); the parameters,
    buffers and their names are BatchNorm's, so checkpoints move between the two. In eval
    mode, and in a world of one process, it IS ``BatchNorm`` (the same op and kernels)."""

    _expected_ndim = (2, 3, 4, 5)

    def forward(self, x):
        if not self.training or _world().size == 1:
            return super().forward(x)
        if x.ndim not in self._expected_ndim or x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm: expected input (N, {self.num_features}, *), got "
                             f"shape {x.shape}")
        present = [t for t in (self.weight, self.bias) if t is not None]
        fn = SyncBatchNormFn(self.eps, self.affine)
        y = fn(x, *present)
        if self.track_running_stats:
            self.num_batches_tracked.data += 1
            m = (1.0 / float(self.num_batches_tracked.data) if self.momentum is None
                 else self.momentum)
            unbiased = fn.var * (fn.count / (fn.count - 1))
            self.running_mean.data[...] = (1 - m) * self.running_mean.data + m * fn.mean
            self.running_var.data[...] = (1 - m) * self.running_var.data + m * unbiased
        return y.relu() if self.fused_relu else y


class _SplitOnRanks:
    """``SplitBatchNorm`` with ``num_splits`` = S groups of the GLOBAL batch, on N ranks: the
    rank's S/N groups as a SplitBatchNorm with S/N splits (its rows must be
    ``shard(..., groups=S)``); then the running statistics, each rank's the average of its
    groups' updates, are averaged over the ranks: the average over all S groups, as one
    process with the global batch computes it. Forward values and backward need no
    collective (no group spans two ranks). In one process it IS ``SplitBatchNorm``."""

    def _splits_here(self):
        size = _world().size
        if self.num_splits % size:
            raise ValueError(f"{type(self).__name__}: num_splits={self.num_splits} groups "
                             f"cannot be spread over {size} ranks (use a multiple of {size})")
        return self.num_splits // size

    def forward(self, x):
        y = super().forward(x)
        world = _world()
        if self.training and self.track_running_stats and world.size > 1:
            xp = get_array_module(self.running_mean.data)
            both = world.allreduce_sum(xp.concatenate([self.running_mean.data,
                                                       self.running_var.data])) / world.size
            C = self.num_features
            self.running_mean.data[...], self.running_var.data[...] = both[:C], both[C:]
        return y


class SyncSplitBatchNorm1d(_SplitOnRanks, SplitBatchNorm1d):
    """``SplitBatchNorm1d`` on N ranks (see ``_SplitOnRanks``)."""


class SyncSplitBatchNorm2d(_SplitOnRanks, SplitBatchNorm2d):
    """``SplitBatchNorm2d`` on N ranks (see ``_SplitOnRanks``)."""


def convert_sync_batchnorm(module):
    """Replace every BatchNorm1d/2d inside ``module`` (and ``module`` itself) by a
    SyncBatchNorm, and every ``SplitBatchNorm1d/2d`` by ``SyncSplitBatchNorm1d/2d``, holding
    THE SAME parameter and buffer tensors (an optimiser built before keeps working); returns
    the converted module, as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does."""
    split = {SplitBatchNorm1d: SyncSplitBatchNorm1d, SplitBatchNorm2d: SyncSplitBatchNorm2d}
    if isinstance(module, _BatchNorm) and type(module) in split:
        kind = split[type(module)] if module.num_splits > 1 else SyncBatchNorm
    elif isinstance(module, _BatchNorm) and not isinstance(module, (SyncBatchNorm,
                                                                    _SplitOnRanks)):
        kind = SyncBatchNorm
    else:
        kind = None
    if kind is not None:
        sync = kind.__new__(kind)
        for key, value in module.__dict__.items():
            object.__setattr__(sync, key, type(value)(value) if isinstance(value, (dict, set))
                               else value)
        return sync
    if isinstance(module, Module):
        for name, child in list(module._modules.items()):
            if child is not None:
                new = convert_sync_batchnorm(child)
                if new is not child:
                    module._modules[name] = new
    return module
