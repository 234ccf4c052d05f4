"""minissl.runtime: ``import minissl`` changes nothing in the process; ``runtime.tune()`` makes
the heap keep freed arrays and idle OpenBLAS/OpenMP threads sleep, unless the user chose
otherwise."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHOICES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_",
            "GLIBC_TUNABLES", "MINISSL_RUNTIME", "OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")


def _glibc():
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def _run(probe, **env):
    """stdout of ``probe`` in a fresh interpreter whose environment has none of the user's
    choices but ``env``."""
    e = {k: v for k, v in os.environ.items() if k not in _CHOICES}
    e.update(env, PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=e,
                          check=True).stdout


def tune(code="", **env):
    """(heap, blas_thread_timeout, omp_wait_policy, OPENBLAS_THREAD_TIMEOUT) after ``code``
    and then ``tune()``, loading runtime.py alone (before NumPy) unless ``code`` imports it."""
    probe = (f"{code}\nimport importlib.util, os\n"
             f"spec = importlib.util.spec_from_file_location('rt', {ROOT!r} + '/minissl/runtime.py')\n"
             "r = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)\n"
             "t = r.tune(); print(*t, os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    heap, blas, omp, timeout = _run(probe, **env).split()
    return heap == "True", blas == "True", omp == "True", timeout


def test_import_changes_nothing_in_the_process():
    """os.environ as it was, no compiled kernel (hence no libgomp) and no CuPy loaded, and the
    submodules reachable as attributes (``ms.nn.Linear``)."""
    probe = ("import os, sys; before = dict(os.environ)\n"
             "import minissl as ms\n"
             "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
             "loaded = [m for m in sys.modules if m.endswith('._cpu') or m == 'cupy']\n"
             "maps = open('/proc/self/maps').read() if os.path.exists('/proc/self/maps') else ''\n"
             "assert not loaded and 'libgomp' not in maps, (loaded, 'libgomp' in maps)\n"
             "assert ms.nn.Linear and ms.optim.SGD and ms.functional.relu and ms.losses\n"
             "print('ok')")
    assert _run(probe).strip() == "ok"


@pytest.mark.skipif(not _glibc(), reason="the heap settings are glibc's")
def test_heap_settings_applied_on_glibc():
    assert tune()[0]


@pytest.mark.parametrize("env", [{"MINISSL_RUNTIME": "default"},
                                 {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_heap_left_alone_when_the_user_chose(env):
    assert not tune(**env)[0]


def test_blas_timeout_set_only_before_numpy_and_never_over_the_user():
    assert tune()[1:] == (True, False, "12")
    assert tune("import numpy")[1] is False and tune("import numpy")[3] == "None"
    assert tune(OPENBLAS_THREAD_TIMEOUT="20")[1:] == (False, False, "20")
    assert tune(MINISSL_RUNTIME="default")[1:] == (False, False, "None")


def test_tune_leaves_the_omp_policy_alone():
    """With the products on minissl's own OpenMP pool, a passive wait policy makes every one
    of a step's many parallel regions wake a sleeping thread, and steps got slower
    (docs/performance.md): tune() no longer sets it."""
    probe = ("import importlib.util, os\n"
             f"spec = importlib.util.spec_from_file_location('rt', {ROOT!r} + '/minissl/runtime.py')\n"
             "r = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)\n"
             "t = r.tune(); print(t.omp_wait_policy, os.environ.get('OMP_WAIT_POLICY'))")
    assert _run(probe).split() == ["False", "None"]


def test_omp_policy_on_request_only_before_the_first_kernel_and_never_over_the_user():
    def policy(code="", **env):
        probe = (f"{code}\nimport importlib.util, os\n"
                 f"spec = importlib.util.spec_from_file_location('rt', {ROOT!r} + '/minissl/runtime.py')\n"
                 "r = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)\n"
                 "print(r.set_omp_wait_policy(), os.environ.get('OMP_WAIT_POLICY'))")
        return _run(probe, **env).split()
    assert policy() == ["True", "PASSIVE"]
    first = "import numpy as np, minissl.kernels.softmax as s; s.softmax_forward(np.ones((2, 2)))"
    assert policy(first)[0] == "False" or "MINISSL_REFERENCE" in os.environ
    assert policy(OMP_WAIT_POLICY="ACTIVE") == ["False", "ACTIVE"]
