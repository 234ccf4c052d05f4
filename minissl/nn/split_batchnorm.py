"""Split batch normalisation: BatchNorm whose training statistics come from S slices of the
batch, as if the batch were spread over S devices (each normalising its own part).

MoCo's "shuffling BN" (He et al. 2020, section 3.3) needs per-device statistics: with one
batch-wide mean, a query and its key (normalised in the same statistics) can "cheat" the
pretext task through the statistics they share. On one device, the authors split the batch
(facebookresearch/moco issue 47; the single-GPU CIFAR-10 demo's ``SplitBatchNorm`` with
``--bn-splits 8``, which the demo's README credits with about 4 % kNN accuracy at 800 epochs);
lightly ships the same layer (``lightly/models/utils.py`` / ``modules/split_batchnorm.py``).

Like those, training mode views the batch (N, C, *) as (N / S, S C, *): sample n goes to slice
``n mod S``, and each slice gets its own mean and variance per channel. The running statistics
are updated per slice from the shared ones and then averaged over the slices, so they equal the
average of S ordinary updates. Evaluation uses the ordinary running statistics (one batch),
exactly as ``BatchNorm``. Parameters and buffers have BatchNorm's names and shapes, so a
BatchNorm ``state_dict`` loads into it and back; with ``num_splits=1`` it IS BatchNorm.

Training, for slice s (samples n with n mod S = s) and channel c:

    y[n, c] = (x[n, c] - mean_s[c]) / sqrt(var_s[c] + eps) * weight[c] + bias[c]
    running[c] <- mean over s of ((1 - momentum) running[c] + momentum batch_s[c])

The gradient is that of S independent batch norms sharing weight and bias (their gradients
summed over the slices), which the graph below gives: a batch norm without affine on the
(N / S, S C, *) view, then the affine map on the (N, C, *) result.
"""
from .. import functional as F
from ..backend import get_array_module
from .layers import BatchNorm1d, BatchNorm2d, _positive

__all__ = ["SplitBatchNorm1d", "SplitBatchNorm2d", "convert_split_batchnorm"]


class _Split:
    """The split training statistics, mixed into BatchNorm1d / BatchNorm2d."""

    def __init__(self, num_features, num_splits=8, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, dtype)
        _positive(type(self).__name__, num_splits=num_splits)
        self.num_splits = int(num_splits)

    def forward(self, x):
        S = self.num_splits
        if S == 1 or not self.training:
            return super().forward(x)                  # one batch: BatchNorm itself
        if x.ndim not in self._expected_ndim or x.shape[1] != self.num_features:
            return super().forward(x)                  # BatchNorm's error for the shape
        N, C = x.shape[:2]
        if N % S:
            raise ValueError(f"{type(self).__name__}: batch of {N} does not split into "
                             f"num_splits={S} equal parts (input shape {x.shape})")
        factor = 0.0 if self.momentum is None else self.momentum
        run_mean = run_var = None
        if self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.data)
            xp = get_array_module(self.running_mean.data)
            run_mean = xp.tile(self.running_mean.data, S)          # (S C,), slice-major
            run_var = xp.tile(self.running_var.data, S)
        rest = tuple(x.shape[2:])
        xs = x.reshape(N // S, S * C, *rest)           # slice s = channels s C .. s C + C - 1
        y = F.batch_norm(xs, run_mean, run_var, None, None, True, factor, self.eps)
        y = y.reshape(N, C, *rest)                     # (N, C, *)
        if run_mean is not None:
            self.running_mean.data[...] = run_mean.reshape(S, C).mean(axis=0)
            self.running_var.data[...] = run_var.reshape(S, C).mean(axis=0)
        if self.affine:
            shape = (1, C) + (1,) * len(rest)
            y = y * self.weight.reshape(*shape) + self.bias.reshape(*shape)
        return y

    def extra_repr(self):
        return super().extra_repr() + f", num_splits={self.num_splits}"


class SplitBatchNorm1d(_Split, BatchNorm1d):
    """``BatchNorm1d`` of (N, C) or (N, C, L) inputs with the statistics of ``num_splits``
    slices of the batch in training (see the module docstring)."""

    _expected_ndim = (2, 3)


class SplitBatchNorm2d(_Split, BatchNorm2d):
    """``BatchNorm2d`` of (N, C, H, W) inputs with the statistics of ``num_splits`` slices of
    the batch in training (see the module docstring)."""


def convert_split_batchnorm(module, num_splits):
    """Replace, in place, every ``BatchNorm1d``/``BatchNorm2d`` inside ``module`` by the split
    version with the same settings, parameters and buffers (the arrays are shared, not
    copied); returns ``module`` (or the replacement when ``module`` itself is a BatchNorm).
    A ``state_dict`` is unchanged by the conversion."""
    kinds = {BatchNorm1d: SplitBatchNorm1d, BatchNorm2d: SplitBatchNorm2d}
    if type(module) in kinds:
        new = kinds[type(module)](module.num_features, num_splits, module.eps, module.momentum,
                                  module.affine, module.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if getattr(module, name) is not None:
                setattr(new, name, getattr(module, name))
        new.train(module.training)
        return new
    for name, child in list(module.named_children()):
        new = convert_split_batchnorm(child, num_splits)
        if new is not child:
            setattr(module, name, new)
    return module
