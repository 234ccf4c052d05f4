"""Check a PyTorch port of minissl against the conformance vectors (tests/conformance).

    python examples/port_check.py                        # the PyTorch port (needs torch)
    python examples/port_check.py --vectors DIR          # vectors from `minissl conformance`
    python examples/port_check.py --mutate byol_no_stop_gradient   # a known bug: must FAIL
    python examples/port_check.py --framework minissl    # minissl itself: the harness, NOT a port

Three kinds of case (format and pass rule in docs/conformance.md): an op or loss (call it on the
inputs, backpropagate ``grad_out``, compare the output, every input's gradient, zeros for the
detached ones, and in-place updates); a data op (masking, patches, position embedding,
schedules from the given draws; compare every output); one training step of a method (load the
initial state, feed the stored views and draws, SGD step, compare the loss, the gradients and
the state after). A case passes when every array satisfies max |port - stored| <= atol + rtol
max |stored|.

The port (examples/torch_port.py) never imports minissl: functional ops are
``torch.nn.functional`` under the same names, losses and data ops are written from the papers
and their official codes, methods from the official forward passes. Methods the port does not
cover are listed as "not checked", never counted as passing. Without PyTorch the script
stops with a one-line error; ``--framework minissl`` must be asked for by name.
"""
import argparse
import collections
import glob
import json
import os
import sys

import numpy as np

# How the harness drives a framework: op(name) -> callable; to_tensor(array, requires_grad);
# to_numpy(tensor or grad); backward(out, grad_out); to_data(array) for the data ops' inputs;
# step(meta) -> fn(meta, arrays) -> {key: array}, or None where the port has no such method.
Port = collections.namedtuple("Port", "op to_tensor to_numpy backward to_data step label")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VECTORS = os.path.join(HERE, "..", "tests", "conformance")


# ----------------------------------------------------------------------------- PyTorch port

# Deliberate bugs (--mutate), to see the check fail where it must.
MUTATIONS = {
    "byol_no_stop_gradient": "byol_loss backpropagates into its target",
    "mae_own_noise": "random_masking draws its own noise (torch.rand) instead of the given",
}


def torch_port(mutate=()):
    """The port of examples/torch_port.py as (op, to_tensor, to_numpy, backward, label,
    step): ``op(name)`` a loss, functional or data op; ``step(meta, arrays)`` a method's
    training step or None where the port has none."""
    import torch
    import torch.nn.functional as TF
    import torch_port as P

    ops = dict(P.LOSSES, **P.DATA_OPS, **P.FUNCTIONAL)
    if "byol_no_stop_gradient" in mutate:
        def byol_loss(prediction, target):
            p, z = TF.normalize(prediction, dim=1), TF.normalize(target, dim=1)
            return (2 - 2 * (p * z).sum(1)).mean()
        ops["byol_loss"] = byol_loss
    if "mae_own_noise" in mutate:
        ops["random_masking"] = lambda noise, len_keep: P.random_masking(
            torch.rand(noise.shape, dtype=noise.dtype), len_keep)

    def op(name):
        return ops.get(name) or getattr(TF, name)

    def to_tensor(a, requires_grad):
        return torch.tensor(a, requires_grad=requires_grad)

    def backward(out, grad_out):
        out.backward(torch.as_tensor(grad_out))

    def step(meta):
        name = meta["op"].split(".")[0]
        return P.training_step if name in P.METHODS else None

    return Port(op, to_tensor, lambda t: t.detach().numpy(), backward, torch.as_tensor, step,
                "torch " + torch.__version__ + "".join(f" [mutated: {m}]" for m in mutate))


def minissl_port():
    """minissl itself through the same harness (what a port's numbers should look like)."""
    sys.path.insert(0, os.path.join(HERE, ".."))
    import minissl
    import minissl.functional as F
    from minissl import losses

    from minissl.conformance import DATA_OPS

    def op(name):
        if name in DATA_OPS:
            return DATA_OPS[name][0]
        return getattr(losses, name, None) or getattr(F, name)

    def to_tensor(a, requires_grad):
        return minissl.tensor(a, requires_grad=requires_grad)

    def backward(out, grad_out):
        out.backward(grad_out)

    def to_numpy(t):   # a Tensor, or a .grad (an ndarray in minissl)
        return t.numpy() if isinstance(t, minissl.Tensor) else np.asarray(t)

    def step(meta):
        from minissl.conformance_steps import replay_step
        return replay_step

    return Port(op, to_tensor, to_numpy, backward, lambda a: a, step,
                "minissl " + minissl.__version__ + " itself (the harness, NOT a port)")


# ----------------------------------------------------------------------------- the check

def _numpy(port, value):
    return np.asarray(port.to_numpy(value) if not isinstance(value, np.ndarray) else value)


def check_file(path, port):
    """(op, {key: max abs error}) of one case, or (op, None) when the port has no such
    method (reported as not checked, never as passed)."""
    with np.load(path, allow_pickle=False) as z:
        stored = {k: z[k] for k in z.files}
    meta = json.loads(str(stored.pop("meta")))
    if meta["op"].endswith(".training_step"):
        fn = port.step(meta)
        if fn is None:
            return meta["op"], None
        got = {k: np.asarray(v) for k, v in fn(meta, stored).items()}
    elif "outputs" in meta:                                   # a data op
        inputs = {k: port.to_data(stored[f"in_{k}"]) for k in meta["inputs"]}
        out = port.op(meta["op"])(*[inputs[k] for k in meta["args"]], **meta["kwargs"])
        out = out if isinstance(out, tuple) else (out,)
        got = {f"out_{k}": _numpy(port, v) for k, v in zip(meta["outputs"], out)}
    else:
        diff = dict(zip(meta["inputs"], meta["differentiable"]))
        ts = {k: port.to_tensor(np.array(stored[f"in_{k}"]), diff[k]) for k in meta["inputs"]}
        out = port.op(meta["op"])(*[ts[k] for k in meta["args"]],
                                  **{k: t for k, t in ts.items() if k not in meta["args"]},
                                  **meta["kwargs"])
        port.backward(out, stored["grad_out"])
        got = {"out": port.to_numpy(out)}
        for k, t in ts.items():
            if diff[k]:   # no gradient at all (a detached input) counts as zeros
                got[f"grad_{k}"] = (np.zeros_like(stored[f"in_{k}"]) if t.grad is None
                                    else _numpy(port, t.grad))
            if f"after_{k}" in stored:
                got[f"after_{k}"] = port.to_numpy(t)
    errors = {}
    for key in sorted(k for k in stored if k == "out" or k.startswith(("out_", "after_")) or
                      (k.startswith("grad_") and k != "grad_out")):
        want, value = stored[key], got.get(key)
        if value is None or value.shape != want.shape:
            errors[key] = float("inf")            # missing, or of the wrong shape
        else:
            errors[key] = float(np.max(np.abs(value.astype(np.float64) - want), initial=0.0))
    return meta["op"], errors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vectors", default=DEFAULT_VECTORS, help="folder of conformance .npz")
    p.add_argument("--framework", choices=["torch", "minissl"], default="torch",
                   help="torch: the PyTorch port (default); minissl: minissl itself, to "
                        "check the harness and the files (not a port)")
    p.add_argument("--mutate", nargs="*", default=[], choices=sorted(MUTATIONS),
                   help="plant a known bug in the PyTorch port (the check must fail)")
    p.add_argument("--rtol", type=float, default=1e-7)
    p.add_argument("--atol", type=float, default=1e-9)
    args = p.parse_args(argv)
    if args.framework == "torch":
        try:
            import torch
        except ImportError:
            print("port_check: PyTorch is not installed (pip install torch, or `make torch`); "
                  "--framework minissl checks the harness itself", file=sys.stderr)
            return 2
        sys.path.insert(0, HERE)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            return _check_all(args, torch_port(args.mutate))
        finally:
            torch.set_default_dtype(previous)
    if args.mutate:
        p.error("--mutate applies to the PyTorch port only")
    return _check_all(args, minissl_port())


def _check_all(args, port):
    files = sorted(glob.glob(os.path.join(args.vectors, "*.npz")))
    if not files:
        print(f"no conformance vectors in {args.vectors}", file=sys.stderr)
        return 2
    print(f"checking {port.label} against {len(files)} cases in {args.vectors}")
    failures, unchecked = 0, []
    for path in files:
        name = os.path.basename(path)[:-4]
        try:
            op, errors = check_file(path, port)
        except Exception as e:   # a port missing an op, or raising on the inputs
            print(f"  FAIL {name:48s} {type(e).__name__}: {e}")
            failures += 1
            continue
        if errors is None:
            unchecked.append(op.split(".")[0])
            print(f"  --   {name:48s} not checked: the port has no {op}")
            continue
        with np.load(path, allow_pickle=False) as z:
            scale = {k: float(np.max(np.abs(z[k]), initial=0.0)) for k in errors}
        bad = [k for k, e in errors.items() if not e <= args.atol + args.rtol * scale[k]]
        failures += bool(bad)
        worst = max(errors.values())
        detail = ("  ".join(f"{k}={errors[k]:.1e}" for k in bad[:4]) if bad else
                  f"{len(errors)} arrays")
        print(f"  {'FAIL' if bad else 'ok  '} {name:48s} max err {worst:.1e}   {detail}")
    checked = len(files) - len(unchecked)
    print(f"{checked - failures}/{checked} cases agree (rtol {args.rtol:g}, atol "
          f"{args.atol:g})" + (f"; {len(unchecked)} not checked (no port of: "
                               f"{', '.join(unchecked)})" if unchecked else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
