"""Tests that need several processes: run them with

    mpiexec -n 2 python -m pytest -q tests/distributed

Collected by a plain ``pytest`` run too, where they skip (no MPI launcher, or mpi4py absent).
Every rank runs every test; a test must make the same collective calls on every rank, and the
assertions compare values that agree on all ranks, so that a failure fails everywhere instead
of leaving one rank waiting (the collectives' timeout is the last resort).
"""
import os

import pytest

from minissl import distributed as dist


def _why_skip():
    if not dist.launched_by_mpi():
        return "needs several ranks: mpiexec -n 2 python -m pytest tests/distributed"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'minissl[distributed]')"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _why_skip()
    if reason is None:
        os.environ.setdefault("MINISSL_DIST_TIMEOUT", "120")
        dist.init("mpi")
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.skip(reason=reason))
