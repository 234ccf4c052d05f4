"""Shared test configuration: hypothesis profiles and device parametrisation.

Profiles: "dev" (default, 30 examples), "ci" (chosen when CI=true: 15 examples, no deadline,
derandomised so that CI is reproducible) and "thorough" (300 examples) for a long local run:
``HYPOTHESIS_PROFILE=thorough make test``.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE",
                                     "ci" if os.environ.get("CI") else "dev"))


def _devices():
    devs = ["cpu"]
    try:
        from minissl.backend import is_cuda_available
        if is_cuda_available():
            devs.append("cuda")
    except Exception:
        pass
    return devs


DEVICES = _devices()


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Parametrise a test over devices; 'cuda' is skipped cleanly without CuPy and a GPU."""
    if request.param not in DEVICES:
        pytest.skip("CuPy or a CUDA GPU is not available")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)
