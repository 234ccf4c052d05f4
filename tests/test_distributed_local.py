"""minissl.distributed in one process (no MPI): a world of one, where everything is the
identity and nothing changes the single-process results. The multi-rank tests are in
tests/distributed (run under mpiexec)."""
import subprocess
import sys

import numpy as np
import pytest

import minissl as ms
from minissl import distributed as dist, nn


def test_importing_it_loads_no_mpi():
    code = ("import sys, minissl, minissl.distributed, minissl.methods.simclr; "
            "print('mpi4py' in sys.modules, 'cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_a_single_process_is_a_world_of_one():
    assert (dist.rank(), dist.world_size()) == (0, 1)
    dist.barrier()
    x = ms.tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    assert dist.all_gather(x) is x
    a, b = np.arange(4), np.arange(8)
    assert dist.shard(a) is a and dist.shard(a, b) == (a, b)
    assert dist.all_reduce(2.5) == 2.5
    p = nn.Parameter(np.ones(3))
    p.grad = np.full(3, 2.0)
    dist.all_reduce_gradients([p])
    np.testing.assert_array_equal(p.grad, 2.0)


def test_prepare_is_a_no_op_in_one_process():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    assert dist.prepare(m) is m and type(m[1]) is nn.BatchNorm1d


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 5)])
def test_sync_batchnorm_alone_is_batchnorm(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    bn = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(3, dtype=np.float64)
    sync = dist.convert_sync_batchnorm(type(bn)(3, dtype=np.float64))
    for train in (True, False):
        bn.train(train), sync.train(train)
        np.testing.assert_array_equal(sync(ms.tensor(x)).numpy(), bn(ms.tensor(x)).numpy())
    assert list(sync.state_dict()) == list(bn.state_dict())


def test_launch_detection(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")       # a batch script's own process: not a rank
    assert not dist.launched_by_mpi()
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "1")
    assert dist.launched_by_mpi() and dist.launched_rank() == 1


def test_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dist, "_backend", None)
    with pytest.raises(ValueError, match="unknown backend 'gloo'"):
        dist.init("gloo")


def test_shuffled_forward_in_groups_in_one_process():
    X = np.random.default_rng(0).standard_normal((8, 3))
    out = dist.shuffled_forward(lambda v: ms.tensor(v) * 2.0, X, np.random.default_rng(1)
                                .permutation(8))
    np.testing.assert_array_equal(out.numpy(), 2 * X)          # rows back in their order
    bn = nn.SplitBatchNorm1d(3, num_splits=2, dtype=np.float64)
    perm = np.random.default_rng(1).permutation(8)
    out = dist.shuffled_forward(lambda v: bn(ms.tensor(v)), X, perm, groups=2).numpy()
    for g in range(2):                # group g: shuffled positions i = g mod 2, rows perm[i]
        np.testing.assert_allclose(out[perm[g::2]].mean(0), 0, atol=1e-12)


def test_group_rows_keep_whole_split_batchnorm_groups_on_a_rank():
    # 4 groups (row i in group i mod 4) over 2 ranks: rank 1 holds groups 2 and 3, in order,
    # so that its SplitBatchNorm with 2 splits sees group 2 at local rows 0, 2 and 3 at 1, 3.
    np.testing.assert_array_equal(dist.group_rows(8, 4, rank=1, size=2), [2, 3, 6, 7])
    np.testing.assert_array_equal(dist.group_rows(8, 1, rank=1, size=2), [4, 5, 6, 7])
    np.testing.assert_array_equal(dist.group_rows(8, 8), np.arange(8))   # one process
    with pytest.raises(ValueError, match="3 batch-norm groups of a batch of 12 rows cannot"):
        dist.group_rows(12, 3, rank=0, size=2)
    with pytest.raises(ValueError, match="does not split evenly over 2 ranks"):
        dist.group_rows(7, 1, rank=0, size=2)
