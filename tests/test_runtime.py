"""minissl._runtime: the heap keeps freed arrays and OpenBLAS's idle threads sleep, unless the
user chose otherwise."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHOICES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_",
            "GLIBC_TUNABLES", "MINISSL_RUNTIME", "OPENBLAS_THREAD_TIMEOUT")


def _glibc():
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def runtime(code="import minissl", **env):
    """(TUNED, BLAS_TIMEOUT_APPLIED, OPENBLAS_THREAD_TIMEOUT) after ``code`` in a fresh
    interpreter whose environment has none of the user's choices but ``env``."""
    e = {k: v for k, v in os.environ.items() if k not in _CHOICES}
    e.update(env, PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""))
    probe = (f"{code}; import os, minissl._runtime as r; "
             "print(r.TUNED, r.BLAS_TIMEOUT_APPLIED, os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=e,
                         check=True)
    tuned, applied, timeout = out.stdout.split()
    return tuned == "True", applied == "True", timeout


@pytest.mark.skipif(not _glibc(), reason="the heap settings are glibc's")
def test_heap_settings_applied_on_glibc():
    assert runtime()[0]


@pytest.mark.parametrize("env", [{"MINISSL_RUNTIME": "default"},
                                 {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_heap_left_alone_when_the_user_chose(env):
    assert not runtime(**env)[0]


def test_blas_timeout_set_only_before_numpy_and_never_over_the_user():
    assert runtime() == (runtime()[0], True, "12")
    assert runtime("import numpy; import minissl")[1:] == (False, "None")
    assert runtime(OPENBLAS_THREAD_TIMEOUT="20")[1:] == (False, "20")
    assert runtime(MINISSL_RUNTIME="default")[1:] == (False, "None")
