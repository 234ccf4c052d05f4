"""DINO: self-distillation with no labels, a student trained toward a centred, sharpened EMA
teacher over multi-crop views.

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski & Joulin, "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294); official code
facebookresearch/dino (``main_dino.py``: ``DINOLoss``, ``train_one_epoch``;
``vision_transformer.py``: ``DINOHead``; ``utils.py``: ``MultiCropWrapper``, ``cosine_scheduler``).

Student and teacher are the same network: an encoder f, then the DINO head (an MLP with GELU
to a bottleneck, L2-normalised, then a weight-normalised linear layer to K outputs). Both see
a multi-crop batch (``minissl.multicrop``): the teacher the 2 global views, the student all
2 + K views. The loss (``losses.dino_loss``) is the cross-entropy from each teacher view's
distribution softmax((t - c) / 0.04) to the student's softmax(s / 0.1) on every other view.
The teacher gets no gradient; it is an EMA of the student (momentum rising from
``momentum_teacher`` to 1 by a cosine, as BYOL's tau). What keeps the two from collapsing is
the pair centring (subtract c, a running mean of the teacher's outputs: no dimension may
dominate) and sharpening (a low teacher temperature: the output may not be uniform).

As the official code: the encoder runs once per resolution (the global views as one batch,
the local views as another), the head on all views at once; the centre is updated after the
loss from the teacher's outputs of the whole (global) batch; the last layer's norm g is fixed
at 1 (``norm_last_layer=True``). Differences (docs/faithful.md): the widths and K, the
encoder (the digits MLP / a small ResNet instead of a ViT), BatchNorm in the head
(``use_bn_in_head``, an official option: without it the teacher's entropy rises to log K on
the digits, a uniform collapse), momentum 0.99, a constant teacher temperature by default
(as the official default warm-up 0.04 -> 0.04; ``warmup_teacher_temp_steps`` is the official
warm-up, counted in steps instead of epochs), Adam instead of AdamW with a weight-decay
schedule, no gradient clipping, the last layer trained from step 0 (the official code freezes
it for the first epoch), EMA of the BN buffers (copied, as BYOL).

Collapse diagnostics (``metrics.jsonl``): ``teacher_entropy``, the mean entropy of the
teacher's sharpened distribution (log K: uniform collapse; 0 with ``teacher_student_kl`` 0:
one-hot collapse), and ``teacher_student_kl`` = loss - entropy, the KL from teacher to
student (0 when they agree because both collapsed); DINO's Figure 7.

Data-parallel: each rank takes its rows of every view; the centre is updated from the teacher
outputs of all ranks (gathered), as the official ``dist.all_reduce(batch_center)``.
"""
from dataclasses import dataclass

import numpy as np

from .. import distributed as dist, losses, multicrop, nn
from .. import functional as F
from ..autograd import no_grad
from ..backend import get_array_module
from ..ops.shape import cat
from ..random import get_generator
from .base import SSLMethod, cosine_tau, default_encoder, ema_update, encoder_args, frozen_copy


@dataclass
class DINOConfig:
    out_dim: int = 256             # K, outputs of the head (official: 65536)
    head_hidden: int = 256         # hidden width of the head's MLP (official: 2048)
    bottleneck_dim: int = 64       # width before the weight-normalised layer (official: 256)
    head_layers: int = 3           # Linear layers of the head's MLP (official nlayers: 3)
    use_bn_in_head: bool = True    # BatchNorm in the head's MLP (official default: no; at our
                                   # scale the teacher collapses to uniform without it)
    norm_last_layer: bool = True   # fix the last layer's weight norm g at 1 (official: True)
    student_temp: float = 0.1      # temperature of the student's softmax (official: 0.1)
    teacher_temp: float = 0.04     # sharpening temperature of the teacher (official: 0.04)
    warmup_teacher_temp: float = 0.04  # teacher temperature at step 0, linear to teacher_temp
    warmup_teacher_temp_steps: int = 0  # over these steps (official: warmup_teacher_temp_epochs,
                                        # 0: constant; its README's ViT-S: 30 epochs to 0.07)
    center_momentum: float = 0.9   # EMA rate of the centre (official: 0.9)
    momentum_teacher: float = 0.99  # teacher EMA at step 0, cosine to 1 (official: 0.996,
                                    # for ~10^5 steps; 0.99 suits a few hundred)
    n_local: int = 6               # local views per image (official: 8); global views: 2
    # Crop areas of the views (official values; images of 3 channels or over 16x16 only: the
    # 8x8 digits' local views are crops of area 0.25 to 0.6, multicrop.digits_multicrop).
    global_scale_min: float = 0.4  # global views: area in [global_scale_min, 1]
    local_scale_min: float = 0.05  # local views: smallest area
    local_scale_max: float = 0.4  # local views: largest area


class WeightNormLinear(nn.Module):
    """``torch.nn.utils.weight_norm(nn.Linear(in, out, bias=False))``: the weight is
    ``g * v / ||v||`` with one norm per output row; parameters ``weight_g`` (out, 1) and
    ``weight_v`` (out, in), PyTorch's names. ``fixed_norm``: g stays 1, never trained."""

    def __init__(self, in_features, out_features, fixed_norm=True, rng=None):
        super().__init__()
        lin = nn.Linear(in_features, out_features, bias=False, rng=rng)   # PyTorch's init of v
        self.weight_v = lin.weight
        self.weight_g = nn.Parameter(np.ones((out_features, 1), dtype=np.float32))
        self.weight_g.requires_grad = not fixed_norm

    def forward(self, x):
        v = self.weight_v                                          # (out, in)
        w = v * (self.weight_g / (v * v).sum(dim=1, keepdim=True).sqrt())
        return F.linear(x, w)


class DINOHead(nn.Module):
    """MLP (Linear - [BN] - GELU per hidden layer, Linear to the bottleneck), L2 normalisation,
    weight-normalised Linear to K; children ``mlp`` and ``last_layer`` as the official
    ``DINOHead``. The MLP's weights start N(0, 0.02^2) and its biases 0 (the official
    ``trunc_normal_(std=.02)``, whose bounds +-2 lie 100 std out)."""

    def __init__(self, in_dim, out_dim, hidden, bottleneck, layers=3, use_bn=False,
                 norm_last_layer=True, rng=None):
        super().__init__()
        rng = get_generator(rng)
        dims = [in_dim] + [hidden] * (max(layers, 1) - 1) + [bottleneck]
        mods = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            lin = nn.Linear(a, b, rng=rng)
            lin.weight.data[...] = 0.02 * rng.standard_normal((b, a))
            lin.bias.data[...] = 0
            mods.append(lin)
            if i < len(dims) - 2:
                mods += ([nn.BatchNorm1d(b)] if use_bn else []) + [nn.GELU()]
        self.mlp = mods[0] if len(mods) == 1 else nn.Sequential(*mods)
        self.last_layer = WeightNormLinear(bottleneck, out_dim, norm_last_layer, rng)

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))   # (N, K)


class DINO(SSLMethod):
    name = "dino"
    uses_total_steps = True        # the teacher momentum's cosine spans the whole run

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__()
        c = self.config = config or DINOConfig()
        if encoder is None:
            encoder, feature_dim = default_encoder(image_shape)
        self.encoder = encoder                                             # student backbone
        self.head = DINOHead(feature_dim, c.out_dim, c.head_hidden, c.bottleneck_dim,
                             c.head_layers, c.use_bn_in_head, c.norm_last_layer)
        self.teacher_encoder = frozen_copy(self.encoder)                   # EMA of the student
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", np.zeros((1, c.out_dim), dtype=np.float32))  # (1, K)
        if c.warmup_teacher_temp_steps < 0:
            raise ValueError("DINO: warmup_teacher_temp_steps must be >= 0, got "
                             f"{c.warmup_teacher_temp_steps}")
        if c.warmup_teacher_temp_steps:   # steps taken: a resumed warm-up goes on where it was
            self.register_buffer("step", np.zeros(1, dtype=np.int64))
        self.transform = transform or multicrop.default_multicrop(
            image_shape, c.n_local, (c.global_scale_min, 1.0),
            (c.local_scale_min, c.local_scale_max))
        self.momentum = c.momentum_teacher

    def _outputs(self, encoder, head, views):
        """MultiCropWrapper: encoder per resolution, head on all; one (B, K) per view."""
        out = head(multicrop.encode_by_size(encoder, views, self.as_input))   # (V B, K)
        b = len(views[0])
        return [out[i * b:(i + 1) * b] for i in range(len(views))]

    def training_step(self, x, rng):
        """Draws from ``rng`` only through the multi-crop augmentation (2 + K views)."""
        views = self.transform(x, rng)                    # 2 global, then K local, (B, C, H, W)
        views = list(dist.shard(*views))                  # this rank's rows of each
        student = self._outputs(self.encoder, self.head, views)                   # V x (B, K)
        with no_grad():
            teacher = self._outputs(self.teacher_encoder, self.teacher_head, views[:2])
        c = self.config
        temp = teacher_temp(c, int(self.step.data[0]) if c.warmup_teacher_temp_steps else 0)
        loss = losses.dino_loss(student, teacher, self.center, c.student_temp, temp)
        with no_grad():
            everyone = [dist.all_gather(t) for t in teacher]      # the global batch's outputs
            entropy = self._teacher_entropy(teacher, temp)
            self.center.data[...] = losses.dino_update_center(self.center, everyone,
                                                              c.center_momentum)
        return loss, {"teacher_entropy": entropy,
                      "teacher_student_kl": float(loss.item()) - entropy,
                      "momentum": self.momentum}

    def _teacher_entropy(self, teacher, temp):
        """Mean entropy of the centred, sharpened teacher distributions (before the centre
        moves: the ones the loss used)."""
        z = (cat(teacher, dim=0) - self.center.data) / temp                       # (2B, K)
        logp = F.log_softmax(z, dim=1).data
        xp = get_array_module(logp)
        return float(-(xp.exp(logp) * logp).sum(axis=1).mean())

    def on_step_end(self, step, total_steps):
        self.momentum = cosine_tau(self.config.momentum_teacher, step, total_steps)
        ema_update(self.teacher_encoder, self.encoder, self.momentum)
        ema_update(self.teacher_head, self.head, self.momentum)
        if self.config.warmup_teacher_temp_steps:
            self.step.data[0] += 1


def teacher_temp(config, step):
    """The teacher temperature of ``step``: ``main_dino.py``'s ``DINOLoss.teacher_temp_schedule``
    (``linspace(warmup_teacher_temp, teacher_temp, warm-up)``, then ``teacher_temp``), with the
    warm-up counted in steps, not epochs: a method sees steps (``on_step_end``)."""
    w = config.warmup_teacher_temp_steps
    if step >= w:
        return config.teacher_temp
    return float(np.linspace(config.warmup_teacher_temp, config.teacher_temp, w)[step])


def build(data, encoder=None, feature_dim=None, **overrides):
    """DINO for an image ``Dataset``; ``overrides`` set fields of ``DINOConfig``."""
    return DINO(data.image_shape, DINOConfig(**overrides), **encoder_args(encoder, feature_dim))
