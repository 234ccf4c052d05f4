"""``minissl pretrain`` under mpiexec: rank 0 alone writes; the run equals one process with
the global batch; --resume continues a run made with another number of ranks."""
import json
import os
import shutil
import tempfile

import numpy as np

from minissl import checkpoint, cli, distributed as dist
from dist_helpers import assert_close

ARGS = ["pretrain", "simclr", "--data", "digits", "--limit", "64", "--batch-size", "16",
        "--no-plots", "--no-progress", "--seed", "3", "--optimizer", "sgd", "--lr", "0.05"]
# SGD: with Adam, a bias followed by BatchNorm (true gradient 0, computed one round-off) moves
# by +-lr whatever the round-off, so its weights differ between any two summation orders.


def _shared_dir():
    comm = dist.backend().comm
    return comm.bcast(tempfile.mkdtemp(prefix="minissl-dist-") if dist.rank() == 0 else None)


def _weights(path):
    return {k: v for k, v in np.load(path).items() if not k.startswith("__")}


def _on_rank0_alone(argv):
    """Run the CLI as a one-process job on rank 0 while the others wait."""
    if dist.rank() == 0:
        with dist.single_process():
            assert cli.main(argv) == 0
    dist.barrier()


def _assert_same_checkpoint(a, b, tol):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wb:
        if np.issubdtype(wb[k].dtype, np.number):
            assert_close(wa[k], wb[k], tol, k)


def test_pretrain_under_mpi_writes_once_and_equals_one_process():
    root = _shared_dir()
    try:
        one, many = os.path.join(root, "one"), os.path.join(root, "many")
        _on_rank0_alone(ARGS + ["--epochs", "2", "--out", one])
        assert cli.main(ARGS + ["--epochs", "2", "--out", many]) == 0
        dist.barrier()
        lines = open(os.path.join(many, "metrics.jsonl")).read().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == [1, 2]      # one writer
        assert sorted(os.listdir(many)) == ["checkpoint.npz", "metrics.jsonl"]
        loss_one = [json.loads(x)["loss"] for x in
                    open(os.path.join(one, "metrics.jsonl")).read().splitlines()]
        assert_close([json.loads(x)["loss"] for x in lines], loss_one, 1e-5, "losses")
        _assert_same_checkpoint(os.path.join(many, "checkpoint.npz"),
                                os.path.join(one, "checkpoint.npz"), 1e-5)

        # --resume with another number of ranks: 1 epoch on one process, then N ranks.
        resumed = os.path.join(root, "resumed")
        _on_rank0_alone(ARGS + ["--epochs", "1", "--out", resumed])
        assert cli.main(ARGS + ["--epochs", "2", "--out", resumed, "--resume"]) == 0
        dist.barrier()
        _assert_same_checkpoint(os.path.join(resumed, "checkpoint.npz"),
                                os.path.join(one, "checkpoint.npz"), 1e-5)
        meta = checkpoint.load(os.path.join(resumed, "checkpoint.npz"))
        assert meta["epoch"] == 2 and len(meta["history"]) == 2
    finally:
        dist.barrier()
        if dist.rank() == 0:
            shutil.rmtree(root, ignore_errors=True)


def test_a_busy_run_folder_stops_every_rank_before_training():
    # Rank 0 alone takes the folder's lock; when another live run holds it, every rank must
    # exit 2 (not rank 0 alone, leaving the others waiting in a collective until the timeout).
    root = _shared_dir()
    try:
        out = os.path.join(root, "busy")
        if dist.rank() == 0:
            os.makedirs(out)
            with open(os.path.join(out, ".minissl.lock"), "w") as f:
                f.write(f"{os.getppid()}\n")          # a live process that is not this one
        dist.barrier()
        assert cli.main(ARGS + ["--epochs", "1", "--out", out]) == 2
        dist.barrier()
        assert sorted(os.listdir(out)) == [".minissl.lock"]       # nothing written
    finally:
        dist.barrier()
        if dist.rank() == 0:
            shutil.rmtree(root, ignore_errors=True)
