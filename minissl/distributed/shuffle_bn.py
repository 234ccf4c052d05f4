"""Shuffling BatchNorm (MoCo's "shuffle BN"): the key encoder normalises a random permutation
of the global key batch in groups, so that a key's batch statistics never come from the group
its query was normalised in.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
section 3.3; official code facebookresearch/moco, ``builder.py`` (``_batch_shuffle_ddp`` /
``_batch_unshuffle_ddp``: one group per GPU) and the single-GPU CIFAR-10 demo
(``_batch_shuffle_single_gpu`` with ``SplitBatchNorm``: simulated GPUs in one process).

One design covers both: the groups are those of ``nn.SplitBatchNorm`` with G splits over the
global batch, the same whatever the number of ranks N; each rank computes G/N whole groups
(``group_rows``), so that N ranks compute exactly what one process computes. The official DDP
code all-gathers the key batch, broadcasts a permutation from rank 0 and gathers again to
unshuffle; here every rank already holds the whole global batch (it drew its randomness, see
``shard``) and the same permutation, so one gather (of the outputs) is enough.
"""
import numpy as np

from ..autograd import Tensor, no_grad
from ..backend import get_array_module
from .ops import all_gather, group_rows


def _world():
    from . import backend
    return backend()


@no_grad()
def shuffled_forward(fn, x, perm, groups=1):
    """``fn`` (a network in training mode whose BatchNorms are ``SplitBatchNorm`` with
    ``groups`` splits, or a plain/Sync BatchNorm for ``groups=1``; no gradient) applied to the
    global batch x (B, ...) permuted by ``perm`` (shuffled row i is x[perm[i]]): the outputs
    (B, ...) back in x's row order, the same on every rank. ``perm`` must be the same on every
    rank (drawn from the generator they share). In one process: fn(x[perm]) unpermuted. On N
    ranks: each rank runs fn on its G/N groups of the shuffled batch and the outputs are
    gathered."""
    world = _world()
    B = len(x)
    xs = x[get_array_module(x).asarray(perm)]                  # (B, ...) shuffled
    if world.size == 1:
        out = fn(xs).data
    else:
        out = all_gather(fn(xs[get_array_module(x).asarray(group_rows(B, groups))])).data
        order = np.concatenate([group_rows(B, groups, r) for r in range(world.size)])
        out = out[get_array_module(out).asarray(np.argsort(order))]   # shuffled order
    return Tensor(out[get_array_module(out).asarray(np.argsort(perm))])   # unshuffled
