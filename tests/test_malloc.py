"""minissl._malloc: glibc's heap keeps freed arrays for reuse, unless the user chose otherwise."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _glibc():
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


GLIBC = _glibc()


def tuned(**env):
    """``minissl._malloc.TUNED`` in a fresh interpreter with ``env`` added to (or, for a None
    value, removed from) the environment."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES",
                      "MINISSL_MALLOC")}
    e.update(env, PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", "import minissl._malloc as m; print(m.TUNED)"],
                         capture_output=True, text=True, env=e, check=True)
    return out.stdout.strip() == "True"


@pytest.mark.skipif(not GLIBC, reason="the heap settings are glibc's")
def test_applied_on_glibc():
    assert tuned()


@pytest.mark.parametrize("env", [{"MINISSL_MALLOC": "default"},
                                 {"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_left_alone_when_the_user_chose(env):
    assert not tuned(**env)
