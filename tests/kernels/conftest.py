"""Fixtures of the kernel tests: the CUDA emulator and the runners of the GPU cross-checks."""
import shutil

import pytest

from minissl.backend import is_cuda_available
from minissl.kernels import cuda as K
from support.cuda_emulator import SMALL, Emulator, Runner

CUDA = is_cuda_available()


@pytest.fixture(scope="session")
def emulator():
    if shutil.which("g++") is None:
        pytest.skip("g++ is not available to build the CUDA emulator")
    emu = Emulator()
    try:
        emu.build()
    except RuntimeError as e:
        pytest.fail(str(e))
    return emu


@pytest.fixture(scope="session", params=["emulated", "cuda", "cuda-small"])
def runner(request):
    """The emulator with the small geometry; the GPU with the production geometry and with
    the small one. (The emulator runs the production geometry in
    test_production_geometry_on_the_emulator: 256 OS threads per block are slow.)"""
    if request.param.startswith("cuda"):
        if not CUDA:
            pytest.skip("CuPy or a CUDA GPU is not available")
        return Runner("cuda", K._CupyBackend(), SMALL if request.param == "cuda-small" else {})
    return Runner("emulated", request.getfixturevalue("emulator"), SMALL)
