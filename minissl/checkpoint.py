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

Writing goes to a temporary file in the target's folder, flushed and fsync'ed, then moved
over the target with ``os.replace`` (atomic on POSIX and Windows): a crash or an exception
mid-way leaves the previous checkpoint untouched and no partial file under the target name.
"""
import hashlib
import json
import os
import tempfile

import numpy as np

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


def _read(path):
    """All entries of the archive, read eagerly so that corruption shows up here."""
    try:
        z = np.load(path, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # BadZipFile, EOFError (empty file), pickled data, bad header, ...
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint "
                              f"({type(e).__name__}: {e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: not a minissl checkpoint (a single .npy array, not an "
                              ".npz archive)")
    try:
        with z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # CRC mismatch of a damaged member, truncated array data, ...
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint "
                              f"({type(e).__name__}: {e})") from None


def _json(data, key, path):
    try:
        return json.loads(str(data[key][()]))
    except (ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: entry {key!r} is not valid JSON ({e})") from None


def _check_model(data, model, path):
    stored = {k[len("model/"):]: v for k, v in data.items() if k.startswith("model/")}
    if "__model_signature__" not in data:
        raise CheckpointError(f"{path}: the checkpoint holds no model state")
    if str(data["__model_signature__"][()]) != _shapes_signature(
            (n, v.shape) for n, v in stored.items()):
        raise CheckpointError(f"{path}: the model entries do not match their signature "
                              "(the file was modified or is corrupt)")
    own = {n: tuple(t.shape) for n, t in model._state_items()}
    missing = [n for n in own if n not in stored]
    unexpected = [n for n in stored if n not in own]
    shapes = [f"{n}: checkpoint {tuple(stored[n].shape)}, model {own[n]}"
              for n in own if n in stored and tuple(stored[n].shape) != own[n]]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append("missing from the checkpoint: " + ", ".join(missing))
        if unexpected:
            parts.append("not in the model: " + ", ".join(unexpected))
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes))
        raise CheckpointError(f"{path}: checkpoint of another model ({type(model).__name__}); "
                              + " | ".join(parts))
    return stored


def _optimizer_state(data, optimizer, path):
    if "optim/meta" not in data:
        raise CheckpointError(f"{path}: the checkpoint holds no optimiser state")
    meta = _json(data, "optim/meta", path)
    if meta.get("type") != type(optimizer).__name__:
        raise CheckpointError(f"{path}: optimiser state of {meta.get('type')}, loaded into "
                              f"{type(optimizer).__name__}")
    state = {}
    for idx, entries in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entries)
    for k, v in data.items():
        if k.startswith("optim/state/"):
            try:
                idx, key = k[len("optim/state/"):].split("/", 1)
                idx = int(idx)
            except ValueError:
                raise CheckpointError(f"{path}: malformed optimiser entry {k!r}") from None
            state.setdefault(idx, {})[key] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def load(path, model=None, optimizer=None, scheduler=None):
    """Load a checkpoint written by ``save`` into ``model``/``optimizer``/``scheduler`` (each
    optional) and return the ``extra`` metadata dict.

    Everything is read and checked before anything is changed. Raises ``CheckpointError``
    for a corrupt or truncated file, another format version, a checkpoint of another model
    (naming the missing/unexpected keys and mismatched shapes) or a missing part;
    ``FileNotFoundError`` if there is no file.
    """
    path = os.fspath(path)
    data = _read(path)
    if "__format_version__" not in data:
        raise CheckpointError(f"{path}: not a minissl checkpoint (no __format_version__)")
    try:
        version = int(data["__format_version__"])
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: unreadable __format_version__") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version}, this minissl "
                              f"reads version {FORMAT_VERSION}")
    extra = _json(data, "extra", path) if "extra" in data else {}
    model_state = _check_model(data, model, path) if model is not None else None
    optim_state = _optimizer_state(data, optimizer, path) if optimizer is not None else None
    sched_state = None
    if scheduler is not None:
        if "scheduler" not in data:
            raise CheckpointError(f"{path}: the checkpoint holds no scheduler state")
        sched = _json(data, "scheduler", path)
        if sched.get("type") != type(scheduler).__name__:
            raise CheckpointError(f"{path}: scheduler state of {sched.get('type')}, loaded "
                                  f"into {type(scheduler).__name__}")
        sched_state = sched["state"]
    # Apply. The optimiser validates fully before changing anything; the model was checked.
    if optim_state is not None:
        try:
            optimizer.load_state_dict(optim_state)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
    if sched_state is not None:
        try:
            scheduler.load_state_dict(sched_state)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
    if model_state is not None:
        model.load_state_dict(model_state)
    return extra
