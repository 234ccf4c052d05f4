"""DINO and SwAV with multi-crop, in minissl and in PyTorch, probed identically: few-label
linear-probe accuracy of the frozen encoder (and the collapse diagnostics of the last epoch).

Recipe, the same in both libraries: batch 256 (drop last), Adam 1e-3, the method's defaults
(``DINOConfig``, ``SwAVConfig``: 2 global + 6 local views). Both get the same augmented views,
made by the minissl method's multi-crop augmentation from the same seeded generator
(``bench_digits.batches``), so the comparison is of the training steps. Data:

* ``digits``: the quality-bar MLP encoder 64-256-256 (local views resized back to 8x8);
* ``shapes``: the recipe of ``bench_shapes.py`` (2000 training images of 16x16, its CNN of
  widths 32-64-64), its views as multi-crop (``bench_shapes.shapes_multicrop``: global views
  16x16 of area 0.4 to 1, local 7x7 of area 0.05 to 0.4).

    python benchmarks/bench_multicrop.py --method dino --data digits --epochs 40 --seeds 0 1 2
    python benchmarks/bench_multicrop.py --method swav --data shapes --epochs 20 --seeds 0 1 2
    python benchmarks/bench_multicrop.py --raw --data shapes        # raw-pixel probe only
    python benchmarks/bench_multicrop.py --method dino --data shapes --set teacher_temp=0.02

``--set KEY=VALUE`` sets a field of the method's config in both libraries (on ``shapes``
``n_local`` and the crop areas set the views too); ``--optim official`` trains DINO with
``main_dino.py``'s AdamW, schedules, clipping and last-layer freeze (``official_optimisation``).
DINO's PyTorch run prints the diagnostics of its last step (``dino_diagnostics``: how far the
teacher's outputs still differ between images, and whether an image's two views agree).

    python benchmarks/bench_multicrop.py --method dino --data shapes --epochs 60 --optim official
"""
import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import argparse
import os
import sys

import numpy as np

from minissl import augment, data, methods, optim, random
from minissl.methods.base import cosine_tau
from minissl.methods.dino import teacher_temp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_shapes  # noqa: E402
from bench_digits import batches, probe, seeds_summary  # noqa: E402
from bench_shapes import WIDTHS, shapes_multicrop, torch_conv_encoder  # noqa: E402

LABELS = (1, 5, 10)


def load(name):
    return data.digits() if name == "digits" else bench_shapes.load()


def build(method, d, views="shapes", **overrides):
    """The minissl method of the recipe (the encoder by data set, as the module says);
    ``overrides`` set fields of its config (``--set``). On ``shapes`` the views are
    ``shapes_multicrop``'s, with the number of local views and the crop areas of the config
    where ``overrides`` set them, and ``views="dino"`` takes DINO's own colour augmentation."""
    if d.name == "shapes":
        return bench_shapes.build(method, d, shapes_views(views, **overrides), **overrides)
    return methods.build(method, d, **overrides)


def shapes_views(colour="shapes", n_local=6, global_scale_min=0.4, local_scale_min=0.05,
                 local_scale_max=0.4, **_):
    """``bench_shapes.shapes_multicrop`` with the config's view fields (its defaults unset).
    ``colour="dino"``: ``main_dino.py``'s ``flip_and_color_jitter`` (jitter 0.4, 0.4, 0.2,
    0.1 with p 0.8, greyscale p 0.2) instead of the recipe's (strength 1, greyscale p 0.8);
    no blur or solarisation either way (they erase a 16 px figure)."""
    views = shapes_multicrop(int(n_local))
    if colour == "dino":
        for t in (views.global_transform, views.local_transform):
            t.transforms[2:] = [augment.RandomApply(augment.ColorJitter(0.4, 0.4, 0.2, 0.1),
                                                    p=0.8), augment.RandomGrayscale(0.2)]
    views.global_transform.transforms[0].scale = (global_scale_min, 1.0)
    views.local_transform.transforms[0].scale = (local_scale_min, local_scale_max)
    return views


def parse_set(pairs):
    """``--set KEY=VALUE ...`` as config overrides: integers stay integers, the rest floats."""
    def number(v):
        return int(v) if v.lstrip("-").isdigit() else float(v)
    return {k: number(v) for k, v in (kv.split("=", 1) for kv in pairs)}


def cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs=0):
    """A value per step as facebookresearch/dino ``utils.cosine_scheduler``: linear from 0 to
    ``base`` over the warm-up epochs, then a cosine from ``base`` to ``final``."""
    warmup = np.linspace(0, base, warmup_epochs * niter_per_ep)
    it = np.arange(epochs * niter_per_ep - len(warmup))
    return np.concatenate((warmup, final + (base - final) * (1 + np.cos(np.pi * it / len(it))) / 2))


def official_optimisation(named, adamw, epochs, niter_per_ep):
    """``main_dino.py``'s optimisation at its defaults, for either library: AdamW (weight
    decay on the weights, none on biases and 1-d parameters, ``utils.get_params_groups``),
    learning rate warmed up over 10 epochs to 5e-4 (the default for batch 256) then cosine to
    1e-6, weight decay cosine from 0.04 to 0.4, each parameter's gradient clipped to norm 3
    (``utils.clip_gradients``), the head's last layer frozen for the first epoch
    (``cancel_gradients_last_layer``). ``named``: (name, parameter) of the student;
    ``adamw(groups)`` the library's AdamW. Returns the optimiser and ``before_step(step)``,
    to call between ``backward`` and ``step``."""
    named = [(n, p) for n, p in named if p.requires_grad]
    plain = {n for n, p in named if n.endswith(".bias") or len(p.shape) == 1}
    opt = adamw([{"params": [p for n, p in named if n not in plain]},
                 {"params": [p for n, p in named if n in plain], "weight_decay": 0.0}])
    lr = cosine_scheduler(5e-4, 1e-6, epochs, niter_per_ep, warmup_epochs=10)
    wd = cosine_scheduler(0.04, 0.4, epochs, niter_per_ep)

    def before_step(step):
        opt.param_groups[0]["weight_decay"] = float(wd[step])
        for group in opt.param_groups:
            group["lr"] = float(lr[step])
        for name, p in named:
            if p.grad is None:
                continue
            scale = 3.0 / (float((p.grad * p.grad).sum()) ** 0.5 + 1e-6)
            if scale < 1:
                p.grad *= scale
            if step < niter_per_ep and ".last" in name:    # DINOHead.last_layer
                p.grad = None
    return opt, before_step


def optimisation(how, named, adam, adamw, epochs, niter_per_ep):
    """(optimiser, ``before_step``) of ``--optim``: ``adam`` (Adam 1e-3, the recipe) or
    ``official`` (``official_optimisation``)."""
    if how == "official":
        return official_optimisation(named, adamw, epochs, niter_per_ep)
    return adam([p for _, p in named if p.requires_grad]), lambda step: None


def minissl_run(method, d, epochs, seed, optim_how="adam", views="shapes", **overrides):
    random.manual_seed(seed)
    m = build(method, d, views, **overrides)
    total = epochs * (len(d.train_x) // 256)
    opt, before_step = optimisation(optim_how, m.named_parameters(),
                                    lambda ps: optim.Adam(ps, lr=1e-3), optim.AdamW, epochs,
                                    len(d.train_x) // 256)
    for step, rng, x in batches(d, epochs, seed):
        opt.zero_grad()
        loss, metrics = m.training_step(x, rng)
        loss.backward()
        before_step(step)
        opt.step()
        m.on_step_end(step, total)
    return m.features, metrics


# ----------------------------------------------------------------------------- PyTorch


def torch_nets(method, d, cfg):
    import torch.nn as tnn

    def mlp(*dims, act=tnn.ReLU, bn=True, last_plain=True):
        layers = []
        for i in range(len(dims) - 1):
            layers.append(tnn.Linear(dims[i], dims[i + 1]))
            if not (last_plain and i == len(dims) - 2):
                layers += ([tnn.BatchNorm1d(dims[i + 1])] if bn else []) + [act()]
        return tnn.Sequential(*layers)

    if d.name == "shapes":
        enc, dim = torch_conv_encoder(), WIDTHS[-1]
    else:
        enc, dim = tnn.Sequential(tnn.Flatten(), mlp(64, 256, 256, last_plain=False)), 256
    if method == "dino":
        head = mlp(dim, cfg.head_hidden, cfg.head_hidden, cfg.bottleneck_dim, act=tnn.GELU,
                   bn=cfg.use_bn_in_head)
        for m in head.modules():
            if isinstance(m, tnn.Linear):            # DINOHead._init_weights
                tnn.init.trunc_normal_(m.weight, std=0.02)
                tnn.init.zeros_(m.bias)
        last = tnn.utils.weight_norm(tnn.Linear(cfg.bottleneck_dim, cfg.out_dim, bias=False))
        last.weight_g.data.fill_(1)
        last.weight_g.requires_grad = not cfg.norm_last_layer
        return enc, tnn.ModuleDict({"mlp": head, "last": last})
    return enc, tnn.ModuleDict({"proj": mlp(dim, cfg.proj_hidden, cfg.proj_dim),
                                "protos": tnn.Linear(cfg.proj_dim, cfg.n_prototypes,
                                                     bias=False)})


def dino_diagnostics(teacher, center, temp, loss):
    """DINO's collapse diagnostics on a step's teacher outputs (two (B, K) torch tensors):
    ``teacher_entropy`` (log K: uniform), ``teacher_student_kl`` (the loss less it),
    ``t_sd``, how far the centred logits t - c still differ between images (their standard
    deviation over the batch, mean over the K outputs; against the temperature), and whether
    an image's two global views get the same teacher output: ``same_top`` (the fraction with
    the same top output) and ``kl_own`` / ``kl_other``, the KL from view 1's distribution to
    its own view 2's / to the next image's view 2's."""
    import torch
    import torch.nn.functional as TF
    logp = [TF.log_softmax((t - center) / temp, dim=1) for t in teacher]
    entropy = float(sum(-(lp.exp() * lp).sum(1).mean() for lp in logp) / len(logp))

    def kl(a, b):
        return float((a.exp() * (a - b)).sum(1).mean())
    return {"teacher_entropy": entropy, "teacher_student_kl": loss - entropy,
            "t_sd": float(torch.cat(teacher).std(0).mean()),
            "same_top": float((teacher[0].argmax(1) == teacher[1].argmax(1)).double().mean()),
            "kl_own": kl(logp[0], logp[1]), "kl_other": kl(logp[0], logp[1].roll(1, 0))}


def torch_run(method, d, epochs, seed, optim_how="adam", views="shapes", **overrides):
    import torch
    import torch.nn.functional as TF
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "examples"))
    from torch_port import dino_loss, multicrop_forward, sinkhorn, swav_loss
    torch.manual_seed(seed)
    transform = build(method, d, views, **overrides).transform   # minissl's very views
    cfg = methods.config_class(method)(**overrides)
    enc, head = torch_nets(method, d, cfg)
    named = list(enc.named_parameters("encoder")) + list(head.named_parameters("head"))
    opt, before_step = optimisation(optim_how, named, lambda ps: torch.optim.Adam(ps, 1e-3),
                                    torch.optim.AdamW, epochs, len(d.train_x) // 256)
    if method == "dino":
        t_enc, t_head = torch_nets(method, d, cfg)     # (weight_norm defeats deepcopy)
        t_enc.load_state_dict(enc.state_dict())
        t_head.load_state_dict(head.state_dict())
        for p in list(t_enc.parameters()) + list(t_head.parameters()):
            p.requires_grad = False
        center = torch.zeros(1, cfg.out_dim)
        dino_out = lambda e, h, v: h["last"](TF.normalize(h["mlp"](  # noqa: E731
            multicrop_forward(e, v)), dim=-1)).split(len(v[0]))
    total = epochs * (len(d.train_x) // 256)
    for step, rng, x in batches(d, epochs, seed):
        views = [torch.from_numpy(v) for v in transform(x, rng)]
        opt.zero_grad()
        if method == "dino":
            student = dino_out(enc, head, views)
            with torch.no_grad():
                teacher = dino_out(t_enc, t_head, views[:2])
            temp = teacher_temp(cfg, step)
            loss = dino_loss(student, teacher, center, cfg.student_temp, temp)
            with torch.no_grad():
                t = torch.cat(teacher)
                metrics = dino_diagnostics(teacher, center, temp, float(loss))
                center = center * cfg.center_momentum + t.mean(0, keepdim=True) * (
                    1 - cfg.center_momentum)
        else:
            with torch.no_grad():
                head["protos"].weight.copy_(TF.normalize(head["protos"].weight, dim=1))
            z = TF.normalize(head["proj"](multicrop_forward(enc, views)), dim=1)
            scores = head["protos"](z).split(len(views[0]))
            loss = swav_loss(scores, cfg.temperature, cfg.epsilon, cfg.sinkhorn_iterations)
            s = torch.cat(scores[:2]).detach()
            counts = torch.bincount(s.argmax(1), minlength=s.shape[1]).double() / len(s)
            nz = counts[counts > 0]
            metrics = {"assignment_entropy": float(-(nz * nz.log()).sum())}
            del s
        loss.backward()
        if method == "swav" and step < cfg.freeze_prototypes_steps:
            head["protos"].weight.grad = None
        before_step(step)
        opt.step()
        if method == "dino":
            m = cosine_tau(cfg.momentum_teacher, step, total)
            with torch.no_grad():
                for tgt, src in ((t_enc, enc), (t_head, head)):
                    for pt, po in zip(tgt.parameters(), src.parameters()):
                        pt.mul_(m).add_(po, alpha=1 - m)
                    for bt, bo in zip(tgt.buffers(), src.buffers()):
                        bt.copy_(bo)

    def features(x):
        enc.eval()
        with torch.no_grad():
            return enc(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return features, metrics


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=("dino", "swav"), default="dino")
    ap.add_argument("--data", choices=("digits", "shapes"), default="digits")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--libs", nargs="+", default=["minissl", "pytorch"])
    ap.add_argument("--raw", action="store_true", help="probe the raw pixels only")
    ap.add_argument("--optim", choices=("adam", "official"), default="adam",
                    help="adam: Adam 1e-3; official: main_dino.py's schedules (DINO only)")
    ap.add_argument("--views", choices=("shapes", "dino"), default="shapes",
                    help="colour augmentation on shapes: the recipe's, or main_dino.py's")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config fields of the method, in both libraries (numbers)")
    args = ap.parse_args()
    try:
        overrides = parse_set(args.set)
        methods.config_class(args.method)(**overrides)
    except (ValueError, TypeError) as e:
        ap.error(f"--set: {e}")
    if args.optim == "official" and args.method != "dino":
        ap.error("--optim official is DINO's (main_dino.py)")
    d = load(args.data)
    if args.raw:
        flat = lambda x: x.reshape(len(x), -1)   # noqa: E731
        print("raw pixels probe 1/5/10:", " ".join(f"{a:.3f}" for a in probe(flat, d, LABELS)))
        return
    runs = {"minissl": minissl_run, "pytorch": torch_run}
    accs = {lib: [] for lib in args.libs}
    for seed in args.seeds:
        for lib in args.libs:
            features, metrics = runs[lib](args.method, d, args.epochs, seed, args.optim,
                                          args.views, **overrides)
            accs[lib].append(probe(features, d, LABELS))
            diag = " ".join(f"{k}={v:.3f}" for k, v in metrics.items())
            print(f"{lib:8s} {args.method} {args.data} seed {seed}: probe 1/5/10 "
                  + " ".join(f"{a:.3f}" for a in accs[lib][-1]) + f"   {diag}", flush=True)
    for lib in args.libs:
        print(f"{lib:8s} {args.method} {args.data} over {len(accs[lib])} seed(s): probe "
              "1/5/10 " + seeds_summary(accs[lib]))


if __name__ == "__main__":
    main()
