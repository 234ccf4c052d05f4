"""Data-parallel training on many processes: MPI (mpi4py) on CPUs, NCCL (CuPy) on GPUs.

    from minissl import distributed as dist
    dist.init()                              # under mpiexec / srun; a no-op world of 1 otherwise
    dist.broadcast_parameters(model)         # every rank starts from rank 0's weights
    z = dist.all_gather(model(x_local))      # (B, D): all ranks' rows, in rank order
    loss = objective(z); loss.backward()     # all_gather's backward sums over ranks
    dist.all_reduce_gradients(model.parameters())   # average: = one process, whole batch
    opt.step()

The convention (PyTorch DDP's, and ``torch.distributed.nn.all_gather``'s): every rank r
minimises its own loss L_r, gradients are AVERAGED over ranks, so the run minimises
(1/N) sum_r L_r. A loss that is a mean over the local rows then gives exactly the gradient of
the mean over the global batch; a loss computed on gathered rows is the same L on every rank,
and the backward of ``all_gather`` sums the N identical contributions so that the average
gives dL. Nothing else is needed, and nothing else is right: a gather whose backward does not
sum over ranks silently trains 1/N of the objective's gradient (tests/distributed prove ours).

A single process is a world of size 1: every function here works without MPI and without
``init()``, and the collectives are then the identity. MPI is imported only by ``init()``.
Not thread-safe: one training loop per process, as MPI and NCCL expect.
"""
import contextlib
import os

from .backends import DEFAULT_TIMEOUT, DistributedError, LocalBackend, MPIBackend, NCCLBackend
from .ops import (AllGather, all_gather, all_reduce, all_reduce_gradients,
                  broadcast_parameters, group_rows, shard)
from .shuffle_bn import shuffled_forward
from .sync_batchnorm import (SyncBatchNorm, SyncSplitBatchNorm1d, SyncSplitBatchNorm2d,
                             convert_sync_batchnorm)

__all__ = ["init", "is_initialized", "rank", "world_size", "barrier", "backend",
           "launched_by_mpi", "launched_rank", "prepare", "single_process",
           "broadcast_parameters", "all_reduce_gradients", "all_gather", "all_reduce", "shard",
           "group_rows", "AllGather", "SyncBatchNorm", "SyncSplitBatchNorm1d",
           "SyncSplitBatchNorm2d", "convert_sync_batchnorm", "shuffled_forward",
           "DistributedError", "abort"]

_LOCAL = LocalBackend()
_backend = None          # None until init(): then a backend object of .backends

# The variables the usual launchers set in each rank: MPICH / Intel MPI (PMI), Open MPI,
# PMIx, and Slurm's srun (the job step's size: SLURM_NTASKS is also set in a batch script's
# own single process, which must stay a world of one).
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS")


def launched_by_mpi():
    """True when this process is one of several started by mpiexec/mpirun/srun."""
    for var in _SIZE_VARS:
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def launched_rank():
    """This process's rank as its launcher set it (before ``init()``; 0 if not launched)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def init(backend=None, timeout=None):
    """Join the process group; returns the backend. Idempotent.

    ``backend``: "mpi" (CPU arrays), "nccl" (cupy arrays, one GPU per rank; MPI still starts
    the ranks and carries NCCL's id), "local" (a world of one), or None: "mpi" when launched
    by mpiexec/srun with more than one rank, else "local". ``timeout``: seconds a collective
    may wait for the other ranks before ``DistributedError`` (default: MINISSL_DIST_TIMEOUT
    or 300).
    """
    global _backend
    if _backend is not None:
        if backend is not None and backend != _backend.name:
            raise DistributedError(f"minissl.distributed.init: already initialised with "
                                   f"{_backend.name!r}, cannot switch to {backend!r}")
        return _backend
    if timeout is None:
        timeout = float(os.environ.get("MINISSL_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    if backend is None:
        backend = "mpi" if launched_by_mpi() else "local"
    if backend == "local":
        _backend = _LOCAL
        return _backend
    if backend not in ("mpi", "nccl"):
        raise ValueError(f"minissl.distributed.init: unknown backend {backend!r}: "
                         f"'mpi', 'nccl' or 'local'")
    try:
        _backend = MPIBackend(timeout) if backend == "mpi" else NCCLBackend(timeout)
    except ImportError as e:
        need = "mpi4py" if backend == "mpi" else "cupy and mpi4py"
        raise DistributedError(f"minissl.distributed: the {backend!r} backend needs {need} "
                               f"(pip install 'minissl[distributed]'): {e}") from None
    return _backend


def is_initialized():
    return _backend is not None


def backend():
    """The backend in use (the single-process one before ``init()``)."""
    return _backend if _backend is not None else _LOCAL


def rank():
    """This process's rank, 0 .. world_size() - 1 (0 in a single process)."""
    return backend().rank


def world_size():
    """The number of processes training together (1 in a single process)."""
    return backend().size


def barrier():
    """Wait until every rank gets here (or DistributedError after the timeout)."""
    backend().barrier()


def abort(code=1):
    """End every rank of the job now (after a DistributedError: a blocked peer would never
    reach MPI_Finalize). In a single process: ``os._exit(code)``."""
    backend().abort(code)


def prepare(module):
    """Make ``module`` ready for data-parallel training, in place (a no-op in a world of one):
    BatchNorm layers become SyncBatchNorm and SplitBatchNorm layers SyncSplitBatchNorm (same
    tensors), and every rank takes rank 0's parameters and buffers. Returns ``module``."""
    if world_size() > 1:
        convert_sync_batchnorm(module)
        broadcast_parameters(module)
    return module


@contextlib.contextmanager
def single_process():
    """Inside, this process is a world of one (collectives are the identity): for a
    reference computation on one rank, e.g. the one-process run the tests compare with."""
    global _backend
    saved, _backend = _backend, _LOCAL
    try:
        yield
    finally:
        _backend = saved
