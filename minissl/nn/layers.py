"""Layers with PyTorch's names, defaults, parameter shapes and initialisation.

Each layer is a thin ``Module`` around one function of ``minissl.functional``: the math and
its gradient live there (and are documented there); here live the parameters, their
initialisation and the train/eval switch.

Initialisation follows ``torch.nn`` exactly in distribution (the values differ: the generator
is NumPy's, see ``minissl.random``):

* ``Linear``, ``Conv1d``, ``Conv2d``, ``ConvTranspose2d``: weight
  ``kaiming_uniform_(a=sqrt(5))``, i.e.
  U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)) = sqrt(1/3), so
  b = 1 / sqrt(fan_in); bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (He et al., "Delving Deep
  into Rectifiers", 2015; the a=sqrt(5) choice is PyTorch's historical default). ``fan_in``
  is computed from dimension 1 of the weight times the kernel area, as PyTorch does, which
  for ``ConvTranspose2d`` (weight (in, out, kh, kw)) means out * kh * kw and for a grouped
  convolution (weight (out, in / groups, ...)) in / groups * kernel area.
* ``BatchNorm``/``LayerNorm``: weight 1, bias 0; running_mean 0, running_var 1.
* ``Embedding``: N(0, 1).

Every layer with parameters takes ``rng=`` (a ``numpy.random.Generator`` or an int seed;
default: ``minissl.random.default_generator()``) and ``dtype=`` (default float32).
"""
import math

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from ..random import get_generator
from .module import Module, Parameter

__all__ = ["Linear", "Conv1d", "Conv2d", "ConvTranspose2d", "BatchNorm1d", "BatchNorm2d",
           "LayerNorm",
           "Embedding", "Dropout", "ReLU", "GELU", "Sigmoid", "Tanh", "Flatten", "Identity",
           "Sequential", "ModuleList", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]


# ----------------------------------------------------------------------------- helpers

def _dtype(dtype):
    dt = np.dtype(np.float32 if dtype is None else dtype)
    if dt.kind != "f":
        raise TypeError(f"layer parameters must be floating, got dtype {dt}")
    return dt


def _uniform(rng, shape, bound, dtype):
    """A Parameter with entries U(-bound, bound), drawn in float64 then cast."""
    return Parameter(get_generator(rng).uniform(-bound, bound, size=shape).astype(dtype))


def _kaiming_uniform_bound(fan_in):
    """kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound gain*sqrt(3/fan_in)=1/sqrt(fan_in)."""
    if fan_in == 0:
        return 0.0
    gain = math.sqrt(2.0 / (1 + 5))
    return gain * math.sqrt(3.0 / fan_in)


def _pair(name, value):
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(int(v) for v in items)


def _positive(cls, **kw):
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{cls}: {k} must be a positive int, got {v!r}")


# ----------------------------------------------------------------------------- linear, conv

def _init_weight_and_bias(module, rng, weight_shape, fan_in, bias_size, dtype):
    """PyTorch's default init of a Linear/Conv layer: weight kaiming-uniform(a=sqrt 5), i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), then the bias (bias_size,) from the same uniform, or
    no bias when ``bias_size`` is None."""
    dt, rng = _dtype(dtype), get_generator(rng)
    module.weight = _uniform(rng, weight_shape, _kaiming_uniform_bound(fan_in), dt)
    if bias_size is not None:
        module.bias = _uniform(rng, (bias_size,), 1 / math.sqrt(fan_in), dt)
    else:
        module.register_parameter("bias", None)


class Linear(Module):
    """y = x W^T + b.  x (..., in_features) -> (..., out_features); W (out, in), b (out,)."""

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=None):
        super().__init__()
        _positive("Linear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = int(in_features), int(out_features)
        _init_weight_and_bias(self, rng, (out_features, in_features), in_features,
                              out_features if bias else None, dtype)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def _groups(cls, groups, in_channels, out_channels):
    _positive(cls, groups=groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"{cls}: groups={groups} must divide in_channels={in_channels} and "
                         f"out_channels={out_channels}")
    return int(groups)


class _ConvNd(Module):
    """Conv1d and Conv2d: PyTorch's arguments, weight (out, in / groups, *kernel_size)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, rng=None, dtype=None):
        super().__init__()
        cls, tuple_of = type(self).__name__, self._tuple_of
        _positive(cls, in_channels=in_channels, out_channels=out_channels)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = tuple_of(f"{cls}: kernel_size", kernel_size)
        self.stride = tuple_of(f"{cls}: stride", stride)
        self.padding = tuple_of(f"{cls}: padding", padding)
        self.dilation = tuple_of(f"{cls}: dilation", dilation)
        self.groups = _groups(cls, groups, in_channels, out_channels)
        fan_in = in_channels // self.groups * math.prod(self.kernel_size)
        _init_weight_and_bias(self, rng, (out_channels, in_channels // self.groups,
                                          *self.kernel_size),
                              fan_in, out_channels if bias else None, dtype)

    def forward(self, x):
        return self._conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                          self.groups)

    def extra_repr(self):
        ones, zeros = (1,) * len(self.kernel_size), (0,) * len(self.kernel_size)
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != zeros:
            s += f", padding={self.padding}"
        if self.dilation != ones:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


def _single(name, value):
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(items) != 1 or not isinstance(items[0], (int, np.integer)) or \
            isinstance(items[0], bool):
        raise TypeError(f"{name} must be an int or a 1-tuple of ints, got {value!r}")
    return (int(items[0]),)


class Conv1d(_ConvNd):
    """1-D convolution (cross-correlation, as in PyTorch) of (N, C, L) sequences:
    ``Conv1d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
    groups=1, bias=True, rng=None, dtype=None)``.

    x (N, C_in, L) -> (N, C_out, OL), OL = (L + 2 p - d (k - 1) - 1) // s + 1;
    weight (C_out, C_in / groups, k), bias (C_out,).
    """

    _tuple_of = staticmethod(_single)
    _conv = staticmethod(F.conv1d)


class Conv2d(_ConvNd):
    """2-D convolution (cross-correlation, as in PyTorch) of NCHW images:
    ``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
    groups=1, bias=True, rng=None, dtype=None)``.

    x (N, C_in, H, W) -> (N, C_out, OH, OW), OH = (H + 2 ph - dh (kh - 1) - 1) // sh + 1 (OW
    likewise); weight (C_out, C_in / groups, kh, kw), bias (C_out,).
    """

    _tuple_of = staticmethod(_pair)
    _conv = staticmethod(F.conv2d)


class ConvTranspose2d(Module):
    """Transposed convolution: the adjoint (gradient w.r.t. the input) of ``Conv2d``.

    x (N, C_in, H, W) -> (N, C_out, OH, OW), OH = (H - 1) sh - 2 ph + kh + output_padding;
    weight (C_in, C_out, kh, kw) (PyTorch's layout), bias (C_out,).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, bias=True, rng=None, dtype=None):
        super().__init__()
        _positive("ConvTranspose2d", in_channels=in_channels, out_channels=out_channels)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair("ConvTranspose2d: kernel_size", kernel_size)
        self.stride = _pair("ConvTranspose2d: stride", stride)
        self.padding = _pair("ConvTranspose2d: padding", padding)
        self.output_padding = _pair("ConvTranspose2d: output_padding", output_padding)
        kh, kw = self.kernel_size
        # PyTorch computes fan_in from weight.shape[1] (= out_channels here), see module doc.
        _init_weight_and_bias(self, rng, (in_channels, out_channels, kh, kw),
                              out_channels * kh * kw, out_channels if bias else None, dtype)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.bias is None:
            s += ", bias=False"
        return s


# ----------------------------------------------------------------------------- normalisation

class _BatchNorm(Module):
    """Batch normalisation (Ioffe & Szegedy, 2015), PyTorch's semantics.

    Training: y = (x - mean_B) / sqrt(var_B + eps) * weight + bias with the batch mean and
    biased variance per channel (over every axis but 1), and the running statistics updated
    in place: running = (1 - momentum) running + momentum * batch (the UNBIASED batch
    variance for running_var); ``num_batches_tracked`` counts the updates, and with
    ``momentum=None`` the update is the cumulative average (factor 1 / num_batches_tracked).
    Evaluation: the running statistics replace the batch ones.
    """

    _expected_ndim = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=None):
        super().__init__()
        _positive(type(self).__name__, num_features=num_features)
        self.num_features, self.eps, self.momentum = int(num_features), eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.fused_relu = False     # nn.fuse: apply the ReLU that follows in the same op
        dt = _dtype(dtype)
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=dt))
            self.bias = Parameter(np.zeros(num_features, dtype=dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, dtype=dt)))
            self.register_buffer("running_var", Tensor(np.ones(num_features, dtype=dt)))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, dtype=np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def forward(self, x):
        """With ``fused_relu`` (set by ``nn.fuse``) returns relu(batch_norm(x)) as one op."""
        if x.ndim not in self._expected_ndim:
            want = " or ".join(f"{d}-D" for d in self._expected_ndim)
            raise ValueError(f"{type(self).__name__}: expected {want} input, got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: input of shape {x.shape} has {x.shape[1]} "
                             f"channels, expected num_features={self.num_features}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.data)
        # Batch statistics in training, and also in eval when no running stats are kept.
        use_batch = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if track else None,
                            self.running_var if track else None, self.weight, self.bias,
                            use_batch, factor, self.eps, relu=self.fused_relu)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs, statistics per channel C."""

    _expected_ndim = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs, statistics per channel C over N, H, W."""

    _expected_ndim = (4,)


class LayerNorm(Module):
    """Layer normalisation (Ba, Kiros & Hinton, 2016) over the trailing ``normalized_shape``:
    y = (x - mean) / sqrt(var + eps) * weight + bias (biased variance), weight 1, bias 0."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=None):
        super().__init__()
        if isinstance(normalized_shape, (int, np.integer)):
            normalized_shape = (int(normalized_shape),)
        self.normalized_shape = tuple(int(s) for s in normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        dt = _dtype(dtype)
        if elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=dt))
            if bias:
                self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dt))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


# ----------------------------------------------------------------------------- embedding, dropout

class Embedding(Module):
    """A lookup table: integer indices (any shape S) -> rows of ``weight`` (S + (dim,)).

    weight (num_embeddings, embedding_dim) ~ N(0, 1); the gradient of a row is the sum of the
    output gradients at every position that picked it.
    """

    def __init__(self, num_embeddings, embedding_dim, rng=None, dtype=None):
        super().__init__()
        _positive("Embedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        w = get_generator(rng).standard_normal((num_embeddings, embedding_dim))
        self.weight = Parameter(w.astype(_dtype(dtype)))

    def forward(self, indices):
        return F.embedding(indices, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Dropout(Module):
    """Inverted dropout: in training each element is zeroed with probability p and the rest
    scaled by 1 / (1 - p), so the expectation is unchanged; the identity in eval mode."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: probability p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


# ----------------------------------------------------------------------------- activations

class ReLU(Module):
    """max(x, 0). After ``nn.fuse``, a ReLU whose BatchNorm applies it passes x through."""

    def __init__(self):
        super().__init__()
        self.fused = False

    def forward(self, x):
        return x if self.fused else F.relu(x)

    def extra_repr(self):
        return "fused into the BatchNorm before it" if self.fused else ""


class GELU(Module):
    """x Phi(x), the exact (erf) form (Hendrycks & Gimpel, 2016)."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate != "none":
            raise ValueError(f"GELU: only the exact form approximate='none' is implemented, "
                             f"got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x)


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    """tanh(x)."""

    def forward(self, x):
        return F.tanh(x)


class Identity(Module):
    """Returns its input (a placeholder, e.g. to drop a classifier head)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Flatten(Module):
    """Flattens dims start_dim..end_dim into one: (N, C, H, W) -> (N, C H W) by default."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# ----------------------------------------------------------------------------- pooling

class _Pool2d(Module):
    """Window pooling of NCHW input by ``_pool`` (a functional op); stride defaults to
    kernel_size, PyTorch's default."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.padding = kernel_size, padding
        self.stride = kernel_size if stride is None else stride

    def forward(self, x):
        return self._pool(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Maximum over each (kh, kw) window of NCHW input; stride defaults to kernel_size and
    padding counts as -inf (never selected)."""

    _pool = staticmethod(F.max_pool2d)


class AvgPool2d(_Pool2d):
    """Mean over each (kh, kw) window of NCHW input; stride defaults to kernel_size and zero
    padding is counted in the mean (PyTorch's count_include_pad=True)."""

    _pool = staticmethod(F.avg_pool2d)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output grid; ``AdaptiveAvgPool2d(1)`` is the global average
    pool (N, C, H, W) -> (N, C, 1, 1)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


# ----------------------------------------------------------------------------- containers

class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... (or by the keys of an
    OrderedDict given as the single argument), like ``torch.nn.Sequential``."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def _fuse(self):
        """nn.fuse: each BatchNorm (with the stock forward) followed by a ReLU runs both as one
        op; the ReLU then passes its input through."""
        modules = list(self._modules.values())
        for bn, act in zip(modules, modules[1:]):
            if (isinstance(bn, _BatchNorm) and type(bn).forward is _BatchNorm.forward
                    and type(act) is ReLU):
                bn.fused_relu = act.fused = True

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        items = list(self._modules.items())
        if isinstance(idx, slice):
            # A new Sequential of the same modules, names kept (as PyTorch's slicing does).
            out = Sequential()
            for name, m in items[idx]:
                out.add_module(name, m)
            return out
        return items[_index(idx, len(items), "Sequential")][1]


def _index(idx, n, what):
    if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
        raise TypeError(f"{what} indices must be integers or slices, not {type(idx).__name__}")
    if not -n <= idx < n:
        raise IndexError(f"{what} index {idx} is out of range for length {n}")
    return int(idx) % n


class ModuleList(Module):
    """A list of modules registered as children "0", "1", ... (no forward of its own)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(mods[idx])
        return mods[_index(idx, len(mods), "ModuleList")]

    def __setitem__(self, idx, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList: can only hold Modules, got {type(module).__name__}")
        self._modules[str(_index(idx, len(self), "ModuleList"))] = module  # keeps its place
