"""The pretraining loop shared by the examples and the command line.

    history = pretrain(method, train_x, epochs=100, batch_size=256, lr=1e-3)

Mini-batches come from ``data.DataLoader`` (the order of epoch e depends only on (seed, e)),
the augmentations from a generator seeded by (seed, epoch), so a run resumed at epoch e
replays exactly the batches and views of an uninterrupted run.

Data-parallel (under mpiexec/srun after ``distributed.init()``): every rank iterates over the
same global batches and draws the same randomness; the method keeps its rows
(``distributed.shard``) and gathers what its loss needs; gradients are averaged. N ranks then
train exactly as one process with the global batch ``batch_size`` (tests/distributed).
"""
import time

import numpy as np

from . import distributed as dist, optim
from .backend import get_array_module, to_device
from .data import DataLoader


def make_optimizer(method, name="adam", lr=1e-3, weight_decay=None):
    """The optimiser ``name`` over ``method``'s trainable parameters. ``weight_decay=None``
    is the optimiser's own default (0 for Adam and SGD, 1e-2 for AdamW, 1e-6 for LARS); a
    number, 0 included, is used as given."""
    params = method.trainable_parameters()
    defaults = {"adam": 0.0, "adamw": 1e-2, "sgd": 0.0, "lars": 1e-6}
    if name not in defaults:
        raise ValueError(f"unknown optimizer {name!r}: adam, adamw, sgd or lars")
    wd = defaults[name] if weight_decay is None else weight_decay
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    return optim.LARS(params, lr=lr, weight_decay=wd)


def first_nonfinite(module):
    """The name of the first floating parameter or buffer of ``module`` holding a NaN or an
    infinity, or None. Fast path, run after every step: one sum per array and one host
    transfer in all (a sum is finite when every element is, unless finite elements overflow
    it, which the exact test per array then rules out)."""
    items = [(n, t.data) for n, t in module._state_items()
             if t.data.dtype.kind == "f" and t.data.size]
    with np.errstate(over="ignore", invalid="ignore"):
        if not items or np.isfinite(float(sum(a.sum() for _, a in items))):
            return None
        for name, a in items:
            if not bool(get_array_module(a).isfinite(a).all()):
                return name
    return None


def _progress(iterable, enable, desc, total):
    if not enable:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    # disable=None: no bar when stderr is not a terminal (logs, CI), as tqdm documents.
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                disable=None)


def pretrain(method, train_data, epochs, batch_size=256, lr=1e-3, optimizer=None, scheduler=None,
             seed=0, device="cpu", start_epoch=0, progress=True, on_epoch_end=None,
             drop_last=True, postfix=None):
    """Train ``method`` on ``train_data`` for ``epochs`` epochs.

    ``train_data`` is an array, or a tuple of equally long arrays (``method.training_data``
    gives the right one); each step receives a mini-batch of it (a tuple for a tuple).

    Returns a list with one dict per epoch: ``epoch``, ``loss`` (mean over the epoch),
    ``lr``, ``seconds``, ``samples_per_s`` and the mean of every metric the method reports.
    ``on_epoch_end(epoch, record)`` is called after each epoch (checkpointing, logging).
    ``postfix``: a dict shown in the progress bar beside the loss, read at each step (so
    ``on_epoch_end`` can put an epoch's monitor there for the next epoch's bar).
    """
    dist.prepare(method)              # data-parallel: SyncBatchNorm, rank 0's weights
    optimizer = optimizer or make_optimizer(method, lr=lr)
    arrays = train_data if isinstance(train_data, tuple) else (train_data,)
    arrays = tuple(to_device(a, device) for a in arrays)
    loader = DataLoader(*arrays, batch_size=min(batch_size, len(arrays[0])), shuffle=True,
                        seed=seed, drop_last=drop_last)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * epochs
    method.train()
    history = []
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        rng = np.random.default_rng([seed, epoch, 1])   # the augmentations of this epoch
        t0 = time.perf_counter()
        sums, n = {}, 0
        bar = _progress(loader, progress and dist.rank() == 0,   # one bar, rank 0's
                        f"{method.name} epoch {epoch + 1}/{epochs}", steps_per_epoch)
        for i, batch in enumerate(bar):
            x = batch if isinstance(train_data, tuple) else batch[0]
            step = epoch * steps_per_epoch + i
            optimizer.zero_grad()
            loss, metrics = method.training_step(x, rng)
            value = dist.all_reduce(loss.item())             # the global batch's loss
            if not np.isfinite(value):                        # (the same on every rank)
                raise FloatingPointError(f"{method.name}: the loss became {value} at epoch "
                                         f"{epoch + 1}, step {i + 1}; lower the learning rate")
            loss.backward()
            dist.all_reduce_gradients(method.parameters())   # mean over ranks (no-op on one)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            method.on_step_end(step, total)
            bad = first_nonfinite(method)     # weights are equal on every rank: all agree
            if bad is not None:
                raise FloatingPointError(f"{method.name}: {bad} became non-finite at epoch "
                                         f"{epoch + 1}, step {i + 1}; lower the learning rate")
            sums["loss"] = sums.get("loss", 0.0) + value
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
            if hasattr(bar, "set_postfix"):
                el = time.perf_counter() - t0
                bar.set_postfix(loss=f"{value:.4f}", samples_s=f"{n * loader.batch_size / el:.0f}",
                                **(postfix or {}))
        sums.update({k: dist.all_reduce(v) for k, v in sums.items() if k != "loss"})
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in sums.items()},
                  "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
                  "samples_per_s": n * loader.batch_size / max(seconds, 1e-9)}
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    return history
