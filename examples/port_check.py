"""Check a port of minissl's formulas against the conformance vectors.

    python examples/port_check.py                      # PyTorch, if installed
    python examples/port_check.py --framework minissl  # minissl itself (the harness, no torch)
    python examples/port_check.py --vectors DIR        # vectors from `minissl conformance`

Each vector file (format in ``minissl/conformance.py``) names an op, its inputs and keyword
arguments, and holds the expected output, the gradient of <output, grad_out> with respect to
each differentiable input, and the in-place updates (batch norm's running statistics). This
script calls the framework's own op on the same inputs, backpropagates ``grad_out`` and prints
the largest absolute error of each case; it exits with status 1 if one exceeds the tolerance.

The PyTorch port maps every functional op to ``torch.nn.functional`` under the same name, and
writes each SSL loss from its formula (docs/api.md; the papers cited there), not from minissl's
code: that is the point of a conformance check.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VECTORS = os.path.join(HERE, "..", "tests", "conformance")


# ----------------------------------------------------------------------------- PyTorch port

def torch_port():
    """(ops: name -> callable on torch tensors, to_tensor, to_numpy, backward)."""
    import torch
    import torch.nn.functional as TF

    def nt_xent(z1, z2, temperature=0.5):
        # SimCLR (Chen et al. 2020, eq. 1): 2N anchors, the positive is the other view,
        # the 2N - 2 other rows are negatives, self-similarity excluded.
        n = z1.shape[0]
        z = TF.normalize(torch.cat([z1, z2]), dim=1)
        sim = z @ z.T / temperature
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
        return TF.cross_entropy(sim, target)

    def info_nce(query, key, negatives, temperature=0.07):
        # MoCo (He et al. 2020, eq. 1): the positive logit first, then the queue's.
        q, k = TF.normalize(query, dim=1), TF.normalize(key, dim=1)
        neg = TF.normalize(negatives, dim=1).detach()
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ neg.T], dim=1) / temperature
        return TF.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))

    def clip_loss(image_features, text_features, logit_scale):
        # CLIP (Radford et al. 2021, Figure 3): symmetric cross-entropy over the pairings.
        img, txt = TF.normalize(image_features, dim=1), TF.normalize(text_features, dim=1)
        logits = logit_scale.exp() * img @ txt.T
        labels = torch.arange(len(img))
        return (TF.cross_entropy(logits, labels) + TF.cross_entropy(logits.T, labels)) / 2

    def byol_loss(prediction, target):
        # BYOL (Grill et al. 2020, eq. 2): || p/|p| - z/|z| ||^2 = 2 - 2 cos, with a
        # stop-gradient on the target.
        p, z = TF.normalize(prediction, dim=1), TF.normalize(target.detach(), dim=1)
        return (2 - 2 * (p * z).sum(1)).mean()

    def simsiam_loss(prediction, target):
        # SimSiam (Chen & He 2021, eq. 1; its code uses nn.CosineSimilarity): negative
        # cosine, stop-gradient on the target.
        return -TF.cosine_similarity(prediction, target.detach(), dim=1).mean()

    def barlow_twins_loss(z1, z2, lambd=5e-3):
        # Barlow Twins (Zbontar et al. 2021, eq. 1): cross-correlation of the batch-
        # standardised views (biased variance, eps 1e-5, as BatchNorm1d without affine).
        n = z1.shape[0]
        a = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
        b = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
        c = a.T @ b / n
        on = ((torch.diagonal(c) - 1) ** 2).sum()
        off = (c ** 2).sum() - (torch.diagonal(c) ** 2).sum()
        return on + lambd * off

    def vicreg_loss(z1, z2, sim_weight=25.0, var_weight=25.0, cov_weight=1.0, eps=1e-4):
        # VICReg (Bardes et al. 2022, eqs. 1-6; official facebookresearch/vicreg main_vicreg.py).
        n, d = z1.shape
        inv = TF.mse_loss(z1, z2)
        x, y = z1 - z1.mean(0), z2 - z2.mean(0)
        std_x, std_y = torch.sqrt(x.var(0) + eps), torch.sqrt(y.var(0) + eps)
        var = TF.relu(1 - std_x).mean() / 2 + TF.relu(1 - std_y).mean() / 2
        cx, cy = x.T @ x / (n - 1), y.T @ y / (n - 1)
        off = ~torch.eye(d, dtype=torch.bool)
        cov = cx[off].pow(2).sum() / d + cy[off].pow(2).sum() / d
        return sim_weight * inv + var_weight * var + cov_weight * cov

    def kl_normal(mu, logvar):
        # VAE (Kingma & Welling 2014, appendix B): KL(N(mu, sigma^2) || N(0, I)).
        return (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(-1)).mean()

    def mae_loss(pred, target, mask, norm_pix=False):
        # MAE (He et al. 2022; official models_mae.py forward_loss).
        if norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    losses = {f.__name__: f for f in (nt_xent, info_nce, clip_loss, byol_loss, simsiam_loss,
                                      barlow_twins_loss, vicreg_loss, kl_normal, mae_loss)}

    def op(name):
        return losses.get(name) or getattr(TF, name)

    def to_tensor(a, requires_grad):
        return torch.tensor(a, requires_grad=requires_grad)

    def backward(out, grad_out):
        out.backward(torch.as_tensor(grad_out))

    return op, to_tensor, lambda t: t.detach().numpy(), backward, "torch " + torch.__version__


def minissl_port():
    """minissl itself through the same harness (what a port's numbers should look like)."""
    sys.path.insert(0, os.path.join(HERE, ".."))
    import minissl
    import minissl.functional as F
    from minissl import losses

    def op(name):
        return getattr(losses, name, None) or getattr(F, name)

    def to_tensor(a, requires_grad):
        return minissl.tensor(a, requires_grad=requires_grad)

    def backward(out, grad_out):
        out.backward(grad_out)

    def to_numpy(t):   # a Tensor, or a .grad (an ndarray in minissl)
        return t.numpy() if isinstance(t, minissl.Tensor) else np.asarray(t)

    return op, to_tensor, to_numpy, backward, "minissl " + minissl.__version__


# ----------------------------------------------------------------------------- the check

def check_file(path, port):
    """{key: max abs error} and {key: max error relative to the tolerance} of one case."""
    op, to_tensor, to_numpy, backward, _ = port
    with np.load(path, allow_pickle=False) as z:
        stored = {k: z[k] for k in z.files}
    meta = json.loads(str(stored.pop("meta")))
    diff = dict(zip(meta["inputs"], meta["differentiable"]))
    ts = {k: to_tensor(np.array(stored[f"in_{k}"]), diff[k]) for k in meta["inputs"]}
    out = op(meta["op"])(*[ts[k] for k in meta["args"]],
                         **{k: t for k, t in ts.items() if k not in meta["args"]},
                         **meta["kwargs"])
    backward(out, stored["grad_out"])
    got = {"out": to_numpy(out)}
    for k, t in ts.items():
        if diff[k]:
            got[f"grad_{k}"] = (np.zeros_like(stored[f"in_{k}"]) if t.grad is None
                                else to_numpy(t.grad))
        if f"after_{k}" in stored:
            got[f"after_{k}"] = to_numpy(t)
    errors = {}
    for key, value in got.items():
        want = stored[key]
        if value.shape != want.shape:
            errors[key] = float("inf")
            continue
        errors[key] = float(np.max(np.abs(value - want), initial=0.0))
    return meta["op"], errors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vectors", default=DEFAULT_VECTORS, help="folder of conformance .npz")
    p.add_argument("--framework", choices=["auto", "torch", "minissl"], default="auto",
                   help="auto: torch when installed, else minissl")
    p.add_argument("--rtol", type=float, default=1e-7)
    p.add_argument("--atol", type=float, default=1e-9)
    args = p.parse_args(argv)
    framework = args.framework
    if framework == "auto":
        try:
            import torch  # noqa: F401
            framework = "torch"
        except ImportError:
            framework = "minissl"
    port = torch_port() if framework == "torch" else minissl_port()
    previous_dtype = None
    if framework == "torch":
        import torch
        previous_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
    try:
        return _check_all(args, port)
    finally:
        if previous_dtype is not None:
            torch.set_default_dtype(previous_dtype)


def _check_all(args, port):
    files = sorted(glob.glob(os.path.join(args.vectors, "*.npz")))
    if not files:
        print(f"no conformance vectors in {args.vectors}", file=sys.stderr)
        return 2
    print(f"checking {port[-1]} against {len(files)} cases in {args.vectors}")
    failures = 0
    for path in files:
        name = os.path.basename(path)[:-4]
        try:
            _, errors = check_file(path, port)
        except Exception as e:   # a port missing an op, or raising on the inputs
            print(f"  FAIL {name:48s} {type(e).__name__}: {e}")
            failures += 1
            continue
        with np.load(path, allow_pickle=False) as z:
            scale = {k: float(np.max(np.abs(z[k]), initial=0.0)) for k in errors}
        bad = [k for k, e in errors.items() if not e <= args.atol + args.rtol * scale[k]]
        failures += bool(bad)
        worst = max(errors.values())
        detail = "  ".join(f"{k}={e:.1e}" for k, e in errors.items())
        print(f"  {'FAIL' if bad else 'ok  '} {name:48s} max err {worst:.1e}   {detail}")
    print(f"{len(files) - failures}/{len(files)} cases agree "
          f"(rtol {args.rtol:g}, atol {args.atol:g})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
