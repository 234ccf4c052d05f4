"""The command line: ``minissl pretrain|eval|embed|list|demo|conformance`` (also
``python -m minissl ...``).

Bad input (an unknown method or data set, a missing, corrupt or hand-edited checkpoint or data
file, a bad number, ``--device cuda`` without a GPU) exits with status 2 and one line on
stderr, never a traceback; files are written atomically, so a killed run (SIGKILL included)
leaves the previous checkpoint intact, and SIGTERM cleans up as Ctrl-C does.

``pretrain --resume`` continues the run exactly: the result equals the uninterrupted run of
``--epochs``. Everything else that shapes the run (seed, batch size, data, ``--image-size``,
``--limit``, optimiser, learning rate and its schedule, weight decay, the encoder, the
method's settings, the steps per epoch) must be the checkpoint's; ``--epochs`` may change
unless a schedule spans the whole run (BYOL's EMA rate, ``--schedule cosine``), which is
refused with what to do. A run stops with status 2 when the loss or a weight becomes
non-finite, keeping the last finite checkpoint; one run at a time writes to an ``--out``
folder (see ``minissl.rundir``).

``--data`` is a registered data set or a path (``minissl.clidata``, ``minissl.data.user``);
``--set``/``--config`` are checked against the method's config (``minissl.settings``); the
parser is ``minissl.cliargs``.
"""
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import sys
import threading
import warnings

import numpy as np

from . import clidata, runtime
from .cliargs import CLIError, build_parser

USAGE_ERROR = 2
MAX_MESSAGE = 400   # characters of an error line; longer messages are cut
_JOB = {"training": False}   # True while the ranks of a data-parallel run train together


# ----------------------------------------------------------------------------- helpers

def _check_device(device):
    if device == "cuda":
        from .backend import is_cuda_available
        if not is_cuda_available():
            raise CLIError("--device cuda: CuPy and a CUDA GPU are needed "
                           "(pip install 'minissl[gpu]'), or use --device cpu")


def _load_data(name, kind=None, method="this method", root=None, image_size=32):
    try:
        return clidata.load(name, kind, method, root=root, image_size=image_size)
    except clidata.DataError as e:
        raise CLIError(str(e)) from None


def _overrides(args):
    """The method's settings of ``--config FILE`` then ``--set KEY=VALUE`` (later wins)."""
    from . import methods, settings
    try:
        return settings.parse(methods.config_class(args.method), args.set or (), args.config)
    except settings.SettingsError as e:
        raise CLIError(f"{args.method}: {e}") from None


def _finite_or_none(value):
    """JSON has no NaN or infinity: a non-finite float is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _jsonl(records):
    """Lines of strict JSON (``allow_nan=False``: a bare NaN is not JSON)."""
    return "".join(json.dumps(_finite_or_none(r), allow_nan=False) + "\n" for r in records)


def _atomic_write(path, write):
    """Call ``write(file)`` on a temporary file next to ``path``, then move it over ``path``:
    readers see the old file or the whole new one, and a crash leaves no partial file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_write_text(path, text):
    _atomic_write(path, lambda f: f.write(text.encode()))


def _atomic_savez(path, **arrays):
    _atomic_write(path, lambda f: np.savez(f, **arrays))


# ----------------------------------------------------------------------------- pretrain

def _build(method_name, d, seed, device, overrides=None, encoder=None, widths=None):
    from . import methods, nn, random
    random.manual_seed(seed)
    overrides = dict(overrides or {})
    if encoder:   # after the seed: a built-in backbone's initial weights are the seed's
        from .methods.base import build_encoder
        overrides["encoder"] = build_encoder(encoder, d.image_shape, widths)[0]
    try:
        m = nn.fuse(methods.build(method_name, d, **overrides))   # BN + ReLU: one op
    except TypeError as e:
        taken = re.search(r"multiple values for keyword argument '(\w+)'", str(e))
        if taken:   # e.g. a language model's vocab_size: the corpus's characters
            raise CLIError(f"{method_name}: {taken.group(1)} is set from the data, not by "
                           f"--set or --config") from None
        raise CLIError(f"{method_name}: bad option: {e}") from None
    return m.to(device) if device != "cpu" else m


def _check_resume(meta, args, ckpt_path):
    """The run in ``ckpt_path`` must be the one asked for: same method and data, and the same
    options that decide the batches, the views and the updates (a resumed run continues the
    uninterrupted one exactly, so it cannot change them midway)."""
    if meta["method"] != args.method or meta.get("data") != args.data:
        raise CLIError(f"--resume: {ckpt_path} holds {meta['method']} on {meta.get('data')}, "
                       f"not {args.method} on {args.data}")
    options = {"seed": args.seed, "batch_size": args.batch_size, "limit": args.limit,
               "optimizer_name": args.optimizer, "lr": args.lr, "image_size": args.image_size,
               "weight_decay": args.weight_decay, "schedule": args.schedule,
               "warmup_epochs": args.warmup_epochs, "encoder": args.encoder,
               "widths": list(args.widths) if args.widths else None}
    for key, want in options.items():
        if key in meta and meta[key] != want:
            flag = "--" + key.replace("_name", "").replace("_", "-")
            raise CLIError(f"--resume: {ckpt_path} was trained with {flag} {meta[key]}, "
                           f"not {want}; resume with the same value")


def _init_distributed(args):
    """Under mpiexec/srun: join the job (NCCL for --device cuda, else MPI). Returns whether
    this process is rank 0, the one that writes files and prints."""
    from . import distributed as dist
    if dist.launched_by_mpi() and not dist.is_initialized():
        dist.init("nccl" if args.device == "cuda" else "mpi")
    if args.batch_size % dist.world_size():
        raise CLIError(f"--batch-size {args.batch_size} (the global batch) must be divisible "
                       f"by the {dist.world_size()} ranks")
    return dist.rank() == 0


def _method_settings(method):
    """The method's config as JSON values (what the checkpoint stores and resume compares)."""
    config = getattr(method, "config", None)
    if not dataclasses.is_dataclass(config):
        return {}
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _check_schedule(meta, run, method, args, ckpt_path):
    """What resume with other options means. Every schedule of a run is a function of the
    step, the steps per epoch, the method's settings and (BYOL's EMA rate) the total number
    of steps. The first three must be those of the checkpoint; the total may change only for
    a method whose schedule does not depend on it, and then the resumed run equals an
    uninterrupted run of the new length (same batches, views and updates, step by step)."""
    stored = meta.get("config")
    if stored is not None and stored != run["config"]:
        diff = sorted(k for k in {*stored, *run["config"]}
                      if stored.get(k) != run["config"].get(k))
        was = ", ".join(f"{k}={stored.get(k)!r}" for k in diff)
        now = ", ".join(f"{k}={run['config'].get(k)!r}" for k in diff)
        raise CLIError(f"--resume: {ckpt_path} was trained with {args.method} settings {was}, "
                       f"not {now}; resume with the same settings or start a new run")
    spe = meta.get("steps_per_epoch")
    if spe is not None and spe != run["steps_per_epoch"]:
        raise CLIError(f"--resume: {ckpt_path} was trained with {spe} steps per epoch, the "
                       f"data now gives {run['steps_per_epoch']}; resume on the same data")
    planned = meta.get("epochs")
    spans = ("--schedule cosine" if args.schedule == "cosine" else args.method
             if getattr(method, "uses_total_steps", False) else None)
    if spans and planned != args.epochs:
        told = f"planned as {planned} epochs" if planned else "whose length it does not record"
        raise CLIError(f"--resume: {spans} schedules over the whole run, {told}, so "
                       f"resuming it to --epochs {args.epochs} cannot equal a "
                       f"{args.epochs}-epoch run; resume with --epochs {planned or 'N'} as "
                       f"planned, or start a new run (without --resume) with --epochs "
                       f"{args.epochs}")


def _steps_per_epoch(train_x, batch_size, method_name, method):
    n = len(train_x[0] if isinstance(train_x, tuple) else train_x)
    batch = min(batch_size, n)
    if batch < 2 and any(type(m).__name__.startswith("BatchNorm") for m in method.modules()):
        raise CLIError(f"{method_name} needs at least 2 examples per batch (its batch norm "
                       f"standardises over the batch), got {batch}; raise --batch-size"
                       + (" or --limit" if n < 2 else ""))
    if n == 0:
        raise CLIError(f"{method_name}: no training examples")
    return n // batch


def cmd_pretrain(args):
    from . import methods
    from .rundir import RunFolder
    if args.method not in methods.METHODS:
        raise CLIError(f"unknown method {args.method!r}; known: {', '.join(methods.METHODS)}")
    _check_device(args.device)
    if args.warmup_epochs and args.schedule != "cosine":
        raise CLIError("--warmup-epochs needs --schedule cosine")
    if args.warmup_epochs > args.epochs:
        raise CLIError(f"--warmup-epochs {args.warmup_epochs} exceeds --epochs {args.epochs}")
    args.overrides = _overrides(args)   # checked before any data is read
    if args.widths and not args.encoder:
        raise CLIError("--widths needs --encoder (mlp or resnet)")
    if args.encoder and not methods.accepts_encoder(args.method):
        raise CLIError(f"--encoder: {args.method} has its own network (set its sizes with "
                       f"--set; `minissl list {args.method}`), not a choice of backbone")
    d = _load_data(args.data, methods.data_kind(args.method), args.method, args.data_root,
                   args.image_size)
    if (args.knn_every or args.probe_every) and not clidata.is_labelled(
            methods.data_kind(args.method)):
        raise CLIError(f"--knn-every/--probe-every: accuracy needs labelled images or audio; "
                       f"{args.method} trains on {methods.data_kind(args.method)} (its "
                       f"held-out loss: `minissl eval`)")
    if (args.knn_every or args.probe_every) and not getattr(d, "labelled", True):
        raise CLIError(f"--knn-every/--probe-every: {args.data} has no labels (no class "
                       f"subfolders, no 'y' array) to measure accuracy with")
    if args.resume and not os.path.isfile(os.path.join(args.out, "checkpoint.npz")):
        raise CLIError(f"--resume: no checkpoint at {os.path.join(args.out, 'checkpoint.npz')}")
    lead = _init_distributed(args)   # data-parallel: rank 0 alone writes and prints
    with contextlib.ExitStack() as stack:
        # One writer per folder (rank 0's lock); a failed fresh run leaves no folder.
        _enter_on_lead(stack, RunFolder(args.out), lead)
        return _pretrain(args, d, lead)


def _enter_on_lead(stack, folder, lead):
    """Rank 0 enters ``folder`` (takes the run folder's lock); every rank learns whether it
    could, in one collective, so that all stop alike before training when it could not (rank 0
    then prints why). In one process: just ``stack.enter_context(folder)``."""
    from . import distributed as dist
    failure = None
    if lead:
        try:
            stack.enter_context(folder)
        except Exception as e:      # noqa: BLE001  (re-raised below, on rank 0)
            failure = e
    if dist.all_reduce(0.0 if failure is None else 1.0, op="sum") > 0:
        if failure is not None:
            raise failure
        raise CLIError("rank 0 could not take the run folder")   # printed by rank 0 only


def _pretrain(args, d, lead):
    from . import checkpoint, random
    from .rundir import check_run_meta
    from .train import make_optimizer, pretrain
    ckpt_path = os.path.join(args.out, "checkpoint.npz")
    log_path = os.path.join(args.out, "metrics.jsonl")
    meta = None
    if args.resume:   # the metadata only: check it before building
        meta = check_run_meta(checkpoint.load(ckpt_path), ckpt_path)
        _check_resume(meta, args, ckpt_path)
    method = _build(args.method, d, args.seed, args.device, args.overrides, args.encoder,
                    args.widths)
    opt = make_optimizer(method, args.optimizer, lr=args.lr, weight_decay=args.weight_decay)
    train_x = method.training_data(d)
    if args.limit:   # the first N examples (quick runs and tests)
        train_x = (tuple(a[:args.limit] for a in train_x) if isinstance(train_x, tuple)
                   else train_x[:args.limit])
    run = {"epochs": args.epochs, "config": _method_settings(method),
           "settings": json.loads(json.dumps(args.overrides)),
           "steps_per_epoch": _steps_per_epoch(train_x, args.batch_size, args.method, method)}
    sched = _scheduler(opt, args, run["steps_per_epoch"])
    start, history, saved = 0, [], []
    if args.resume:
        start, history = meta["epoch"], list(meta.get("history", []))
        if start < args.epochs:   # everything checked before anything is written
            _check_schedule(meta, run, method, args, ckpt_path)
            checkpoint.load(ckpt_path, method, opt, sched)
            _check_finite_weights(method, ckpt_path)
            _restore_rng(meta, ckpt_path)
        # The checkpoint's history is the record of the epochs it holds; an epoch logged
        # after the last checkpoint (a kill between the two writes) is dropped.
        if lead:
            _atomic_write_text(log_path, _jsonl(history))
        if start >= args.epochs:
            if lead:
                print(f"already trained for {start} epochs (asked {args.epochs}); nothing to do")
            return 0
        saved.append(start)
    probe, knn = args.probe_every, args.knn_every   # images with labels (checked above)
    shown = {}    # the last kNN accuracy, in the progress bar

    def on_epoch_end(epoch, record):
        if not lead:
            return
        if knn and (epoch + 1) % args.knn_every == 0:
            record["knn_acc"] = clidata.knn_monitor(method, d)
            shown["knn"] = f"{record['knn_acc']:.3f}"
        if probe and (epoch + 1) % args.probe_every == 0:
            from .evaluate import few_label_probe
            tr, te = method.features(d.train_x), method.features(d.test_x)
            record["probe_acc_10"] = few_label_probe(tr, d.train_y, te, d.test_y, 10,
                                                     draws=2)[0]
        if clidata.is_labelled(method.data_kind):
            from .evaluate import embedding_std
            record["embedding_std"] = embedding_std(method.features(d.test_x[:512]))
        if hasattr(method, "heldout_metrics"):   # density models: the test split's NLL
            record.update(method.heldout_metrics(d))
        history.append(_finite_or_none(record))
        # Checkpoint first, then the whole log, replaced atomically: a kill in between loses
        # a log line that the resumed run rewrites from the checkpoint's history, never a
        # checkpointed epoch; and a new run never leaves an old checkpoint without its log.
        checkpoint.save(ckpt_path, method, opt, sched, method=args.method, data=args.data,
                        epoch=epoch + 1, seed=args.seed, batch_size=args.batch_size,
                        limit=args.limit, optimizer_name=args.optimizer, lr=args.lr,
                        image_size=args.image_size, weight_decay=args.weight_decay,
                        schedule=args.schedule, warmup_epochs=args.warmup_epochs,
                        encoder=args.encoder,
                        widths=list(args.widths) if args.widths else None,
                        history=history, **run,
                        rng_state=random.default_generator().bit_generator.state)
        saved.append(epoch + 1)
        _atomic_write_text(log_path, _jsonl(history))
        msg = " ".join(f"{k}={v:.4g}" for k, v in record.items()
                       if isinstance(v, float) and k != "seconds")
        print(f"epoch {epoch + 1}/{args.epochs} {msg}", flush=True)

    _JOB["training"] = True   # from here on, a rank failing alone must end the job (see main)
    try:
        pretrain(method, train_x, args.epochs, args.batch_size, optimizer=opt, scheduler=sched,
                 seed=args.seed, device=args.device, start_epoch=start,
                 progress=not args.no_progress, on_epoch_end=on_epoch_end, postfix=shown)
    except FloatingPointError as e:
        # Every rank sees the same global loss and the same weights, so all stop here alike.
        _JOB["training"] = False
        kept = (f"{ckpt_path} keeps epoch {saved[-1]}, the last finite state" if saved
                else "no checkpoint was written")
        raise CLIError(f"{e}; stopped, {kept}") from None
    _JOB["training"] = False
    if not lead:
        return 0
    if not args.no_plots:
        _plots(args.out, method, d, history)
    print(f"checkpoint: {ckpt_path}\nmetrics: {log_path}")
    return 0


def _scheduler(opt, args, steps_per_epoch):
    """``--schedule cosine``: linear warm-up over ``--warmup-epochs``, then cosine to 0
    (``optim.CosineWarmupSchedule``); ``constant`` keeps ``--lr``."""
    if args.schedule == "constant":
        return None
    from .optim import CosineWarmupSchedule
    return CosineWarmupSchedule(opt, args.warmup_epochs * steps_per_epoch,
                                args.epochs * steps_per_epoch)


def _restore_rng(meta, path):
    from . import random
    if "rng_state" in meta:
        try:
            random.default_generator().bit_generator.state = meta["rng_state"]
        except (TypeError, ValueError, KeyError):
            raise CLIError(f"{path}: metadata field 'rng_state' is not a state of minissl's "
                           "generator") from None


def _check_finite_weights(method, path):
    from .train import first_nonfinite
    bad = first_nonfinite(method)
    if bad is not None:
        raise CLIError(f"{path}: weight {bad} holds NaN or infinity (a diverged run); "
                       "use an earlier checkpoint or retrain with a lower --lr")


def _plots(out, method, d, history):
    try:
        from . import plots
    except ImportError:
        return
    written = plots.save_all(out, method, d, history)
    if written:
        print("plots: " + ", ".join(written))


# ----------------------------------------------------------------------------- eval / embed

def _restore(path, data_name=None, device="cpu", root=None):
    """Rebuild the method stored in checkpoint ``path``; returns (method, data, metadata)."""
    from . import checkpoint, methods
    if not os.path.exists(path):
        raise CLIError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CLIError(f"--checkpoint {path} is not a file")
    from .rundir import check_run_meta
    meta = check_run_meta(checkpoint.load(path), path, required=("method",))
    name = meta["method"]
    if name not in methods.METHODS:
        raise CLIError(f"{path}: not a minissl pretraining checkpoint (method {name!r})")
    d = _load_data(data_name or meta.get("data"), methods.data_kind(name), name, root,
                   meta.get("image_size") or 32)
    method = _build(name, d, meta.get("seed", 0), device, _stored_settings(meta, path),
                    *_stored_encoder(meta, path))
    try:
        checkpoint.load(path, method)
    except checkpoint.CheckpointError as e:
        if data_name and data_name != meta.get("data"):
            raise CLIError(f"{path}: the {name} model trained on {meta.get('data')} does not "
                           f"fit data set {data_name!r} (other input shape or kind)") from None
        raise
    _check_finite_weights(method, path)
    return method, d, meta


def _stored_settings(meta, path):
    """The ``--set``/``--config`` settings a checkpoint was trained with, validated again
    (a hand-edited file is refused like a bad ``--set``)."""
    from . import methods, settings
    stored = meta.get("settings") or {}
    try:
        if not isinstance(stored, dict):
            raise settings.SettingsError(f"{path}: metadata field 'settings' is not a table "
                                         f"(got {type(stored).__name__})")
        return settings.validate(methods.config_class(meta["method"]), stored,
                                 f"{path}: settings")
    except settings.SettingsError as e:
        raise CLIError(str(e)) from None


def _stored_encoder(meta, path):
    from .methods.base import ENCODERS
    encoder, widths = meta.get("encoder"), meta.get("widths")
    if encoder is not None and (encoder not in ENCODERS or not (
            widths is None or (isinstance(widths, list) and widths
                               and all(isinstance(w, int) and w > 0 for w in widths)))):
        raise CLIError(f"{path}: metadata encoder={encoder!r}, widths={widths!r} is not a "
                       f"built-in encoder ({', '.join(ENCODERS)}) with positive widths")
    return encoder, widths


def cmd_eval(args):
    from . import evaluate
    method, d, meta = _restore(args.checkpoint, args.data, root=args.data_root)
    shown = {"method": meta["method"], "data": meta.get("data") if args.data is None
             else args.data, "epoch": meta.get("epoch"), "settings": meta.get("config"),
             "encoder": meta.get("encoder"), "widths": meta.get("widths")}
    if method.data_kind == "audio":   # a probe of the labels, and the held-out pretext loss
        if args.protocol == "finetune":
            raise CLIError(f"eval --protocol finetune: fine-tunes image encoders; "
                           f"{meta['method']} trains on audio (use linear or knn)")
        loss, n = clidata.heldout_loss(method, d, seed=args.seed)
        shown.update(heldout_loss=loss, heldout_examples=n, **method.test_metrics(d))
        if not d.labelled:   # a WAV folder without class subfolders: no probe to run
            print(json.dumps(_finite_or_none({"protocol": "heldout_loss", "loss": loss,
                                              "examples": n, **shown})))
            return 0
    elif method.data_kind != "images":   # text, series: no labels; the held-out pretext loss
        loss, n = clidata.heldout_loss(method, d, seed=args.seed)
        print(json.dumps(_finite_or_none({"protocol": "heldout_loss", "loss": loss,
                                          "examples": n, **shown})))
        return 0
    if not getattr(d, "labelled", True):
        raise CLIError(f"eval: {shown['data']} has no labels (no class subfolders, no 'y' "
                       f"array): the protocols need some; `minissl embed` works without")
    k = args.labels_per_class
    if args.protocol == "finetune":
        acc = evaluate.finetune(method, d.train_x, d.train_y, d.test_x, d.test_y, k,
                                seed=args.seed)
        result = {"protocol": "finetune", "labels_per_class": k, "accuracy": acc}
    else:
        tr, te = method.features(d.train_x), method.features(d.test_x)
        if args.protocol == "linear":
            mean, std = evaluate.few_label_probe(tr, d.train_y, te, d.test_y, k,
                                                 draws=args.draws, seed=args.seed)
            result = {"protocol": "linear", "labels_per_class": k, "accuracy": mean,
                      "std": std, "draws": args.draws}
        else:
            from .data import per_class_subset
            idx = per_class_subset(d.train_y, k, seed=args.seed)
            acc = evaluate.knn_classify(tr[idx], d.train_y[idx], te, d.test_y,
                                        k=min(20, len(idx)))
            result = {"protocol": "knn", "labels_per_class": k, "accuracy": acc}
    if hasattr(method, "heldout_metrics"):
        result.update(method.heldout_metrics(d))
    result.update(shown)
    print(json.dumps(_finite_or_none(result)))
    return 0


def cmd_embed(args):
    from .clidata import embed_arrays
    if not args.out.endswith(".npz"):
        raise CLIError(f"embed: --out must be a .npz file, got {args.out}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise CLIError(f"embed: folder {folder} does not exist")
    method, d, _ = _restore(args.checkpoint, args.data, root=args.data_root)
    _atomic_savez(args.out, **embed_arrays(method, d))
    print(f"wrote {args.out}")
    return 0


def cmd_list(args):
    from . import methods, settings
    if args.method:
        if args.method not in methods.METHODS:
            raise CLIError(f"unknown method {args.method!r}; known: {', '.join(methods.METHODS)}")
        _, _, family, kind = methods.METHODS[args.method]
        print(f"{args.method}: {family} (trains on {kind}); settings (--set KEY=VALUE):")
        print("\n".join(settings.describe(methods.config_class(args.method))))
        return 0
    print("methods (`minissl list METHOD` shows a method's settings):")
    for name, (_, _, family, kind) in methods.METHODS.items():
        print(f"  {name:13s} {family} (trains on {kind})")
    print("data sets (--data NAME or --data PATH):")
    print("\n".join(clidata.describe_datasets()))
    return 0


def cmd_demo(args):
    from .demo import run_demo
    return run_demo(out=args.out, epochs=args.epochs, seed=args.seed,
                    progress=not args.no_progress)


def cmd_conformance(args):
    from .conformance import write_vectors
    n = write_vectors(args.out)
    print(f"wrote {n} conformance files to {args.out}")
    return 0


# ----------------------------------------------------------------------------- main

def make_parser():
    return build_parser({"pretrain": cmd_pretrain, "eval": cmd_eval, "embed": cmd_embed,
                         "list": cmd_list, "demo": cmd_demo, "conformance": cmd_conformance})


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    # A warning on the command line is a note for the user, not a source listing.
    text = str(message).splitlines()[0] if str(message) else category.__name__
    if not text.startswith("minissl: "):
        text = f"minissl: warning: {text}"
    print(text, file=sys.stderr if file is None else file)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same cleanup runs (temporary files, lock)."""


def _on_sigterm(signum, frame):
    raise Terminated


def main(argv=None):
    # The process settings of a training loop (heap, idle BLAS/OpenMP threads): see
    # minissl/runtime.py. The compiled kernels load lazily, after this line.
    runtime.tune()
    parser = make_parser()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "fn", None):
            parser.print_help()
            return USAGE_ERROR
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return args.fn(args)
    except CLIError as e:
        _error_line(str(e))
    except Terminated:
        print("minissl: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("minissl: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, OSError,
            FloatingPointError) as e:
        if os.environ.get("MINISSL_DEBUG"):  # show the traceback when debugging minissl
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if len(msg) > MAX_MESSAGE:   # e.g. the key list of a checkpoint of another model
            msg = msg[:MAX_MESSAGE - 4] + " ..."
        _error_line(msg)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return USAGE_ERROR


def _error_line(msg):
    """Print the error; under mpiexec, end the whole job if the ranks were training.

    Before training, every rank checks the same arguments and files and fails alike: rank 0
    alone prints and all exit 2. During training, a rank that fails alone would leave the
    others blocked in their next collective (until its timeout), so it prints with its rank
    and ends the job at once (MPI_Abort, which MPI reports in a line of its own)."""
    from . import distributed as dist     # imports no MPI
    if _JOB["training"] and dist.world_size() > 1:
        print(f"minissl: error: rank {dist.rank()}: {msg}", file=sys.stderr, flush=True)
        dist.abort(USAGE_ERROR)
    elif not dist.launched_by_mpi() or dist.launched_rank() == 0:
        print(f"minissl: error: {msg}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
