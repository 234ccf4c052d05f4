"""Shuffling BatchNorm (MoCo's "shuffle BN"): a network with per-rank BatchNorm applied to a
random permutation of the global batch, so that a row's batch statistics never come from
the group of rows its positive pair sits in.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
section 3.3; official code facebookresearch/moco, ``builder.py``
(``_batch_shuffle_ddp`` / ``_batch_unshuffle_ddp``). The official code all-gathers the key
batch, broadcasts a permutation from rank 0, runs the key encoder on its slice and undoes the
permutation with a second gather. Here every rank already holds the whole global batch (it
drew its randomness, see ``shard``) and the permutation comes from the generator all ranks
share, so one gather (of the outputs) is enough.
"""
import numpy as np

from ..autograd import Tensor, no_grad
from ..backend import get_array_module
from .ops import all_gather


def _world():
    from . import backend
    return backend()


@no_grad()
def shuffled_forward(fn, x, rng, groups=None):
    """``fn`` (a network with BatchNorm in training mode, no gradient) applied to the global
    batch x (B, ...) in ``groups`` groups of a random permutation of its rows: the outputs
    (B, ...) in x's row order. ``groups`` defaults to the number of ranks, each rank
    computing its group; with ``groups=k`` in one process the k groups run one after the
    other (what one process needs to compute exactly what k ranks compute).
    ``rng`` must be in the same state on every rank (one permutation for all)."""
    world = _world()
    groups = world.size if groups is None else int(groups)
    B = len(x)
    if B % groups:
        raise ValueError(f"shuffled_forward: a batch of {B} rows does not split into "
                         f"{groups} groups")
    perm = rng.permutation(B)                      # shuffled row i is x[perm[i]]
    xs = x[perm]
    b = B // groups
    if world.size > 1:
        if groups != world.size:
            raise ValueError(f"shuffled_forward: {groups} groups on {world.size} ranks; "
                             f"with several ranks each rank computes one group")
        out = all_gather(fn(xs[world.rank * b:(world.rank + 1) * b])).data
    else:
        parts = [fn(xs[g * b:(g + 1) * b]).data for g in range(groups)]
        out = get_array_module(parts[0]).concatenate(parts)
    inverse = np.argsort(perm)                     # unshuffle: row j comes back from inverse[j]
    return Tensor(out[get_array_module(out).asarray(inverse)])
