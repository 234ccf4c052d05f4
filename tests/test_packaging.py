"""The sdist carries every source the build of the compiled kernels reads.

setup.py compiles minissl/kernels/<family>/_cpu.pyx with the shared declarations and headers
of minissl/kernels on the include path; a file MANIFEST.in leaves out is missing from an
sdist, and a build from it then fails and falls back to the NumPy reference (one warning,
easy to miss). So every kernel source file in the tree must match MANIFEST.in's patterns.
"""
import fnmatch
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "minissl", "kernels")
BUILT = (".py", ".pyc", ".c", ".so")   # Python sources ship as the package; the rest is built


def _manifest_patterns(folder="minissl/kernels"):
    with open(os.path.join(ROOT, "MANIFEST.in")) as f:
        words = [line.split() for line in f if line.strip() and not line.startswith("#")]
    return [p for w in words if w[:2] == ["recursive-include", folder] for p in w[2:]]


def _kernel_sources():
    for folder, dirs, files in os.walk(KERNELS):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith(BUILT):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


def test_manifest_carries_every_kernel_source():
    patterns = _manifest_patterns()
    sources = sorted(_kernel_sources())
    assert any(s.endswith(".pxi") for s in sources)   # the include the families share
    missing = [s for s in sources
               if not any(fnmatch.fnmatch(os.path.basename(s), p) for p in patterns)]
    assert not missing, f"MANIFEST.in leaves out {missing} (patterns {patterns})"
