"""Character-level text corpora for the language models.

Any UTF-8 text will do; the default is Python's own standard library, which is on every
machine that runs minissl: a few megabytes of well-formed code and prose in its docstrings.
"""
import fnmatch
import os
from dataclasses import dataclass, field

import numpy as np

# Folders of the standard library that are not the standard library's own sources (installed
# packages) or that are large, unusual test data; skipping them keeps the corpus the same on
# machines with different packages installed.
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def stdlib_files():
    """The standard library's ``*.py`` files in a fixed order: the top folder, then packages.

    Files are sorted by their path relative to ``os.path.dirname(os.__file__)``, top-level
    modules first, with installed packages and test suites left out.
    """
    top = os.path.dirname(os.__file__)
    files = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    depth = lambda p: os.path.relpath(p, top).count(os.sep)  # noqa: E731
    return sorted(files, key=lambda p: (depth(p) > 0, os.path.relpath(p, top)))


@dataclass(eq=False, repr=False)
class TextCorpus:
    """A character-level corpus: its vocabulary, an encoder/decoder and a train/val split."""

    text: str                 # the whole corpus
    chars: list               # the vocabulary: the distinct characters, sorted by code point
    train_ids: np.ndarray     # (N_train,) int64 token ids, the first (1 - val_fraction) of text
    val_ids: np.ndarray       # (N_val,) int64 token ids, the rest
    stoi: dict = field(init=False)  # character -> id
    itos: dict = field(init=False)  # id -> character
    _codes: np.ndarray = field(init=False)  # (V,) uint32 code point of each id, sorted

    def __post_init__(self):
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.itos = {i: c for i, c in enumerate(self.chars)}
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text, val_fraction=0.1):
        """Build the vocabulary of ``text`` and split its ids: train first, validation last."""
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"TextCorpus: val_fraction must be in [0, 1), got {val_fraction}")
        chars = sorted(set(text))
        corpus = cls(text, chars, np.zeros(0, np.int64), np.zeros(0, np.int64))
        ids = corpus.encode(text)
        n_train = int(round(len(ids) * (1.0 - val_fraction)))
        corpus.train_ids, corpus.val_ids = ids[:n_train], ids[n_train:]
        return corpus

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, s):
        """The int64 ids of the characters of ``s``; ValueError for one not in the vocabulary."""
        # UTF-32 turns the string into one code point per element, so the lookup is a binary
        # search in the sorted code points instead of a Python loop over a million characters.
        codes = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        known = ids < len(self._codes)
        known[known] = self._codes[ids[known]] == codes[known]
        if not known.all():
            bad = s[int(np.argmin(known))]
            raise ValueError(f"TextCorpus.encode: character {bad!r} is not in the vocabulary")
        return ids.astype(np.int64)

    def decode(self, ids):
        """The string of a sequence of ids (any integer array or list)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self._codes)):
            raise ValueError(f"TextCorpus.decode: ids must be in [0, {len(self._codes)})")
        return self._codes[ids].tobytes().decode("utf-32-le")

    def windows(self, split, batch_size, block_size, rng):
        """Random training windows: ``x, y`` int64 ``(batch_size, block_size)``, y = x shifted.

        ``y[b, t] = x[b, t + 1]`` is the next character, the target of a causal language
        model. ``split`` is "train" or "val"; ``rng`` a ``numpy.random.Generator``.
        """
        ids = {"train": self.train_ids, "val": self.val_ids}.get(split)
        if ids is None:
            raise ValueError(f"TextCorpus.windows: split must be 'train' or 'val', got {split!r}")
        if len(ids) < block_size + 1:
            raise ValueError(f"TextCorpus.windows: the {split} split has {len(ids)} ids, too "
                             f"few for block_size={block_size}")
        start = rng.integers(0, len(ids) - block_size, size=batch_size)
        offsets = start[:, None] + np.arange(block_size + 1)  # (B, T + 1)
        chunk = ids[offsets]
        return chunk[:, :-1], chunk[:, 1:]

    def __repr__(self):
        return (f"TextCorpus(chars={len(self.text)}, vocab_size={self.vocab_size}, "
                f"train={len(self.train_ids)}, val={len(self.val_ids)})")


def _read_utf8(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"text: {path} is not UTF-8 text ({e})") from None


def text(path=None, max_chars=1_000_000, val_fraction=0.1, pattern="*"):
    """A :class:`TextCorpus` of at most ``max_chars`` characters (``None``: no limit).

    ``path`` may be a UTF-8 file, a folder (its files matching ``pattern``, recursively,
    sorted by path, hidden ones skipped), or a list of files read in the given order. Files
    are joined with a newline. The default, ``path=None``, reads the ``*.py`` sources of
    Python's standard library in the order of :func:`stdlib_files` (files that are not UTF-8
    are skipped), so the default corpus is deterministic on a given Python.
    """
    if path is None:
        files, strict = stdlib_files(), False
    elif isinstance(path, (list, tuple)):
        files, strict = [os.fspath(p) for p in path], True
    else:
        path = os.path.expanduser(os.fspath(path))
        if os.path.isdir(path):
            files = []
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files += [os.path.join(dirpath, f) for f in sorted(filenames)
                          if not f.startswith(".") and fnmatch.fnmatch(f, pattern)]
            if not files:
                raise FileNotFoundError(f"text: no files matching {pattern!r} in {path}")
        else:
            files = [path]
        strict = True
    parts, total = [], 0
    for f in files:
        if max_chars is not None and total >= max_chars:
            break
        if not os.path.isfile(f):
            raise FileNotFoundError(f"text: no such file: {f}")
        try:
            content = _read_utf8(f)
        except ValueError:
            if strict:
                raise
            continue
        parts.append(content)
        total += len(content) + 1
    corpus = "\n".join(parts)
    if max_chars is not None:
        corpus = corpus[:max_chars]
    if not corpus:
        raise ValueError(f"text: the corpus is empty (path={path!r})")
    return TextCorpus.from_text(corpus, val_fraction=val_fraction)
