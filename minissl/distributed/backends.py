"""The engines under ``minissl.distributed``: one process, MPI (mpi4py) and NCCL (CuPy).

Each backend offers the same four collectives on raw arrays, nothing more:

    allreduce_sum(a) -> the elementwise sum of ``a`` over ranks (a new array)
    reduce_scatter_sum(a, counts) -> rows of this rank of the sum of ``a`` (sum_r counts[r]
                        rows, the same shape on every rank) over ranks: rank r gets its
                        counts[r] rows, in rank order (half the traffic of allreduce + slice)
    allgather(a)     -> [a of rank 0, a of rank 1, ...] (first dims may differ)
    broadcast(a, root=0)   overwrites ``a`` in place with rank ``root``'s values
    barrier()

Every collective has a deadline. MPI and NCCL block forever when a peer has died or hangs, so
collectives are started NONBLOCKING (``MPI_Iallreduce`` & co., or NCCL kernels on a stream) and
then polled (``Request.Test`` / ``Event.done``) until they complete or ``timeout`` seconds
pass; then ``DistributedError`` names the collective, the rank and the timeout, and the caller
(the CLI) aborts the whole job (``MPI_Abort``) instead of waiting on a peer that never comes.
Polling costs a little latency (a sleep of at most 1 ms between tests after the first
thousand spins), nothing next to a training step.
"""
import os
import time

import numpy as np

DEFAULT_TIMEOUT = 300.0   # seconds; MINISSL_DIST_TIMEOUT overrides it


class DistributedError(RuntimeError):
    """A collective failed or timed out (a rank died, hangs, or the ranks disagree)."""


def _poll(done, what, rank, timeout):
    """Spin on ``done()`` until it returns True; DistributedError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    spins = 0
    while not done():
        spins += 1
        if spins > 1000:
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"minissl.distributed: {what} on rank {rank} did not complete within "
                    f"{timeout:g} s: another rank has died or is stuck (set "
                    f"MINISSL_DIST_TIMEOUT to wait longer)")
            time.sleep(0.001 if spins > 10000 else 0)


_META = 12   # first dim, dtype char, item size, ndim, up to 8 trailing dims


def _signature(a):
    """What the ranks must agree on before they exchange ``a``'s bytes (an int64 vector)."""
    if a.ndim > _META - 3:
        raise ValueError(f"all_gather: at most {_META - 3} dims, got shape {a.shape}")
    sig = np.full(_META, -1, np.int64)
    sig[:4] = (a.shape[0] if a.ndim else 1, ord(a.dtype.char), a.dtype.itemsize, a.ndim)
    sig[4:4 + max(a.ndim - 1, 0)] = a.shape[1:]
    return sig


def _check_signatures(meta, what, rank):
    """``meta`` (size, _META): every rank's signature; all but the first dim must agree."""
    bad = [r for r in range(len(meta)) if (meta[r, 1:] != meta[0, 1:]).any()]
    if bad:
        def desc(m):
            shape = (int(m[0]),) + tuple(int(d) for d in m[4:4 + max(int(m[3]) - 1, 0)])
            return f"{np.dtype(chr(int(m[1])))} {shape}"
        raise DistributedError(f"minissl.distributed: {what}: rank {bad[0]} sent "
                               f"{desc(meta[bad[0]])} but rank 0 sent {desc(meta[0])} (seen "
                               f"on rank {rank}); only the first dim may differ")


class LocalBackend:
    """A world of one process: every collective is the identity; no MPI needed."""

    name = "local"
    rank, size = 0, 1

    def allreduce_sum(self, a):
        return a.copy()

    def reduce_scatter_sum(self, a, counts):
        return a.copy()

    def allgather(self, a):
        return [a]

    def broadcast(self, a, root=0):
        return a

    def barrier(self):
        pass

    def abort(self, code=1):
        os._exit(code)


class MPIBackend:
    """CPU collectives on MPI_COMM_WORLD through mpi4py (any MPI: MPICH, Open MPI, Intel MPI;
    ``mpiexec -n N`` or Slurm's ``srun`` starts the ranks)."""

    name = "mpi"

    def __init__(self, timeout=DEFAULT_TIMEOUT, comm=None):
        from mpi4py import MPI          # imported here: importing it initialises MPI
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = float(timeout)

    def _wait(self, request, what):
        _poll(request.Test, what, self.rank, self.timeout)

    def allreduce_sum(self, a):
        a = np.ascontiguousarray(a)
        out = np.empty_like(a)
        self._wait(self.comm.Iallreduce(a, out, op=self.MPI.SUM), f"all_reduce {a.shape}")
        return out

    def reduce_scatter_sum(self, a, counts):
        a = np.ascontiguousarray(a)
        row = int(np.prod(a.shape[1:], dtype=np.int64))
        out = np.empty((counts[self.rank],) + a.shape[1:], dtype=a.dtype)
        req = self.comm.Ireduce_scatter(a, out, [int(c) * row for c in counts], op=self.MPI.SUM)
        self._wait(req, f"reduce_scatter {a.shape}")
        return out

    def allgather(self, a):
        a = np.ascontiguousarray(a)
        # Exchange the first dims, dtypes and trailing shapes first: uneven first dims are
        # allowed; anything else differing is a bug on some rank that must not become garbage.
        meta = np.full((self.size, _META), -1, np.int64)
        self._wait(self.comm.Iallgather(_signature(a), meta), f"all_gather sizes {a.shape}")
        _check_signatures(meta, "all_gather", self.rank)
        counts = meta[:, 0].copy()
        row = int(np.prod(a.shape[1:], dtype=np.int64))
        out = np.empty((int(counts.sum()),) + a.shape[1:], dtype=a.dtype)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]) * row
        req = self.comm.Iallgatherv(a, [out, counts * row, displs, self._mpi_type(a.dtype)])
        self._wait(req, f"all_gather {a.shape}")
        return np.split(out, np.cumsum(counts)[:-1])

    def _mpi_type(self, dtype):
        return self.MPI._typedict[np.dtype(dtype).char]

    def broadcast(self, a, root=0):
        if not a.flags.c_contiguous:
            raise ValueError(f"broadcast: the array {a.shape} must be C-contiguous (in place)")
        self._wait(self.comm.Ibcast(a, root=root), f"broadcast {a.shape}")
        return a

    def barrier(self):
        self._wait(self.comm.Ibarrier(), "barrier")

    def abort(self, code=1):
        self.comm.Abort(code)


class NCCLBackend:
    """GPU collectives through NCCL (``cupy.cuda.nccl``), one GPU per rank.

    MPI starts the ranks and carries NCCL's unique id from rank 0 to the others (the usual
    bootstrap); rank r uses GPU ``r % device_count`` of its node. Arrays are cupy arrays on
    that GPU. Collectives run on a private stream; an event recorded after each is polled
    with the deadline, and on timeout the communicator is aborted (``ncclCommAbort``) so that
    no kernel stays blocked on the GPU.

    NOT YET RUN ON A GPU: written and reviewed against CuPy's and NCCL's documentation, and
    its CPU-side logic (padding of uneven gathers, bookkeeping) is the MPI backend's.
    """

    name = "nccl"

    def __init__(self, timeout=DEFAULT_TIMEOUT):
        import cupy
        from cupy.cuda import nccl
        self.cp, self.nccl = cupy, nccl
        self.mpi = MPIBackend(timeout)            # bootstrap and host-side agreement
        self.rank, self.size, self.timeout = self.mpi.rank, self.mpi.size, float(timeout)
        cupy.cuda.Device(self.rank % cupy.cuda.runtime.getDeviceCount()).use()
        # The id is 128 chars (a tuple of ints in CuPy); rank 0 makes it, MPI carries it.
        uid = np.zeros(128, np.int64)
        if self.rank == 0:
            uid[:] = nccl.get_unique_id()
        self.mpi.broadcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(self.size, tuple(int(b) for b in uid), self.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def _types(self, dtype):
        n = self.nccl
        table = {np.float32: n.NCCL_FLOAT32, np.float64: n.NCCL_FLOAT64,
                 np.float16: n.NCCL_FLOAT16, np.int64: n.NCCL_INT64, np.int32: n.NCCL_INT32,
                 np.uint8: n.NCCL_UINT8}
        try:
            return table[np.dtype(dtype).type]
        except KeyError:
            raise DistributedError(f"minissl.distributed: NCCL has no type for {dtype}") from None

    def _wait(self, what):
        event = self.cp.cuda.Event(disable_timing=True)
        event.record(self.stream)
        try:
            _poll(lambda: event.done, what, self.rank, self.timeout)
        except DistributedError:
            self.comm.abort()
            raise

    def _ready(self, a):
        # The producer of ``a`` ran on the current stream: order our stream after it.
        self.stream.wait_event(self.cp.cuda.get_current_stream().record())
        return self.cp.ascontiguousarray(a)

    def allreduce_sum(self, a):
        if isinstance(a, np.ndarray):              # host values (a loss, metrics): MPI
            return self.mpi.allreduce_sum(a)
        a = self._ready(a)
        out = self.cp.empty_like(a)
        self.comm.allReduce(a.data.ptr, out.data.ptr, a.size, self._types(a.dtype),
                            self.nccl.NCCL_SUM, self.stream.ptr)
        self._wait(f"all_reduce {a.shape}")
        return out

    def reduce_scatter_sum(self, a, counts):
        if isinstance(a, np.ndarray):
            return self.mpi.reduce_scatter_sum(a, counts)
        # NCCL scatters equal counts: lay the rows out padded to the longest rank's.
        n = max(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        a = self._ready(a)
        padded = self.cp.zeros((self.size, n) + a.shape[1:], dtype=a.dtype)
        for r, (s, c) in enumerate(zip(starts, counts)):
            padded[r, :c] = a[s:s + c]
        out = self.cp.empty((n,) + a.shape[1:], dtype=a.dtype)
        self.comm.reduceScatter(padded.data.ptr, out.data.ptr, out.size, self._types(a.dtype),
                                self.nccl.NCCL_SUM, self.stream.ptr)
        self._wait(f"reduce_scatter {a.shape}")
        return out[:counts[self.rank]]

    def allgather(self, a):
        if isinstance(a, np.ndarray):
            return self.mpi.allgather(a)
        # NCCL gathers equal counts: pad every rank's rows to the longest, then cut.
        meta = np.concatenate(self.mpi.allgather(_signature(a)[None]))   # host agreement
        _check_signatures(meta, "all_gather", self.rank)
        counts = [int(c) for c in meta[:, 0]]
        n = max(counts)
        a = self._ready(a)
        padded = self.cp.zeros((n,) + a.shape[1:], dtype=a.dtype)
        padded[:len(a)] = a
        out = self.cp.empty((self.size,) + padded.shape, dtype=a.dtype)
        self.comm.allGather(padded.data.ptr, out.data.ptr, padded.size, self._types(a.dtype),
                            self.stream.ptr)
        self._wait(f"all_gather {a.shape}")
        return [out[r, :counts[r]] for r in range(self.size)]

    def broadcast(self, a, root=0):
        if isinstance(a, np.ndarray):
            return self.mpi.broadcast(a, root)
        if not a.flags.c_contiguous:
            raise ValueError(f"broadcast: the array {a.shape} must be C-contiguous (in place)")
        self._ready(a)
        self.comm.broadcast(a.data.ptr, a.data.ptr, a.size, self._types(a.dtype), root,
                            self.stream.ptr)
        self._wait(f"broadcast {a.shape}")
        return a

    def barrier(self):
        self.allreduce_sum(self.cp.zeros(1, self.cp.float32))

    def abort(self, code=1):
        self.comm.abort()
        self.mpi.abort(code)
