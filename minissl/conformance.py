"""Conformance vectors: what a port of minissl's formulas to another framework must reproduce.

``minissl conformance --out DIR`` (or ``write_vectors(DIR)``) writes one ``.npz`` file per
case: every functional op and SSL loss at several shapes, in float64. File format
(``np.load(path, allow_pickle=False)``):

=================  =====================================================================
key                content
=================  =====================================================================
``meta``           0-d str array holding JSON: ``{"op": name, "kwargs": {...},
                   "inputs": [names], "differentiable": [bools], "format": 1}``
``in_<name>``      each input array (float64, or int64 for indices/targets, bool masks)
``out``            the output (float64)
``grad_out``       the cotangent used for the backward pass (same shape as ``out``)
``grad_<name>``    d<out, grad_out>/d input, for each differentiable input
=================  =====================================================================

A port loads the inputs, calls its own op with ``op`` and ``kwargs``, and compares ``out`` and
the input gradients (``examples/port_check.py`` does it for PyTorch).
"""
import json
import os

import numpy as np

from . import functional as F
from . import losses
from .autograd import tensor

FORMAT = 1


def _f(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def _cases():
    """(case name, op name, kwargs, {input name: array}, differentiable input names)."""
    r = np.random.default_rng(1234)
    cases = []

    def add(op, kwargs, inputs, diff=None, tag=""):
        diff = list(inputs) if diff is None else diff
        shape = "x".join(str(s) for s in next(iter(inputs.values())).shape)
        cases.append((f"{op}{tag}_{shape}", op, kwargs, inputs, diff))

    for n, d in ((4, 3), (8, 5)):
        z1, z2 = _f(r, n, d), _f(r, n, d)
        add("nt_xent", {"temperature": 0.5}, {"z1": z1, "z2": z2})
        add("info_nce", {"temperature": 0.07},
            {"query": z1, "key": z2, "negatives": _f(r, 6, d)}, ["query", "key"])
        add("clip_loss", {}, {"image_features": z1, "text_features": z2,
                              "logit_scale": np.array(np.log(1 / 0.07))})
        add("byol_loss", {}, {"prediction": z1, "target": z2}, ["prediction"])
        add("simsiam_loss", {}, {"prediction": z1, "target": z2}, ["prediction"])
        add("barlow_twins_loss", {"lambd": 5e-3}, {"z1": z1, "z2": z2})
        add("vicreg_loss", {}, {"z1": z1, "z2": z2})
        add("kl_normal", {}, {"mu": z1, "logvar": 0.3 * z2})
        mask = (r.random((n, d)) < 0.75).astype(np.float64)
        mask[:, 0] = 1
        for norm_pix in (False, True):
            add("mae_loss", {"norm_pix": norm_pix},
                {"pred": _f(r, n, d, 4), "target": _f(r, n, d, 4), "mask": mask},
                ["pred"], tag="_normpix" if norm_pix else "")
    for shape in ((3, 4), (2, 3, 5)):
        x = _f(r, *shape)
        for op in ("relu", "gelu", "sigmoid", "tanh"):
            add(op, {}, {"input": x})
        add("softmax", {"dim": -1}, {"input": x})
        add("log_softmax", {"dim": 1}, {"input": x})
        add("normalize", {"dim": 1}, {"input": x})
        add("layer_norm", {"normalized_shape": [shape[-1]]},
            {"input": x, "weight": _f(r, shape[-1]), "bias": _f(r, shape[-1])})
        add("mse_loss", {}, {"input": x, "target": _f(r, *shape)})
        add("binary_cross_entropy_with_logits", {},
            {"input": x, "target": r.random(shape)})
        add("cosine_similarity", {"dim": 1}, {"x1": x, "x2": _f(r, *shape)})
    for n, c in ((5, 4), (7, 10)):
        t = r.integers(0, c, n)
        t[0] = -100
        add("cross_entropy", {"ignore_index": -100}, {"input": _f(r, n, c, scale=3),
                                                     "target": t}, ["input"])
        add("linear", {}, {"input": _f(r, n, c), "weight": _f(r, 3, c), "bias": _f(r, 3)})
        add("embedding", {}, {"input": r.integers(0, c, (2, n)), "weight": _f(r, c, 3)},
            ["weight"])
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
        add("batch_norm", {"training": True},
            {"input": x, "running_mean": np.zeros(C), "running_var": np.ones(C),
             "weight": _f(r, C), "bias": _f(r, C)}, ["input", "weight", "bias"])
    for causal in (False, True):
        q, k, v = _f(r, 2, 2, 5, 4), _f(r, 2, 2, 5, 4), _f(r, 2, 2, 5, 3)
        add("scaled_dot_product_attention", {"is_causal": causal},
            {"query": q, "key": k, "value": v}, tag="_causal" if causal else "")
    return cases


def _op(name):
    return getattr(losses, name, None) or getattr(F, name)


def compute(op, kwargs, inputs, diff, grad_out=None, seed=0):
    """Run ``op`` on ``inputs`` and backpropagate ``grad_out`` (default: a seeded random
    cotangent); returns the arrays of a conformance file (without ``meta``)."""
    ts = {k: tensor(v, requires_grad=k in diff) if v.dtype == np.float64 else tensor(v)
          for k, v in inputs.items()}
    out = _op(op)(*ts.values(), **kwargs)
    g = np.random.default_rng(seed).standard_normal(out.shape) if grad_out is None else grad_out
    out.backward(g)
    arrays = {f"in_{k}": v for k, v in inputs.items()}
    arrays["out"] = out.numpy().astype(np.float64)
    arrays["grad_out"] = g
    for k in diff:
        arrays[f"grad_{k}"] = ts[k].grad
    return arrays


def write_vectors(out_dir):
    """Write every conformance case to ``out_dir``; returns the number of files."""
    os.makedirs(out_dir, exist_ok=True)
    for name, op, kwargs, inputs, diff in _cases():
        arrays = compute(op, kwargs, inputs, diff)
        meta = {"op": op, "kwargs": kwargs, "inputs": list(inputs),
                "differentiable": [k in diff for k in inputs], "format": FORMAT}
        path = os.path.join(out_dir, name + ".npz")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
    return len(_cases())


def read_vector(path):
    """(meta dict, arrays dict) of one conformance file."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    return meta, arrays


def check_vector(path, rtol=1e-10, atol=1e-12):
    """Recompute one stored case with this minissl; raises AssertionError on a mismatch."""
    meta, stored = read_vector(path)
    inputs = {k: stored[f"in_{k}"] for k in meta["inputs"]}
    diff = [k for k, d in zip(meta["inputs"], meta["differentiable"]) if d]
    got = compute(meta["op"], meta["kwargs"], inputs, diff, grad_out=stored["grad_out"])
    for key in ["out"] + [f"grad_{k}" for k in diff]:
        np.testing.assert_allclose(got[key], stored[key], rtol=rtol, atol=atol,
                                   err_msg=f"{os.path.basename(path)}: {key}")
