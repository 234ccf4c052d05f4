"""SwAV: online clustering with swapped prediction of Sinkhorn-Knopp codes over multi-crop views.

Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020 (arXiv:2006.09882); official code
facebookresearch/swav (``main_swav.py``: ``train``, ``distributed_sinkhorn``;
``src/resnet50.py``: the projection head, ``l2norm``, ``prototypes``, the multi-resolution
``forward``).

Each view's embedding z (encoder f, projection head g, L2-normalised) is scored against K
learnable prototypes c_k (unit rows): s = z C^T, cosines (B, K). For each global view the
Sinkhorn-Knopp algorithm turns the batch's scores into soft codes q that split the batch
equally among the prototypes (``losses.sinkhorn_knopp``; the equipartition is what rules out
the trivial solution of one cluster for all). Every other view then predicts those codes from
its own scores, softmax(s / 0.1): the swapped prediction (``losses.swav_loss``). The codes
are targets, not differentiated; the prototypes are trained by the prediction loss.

As the official code: the prototypes are renormalised to unit rows before every step (under
no_grad), the encoder runs once per resolution (global views one batch, local views
another) and the head on all views at once, and the prototypes get no update for the first
``freeze_prototypes_steps`` steps (``p.grad = None`` there; here the step's loss reads them
detached, so no gradient reaches them). Differences (docs/faithful.md): the widths and K,
the encoder, temperature 0.2 (0.1 learns less on the digits), Adam instead of LARS, no
queue (the official code adds one for batches under 256 after some epochs; our batches of
256 on small data sets run without it).

Collapse diagnostics (``metrics.jsonl``): ``assignment_entropy``, the entropy of the
histogram of each global view's best prototype over the batch (log K when the batch spreads
over all prototypes; 0 when every image picks one), and ``code_entropy``, the mean entropy of
a sample's codes (log K: codes no more informative than uniform).

Data-parallel: each rank takes its rows of every view; the global views' scores are gathered,
Sinkhorn-Knopp runs over the whole global batch (the official ``distributed_sinkhorn``
all-reduces the same sums) and each rank keeps its rows of the codes.
"""
from dataclasses import dataclass

import numpy as np

from .. import distributed as dist, losses, multicrop, nn
from .. import functional as F
from ..autograd import no_grad
from ..backend import get_array_module
from .base import SSLMethod, default_encoder, encoder_args, projection_head


@dataclass
class SwAVConfig:
    n_prototypes: int = 32            # K (official: 3000 for ImageNet)
    proj_hidden: int = 256            # projection head hidden width (official: 2048)
    proj_dim: int = 64                # embedding width (official: 128)
    temperature: float = 0.2          # softmax temperature of the prediction (official: 0.1;
                                      # 0.2 on the digits: see docs/faithful.md)
    epsilon: float = 0.05             # entropic regularisation of Sinkhorn (official: 0.05)
    sinkhorn_iterations: int = 3      # Sinkhorn-Knopp iterations (official: 3)
    freeze_prototypes_steps: int = 10  # steps with frozen prototypes (official: 313 ~ 1 epoch)
    n_local: int = 6                  # local views per image (official: 6); global: 2
    # Crop areas of the views (official values; images of 3 channels or over 16x16 only: the
    # 8x8 digits' local views are crops of area 0.25 to 0.6, multicrop.digits_multicrop).
    global_scale_min: float = 0.14  # global views: area in [global_scale_min, 1]
    local_scale_min: float = 0.05  # local views: smallest area
    local_scale_max: float = 0.14  # local views: largest area


class SwAV(SSLMethod):
    name = "swav"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__()
        c = self.config = config or SwAVConfig()
        if encoder is None:
            encoder, feature_dim = default_encoder(image_shape)
        self.encoder = encoder                                             # f
        self.projection_head = projection_head((feature_dim, c.proj_hidden, c.proj_dim))  # g
        self.prototypes = nn.Linear(c.proj_dim, c.n_prototypes, bias=False)  # C (K, D)
        # Steps taken: the prototypes' freeze spans the first steps of a run, resumed or not.
        self.register_buffer("step", np.zeros(1, dtype=np.int64))
        self.transform = transform or multicrop.default_multicrop(
            image_shape, c.n_local, (c.global_scale_min, 1.0),
            (c.local_scale_min, c.local_scale_max))

    def training_step(self, x, rng):
        """Draws from ``rng`` only through the multi-crop augmentation (2 + K views)."""
        c = self.config
        with no_grad():                                   # unit prototypes before each step
            w = self.prototypes.weight
            w.data[...] = F.normalize(w, dim=1).data
        views = self.transform(x, rng)                    # 2 global, then K local, (B, C, H, W)
        views = list(dist.shard(*views))                  # this rank's rows of each
        z = F.normalize(self.projection_head(
            multicrop.encode_by_size(self.encoder, views, self.as_input)), dim=1)  # (V B, D)
        protos = self.prototypes.weight                                          # (K, D)
        if int(self.step.data[0]) < c.freeze_prototypes_steps:
            protos = protos.detach()
        scores = z @ protos.T                                                    # (V B, K)
        b = len(views[0])
        scores = [scores[i * b:(i + 1) * b] for i in range(len(views))]          # V x (B, K)
        with no_grad():     # the codes of the global batch (all ranks), then this rank's rows
            codes = [dist.shard(losses.sinkhorn_knopp(dist.all_gather(s).data, c.epsilon,
                                                      c.sinkhorn_iterations)) for s in scores[:2]]
        loss = losses.swav_loss(scores, 2, c.temperature, codes=codes)
        return loss, self._diagnostics(scores[:2], codes)

    @staticmethod
    def _diagnostics(scores, codes):
        """This rank's (B rows') assignment and code entropies (averaged over ranks by the
        training loop's metrics)."""
        xp = get_array_module(scores[0].data)
        s = xp.concatenate([t.data for t in scores])                             # (2B, K)
        counts = xp.bincount(s.argmax(axis=1), minlength=s.shape[1]) / len(s)    # (K,)
        nz = counts[counts > 0]
        q = xp.concatenate(codes)                                                # (2B, K)
        plogp = xp.where(q > 0, q * xp.log(xp.maximum(q, 1e-300)), 0)
        return {"assignment_entropy": float(-(nz * xp.log(nz)).sum()),
                "code_entropy": float(-plogp.sum(axis=1).mean())}

    def on_step_end(self, step, total_steps):
        self.step.data[0] += 1


def build(data, encoder=None, feature_dim=None, **overrides):
    """SwAV for an image ``Dataset``; ``overrides`` set fields of ``SwAVConfig``."""
    return SwAV(data.image_shape, SwAVConfig(**overrides), **encoder_args(encoder, feature_dim))
