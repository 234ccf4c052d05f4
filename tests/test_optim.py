"""minissl.optim: every optimiser step for step against torch.optim (float64, 5 steps, two
parameter groups), LARS against the official Barlow Twins implementation, the cosine
schedule, state_dict round trips and bad input."""
import math

import numpy as np
import pytest

import minissl as ms
import minissl.nn as nn
from minissl import optim

SHAPES = [(3, 4), (4,), (2, 1, 3), ()]


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(rng.standard_normal(s)) for s in SHAPES]


def grads(step, seed=100):
    rng = np.random.default_rng(seed + step)
    return [rng.standard_normal(s) for s in SHAPES]


def run_minissl(make_opt, steps=5, groups=True):
    params = make_params()
    arg = [{"params": params[:2]}, {"params": params[2:], "lr": 0.05}] if groups else params
    opt = make_opt(arg)
    for step in range(steps):
        for p, g in zip(params, grads(step)):
            p.grad = g
        opt.step()
    return [p.data for p in params]


# ----------------------------------------------------------------------------- torch parity

class TorchLARS:
    """The official Barlow Twins LARS (facebookresearch/barlowtwins main.py), verbatim math."""

    def __init__(self, torch, groups, lr, weight_decay, momentum, eta):
        self.torch, self.groups = torch, groups
        self.lr, self.wd, self.momentum, self.eta = lr, weight_decay, momentum, eta
        self.mu = {}

    def step(self):
        torch = self.torch
        with torch.no_grad():
            for g in self.groups:
                lr = g.get("lr", self.lr)
                for p in g["params"]:
                    dp = p.grad
                    if p.ndim != 1:                       # exclude_bias_and_norm filter
                        dp = dp.add(p, alpha=self.wd)
                        param_norm, update_norm = torch.norm(p), torch.norm(dp)
                        one = torch.ones_like(param_norm)
                        q = torch.where(param_norm > 0.,
                                        torch.where(update_norm > 0,
                                                    (self.eta * param_norm / update_norm), one),
                                        one)
                        dp = dp.mul(q)
                    if p not in self.mu:
                        self.mu[p] = torch.zeros_like(p)
                    mu = self.mu[p]
                    mu.mul_(self.momentum).add_(dp)
                    p.add_(mu, alpha=-lr)


CASES = {
    "sgd": (lambda P: optim.SGD(P, lr=0.1),
            lambda t, P: t.optim.SGD(P, lr=0.1)),
    "sgd_momentum_wd": (lambda P: optim.SGD(P, lr=0.1, momentum=0.9, weight_decay=0.01),
                        lambda t, P: t.optim.SGD(P, lr=0.1, momentum=0.9, weight_decay=0.01)),
    "sgd_dampening": (lambda P: optim.SGD(P, lr=0.1, momentum=0.8, dampening=0.3),
                      lambda t, P: t.optim.SGD(P, lr=0.1, momentum=0.8, dampening=0.3)),
    "sgd_nesterov": (lambda P: optim.SGD(P, lr=0.1, momentum=0.9, weight_decay=1e-3,
                                         nesterov=True),
                     lambda t, P: t.optim.SGD(P, lr=0.1, momentum=0.9, weight_decay=1e-3,
                                              nesterov=True)),
    "adam": (lambda P: optim.Adam(P, lr=0.01),
             lambda t, P: t.optim.Adam(P, lr=0.01)),
    "adam_wd": (lambda P: optim.Adam(P, lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                     weight_decay=0.1),
                lambda t, P: t.optim.Adam(P, lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                          weight_decay=0.1)),
    "adamw": (lambda P: optim.AdamW(P, lr=0.01),
              lambda t, P: t.optim.AdamW(P, lr=0.01)),
    "adamw_wd": (lambda P: optim.AdamW(P, lr=0.02, weight_decay=0.3),
                 lambda t, P: t.optim.AdamW(P, lr=0.02, weight_decay=0.3)),
    "lars": (lambda P: optim.LARS(P, lr=0.2, momentum=0.9, weight_decay=0.05, eta=0.02),
             lambda t, P: TorchLARS(t, P, lr=0.2, weight_decay=0.05, momentum=0.9, eta=0.02)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_for_five_steps(name):
    torch = pytest.importorskip("torch")
    make_ms, make_torch = CASES[name]
    tparams = [torch.tensor(p.data, requires_grad=True) for p in make_params()]
    topt = make_torch(torch, [{"params": tparams[:2]}, {"params": tparams[2:], "lr": 0.05}])
    for step in range(5):
        for p, g in zip(tparams, grads(step)):
            p.grad = torch.tensor(g)
        topt.step()
    for got, want in zip(run_minissl(make_ms), tparams):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_cosine_schedule_matches_torch_lambda_lr():
    torch = pytest.importorskip("torch")
    base, final, warm, total = 0.4, 0.01, 3, 10
    params = make_params()
    opt = optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], lr=base,
                    momentum=0.9)
    sched = optim.CosineWarmupSchedule(opt, warm, total, final_lr=final)
    tparams = [torch.tensor(p.data, requires_grad=True) for p in params]
    topt = torch.optim.SGD([{"params": tparams[:2]}, {"params": tparams[2:], "lr": 0.1}],
                           lr=base, momentum=0.9)

    def factor(b):
        def f(t):
            if t < warm:
                return t / warm
            if t >= total:
                return final / b
            c = 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm)))
            return (final + (b - final) * c) / b
        return f
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, [factor(base), factor(0.1)])
    for step in range(12):
        assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12, abs=1e-15)
        for p, tp, g in zip(params, tparams, grads(step)):
            p.grad, tp.grad = g, torch.tensor(g)
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- hand-checked

def test_sgd_and_adam_first_step_by_hand():
    p = nn.Parameter(np.array([1.0, -2.0]))
    p.grad = np.array([0.5, 0.25])
    optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1).step()
    # d = g + 0.1 p = [0.6, 0.05]; the first momentum buffer is d itself.
    np.testing.assert_allclose(p.data, [1 - 0.06, -2 - 0.005], rtol=1e-15)
    p = nn.Parameter(np.array([1.0, -2.0]))
    p.grad = np.array([0.5, -0.25])
    optim.Adam([p], lr=0.1).step()
    # Bias-corrected first Adam step: m_hat = g, v_hat = g^2, update lr * sign(g) (eps aside).
    np.testing.assert_allclose(p.data, [0.9, -1.9], rtol=1e-7)
    p = nn.Parameter(np.array([1.0, -2.0]))
    p.grad = np.array([0.5, -0.25])
    optim.AdamW([p], lr=0.1, weight_decay=0.5).step()
    np.testing.assert_allclose(p.data, [0.95 - 0.1, -1.9 + 0.1], rtol=1e-7)


def test_lars_trust_ratio_and_exclusion_by_hand():
    w = nn.Parameter(np.array([[3.0, 4.0]]))          # ||w|| = 5
    b = nn.Parameter(np.array([1.0, 1.0]))            # 1-D: excluded
    w.grad = np.array([[0.0, 1.0]])
    b.grad = np.array([0.5, -0.5])
    opt = optim.LARS([w, b], lr=0.1, momentum=0.9, weight_decay=0.1, eta=0.01)
    opt.step()
    d = np.array([[0.3, 1.4]])                        # g + wd w
    d = d * 0.01 * 5 / np.linalg.norm(d)
    np.testing.assert_allclose(w.data, [[3.0, 4.0]] - 0.1 * d, rtol=1e-14)
    np.testing.assert_allclose(b.data, [0.95, 1.05], rtol=1e-14)   # plain momentum SGD step
    # Without the exclusion the bias is decayed and scaled too.
    c = nn.Parameter(np.array([3.0, 4.0]))
    c.grad = np.array([0.0, 1.0])
    optim.LARS([c], lr=0.1, weight_decay=0.1, eta=0.01, exclude_bias_and_norm=False).step()
    np.testing.assert_allclose(c.data, [3.0, 4.0] - 0.1 * d[0], rtol=1e-14)
    z = nn.Parameter(np.zeros((2, 2)))                # ||w|| = 0: trust ratio 1
    z.grad = np.ones((2, 2))
    optim.LARS([z], lr=0.1, weight_decay=0.0).step()
    np.testing.assert_allclose(z.data, -0.1 * np.ones((2, 2)))


def test_cosine_schedule_values():
    opt = optim.SGD(make_params(), lr=1.0)
    s = optim.CosineWarmupSchedule(opt, warmup_steps=4, total_steps=12, final_lr=0.1)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(14):
        s.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[8] == pytest.approx(0.55)                      # half-way down the cosine
    assert lrs[12:] == pytest.approx([0.1] * 3)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    opt2 = optim.SGD(make_params(), lr=1.0)
    s2 = optim.CosineWarmupSchedule(opt2, 4, 12, final_lr=0.1)
    for _ in range(6):
        s2.step()
    s3 = optim.CosineWarmupSchedule(optim.SGD(make_params(), lr=1.0), 4, 12, final_lr=0.1)
    s3.load_state_dict(s2.state_dict())
    assert s3.get_last_lr() == pytest.approx(lrs[6:7])
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.CosineWarmupSchedule(opt, 5, 3)
    with pytest.raises(ValueError, match="base_lr"):
        optim.CosineWarmupSchedule(opt, 1, 3, base_lr=[0.1, 0.2])


# ----------------------------------------------------------------------------- state, API

@pytest.mark.parametrize("name", ["sgd_momentum_wd", "adam_wd", "adamw", "lars"])
def test_state_dict_round_trip_continues_identically(name):
    make = CASES[name][0]
    ref = run_minissl(make, steps=5)
    params = make_params()
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.05}]
    opt = make(groups)
    for step in range(3):
        for p, g in zip(params, grads(step)):
            p.grad = g
        opt.step()
    sd = opt.state_dict()
    assert all(isinstance(v, (np.ndarray, int)) for s in sd["state"].values()
               for v in s.values())
    params2 = [nn.Parameter(p.data.copy()) for p in params]
    opt2 = make([{"params": params2[:2]}, {"params": params2[2:]}])  # lr restored by load
    opt2.load_state_dict(sd)
    assert opt2.param_groups[1]["lr"] == 0.05
    for step in range(3, 5):
        for p, g in zip(params2, grads(step)):
            p.grad = g
        opt2.step()
    for got, want in zip(params2, ref):
        np.testing.assert_array_equal(got.data, want)


def test_load_state_dict_validates_before_changing_anything():
    params = make_params()
    opt = optim.Adam(params)
    for p, g in zip(params, grads(0)):
        p.grad = g
    opt.step()
    sd = opt.state_dict()
    other = optim.Adam(make_params()[:3])
    with pytest.raises(ValueError, match="3 here"):
        other.load_state_dict(sd)
    bad = optim.Adam([nn.Parameter(np.zeros(s)) for s in [(3, 4), (5,), (2, 1, 3), ()]],
                     lr=0.5)
    with pytest.raises(ValueError, match="shape"):
        bad.load_state_dict(sd)
    assert bad.state == {} and bad.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="state"):
        bad.load_state_dict({"nope": 1})


def test_zero_grad_skip_closure_and_float32():
    params = [nn.Parameter(np.ones((2, 2), np.float32)), nn.Parameter(np.ones(2, np.float32))]
    opt = optim.SGD(params, lr=0.5)
    params[0].grad = np.ones((2, 2), np.float32).T            # a non-contiguous gradient
    loss = opt.step(closure=lambda: 3.0)
    assert loss == 3.0
    np.testing.assert_array_equal(params[0].data, 0.5)
    np.testing.assert_array_equal(params[1].data, 1.0)        # no grad: untouched
    assert params[0].dtype == np.float32
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    lin = nn.Linear(3, 2)
    opt = optim.AdamW(lin.parameters(), lr=1e-2)
    x = ms.tensor(np.ones((4, 3), np.float32))
    before = lin.weight.data.copy()
    (lin(x) ** 2).mean().backward()
    opt.step()
    assert lin.weight.dtype == np.float32 and not np.array_equal(before, lin.weight.data)


def test_bad_arguments():
    p = make_params()
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than one"):
        optim.SGD([p[0], p[0]], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        optim.Adam(p, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(p, betas=(1.0, 0.9))
    with pytest.raises(TypeError, match="Tensors"):
        optim.SGD([np.zeros(3)], lr=0.1)
    opt = optim.SGD(p, lr=0.1)
    p[0].grad = np.ones((4, 3))
    with pytest.raises(ValueError, match="shape"):
        opt.step()
