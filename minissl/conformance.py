"""Conformance vectors: what a port of minissl to another framework must reproduce.

``minissl conformance --out DIR`` (or ``write_vectors(DIR)``) writes one ``.npz`` file per
case, in float64: every functional op and SSL loss at a few shapes (and a few numerically hard
inputs); the non-differentiable pieces that take random draws or define a schedule
(``DATA_OPS``: MAE's ``random_masking`` from its noise, ``patchify``/``unpatchify``, the 2-D
sin-cos position embedding, BERT's 80/10/10 masking from its draws, ``cosine_tau``, the
cosine learning rate with warm-up); and one training step of every method
(``minissl.conformance_steps``). docs/conformance.md documents the format, the pass rule and
the tolerances; in short (``np.load(path, allow_pickle=False)``):

=================  =====================================================================
key                content
=================  =====================================================================
``meta``           0-d str array holding JSON: ``{"op", "args", "kwargs", "inputs",
                   "format": 3}`` plus ``"differentiable"`` and ``"stop_gradient"`` (ops),
                   ``"outputs"`` (data ops), or the training-step keys
``in_<name>``      each input array (float64, or int64 for indices/class targets)
``out``            the output (float64): an op's result, a training step's loss
``out_<name>``     each output of a data op (int64 indices or float64 values)
``grad_out``       the cotangent used for the backward pass (same shape as ``out``)
``grad_<name>``    d<out, grad_out>/d input, for each differentiable input; ZEROS for the
                   inputs in ``stop_gradient`` (the formula detaches them); a training
                   step's gradient of each trained parameter
``after_<name>``   the value of an input the op updates in place, after the call
                   (``batch_norm``'s running statistics); a training step's state after it
``init_<key>``,    a training step's state_dict before it, its augmented views and its
``view_<i>``,      other random draws, in order
``draw_<i>``
=================  =====================================================================

The call is ``op(*[in_<a> for a in args], **{b: in_<b> for the other inputs}, **kwargs)``:
the inputs named in ``args`` go by position, in that order; the remaining inputs go by
keyword, under names that PyTorch's and minissl's functions share (``weight`` and ``bias`` of
``layer_norm``, after its ``normalized_shape``). ``op`` is the name of a
``torch.nn.functional`` / ``minissl.functional`` function, of a loss in ``minissl.losses``
(formulas in its docstrings) or of a ``DATA_OPS`` entry. Every input of a loss is passed
with ``requires_grad=True``, the detached ones included. A port loads the inputs, calls its
own op, backpropagates ``grad_out`` and compares (``examples/port_check.py`` does it for
PyTorch).

Reproducibility: the inputs, draws and cotangents come from seeded generators and the zip
members get a fixed timestamp, so the same build on the same machine writes the same bytes
(tested). Another BLAS, the pure-NumPy reference kernels or another CPU may round results
differently in the last bits (measured in docs/conformance.md), so regenerated sets are
compared to a committed one with a tolerance, not byte for byte.
"""
import json
import os
import zipfile

import numpy as np

from . import functional as F
from . import losses
from .autograd import tensor

FORMAT = 3

# Zip members get this timestamp (the earliest a zip can hold), not the time of writing.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _f(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def _cases():
    """A list of (case name, op name, kwargs, {input name: array}, differentiable input
    names, positional input names)."""
    r = np.random.default_rng(1234)
    cases = []

    def add(op, kwargs, inputs, diff=None, tag="", args=None):
        diff = list(inputs) if diff is None else diff
        args = list(inputs) if args is None else args
        shape = "x".join(str(s) for s in next(iter(inputs.values())).shape)
        cases.append((f"{op}{tag}_{shape}", op, kwargs, inputs, diff, args))

    # --- SSL losses (minissl.losses; the formulas are in their docstrings)
    for n, d in ((4, 3), (8, 5)):
        z1, z2 = _f(r, n, d), _f(r, n, d)
        add("nt_xent", {"temperature": 0.5}, {"z1": z1, "z2": z2})
        add("info_nce", {"temperature": 0.07},
            {"query": z1, "key": z2, "negatives": _f(r, 6, d)})
        add("clip_loss", {}, {"image_features": z1, "text_features": z2,
                              "logit_scale": np.array(np.log(1 / 0.07))})
        add("byol_loss", {}, {"prediction": z1, "target": z2})
        add("simsiam_loss", {}, {"prediction": z1, "target": z2})
        add("barlow_twins_loss", {"lambd": 5e-3}, {"z1": z1, "z2": z2})
        add("vicreg_loss", {}, {"z1": z1, "z2": z2})
        add("kl_normal", {}, {"mu": z1, "logvar": 0.3 * z2})
        mask = (r.random((n, d)) < 0.75).astype(np.float64)
        mask[:, 0] = 1
        for norm_pix in (False, True):
            add("mae_loss", {"norm_pix": norm_pix},
                {"pred": _f(r, n, d, 4), "target": _f(r, n, d, 4), "mask": mask},
                ["pred"], tag="_normpix" if norm_pix else "")
    # Numerically hard: a low temperature (logits up to 100) and a large logit scale.
    z1, z2 = _f(r, 6, 4), _f(r, 6, 4)
    add("nt_xent", {"temperature": 0.01}, {"z1": z1, "z2": z2}, tag="_lowtemp")
    add("info_nce", {"temperature": 0.01},
        {"query": z1, "key": z2, "negatives": _f(r, 5, 4)}, tag="_lowtemp")
    add("clip_loss", {}, {"image_features": z1, "text_features": z2,
                          "logit_scale": np.array(np.log(100.0))}, tag="_scale100")

    # --- torch.nn.functional / minissl.functional
    for shape in ((3, 4), (2, 3, 5)):
        x = _f(r, *shape)
        for op in ("relu", "gelu", "sigmoid", "tanh"):
            add(op, {}, {"input": x})
        add("softmax", {"dim": -1}, {"input": x})
        add("log_softmax", {"dim": 1}, {"input": x})
        add("normalize", {"dim": 1}, {"input": x})
        add("layer_norm", {"normalized_shape": [shape[-1]]},
            {"input": x, "weight": _f(r, shape[-1]), "bias": _f(r, shape[-1])},
            args=["input"])
        add("mse_loss", {}, {"input": x, "target": _f(r, *shape)})
        add("binary_cross_entropy_with_logits", {},
            {"input": x, "target": r.random(shape)})
        add("cosine_similarity", {"dim": 1}, {"x1": x, "x2": _f(r, *shape)})
    x = _f(r, 4, 6)
    add("mse_loss", {"reduction": "sum"}, {"input": x, "target": _f(r, 4, 6)}, tag="_sum")
    add("binary_cross_entropy_with_logits", {"reduction": "none"},
        {"input": 30 * x, "target": r.random((4, 6))}, tag="_none_large")
    for n, c in ((5, 4), (7, 10)):
        t = r.integers(0, c, n)
        t[0] = -100
        add("cross_entropy", {"ignore_index": -100}, {"input": _f(r, n, c, scale=3),
                                                     "target": t}, ["input"])
        add("linear", {}, {"input": _f(r, n, c), "weight": _f(r, 3, c), "bias": _f(r, 3)})
        add("embedding", {}, {"input": r.integers(0, c, (2, n)), "weight": _f(r, c, 3)},
            ["weight"])
    # Logits of 1e4 (no overflow) and the per-example losses.
    add("cross_entropy", {"reduction": "none"},
        {"input": _f(r, 6, 5, scale=1e4), "target": r.integers(0, 5, 6)}, ["input"],
        tag="_none_large")
    for (N, C, H, W), (O, k, s, p) in (((2, 3, 6, 5), (4, 3, 1, 1)),
                                       ((1, 2, 7, 7), (3, 2, 2, 0))):
        x = _f(r, N, C, H, W)
        add("conv2d", {"stride": s, "padding": p},
            {"input": x, "weight": _f(r, O, C, k, k), "bias": _f(r, O)})
        add("conv_transpose2d", {"stride": s, "padding": p},
            {"input": x, "weight": _f(r, C, O, k, k), "bias": _f(r, O)})
        add("max_pool2d", {"kernel_size": 2, "stride": 2}, {"input": x})
        add("avg_pool2d", {"kernel_size": 3, "stride": 1, "padding": 1}, {"input": x})
        add("adaptive_avg_pool2d", {"output_size": 1}, {"input": x})
        add("batch_norm", {"training": True, "momentum": 0.1},
            {"input": x, "running_mean": _f(r, C), "running_var": 1 + r.random(C),
             "weight": _f(r, C), "bias": _f(r, C)}, ["input", "weight", "bias"])
    x = _f(r, 2, 3, 4, 4)
    add("conv_transpose2d", {"stride": 2, "padding": 1, "output_padding": 1},
        {"input": x, "weight": _f(r, 3, 2, 3, 3), "bias": _f(r, 2)}, tag="_outpad")
    add("batch_norm", {"training": False},
        {"input": x, "running_mean": _f(r, 3), "running_var": 1 + r.random(3),
         "weight": _f(r, 3), "bias": _f(r, 3)}, ["input", "weight", "bias"], tag="_eval")
    # Dilation and groups (WaveNet's and the gated PixelCNN's convolutions), padding, gates;
    # from their own generator, so that the cases before and after keep their inputs.
    r2 = np.random.default_rng(4321)
    add("conv2d", {"stride": 1, "padding": [2, 1], "dilation": [2, 1], "groups": 2},
        {"input": _f(r2, 2, 4, 5, 5), "weight": _f(r2, 6, 2, 3, 2), "bias": _f(r2, 6)},
        tag="_dilgroups")
    x1 = _f(r2, 2, 4, 9)
    add("conv1d", {"stride": 2, "padding": 1, "dilation": 2, "groups": 2},
        {"input": x1, "weight": _f(r2, 6, 2, 3), "bias": _f(r2, 6)})
    add("pad", {"pad": [2, 0], "value": 0.5}, {"input": x1})
    add("pad", {"pad": [1, -1, 0, 2]}, {"input": x}, tag="_crop")
    for op in ("glu", "gated_tanh"):
        add(op, {"dim": 1}, {"input": _f(r2, 2, 6, 3)})
    r3 = np.random.default_rng(4323)   # the audio losses, from their own draws too
    add("cpc_loss", {}, {"predictions": _f(r3, 2, 5, 3, 4), "z": _f(r3, 2, 5, 4)})
    for causal in (False, True):
        q, k, v = _f(r, 2, 2, 5, 4), _f(r, 2, 2, 5, 4), _f(r, 2, 2, 5, 3)
        add("scaled_dot_product_attention", {"is_causal": causal},
            {"query": q, "key": k, "value": v}, tag="_causal" if causal else "")
    _data_cases(r, cases)
    # NNCLR, MoCo v3, SimMIM, from their own generator: the cases above keep
    # their inputs.
    r = np.random.default_rng(18)
    for n, d in ((4, 3), (8, 5)):
        z1, z2 = _f(r, n, d), _f(r, n, d)
        add("nnclr_loss", {"temperature": 0.1}, {"neighbours": z1, "predictions": z2})
        add("mocov3_loss", {"temperature": 0.2}, {"query": z1, "key": z2})
    for b, c, hw in ((2, 1, 4), (3, 2, 6)):
        mask = (r.random((b, hw, hw)) < 0.6).astype(np.float64)
        add("simmim_loss", {}, {"pred": _f(r, b, c, hw, hw), "target": _f(r, b, c, hw, hw),
                                "mask": mask}, ["pred", "target"])
    add("nnclr_loss", {"temperature": 0.01}, {"neighbours": _f(r, 6, 4),
                                              "predictions": _f(r, 6, 4)}, tag="_lowtemp")
    cases.append(("nearest_neighbours_5_from_9", "nearest_neighbours", {},
                  {"z": _f(r, 5, 4), "support": _f(r, 9, 4)}, [], ["z", "support"]))
    names = [c[0] for c in cases]
    assert len(set(names)) == len(names), "conformance: two cases share a name"
    return cases


def _data_cases(r, cases):
    """The non-differentiable pieces a port must reproduce given the same random draws:
    masking, patches, position embeddings and schedules (``DATA_OPS``)."""
    def add(tag, op, kwargs, inputs):
        cases.append((f"{op}_{tag}", op, kwargs, inputs, [], list(inputs)))

    for tag, (B, L, K) in (("2x16_keep4", (2, 16, 4)), ("3x7_keep2", (3, 7, 2))):
        add(tag, "random_masking", {"len_keep": K}, {"noise": r.random((B, L))})
    imgs = _f(r, 2, 3, 4, 6)
    add("2x3x4x6_p2", "patchify", {"p": 2}, {"imgs": imgs})
    add("2x6x12_p2", "unpatchify", {"p": 2, "channels": 3, "grid": [2, 3]},
        {"x": _f(r, 2, 6, 12)})
    add("16_g4", "sincos_pos_embed_2d", {"dim": 16, "grid_size": 4}, {})
    ids = r.integers(0, 9, (3, 20))
    add("3x20", "bert_masking", {"mask_id": 9, "mask_prob": 0.15, "mask_token_prob": 0.8,
                                 "random_token_prob": 0.1},
        {"ids": ids, "noise": r.random((3, 20)), "u": r.random((3, 20)),
         "random_ids": r.integers(0, 9, (3, 20))})
    r2 = np.random.default_rng(4322)   # as above: the other cases keep their draws
    add("256", "mu_law_encoding", {"quantization_channels": 256},
        {"x": np.concatenate([[-1.0, 0.0, 1.0], r2.uniform(-1, 1, 13)])})
    add("256", "mu_law_decoding", {"quantization_channels": 256},
        {"x_mu": np.concatenate([[0, 127, 128, 255], r2.integers(0, 256, 12)])})
    add("k10", "cosine_tau", {"base_tau": 0.99, "total_steps": 10},
        {"step": np.arange(11)})
    add("w3_k10", "cosine_warmup_lr", {"base_lr": 0.5, "warmup_steps": 3, "total_steps": 10,
                                       "final_lr": 0.01}, {"step": np.arange(13)})


def _cosine_tau(step, base_tau, total_steps):
    from .methods.base import cosine_tau
    return np.array([cosine_tau(base_tau, int(t), total_steps) for t in step])


def _cosine_warmup_lr(step, base_lr, warmup_steps, total_steps, final_lr):
    from .optim import SGD, CosineWarmupSchedule
    from .nn import Parameter
    sched = CosineWarmupSchedule(SGD([Parameter(np.zeros(1))], lr=base_lr), warmup_steps,
                                 total_steps, final_lr=final_lr)
    return np.array([sched.lr_at(int(t), base_lr) for t in step])


def _masked(name):
    from .methods import masked
    return getattr(masked, name)


def _unpatchify(x, p, channels, grid):
    return _masked("unpatchify")(x, p, channels, tuple(grid))


# name: (function, output names). Called like the other ops; every output is stored.
DATA_OPS = {
    "random_masking": (lambda noise, len_keep: _masked("random_masking")(noise, len_keep),
                       ["ids_keep", "mask", "ids_restore"]),
    "patchify": (lambda imgs, p: _masked("patchify")(imgs, p), ["patches"]),
    "unpatchify": (_unpatchify, ["imgs"]),
    "sincos_pos_embed_2d": (lambda dim, grid_size: _masked("sincos_pos_embed_2d")(
        dim, grid_size), ["pos_embed"]),
    "bert_masking": (lambda *a, **k: _masked("bert_masking")(*a, **k), ["inputs", "targets"]),
    "mu_law_encoding": (lambda x, quantization_channels: F.mu_law_encoding(
        x, quantization_channels).numpy(), ["x_mu"]),
    "mu_law_decoding": (lambda x_mu, quantization_channels: F.mu_law_decoding(
        x_mu, quantization_channels).numpy(), ["x"]),
    "cosine_tau": (_cosine_tau, ["tau"]),
    "nearest_neighbours": (lambda z, support: losses.nearest_neighbours(
        tensor(z), tensor(support)).numpy(), ["neighbours"]),
    "cosine_warmup_lr": (_cosine_warmup_lr, ["lr"]),
}


def _op(name):
    fn = getattr(losses, name, None) or getattr(F, name, None)
    if fn is None:
        raise ValueError(f"conformance: unknown op {name!r}")
    return fn


def compute_data(op, kwargs, inputs):
    """The arrays of a ``DATA_OPS`` case: ``out_<name>`` for each output."""
    fn, names = DATA_OPS[op]
    out = fn(*[inputs[k] for k in inputs], **kwargs)
    out = out if isinstance(out, tuple) else (out,)
    arrays = {f"in_{k}": np.asarray(v) for k, v in inputs.items()}
    for k, v in zip(names, out):
        v = np.asarray(v)
        arrays[f"out_{k}"] = v.astype(np.int64 if v.dtype.kind in "iub" else np.float64)
    return arrays


def compute(op, kwargs, inputs, diff, grad_out=None, seed=0, args=None):
    """Run ``op`` on ``inputs`` (called as the module docstring says; ``args`` defaults to all
    inputs, in order) and backpropagate ``grad_out`` (default: a cotangent drawn from
    ``default_rng(seed)``); returns the arrays of a conformance file (without ``meta``)."""
    args = list(inputs) if args is None else list(args)
    # Copies: an op may update an input in place (batch norm's running statistics), and
    # the file must hold the inputs as they were before the call.
    work = {k: np.array(v, copy=True) for k, v in inputs.items()}
    ts = {k: tensor(v, requires_grad=k in diff) if v.dtype == np.float64 else tensor(v)
          for k, v in work.items()}
    out = _op(op)(*[ts[k] for k in args],
                  **{k: t for k, t in ts.items() if k not in args}, **kwargs)
    g = (np.random.default_rng(seed).standard_normal(out.shape) if grad_out is None
         else np.asarray(grad_out, dtype=np.float64))
    out.backward(g)
    arrays = {f"in_{k}": np.asarray(v) for k, v in inputs.items()}
    arrays["out"] = out.numpy().astype(np.float64)
    arrays["grad_out"] = g
    for k in diff:   # an input the op detaches gets no gradient: zeros, as a port must give
        grad = ts[k].grad
        arrays[f"grad_{k}"] = (np.zeros_like(inputs[k], dtype=np.float64) if grad is None
                               else np.asarray(grad, dtype=np.float64))
    for k, v in inputs.items():
        after = ts[k].numpy()
        if not np.array_equal(after, v):
            arrays[f"after_{k}"] = after.astype(np.float64)
    return arrays


def _write_npz(path, arrays):
    """``np.savez_compressed`` with fixed zip timestamps (reproducible bytes), written to a
    temporary file and moved into place."""
    tmp = path + ".tmp"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key, value in arrays.items():
                info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# Inputs that the formula detaches: their stored gradient is zeros (a port that forgets the
# stop-gradient fails on it).
STOP_GRADIENT = {"byol_loss": ["target"], "simsiam_loss": ["target"],
                 "info_nce": ["negatives"], "nnclr_loss": ["neighbours"],
                 "simmim_loss": ["target"]}


def _meta(op, kwargs, inputs, diff, args):
    meta = {"op": op, "args": args, "kwargs": kwargs, "inputs": list(inputs), "format": FORMAT}
    if op in DATA_OPS:
        meta["outputs"] = DATA_OPS[op][1]
    else:
        meta["differentiable"] = [k in diff for k in inputs]
        meta["stop_gradient"] = STOP_GRADIENT.get(op, [])
    return meta


def write_vectors(out_dir, steps=True):
    """Write every conformance case to ``out_dir`` (one ``<case>.npz`` each), and with
    ``steps`` one training step of every method (``minissl.conformance_steps``); returns the
    number of files written."""
    os.makedirs(out_dir, exist_ok=True)
    n = 0
    for name, op, kwargs, inputs, diff, args in _cases():
        arrays = (compute_data(op, kwargs, inputs) if op in DATA_OPS
                  else compute(op, kwargs, inputs, diff, args=args))
        meta = _meta(op, kwargs, inputs, diff, args)
        _write_npz(os.path.join(out_dir, name + ".npz"),
                   {"meta": np.array(json.dumps(meta, sort_keys=True)), **arrays})
        n += 1
    if steps:
        from .conformance_steps import step_vector
        from .methods import METHODS
        for method in METHODS:
            meta, arrays = step_vector(method)
            meta["format"] = FORMAT
            _write_npz(os.path.join(out_dir, f"{method}_training_step.npz"),
                       {"meta": np.array(json.dumps(meta, sort_keys=True)), **arrays})
            n += 1
    return n


def read_vector(path):
    """(meta dict, arrays dict) of one conformance file."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: conformance format {meta.get('format')}, this minissl "
                         f"reads format {FORMAT}")
    return meta, arrays


def _recompute(meta, stored):
    """The arrays this minissl computes for a stored case, from its inputs (and, for a
    training step, its initial state, views and draws)."""
    if meta["op"].endswith(".training_step"):
        from .conformance_steps import replay_step
        return replay_step(meta, stored)
    inputs = {k: stored[f"in_{k}"] for k in meta["inputs"]}
    if meta["op"] in DATA_OPS:
        return compute_data(meta["op"], meta["kwargs"], inputs)
    diff = [k for k, d in zip(meta["inputs"], meta["differentiable"]) if d]
    return compute(meta["op"], meta["kwargs"], inputs, diff, grad_out=stored["grad_out"],
                   args=meta.get("args"))


def checked_keys(stored):
    """The keys of a stored case that a port must reproduce: outputs, gradients (not the
    cotangent ``grad_out``) and the values after in-place updates or the optimiser step."""
    return sorted(k for k in stored if k == "out" or k.startswith(("out_", "after_"))
                  or (k.startswith("grad_") and k != "grad_out"))


def check_vector(path, rtol=1e-10, atol=1e-12):
    """Recompute one stored case with this minissl and compare every output, gradient and
    update; raises AssertionError on a mismatch, else returns ``{key: max abs error}``."""
    meta, stored = read_vector(path)
    got = _recompute(meta, stored)
    keys = checked_keys(stored)
    name = os.path.basename(path)
    missing = sorted(set(checked_keys(got)) - set(keys))
    assert not missing, f"{name}: produced values the file does not hold: {missing}"
    errors = {}
    for key in keys:
        assert key in got, f"{name}: {key} was not produced"
        want, value = stored[key], np.asarray(got[key])
        if want.dtype.kind in "iub":
            np.testing.assert_array_equal(value, want, err_msg=f"{name}: {key}")
        else:
            np.testing.assert_allclose(value, want, rtol=rtol, atol=atol,
                                       err_msg=f"{name}: {key}")
        errors[key] = float(np.max(np.abs(value.astype(np.float64) - want), initial=0.0))
    return errors
