"""The repository stands alone: every relative link or path that a .md or .py file names
exists in it, and nothing points at files outside it."""
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOP = ("minissl", "docs", "tests", "benchmarks", "examples", "csrc", "shared")
# A path that starts at a top-level folder of the repository (or climbs out of it).
_PATH = re.compile(r"(?<![\w./-])((?:\.\./)*(?:%s)/[\w./<>*-]*[\w/])" % "|".join(_TOP))
_LINK = re.compile(r"\]\(([^)\s]+)\)")                  # a Markdown link target
_OUTSIDE = re.compile(r"\b(?:API|DESIGN)\.md\b")         # documents that are not in the repo


def _files():
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True)
    names = out.stdout.split() if out.returncode == 0 else []
    return [n for n in names
            if n.endswith((".md", ".py")) and os.path.exists(os.path.join(ROOT, n))]


def dangling(path, text):
    """The references in ``text`` (of the file ``path``, relative to the root) that point
    nowhere in the repository."""
    bad = [m.group(0) for m in _OUTSIDE.finditer(text)]
    for m in _PATH.finditer(text):
        ref = m.group(1)
        if "<" in ref or "*" in ref:                     # a pattern, not a file
            continue
        if re.search(r"\w's `?$", text[max(0, m.start() - 40):m.start()]):
            continue                                     # another project's path: "PyTorch's x/y"
        if ref.startswith("../") or not os.path.exists(os.path.join(ROOT, ref)):
            bad.append(ref)
    if path.endswith(".md"):
        for m in _LINK.finditer(text):
            target = m.group(1).split("#")[0]
            if not target or re.match(r"[a-z]+:", target):
                continue
            if not os.path.exists(os.path.join(ROOT, os.path.dirname(path), target)):
                bad.append(target)
    return bad


def test_the_checker_catches_a_dangling_reference():
    assert set(dangling("README.md", "see [it](docs/nowhere.md) and `minissl/gone.py`")) == {
        "minissl/gone.py", "docs/nowhere.md"}
    # (spelled in pieces, so that a plain grep of the repository for such references stays clean)
    outside_doc, outside_path = "API" + ".md", "../" + "shared/bench/x.py"
    assert dangling("x.py", f"the contract in {outside_doc}, {outside_path}") == [
        outside_doc, outside_path]
    assert dangling("docs/a.md", "[b](design.md), `minissl/kernels/<family>/`") == []
    assert dangling("docs/a.md", "PyTorch's `examples/vae`, lightly's tests/loss/") == []


def test_no_dangling_reference_in_the_repository():
    found = {}
    for name in _files():
        if name == "tests/test_docs.py":                 # its examples dangle on purpose
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            bad = dangling(name, f.read())
        if bad:
            found[name] = bad
    assert not found, found
