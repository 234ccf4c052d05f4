"""Checkpoints: model, optimiser and schedule state in ONE ``.npz`` file, written atomically.

Layout of the archive (every entry a plain array, so it loads with ``allow_pickle=False``):

==============================  ==========================================================
key                             value
==============================  ==========================================================
``__format_version__``          int64 0-d array, ``FORMAT_VERSION``
``__model_signature__``         0-d str: SHA-256 of the model's "name:shape" lines
``model/<name>``                each ``model.state_dict()`` entry (``model/0.weight``, ...)
``optim/meta``                  0-d str, JSON: ``{"type", "param_groups", "scalars"}``:
                                the optimiser's class name, its param groups (hyperparameters
                                and parameter indices) and its non-array state per parameter
                                index (``{"3": {"step": 10}}``)
``optim/state/<index>/<key>``   the array state of parameter ``index`` (its position over all
                                groups): ``momentum_buffer``; ``exp_avg``, ``exp_avg_sq``
``scheduler``                   0-d str, JSON: ``{"type", "state"}`` (the schedule's state_dict)
``extra``                       0-d str, JSON: the ``**extra`` metadata given to ``save``
==============================  ==========================================================

Reading opens the archive lazily: each entry asked for is read only after its .npy header
(shape, dtype) was checked against the model or optimiser it loads into and against the size
the zip directory records, so a small hand-made file cannot make the reader inflate
gigabytes; entries that are not asked for (unknown names included) are never read.

Writing goes to a temporary file in the target's folder, flushed and fsync'ed, then moved
over the target with ``os.replace`` (atomic on POSIX and Windows): a crash or an exception
mid-way leaves the previous checkpoint untouched and no partial file under the target name.
"""
import hashlib
import json
import math
import os
import tempfile
import zipfile

import numpy as np
from numpy.lib import format as npformat

from .nn.module import _same_kind

__all__ = ["save", "load", "CheckpointError", "FORMAT_VERSION", "model_signature"]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is unreadable (corrupt, truncated, not a minissl checkpoint), of another
    format version, or does not fit the model / optimiser it is loaded into."""


def _shapes_signature(items):
    text = "\n".join(f"{name}:{','.join(map(str, shape))}" for name, shape in items)
    return hashlib.sha256(text.encode()).hexdigest()


def model_signature(model):
    """SHA-256 (hex) of the model's state names and shapes, in state_dict order."""
    return _shapes_signature((n, tuple(t.shape)) for n, t in model._state_items())


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON-serialisable")


def _dumps(obj, what):
    try:
        return np.array(json.dumps(obj, default=_json_default))
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint.save: {what} must be JSON-serialisable: {e}") from None


def _collect(model, optimizer, scheduler, extra):
    """Everything to write, as name -> array (validated before any file is touched)."""
    arrays = {"__format_version__": np.array(FORMAT_VERSION, dtype=np.int64)}
    if model is not None:
        state = model.state_dict()
        arrays["__model_signature__"] = np.array(
            _shapes_signature((n, a.shape) for n, a in state.items()))
        for name, a in state.items():
            arrays["model/" + name] = a
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars = {}
        for idx, entries in sd["state"].items():
            for key, v in entries.items():
                if isinstance(v, np.ndarray):
                    arrays[f"optim/state/{idx}/{key}"] = v
                else:
                    scalars.setdefault(str(idx), {})[key] = v
        meta = {"type": type(optimizer).__name__, "param_groups": sd["param_groups"],
                "scalars": scalars}
        arrays["optim/meta"] = _dumps(meta, "the optimiser's state")
    if scheduler is not None:
        arrays["scheduler"] = _dumps({"type": type(scheduler).__name__,
                                      "state": scheduler.state_dict()}, "the scheduler's state")
    arrays["extra"] = _dumps(extra, "extra metadata")
    for k, a in arrays.items():
        if a.dtype.hasobject:
            raise TypeError(f"checkpoint.save: entry {k!r} is an object array, which cannot be "
                            "loaded without pickle")
    return arrays


def save(path, model=None, optimizer=None, scheduler=None, **extra):
    """Write model, optimiser and scheduler state and ``extra`` (JSON-able) metadata to
    ``path`` as one ``.npz`` archive, atomically (see the module docstring for the keys).

    The file is written exactly at ``path`` (no ``.npz`` suffix is added).
    """
    arrays = _collect(model, optimizer, scheduler, extra)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file readable by its owner only; give the checkpoint the mode
        # an ordinary new file would have (0666 minus the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        # Whatever happened (disk full, KeyboardInterrupt), drop the partial file; the old
        # checkpoint at ``path`` was never touched.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX; not possible on every platform)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


# ----------------------------------------------------------------------------- reading

MAX_TEXT_CHARS = 16 << 20   # a JSON entry; the history of 10^5 epochs is a few MB


class _Archive:
    """The entries of a checkpoint, each read on demand and only after its .npy header
    (shape, dtype) has been checked against what the caller expects and against the size the
    zip directory records: nothing is inflated beyond what is needed, so a small file cannot
    make the reader allocate gigabytes, and entries nobody asks for are never read."""

    def __init__(self, path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            with open(path, "rb") as f:
                magic = f.read(6)
            if magic == b"\x93NUMPY":
                raise CheckpointError(f"{path}: not a minissl checkpoint (a single .npy "
                                      "array, not an .npz archive)") from None
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint "
                                  f"({type(e).__name__}: {e})") from None
        self.infos = {i.filename[:-4]: i for i in self.zip.infolist()
                      if i.filename.endswith(".npy")}
        self._headers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def __contains__(self, key):
        return key in self.infos

    def keys(self, prefix=""):
        return [k for k in self.infos if k.startswith(prefix)]

    def _fail(self, key, e):
        raise CheckpointError(f"{self.path}: corrupt or truncated checkpoint (entry {key!r}: "
                              f"{type(e).__name__}: {e})") from None

    def header(self, key):
        """(shape, dtype) of entry ``key`` from its .npy header, checked against the size the
        zip directory records for it."""
        if key in self._headers:
            return self._headers[key]
        info = self.infos[key]
        try:
            with self.zip.open(info) as f:
                version = npformat.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = npformat.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = npformat.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                offset = f.tell()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, TypeError) as e:
            self._fail(key, e)
        if dtype.hasobject:
            raise CheckpointError(f"{self.path}: entry {key!r} holds Python objects (pickle), "
                                  "which minissl never loads")
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes != info.file_size:
            raise CheckpointError(f"{self.path}: entry {key!r} claims {shape} {dtype} "
                                  f"({nbytes} bytes) but stores {info.file_size - offset}")
        self._headers[key] = shape, dtype
        return shape, dtype

    def array(self, key, shape=None, like=None, what="entry"):
        """Entry ``key`` as an array, after checking its header: ``shape`` (if given) and a
        dtype that loads into dtype ``like`` (if given: floats into floats, ints into ints)."""
        got_shape, dtype = self.header(key)
        if shape is not None and tuple(got_shape) != tuple(shape):
            raise CheckpointError(f"{self.path}: {what} {key!r} has shape {tuple(got_shape)}, "
                                  f"expected {tuple(shape)}")
        if like is not None and not _same_kind(dtype, like):
            raise CheckpointError(f"{self.path}: {what} {key!r} has dtype {dtype}, which does "
                                  f"not load into {np.dtype(like)}")
        try:
            with self.zip.open(self.infos[key]) as f:
                return npformat.read_array(f, allow_pickle=False)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            self._fail(key, e)

    def text(self, key):
        shape, dtype = self.header(key)
        if shape != () or dtype.kind != "U" or dtype.itemsize // 4 > MAX_TEXT_CHARS:
            raise CheckpointError(f"{self.path}: entry {key!r} is {shape} {dtype}, not a text "
                                  f"of at most {MAX_TEXT_CHARS} characters")
        return str(self.array(key)[()])

    def json(self, key, kind=dict):
        try:
            value = json.loads(self.text(key))
        except ValueError as e:
            raise CheckpointError(f"{self.path}: entry {key!r} is not valid JSON ({e})") from None
        if not isinstance(value, kind):
            raise CheckpointError(f"{self.path}: entry {key!r} is a JSON "
                                  f"{type(value).__name__}, not an object")
        return value


def _check_model(z, model, path):
    """The model's state, read after every name, shape and dtype kind was checked."""
    names = [k[len("model/"):] for k in z.keys("model/")]
    if "__model_signature__" not in z:
        raise CheckpointError(f"{path}: the checkpoint holds no model state")
    shapes = {n: tuple(z.header("model/" + n)[0]) for n in names}
    if z.text("__model_signature__") != _shapes_signature(shapes.items()):
        raise CheckpointError(f"{path}: the model entries do not match their signature "
                              "(the file was modified or is corrupt)")
    own = {n: t for n, t in model._state_items()}
    missing = [n for n in own if n not in shapes]
    unexpected = [n for n in shapes if n not in own]
    wrong = [f"{n}: checkpoint {shapes[n]}, model {tuple(own[n].shape)}"
             for n in own if n in shapes and shapes[n] != tuple(own[n].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append("missing from the checkpoint: " + ", ".join(missing))
        if unexpected:
            parts.append("not in the model: " + ", ".join(unexpected))
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong))
        raise CheckpointError(f"{path}: checkpoint of another model ({type(model).__name__}); "
                              + " | ".join(parts))
    for n, t in own.items():   # every header first: refuse before reading any data
        dtype = z.header("model/" + n)[1]
        if not _same_kind(dtype, t.dtype):
            raise CheckpointError(f"{path}: model entry {n!r} has dtype {dtype}, the model's "
                                  f"is {t.dtype}")
    return {n: z.array("model/" + n) for n in own}


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _same_type(saved, own):
    """A hyperparameter read from a file has the type of the optimiser's own value."""
    if own is None:
        return saved is None
    if isinstance(own, bool):
        return isinstance(saved, bool)
    if isinstance(own, (int, float)):
        return _is_number(saved)
    if isinstance(own, (tuple, list)):
        return (isinstance(saved, list) and len(saved) == len(own)
                and all(_same_type(s, o) for s, o in zip(saved, own)))
    return isinstance(saved, type(own))


def _state_of(z, key, obj, what):
    """JSON entry ``key`` (``{"type": class name, ...}``), present and of ``obj``'s class."""
    if key not in z:
        raise CheckpointError(f"{z.path}: the checkpoint holds no {what} state")
    meta = z.json(key)
    if meta.get("type") != type(obj).__name__:
        raise CheckpointError(f"{z.path}: {what} state of {meta.get('type')}, loaded into "
                              f"{type(obj).__name__}")
    return meta


def _optimizer_state(z, optimizer, path):
    meta = _state_of(z, "optim/meta", optimizer, "optimiser")
    groups, scalars = meta.get("param_groups"), meta.get("scalars", {})
    params = [p for g in optimizer.param_groups for p in g["params"]]
    bad = (f"{path}: malformed optimiser state (optim/meta)")
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{bad}: {len(groups) if isinstance(groups, list) else 'no'} "
                              f"parameter groups, this optimiser has "
                              f"{len(optimizer.param_groups)}")
    for i, (g, own) in enumerate(zip(groups, optimizer.param_groups)):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list) or not all(
                isinstance(k, int) and not isinstance(k, bool) and k >= 0
                for k in g["params"]):
            raise CheckpointError(f"{bad}: group {i} needs 'params', a list of parameter "
                                  f"indices")
        if len(g["params"]) != len(own["params"]) or max(g["params"], default=0) >= len(params):
            raise CheckpointError(f"{path}: group {i} holds {len(g['params'])} parameters in "
                                  f"the checkpoint, {len(own['params'])} in this optimiser")
        for key, v in g.items():
            if key != "params" and (key not in own or not _same_type(v, own[key])):
                raise CheckpointError(f"{bad}: group {i} sets {key!r} to {json.dumps(v)[:40]}")
    if not isinstance(scalars, dict):
        raise CheckpointError(f"{bad}: 'scalars' is not an object")
    state = {}
    for idx, entries in scalars.items():
        if not (idx.isdigit() and int(idx) < len(params) and isinstance(entries, dict)
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                        for v in entries.values())):
            raise CheckpointError(f"{bad}: scalar state {idx!r} is not counts of a parameter")
        state.setdefault(int(idx), {}).update(entries)
    for k in z.keys("optim/state/"):
        idx, _, key = k[len("optim/state/"):].partition("/")
        if not (idx.isdigit() and int(idx) < len(params) and key):
            raise CheckpointError(f"{path}: malformed optimiser entry {k!r}")
        p = params[int(idx)]
        state.setdefault(int(idx), {})[key] = z.array(k, p.shape, p.dtype,
                                                      "optimiser state")
    return {"state": state, "param_groups": groups}


def load(path, model=None, optimizer=None, scheduler=None):
    """Load a checkpoint written by ``save`` into ``model``/``optimizer``/``scheduler`` (each
    optional) and return the ``extra`` metadata dict.

    Everything is read and checked before anything is changed, and only the entries asked
    for are read, each after its header (names, shapes, dtypes, sizes). Raises
    ``CheckpointError`` for a corrupt or truncated file, another format version, a checkpoint
    of another model (naming the missing/unexpected keys and mismatched shapes or dtypes), a
    missing part or a malformed field; ``FileNotFoundError`` if there is no file.
    """
    path = os.fspath(path)
    with _Archive(path) as z:
        if "__format_version__" not in z:
            raise CheckpointError(f"{path}: not a minissl checkpoint (no __format_version__)")
        version = z.array("__format_version__", (), np.int64)
        if int(version) != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {int(version)}, this "
                                  f"minissl reads version {FORMAT_VERSION}")
        extra = z.json("extra") if "extra" in z else {}
        model_state = _check_model(z, model, path) if model is not None else None
        optim_state = _optimizer_state(z, optimizer, path) if optimizer is not None else None
        sched_state = (_state_of(z, "scheduler", scheduler, "scheduler").get("state")
                       if scheduler is not None else None)
        if scheduler is not None and not isinstance(sched_state, dict):
            raise CheckpointError(f"{path}: malformed scheduler state (not an object)")
    # Apply. The optimiser validates fully before changing anything; the model was checked.
    if optim_state is not None:
        try:
            optimizer.load_state_dict(optim_state)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
    if sched_state is not None:
        try:
            scheduler.load_state_dict(sched_state)
        except (ValueError, TypeError, AttributeError, OverflowError, KeyError) as e:
            raise CheckpointError(f"{path}: malformed scheduler state ({e})") from None
    if model_state is not None:
        model.load_state_dict(model_state)
    return extra
