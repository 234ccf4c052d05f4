"""The output folder of a pretraining run: one writer at a time, and no leftovers.

``with RunFolder(path): ...`` creates the folder if needed, takes its lock file, and removes
the temporary files that a run killed while saving left behind (``.checkpoint.npz.*.tmp``;
nobody else can be writing them while we hold the lock). On the way out it releases the lock
and, if the run failed before writing anything, removes the folders it created, so a failed
fresh run leaves no empty folder.

The lock is a file holding the writer's process id, created atomically (a hard link of a
finished temporary file: readers never see it half-written). A second run finds it and is
refused while that process lives; a lock whose process is gone (a SIGKILL, a power cut) is
stale and is taken over, so it never blocks forever.
"""
import json
import math
import os

__all__ = ["RunFolder", "FolderBusyError", "LOCK_NAME", "check_run_meta", "sweep_temp_files"]

LOCK_NAME = ".minissl.lock"
# What a killed writer can leave: checkpoint.save's mkstemp files, the CLI's atomic text and
# array files (``<name>.<pid>.tmp``) and the lock's own temporary file.
_TEMP_PREFIXES = (".checkpoint.npz.", "metrics.jsonl.", LOCK_NAME + ".")


class FolderBusyError(RuntimeError):
    """Another live process holds the run folder's lock."""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, owned by another user
        return True
    except OSError:
        return False
    return True


def _lock_owner(lock):
    """The pid written in ``lock``, or None if it cannot be read (a stale, damaged lock)."""
    try:
        with open(lock) as f:
            text = f.read(64)
        pid = int(text.strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def _acquire(folder):
    lock = os.path.join(folder, LOCK_NAME)
    tmp = f"{lock}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        for _ in range(3):
            try:
                os.link(tmp, lock)          # atomic: fails if the lock exists
                return lock
            except FileExistsError:
                pid = _lock_owner(lock)
                if pid is not None and _pid_alive(pid):
                    raise FolderBusyError(
                        f"{folder} is being written by another minissl run (pid {pid}); wait "
                        f"for it to finish or use another --out") from None
                try:                        # stale: its process is gone
                    os.remove(lock)
                except FileNotFoundError:
                    pass
        raise FolderBusyError(f"{folder}: could not take the lock {lock}; another run keeps "
                              "taking it")
    finally:
        os.remove(tmp)


def _release(lock):
    if _lock_owner(lock) == os.getpid():
        try:
            os.remove(lock)
        except FileNotFoundError:
            pass


def sweep_temp_files(folder):
    """Remove the temporary files of killed writers from ``folder``; returns their names."""
    removed = []
    for name in os.listdir(folder):
        if name.endswith(".tmp") and name.startswith(_TEMP_PREFIXES):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def _missing_folders(path):
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


class RunFolder:
    """Context manager owning a run's output folder (see the module docstring)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._created = []
        self._lock = None

    def __enter__(self):
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotADirectoryError(f"--out {self.path} exists and is not a folder")
        self._created = _missing_folders(self.path)
        os.makedirs(self.path, exist_ok=True)
        try:
            self._lock = _acquire(self.path)
            sweep_temp_files(self.path)
        except BaseException:
            self._remove_created()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._lock is not None:
            _release(self._lock)
            self._lock = None
        if exc_type is not None:
            self._remove_created()
        return False

    def _remove_created(self):
        for folder in self._created:        # deepest first; only folders left empty
            try:
                os.rmdir(folder)
            except OSError:
                break


# ----------------------------------------------------------------------------- metadata

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


# The metadata ``minissl pretrain`` stores with each checkpoint: name -> (test, what it is).
# Fields written by older versions may be absent; a present field must pass its test.
RUN_FIELDS = {
    "method": (lambda v: isinstance(v, str), "a method name"),
    "data": (lambda v: isinstance(v, str), "a data set name"),
    "epoch": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "epochs": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "steps_per_epoch": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "batch_size": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "limit": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "optimizer_name": (lambda v: isinstance(v, str), "an optimiser name"),
    "lr": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "config": (lambda v: isinstance(v, dict), "an object of method settings"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
                "a list of objects"),
    "rng_state": (lambda v: isinstance(v, dict), "an object"),
}


def check_run_meta(meta, path, required=("method", "epoch")):
    """``meta`` (a checkpoint's metadata) with every field of ``RUN_FIELDS`` checked against
    its type and range; raises ValueError naming ``path`` and the field otherwise."""
    if not isinstance(meta, dict) or any(k not in meta for k in required):
        raise ValueError(f"{path} is not a minissl pretraining checkpoint (its metadata lacks "
                         f"{', '.join(required)})")
    for key, (ok, what) in RUN_FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise ValueError(f"{path}: metadata field {key!r} is {json.dumps(meta[key])[:60]}, "
                             f"not {what}")
    if "epochs" in meta and meta["epoch"] > meta["epochs"]:
        raise ValueError(f"{path}: metadata says epoch {meta['epoch']} of {meta['epochs']}")
    return meta
