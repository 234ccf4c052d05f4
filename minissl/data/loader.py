"""Mini-batches: index generators and a small, resumable data loader.

The order of epoch ``e`` depends only on ``(seed, e)``: it is the permutation drawn by
``numpy.random.default_rng([seed, e])``. A run resumed at epoch 7 therefore sees exactly the
batches an uninterrupted run sees, without saving any random state.
"""
import numpy as np

from ..backend import get_array_module


def _check_batching(fn, n, batch_size):
    if int(n) != n or n < 0:
        raise ValueError(f"{fn}: n must be a non-negative integer, got {n!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be a positive integer, got {batch_size!r}")


def epoch_order(n, shuffle=True, seed=0, epoch=0):
    """The int64 order of ``range(n)`` for one epoch: a seeded permutation, or ``arange(n)``."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n).astype(np.int64)


def batches(n, batch_size, shuffle=True, seed=0, drop_last=False, epoch=0):
    """Yield the int64 index arrays of one epoch's mini-batches over ``range(n)``.

    Every index appears exactly once per epoch; the last batch is shorter when ``batch_size``
    does not divide ``n``, unless ``drop_last`` drops it.
    """
    _check_batching("batches", n, batch_size)
    order = epoch_order(int(n), shuffle, seed, epoch)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, int(batch_size)):
        yield order[start:start + batch_size]


class DataLoader:
    """Iterate over mini-batches of equally long arrays, reshuffled every epoch.

    ``for x, y in DataLoader(train_x, train_y, batch_size=256)`` yields tuples of
    ``array[idx]`` (a tuple even for one array, as PyTorch's ``TensorDataset`` does). Each
    ``iter()`` starts the next epoch, counted in ``self.epoch``; ``set_epoch(e)`` makes the next
    one epoch ``e``, which is how a resumed run continues the same sequence of batches. Arrays
    may be NumPy or CuPy (indexing happens on their device).
    """

    def __init__(self, *arrays, batch_size, shuffle=True, seed=0, drop_last=False):
        if not arrays:
            raise ValueError("DataLoader: need at least one array")
        lengths = [len(a) for a in arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"DataLoader: arrays have different lengths {lengths}")
        _check_batching("DataLoader", lengths[0], batch_size)
        self.arrays = arrays
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0  # the epoch the next iter() will run

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        n = len(self.arrays[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        # Not a generator function: the epoch must be claimed when iter() is called, not at
        # the first next(), so that len/epoch bookkeeping is right even for an unused iterator.
        epoch, self.epoch = self.epoch, self.epoch + 1
        index_batches = batches(len(self.arrays[0]), self.batch_size, self.shuffle, self.seed,
                                self.drop_last, epoch)
        return (tuple(a[get_array_module(a).asarray(idx)] for a in self.arrays)
                for idx in index_batches)
