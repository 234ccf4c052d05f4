"""Array modules per device: numpy on "cpu", cupy on "cuda".

CuPy is imported lazily, only when a "cuda" tensor is asked for, so that minissl and its tests
behave exactly the same on a machine without it. This is the only module (with kernels/) that
knows which devices exist; ops call ``get_array_module(x)`` and use ``xp.`` functions.
"""
import sys

import numpy as np

_cupy = None


def cupy():
    """The cupy module, imported on first use; a clear error when it is not available."""
    global _cupy
    if _cupy is None:
        try:
            import cupy as cp
            cp.cuda.runtime.getDeviceCount()
        except Exception as e:  # ImportError, or CUDA without a device
            raise RuntimeError(f"device 'cuda' needs CuPy and a CUDA GPU: {e}") from None
        _cupy = cp
    return _cupy


def get_array_module(x):
    """numpy for host arrays, cupy for device arrays (without importing cupy needlessly)."""
    if type(x) is np.ndarray:
        return np
    cp = sys.modules.get("cupy")
    if cp is not None and isinstance(x, cp.ndarray):
        return cp
    return np


def is_host_array(array):
    """True for NumPy data. Checks of *values* (index ranges, class targets) run only on host
    arrays: on a device array each would be a device-to-host copy that stalls the GPU in
    every training step, so there the kernels guard their memory accesses instead."""
    return get_array_module(array) is np


def device_of(array):
    """'cpu' or 'cuda' for an ndarray."""
    return "cpu" if get_array_module(array) is np else "cuda"


def xp_for(device):
    """The array module for a device name."""
    if device == "cpu":
        return np
    if device == "cuda":
        return cupy()
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def to_device(array, device):
    """Copy an array to a device (no copy if it is already there)."""
    if device == "cpu":
        if get_array_module(array) is np:
            return array
        return array.get()
    cp = xp_for(device)
    return cp.asarray(array)


def is_cuda_available():
    try:
        cupy()
        return True
    except RuntimeError:
        return False
