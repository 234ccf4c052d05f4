"""The collectives across ranks: all_gather's gradient, SyncBatchNorm = BatchNorm on the
global batch, broadcast, gradient averaging, disagreement and dead-rank errors."""
import time

import numpy as np
import pytest

import minissl as ms
from minissl import distributed as dist, nn
from minissl.distributed import backends
from dist_helpers import assert_close, cross_rank_gradcheck


def _global(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _rank_weights(shape):
    """Different on every rank, so that sum_r L_r is not N times one loss: a backward that
    forgets the other ranks' terms cannot pass by luck."""
    return np.random.default_rng(100 + dist.rank()).standard_normal(shape)


def test_world():
    assert dist.world_size() >= 2
    assert 0 <= dist.rank() < dist.world_size()
    dist.barrier()


def test_all_gather_forward_is_the_global_batch_in_rank_order():
    X = _global((4 * dist.world_size(), 3))
    y = dist.all_gather(ms.tensor(dist.shard(X)))
    np.testing.assert_array_equal(y.numpy(), X)


def test_all_gather_gradcheck_across_ranks():
    X = _global((2 * dist.world_size(), 3))
    W = _rank_weights((3, 2))

    def objective(x):                      # rank-dependent, nonlinear in the gathered rows
        z = dist.all_gather(x)
        return ((z @ W).tanh() ** 2).sum() + (z * z).mean()

    cross_rank_gradcheck(objective, X)


def test_all_gather_uneven_first_dims():
    n = dist.rank() + 1                    # rank r holds r + 1 rows
    x = ms.tensor(np.full((n, 2), float(dist.rank())), requires_grad=True)
    z = dist.all_gather(x)
    total = dist.world_size() * (dist.world_size() + 1) // 2
    assert z.shape == (total, 2)
    rows = np.repeat(np.arange(dist.world_size()), np.arange(1, dist.world_size() + 1))
    np.testing.assert_array_equal(z.numpy()[:, 0], rows)
    (z * ms.tensor(np.arange(total, dtype=np.float64)[:, None])).sum().backward()
    start = n * (n - 1) // 2               # rows of the ranks before this one
    want = dist.world_size() * np.arange(start, start + n, dtype=np.float64)[:, None]
    np.testing.assert_array_equal(x.grad, np.broadcast_to(want, (n, 2)))


def test_all_gather_rejects_disagreeing_shapes():
    x = ms.tensor(np.zeros((2, 3 + dist.rank())))
    with pytest.raises(dist.DistributedError, match="only the first dim may differ"):
        dist.all_gather(x)


def test_a_gather_without_the_sum_over_ranks_fails_the_gradcheck(monkeypatch):
    """The bug of lightly #1528/#1977: backward returns only this rank's slice of its own
    gradient. The checks above must catch it, or they prove nothing."""
    def wrong_backward(self, grad):
        start = sum(self.counts[:dist.rank()])
        return grad[start:start + self.counts[dist.rank()]]
    monkeypatch.setattr(dist.AllGather, "backward", wrong_backward)
    X = _global((2 * dist.world_size(), 3))
    W = _rank_weights((3, 2))
    with pytest.raises(AssertionError, match="cross-rank gradcheck"):
        cross_rank_gradcheck(lambda x: ((dist.all_gather(x) @ W) ** 2).sum(), X)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 4)])
def test_sync_batchnorm_equals_batchnorm_on_the_global_batch(shape):
    N = dist.world_size()
    X = _global((shape[0] * N,) + shape[1:]) * 2 + 1
    G = _global(X.shape, seed=1)           # the upstream gradient of the global output
    ref = (nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d)(shape[1], dtype=np.float64)
    ref.weight.data[...] = [0.5, -1.0, 2.0]
    ref.bias.data[...] = [0.1, 0.2, -0.3]
    sync = dist.convert_sync_batchnorm(type(ref)(shape[1], dtype=np.float64))
    sync.load_state_dict(ref.state_dict())
    assert isinstance(sync, dist.SyncBatchNorm)
    xg = ms.tensor(X.copy(), requires_grad=True)
    with dist.single_process():
        for _ in range(2):                 # two steps: the running statistics' update
            yg = ref(xg)
    (yg * ms.tensor(G)).sum().backward()
    xl = ms.tensor(np.array(dist.shard(X)), requires_grad=True)
    for _ in range(2):
        yl = sync(xl)
    (yl * ms.tensor(dist.shard(G))).sum().backward()
    assert_close(yl.numpy(), dist.shard(yg.numpy()), 1e-12, "forward")
    assert_close(xl.grad, dist.shard(xg.grad), 1e-12, "input gradient")
    dist.all_reduce_gradients(sync.parameters())
    for name in ("weight", "bias"):        # averaged gradients x N = the global sums
        assert_close(getattr(sync, name).grad * N, getattr(ref, name).grad, 1e-12, name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(sync, name).data, getattr(ref, name).data, 1e-12, name)
    sync.eval(), ref.eval()                # eval: BatchNorm itself, with the same stats
    assert_close(sync(xl).numpy(), dist.shard(ref(xg).numpy()), 1e-12, "eval")


def test_sync_batchnorm_gradcheck_across_ranks():
    X = _global((3 * dist.world_size(), 2, 3))
    bn = dist.SyncBatchNorm(2, dtype=np.float64)
    W = _rank_weights((2, 3))
    cross_rank_gradcheck(lambda x: ((bn(x) * W).tanh().sum()) ** 2, X)


def test_convert_sync_batchnorm_keeps_the_parameters():
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU())
    params = list(m.parameters())
    keys = list(m.state_dict())
    m = dist.convert_sync_batchnorm(m)
    assert isinstance(m[1], dist.SyncBatchNorm)
    assert all(a is b for a, b in zip(params, m.parameters()))
    assert list(m.state_dict()) == keys


def test_broadcast_parameters_and_all_reduce_gradients():
    m = nn.Sequential(nn.Linear(3, 4, rng=np.random.default_rng(dist.rank())),
                      nn.BatchNorm1d(4))
    m[1].running_mean.data[...] = dist.rank()
    dist.broadcast_parameters(m)
    gathered = dist.backend().allgather(np.concatenate([v.ravel() for v in
                                                        m.state_dict().values()])[None])
    np.testing.assert_array_equal(gathered[0], gathered[-1])
    for p in m.parameters():
        p.grad = np.full(p.shape, float(dist.rank()))
    dist.all_reduce_gradients(m.parameters(), bucket_bytes=40)   # several buckets
    mean = (dist.world_size() - 1) / 2
    for p in m.parameters():
        np.testing.assert_allclose(p.grad, mean)


def test_a_stuck_rank_gives_a_clear_timeout_error_instead_of_a_hang():
    comm = dist.backend().comm.Dup()       # the abandoned request must not disturb the rest
    if dist.rank() == 1:
        time.sleep(3)                      # "stuck": misses the others' deadline of 1 s
        backends.MPIBackend(timeout=60, comm=comm).barrier()
    else:
        t0 = time.monotonic()
        with pytest.raises(dist.DistributedError, match="did not complete within 1 s"):
            backends.MPIBackend(timeout=1.0, comm=comm).barrier()
        assert time.monotonic() - t0 < 2.5
    dist.barrier()                         # polling it lets the late barrier complete


def test_shuffled_forward_undoes_its_permutation_and_normalises_per_group():
    N = dist.world_size()
    X = _global((4 * N, 3))
    perm = np.random.default_rng(1).permutation(len(X))
    out = dist.shuffled_forward(lambda v: ms.tensor(v) * 2.0, X, perm)
    np.testing.assert_array_equal(out.numpy(), 2 * X)          # rows back in their order
    S = 2 * N                                                 # two groups on every rank
    bn_ = dist.convert_sync_batchnorm(nn.SplitBatchNorm1d(3, num_splits=S, dtype=np.float64))
    bn = lambda v: bn_(ms.tensor(v))                          # noqa: E731
    got = dist.shuffled_forward(bn, X, perm, S).numpy()
    with dist.single_process():                               # the same S groups in one
        want = dist.shuffled_forward(bn, X, perm, S).numpy()  # process: the same keys
    assert_close(got, want, 1e-12, "shuffled split BN, N ranks vs one process")
    for g in range(S):        # group g: shuffled positions i = g mod S, i.e. rows perm[i]
        np.testing.assert_allclose(got[perm[g::S]].mean(0), 0, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 2, 2)])
def test_split_batchnorm_on_ranks_equals_split_batchnorm_on_the_global_batch(shape):
    """SplitBatchNorm with S splits over the global batch = each rank's S/N groups (rows
    ``shard(..., groups=S)``) with the running statistics averaged over ranks."""
    N = dist.world_size()
    S = 2 * N
    X = _global((shape[0] * N,) + shape[1:]) * 2 + 1
    G = _global(X.shape, seed=1)
    kind = nn.SplitBatchNorm1d if len(shape) < 4 else nn.SplitBatchNorm2d
    ref = kind(shape[1], num_splits=S, dtype=np.float64)
    ref.weight.data[...] = [0.5, -1.0, 2.0]
    ref.bias.data[...] = [0.1, 0.2, -0.3]
    sync = dist.convert_sync_batchnorm(kind(shape[1], num_splits=S, dtype=np.float64))
    sync.load_state_dict(ref.state_dict())
    assert isinstance(sync, (dist.SyncSplitBatchNorm1d, dist.SyncSplitBatchNorm2d))
    xg = ms.tensor(X.copy(), requires_grad=True)
    with dist.single_process():
        for _ in range(2):
            yg = ref(xg)
    (yg * ms.tensor(G)).sum().backward()
    xl = ms.tensor(np.array(dist.shard(X, groups=S)), requires_grad=True)
    for _ in range(2):
        yl = sync(xl)
    (yl * ms.tensor(dist.shard(G, groups=S))).sum().backward()
    assert_close(yl.numpy(), dist.shard(yg.numpy(), groups=S), 1e-12, "forward")
    assert_close(xl.grad, dist.shard(xg.grad, groups=S), 1e-12, "input gradient")
    dist.all_reduce_gradients(sync.parameters())
    for name in ("weight", "bias"):
        assert_close(getattr(sync, name).grad * N, getattr(ref, name).grad, 1e-12, name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(sync, name).data, getattr(ref, name).data, 1e-12, name)
    with pytest.raises(ValueError, match="cannot be spread over"):
        dist.convert_sync_batchnorm(kind(3, num_splits=N + 1))(ms.tensor(_global(
            (N + 1,) + shape[1:])))
