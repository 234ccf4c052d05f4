"""Optimisers (SGD, Adam, AdamW, LARS) and the cosine learning-rate schedule with warm-up.

Each update is PyTorch's, step for step (the parity tests compare five steps against
``torch.optim`` in float64). With g the gradient, p the parameter, lr the learning rate and
wd the weight decay:

* SGD (``torch.optim.SGD``; Sutskever et al., 2013 for the Nesterov form):
  d = g + wd p;  b = d on the first step, else b = momentum b + (1 - dampening) d;
  d = d + momentum b (nesterov) or d = b (momentum > 0);  p = p - lr d.
* Adam (Kingma & Ba, 2015): g = g + wd p (L2 penalty);  m = beta1 m + (1 - beta1) g;
  v = beta2 v + (1 - beta2) g^2;  p = p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps).
* AdamW (Loshchilov & Hutter, 2019): Adam without the L2 term, but decoupled decay first:
  p = p (1 - lr wd).
* LARS (You, Gitman & Ginsburg, 2017), as in the official BYOL / Barlow Twins code:
  d = g + wd p;  d = d * eta ||p|| / ||d|| (trust ratio; 1 when either norm is 0);
  b = momentum b + d (b starts at 0);  p = p - lr b. With ``exclude_bias_and_norm`` the
  parameters with ndim == 1 (biases, norm scales) get neither the decay nor the trust ratio.

The updates run in place on the parameter arrays through the fused kernels of
``minissl.kernels.optim`` (one pass over memory per parameter instead of one per operation).

Optimiser ``state_dict()`` (the layout the checkpoint stores) is PyTorch's::

    {"state": {index: {name: ndarray or number}},           # index = position of the param
     "param_groups": [{hyperparameter: number or tuple, "params": [index, ...]}]}

with per-parameter state keys ``momentum_buffer`` (SGD, LARS) and ``step`` (int),
``exp_avg``, ``exp_avg_sq`` (Adam, AdamW).
"""
import copy
import math

import numpy as np

from . import autograd
from .autograd import Tensor
from .backend import device_of, get_array_module, to_device
from .kernels import optim as _k

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LARS", "CosineWarmupSchedule"]


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad``, ``state_dict``.

    ``params`` is an iterable of Parameters, or of dicts ``{"params": [...], **options}``
    (parameter groups, each option overriding the optimiser's default for that group).
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}
        self.param_groups = []
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group):
        """Add a group ``{"params": [...], **options}``; missing options take the defaults."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{type(self).__name__}: a parameter group must be a dict with a "
                            "'params' entry")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: can only optimise Tensors, got "
                                f"{type(p).__name__}")
            if p.data.dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}: cannot optimise a tensor of dtype "
                                f"{p.dtype}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params) or len({id(p) for p in params}) != len(params):
            raise ValueError(f"{type(self).__name__}: a parameter appears in more than one "
                             "place of the parameter groups")
        new = dict(self.defaults)
        new.update({k: v for k, v in group.items() if k != "params"})
        new["params"] = params
        self._check_group(new)
        self.param_groups.append(new)

    def _check_group(self, group):
        if group["lr"] < 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {group['lr']}")

    def zero_grad(self, set_to_none=True):
        """Drop the gradients of every parameter (``.grad = None``, or zeros)."""
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad = get_array_module(p.grad).zeros_like(p.grad)

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        profile = autograd._profile
        if profile is None:
            self._update_all()
        else:   # timed by minissl.profiler as "<Optimiser>.step"
            profile.run(type(self).__name__, "step", self._update_all, ())
        return loss

    def _update_all(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group, self.state.setdefault(p, {}))

    def _update(self, p, group, state):
        raise NotImplementedError

    # ----------------------------------------------------------------- checkpoints
    def _index(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self):
        """PyTorch's layout (see the module docstring); arrays are host copies."""
        params = self._index()
        state = {}
        for i, p in enumerate(params):
            if p in self.state and self.state[p]:
                state[i] = {k: (np.array(to_device(v, "cpu"), copy=True)
                                if hasattr(v, "shape") else v)
                            for k, v in self.state[p].items()}
        groups, start = [], 0
        for g in self.param_groups:
            d = {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            d["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and state saved by ``state_dict``. Everything is checked
        (group sizes, state shapes) before anything changes; ValueError otherwise."""
        name = type(self).__name__
        try:
            groups, state = state_dict["param_groups"], state_dict["state"]
        except (KeyError, TypeError):
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and "
                             "'param_groups'") from None
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the saved state has {len(groups)} "
                             f"parameter group(s), this optimiser {len(self.param_groups)}")
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"{name}.load_state_dict: group {i} has "
                                 f"{len(saved['params'])} parameters in the saved state, "
                                 f"{len(own['params'])} here")
        index = {}
        for saved, own in zip(groups, self.param_groups):
            for k, p in zip(saved["params"], own["params"]):
                index[int(k)] = p
        new_state = {}
        for k, entries in state.items():
            k = int(k)
            if k not in index:
                raise ValueError(f"{name}.load_state_dict: state for parameter {k}, which the "
                                 "parameter groups do not list")
            p = index[k]
            s = {}
            for key, v in entries.items():
                if hasattr(v, "shape") and hasattr(v, "dtype"):
                    if tuple(v.shape) != p.shape:
                        raise ValueError(f"{name}.load_state_dict: state {key!r} of parameter "
                                         f"{k} has shape {tuple(v.shape)}, the parameter "
                                         f"{p.shape}")
                    xp = get_array_module(p.data)
                    v = xp.array(to_device(v, device_of(p.data)), dtype=p.dtype, copy=True)
                s[key] = v
            new_state[p] = s
        for saved, own in zip(groups, self.param_groups):
            for key, v in saved.items():
                if key != "params":
                    own[key] = tuple(v) if isinstance(own.get(key), tuple) else v
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov momentum and
    weight decay, exactly as ``torch.optim.SGD`` (formula in the module docstring)."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: invalid momentum {momentum} or weight_decay {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, p, group, state):
        momentum = group["momentum"]
        buf, first = None, False
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = get_array_module(p.data).zeros_like(p.data)
                first = True
        _k.sgd_step(p.data, _as_grad(p), buf, group["lr"], momentum,
                    group["dampening"], group["weight_decay"], group["nesterov"], first)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with L2 weight decay added to the gradient, exactly as
    ``torch.optim.Adam`` (no amsgrad); formula in the module docstring."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"{type(self).__name__}: invalid betas {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: invalid eps {eps} or weight_decay "
                             f"{weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    def _update(self, p, group, state):
        if "step" not in state:
            xp = get_array_module(p.data)
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        _k.adam_step(p.data, _as_grad(p), state["exp_avg"], state["exp_avg_sq"],
                     state["step"], group["lr"], beta1, beta2, group["eps"],
                     group["weight_decay"], self._decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019): p = p (1 - lr wd) before
    the Adam step, as ``torch.optim.AdamW``; default weight_decay 1e-2."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017, "Large Batch Training of
    Convolutional Networks") as in the official BYOL and Barlow Twins code:

        d = g + wd p;  d = d * (eta ||p|| / ||d||  if ||p|| > 0 and ||d|| > 0 else 1)
        b = momentum b + d;  p = p - lr b

    With ``exclude_bias_and_norm=True`` (per group) parameters with ndim == 1 (biases and
    BatchNorm/LayerNorm scales) skip both the weight decay and the trust ratio.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=1e-6, eta=0.001,
                 exclude_bias_and_norm=True):
        if momentum < 0 or weight_decay < 0 or eta < 0:
            raise ValueError(f"LARS: invalid momentum {momentum}, weight_decay {weight_decay} "
                             f"or eta {eta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, exclude_bias_and_norm=exclude_bias_and_norm))

    def _update(self, p, group, state):
        xp = get_array_module(p.data)
        w, d = p.data, _as_grad(p)
        if not (group["exclude_bias_and_norm"] and p.ndim == 1):
            if group["weight_decay"] != 0:
                d = d + group["weight_decay"] * w
            # The norms stay 0-d arrays on the parameter's device (float() of them would be a
            # device-to-host copy per parameter per step on the GPU); the ratio is formed in
            # float64 and rounded to d's dtype, as from Python floats.
            w_norm = xp.sqrt(xp.vdot(w.ravel(), w.ravel())).astype(np.float64)
            d_norm = xp.sqrt(xp.vdot(d.ravel(), d.ravel())).astype(np.float64)
            use = (w_norm > 0) & (d_norm > 0)
            ratio = xp.where(use, group["eta"] * w_norm / xp.where(use, d_norm, 1.0), 1.0)
            d = d * ratio.astype(d.dtype)
        buf = state.get("momentum_buffer")
        first = buf is None
        if first:
            buf = state["momentum_buffer"] = xp.zeros_like(w)
        # b = momentum b + d, p -= lr b: SGD's update without dampening or decay; on the first
        # step SGD sets b = d, which equals momentum * 0 + d.
        _k.sgd_step(w, d, buf, group["lr"], group["momentum"], 0.0, 0.0,
                    False, first)


def _as_grad(p):
    g = p.grad
    if g.shape != p.data.shape:
        raise ValueError(f"optimizer step: gradient of shape {tuple(g.shape)} for a parameter "
                         f"of shape {p.shape}")
    return g if g.dtype == p.data.dtype else g.astype(p.data.dtype)


class CosineWarmupSchedule:
    """Linear warm-up from 0, then cosine decay to ``final_lr`` (Loshchilov & Hutter, "SGDR",
    2017; Goyal et al., 2017 for the warm-up), setting each group's ``lr``:

        lr(t) = base * t / warmup_steps                                   for t < warmup_steps
        lr(t) = final + (base - final) (1 + cos(pi (t - warmup) / (total - warmup))) / 2
                                                                          for t <= total_steps
        lr(t) = final                                                     after total_steps

    ``t`` counts optimiser steps: the constructor sets lr(0), and each ``step()`` (call it
    after ``optimizer.step()``) advances t and sets lr(t), like PyTorch's schedulers.
    ``base_lr`` (a number, or one per group) defaults to each group's lr at construction.
    """

    def __init__(self, optimizer, warmup_steps, total_steps, base_lr=None, final_lr=0.0):
        if not 0 <= warmup_steps <= total_steps or total_steps <= 0:
            raise ValueError(f"CosineWarmupSchedule: need 0 <= warmup_steps <= total_steps and "
                             f"total_steps > 0, got {warmup_steps} and {total_steps}")
        self.optimizer = optimizer
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.final_lr = float(final_lr)
        n = len(optimizer.param_groups)
        if base_lr is None:
            self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        elif isinstance(base_lr, (list, tuple)):
            if len(base_lr) != n:
                raise ValueError(f"CosineWarmupSchedule: {len(base_lr)} base_lr values for {n} "
                                 "parameter groups")
            self.base_lrs = [float(b) for b in base_lr]
        else:
            self.base_lrs = [float(base_lr)] * n
        self.last_step = 0
        self._apply()

    def lr_at(self, t, base):
        """The learning rate at step ``t`` for a group whose peak rate is ``base``."""
        if t < self.warmup_steps:
            return base * t / self.warmup_steps
        if t >= self.total_steps:
            return self.final_lr
        progress = (t - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.final_lr + (base - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _apply(self):
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(self.last_step, base)

    def step(self):
        self.last_step += 1
        self._apply()

    def get_last_lr(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_step": self.last_step, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "final_lr": self.final_lr,
                "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        try:
            base_lrs = [float(b) for b in state["base_lrs"]]
            values = (int(state["last_step"]), int(state["warmup_steps"]),
                      int(state["total_steps"]), float(state["final_lr"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError("CosineWarmupSchedule.load_state_dict: expected the keys "
                             "last_step, warmup_steps, total_steps, final_lr, base_lrs") from None
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(f"CosineWarmupSchedule.load_state_dict: {len(base_lrs)} base_lrs "
                             f"for {len(self.optimizer.param_groups)} parameter groups")
        self.last_step, self.warmup_steps, self.total_steps, self.final_lr = values
        self.base_lrs = base_lrs
        self._apply()
