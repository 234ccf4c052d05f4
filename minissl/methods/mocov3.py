"""MoCo v3: the symmetric, queue-free momentum contrast of the self-supervised ViT study.

Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV
2021 (arXiv:2104.02057); official code facebookresearch/moco-v3 (``moco/builder.py``: the
``MoCo`` module, ``_build_mlp``, ``contrastive_loss``; ``vits.py``: the ViT with fixed 2-D
sin-cos positions and a frozen random patch projection; ``main_moco.py``: the cosine
momentum schedule).

Two views x1, x2 of each image. The online network (backbone f, projector g, predictor q)
makes queries q_v = q(g(f(x_v))); the momentum network (f', g', an EMA of f and g, no
gradient) makes keys k_v = g'(f'(x_v)). The keys of the other images IN THE BATCH are the
negatives (no queue: with large batches they suffice), and the loss is symmetric:

    loss = mocov3_loss(q1, k2) + mocov3_loss(q2, k1)     (each 2T times an N-way InfoNCE)

As the official ``MoCo.forward``: the momentum network is updated first, with this step's m,
then computes the keys under no_grad. m follows a cosine from base_momentum at step 0 up to 1
at the end, m_k = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2 (``adjust_moco_momentum``, evaluated
per iteration); it is kept in the buffer ``momentum`` so a resumed run continues the schedule.
The heads are the official ``_build_mlp``: bias-free Linears, BN - ReLU after the hidden ones,
the projector ending in a BatchNorm without affine (SimCLR's design); the predictor too with
the ViT (``MoCo_ViT``), not with another backbone (``MoCo_ResNet``'s ``last_bn=False``).

The backbone is a ViT (the paper's subject; the blocks, patch embedding and fixed sin-cos
positions of ``masked.ViTEncoder``) whose patch projection is frozen at its random init (the
paper's stability trick, section 4.2, ``stop_grad_conv1``), or any encoder passed in (``minissl
pretrain mocov3 --encoder mlp`` for the digits' MLP: the official code's ResNet recipe, 2
projector layers where the ViT has 3).

Differences (docs/faithful.md): the ViT has no [CLS] token, its features are the mean of the
patch tokens (the ViT's features go through the projector as a pooled vector either way); the
widths (paper: 4096 hidden, 256 out); the views come from the project's augmentation, not
BYOL's asymmetric blur/solarise pair; the EMA also copies the BN buffers (they never reach the
features); Adam instead of LARS/AdamW.

Data-parallel: queries and keys are gathered from all ranks and the loss is that of the
global batch (the official code gathers the keys and offsets the labels by the rank; the mean
over all ranks' queries is the same number).
"""
from dataclasses import dataclass

import numpy as np

from .. import augment, distributed as dist, losses
from ..autograd import no_grad
from .base import (SSLMethod, cosine_tau, default_augmentation, ema_update, encoder_args,
                   frozen_copy, projection_head)
from .masked import ViTEncoder, choose_patch_size


@dataclass
class MoCoV3Config:
    temperature: float = 0.2     # T (official: 0.2 for ViTs, 1.0 for ResNets)
    base_momentum: float = 0.99  # m at step 0, rising to 1 by a cosine (official: 0.99)
    proj_hidden: int = 256       # hidden width of projector and predictor (paper: 4096)
    proj_dim: int = 64           # query / key width (paper: 256)
    proj_layers: int = 0         # projector Linears; 0: the official choice, 3 for the ViT,
                                 # 2 for another backbone (the ResNet recipe)
    patch_size: int = 0          # ViT patch; 0: chosen for the image (2 for 8x8 digits)
    embed_dim: int = 64          # ViT width (ViT-S: 384)
    depth: int = 4               # ViT blocks (ViT-S: 12)
    num_heads: int = 4           # ViT heads (ViT-S: 12)
    mlp_ratio: float = 4.0       # ViT MLP hidden width / width
    freeze_patch_embed: bool = True  # the random, frozen patch projection (paper sec. 4.2)


class MoCoV3(SSLMethod):
    name = "mocov3"
    uses_total_steps = True      # the momentum's cosine spans the whole run

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__()
        c = self.config = config or MoCoV3Config()
        if not c.temperature > 0 or not 0 <= c.base_momentum <= 1:
            raise ValueError(f"MoCoV3: temperature must be positive and base_momentum in "
                             f"[0, 1], got {c.temperature} and {c.base_momentum}")
        vit = encoder is None
        if vit:
            C, H, W = image_shape
            p = c.patch_size or choose_patch_size(H)
            if H != W or H % p:
                raise ValueError(f"MoCoV3: the ViT needs square images whose size the patch "
                                 f"size divides; got {image_shape} and patch_size {p}")
            encoder = ViTEncoder(H, p, C, c.embed_dim, c.depth, c.num_heads, c.mlp_ratio)
            feature_dim = c.embed_dim
            if c.freeze_patch_embed:
                for prm in encoder.patch_embed.parameters():
                    prm.requires_grad = False
        layers = c.proj_layers or (3 if vit else 2)
        if layers < 1:
            raise ValueError(f"MoCoV3: proj_layers must be >= 1 (0: automatic), got "
                             f"{c.proj_layers}")
        self.encoder = encoder                                               # f
        self.projector = projection_head((feature_dim,) + (c.proj_hidden,) * (layers - 1)
                                         + (c.proj_dim,), hidden_bias=False, out_bias=False,
                                         out_bn="plain")                     # g
        self.predictor = projection_head((c.proj_dim, c.proj_hidden, c.proj_dim),
                                         hidden_bias=False, out_bias=False,
                                         out_bn="plain" if vit else None)   # q
        self.momentum_encoder = frozen_copy(self.encoder)                    # f' (EMA of f)
        self.momentum_projector = frozen_copy(self.projector)                # g' (EMA of g)
        self.register_buffer("momentum", np.array([c.base_momentum]))       # this step's m
        self.transform = transform or default_augmentation(image_shape)

    def training_step(self, x, rng):
        """Draws from ``rng``: the two views, nothing else."""
        v1, v2 = dist.shard(*augment.two_views(x, self.transform, rng))     # this rank's rows
        v1, v2 = self.as_input(v1), self.as_input(v2)
        q1 = self.predictor(self.projector(self.encoder(v1)))              # (B/N, d)
        q2 = self.predictor(self.projector(self.encoder(v2)))
        m = float(self.momentum.data[0])
        with no_grad():   # the official order: momentum update first, then the keys
            ema_update(self.momentum_encoder, self.encoder, m)
            ema_update(self.momentum_projector, self.projector, m)
            k1 = self.momentum_projector(self.momentum_encoder(v1))        # (B/N, d)
            k2 = self.momentum_projector(self.momentum_encoder(v2))
        q1, q2, k1, k2 = (dist.all_gather(t) for t in (q1, q2, k1, k2))   # (B, d): all ranks
        t = self.config.temperature
        loss = losses.mocov3_loss(q1, k2, t) + losses.mocov3_loss(q2, k1, t)
        return loss, {"momentum": m}

    def on_step_end(self, step, total_steps):
        # The momentum of the NEXT step (the official schedule is evaluated before each step).
        self.momentum.data[0] = cosine_tau(self.config.base_momentum, step + 1, total_steps)


def build(data, encoder=None, feature_dim=None, **overrides):
    """MoCo v3 for an image ``Dataset``: a ViT backbone unless ``encoder`` (any ``nn.Module``
    mapping images to (B, feature_dim)) is given; ``overrides`` set fields of
    ``MoCoV3Config``."""
    return MoCoV3(data.image_shape, MoCoV3Config(**overrides),
                  **encoder_args(encoder, feature_dim))
