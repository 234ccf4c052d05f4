"""PyTorch parity of DINO's and SwAV's losses in float64: values and input gradients, against
lightly's implementation.

lightly is not a dependency of the tests. When it is installed (``pip install --no-deps
lightly``), its own loss files are loaded (``lightly/loss/dino_loss.py``,
``lightly/loss/swav_loss.py`` and the ``lightly/models/modules/center.py`` they need, without
lightly's package ``__init__``, which imports torchvision). Always, the same formulas
transcribed below from those files (lightly 1.6) are checked: DINO's einsum over (teacher
view, student view) pairs with the diagonal zeroed, SwAV's Sinkhorn without the 1/K of the
row step (a constant that the column step removes) and the swapped sub-losses.
"""
import importlib.util
import math
import os
import sys
import types

import numpy as np
import pytest

import minissl as ms
from minissl import losses

torch = pytest.importorskip("torch")
tF = torch.nn.functional


# ------------------------------------------------------------------------------------------
# lightly's formulas, transcribed (lightly/loss/dino_loss.py, lightly/loss/swav_loss.py)
# ------------------------------------------------------------------------------------------


def transcribed_dino(teacher_out, student_out, center, teacher_temp, student_temp):
    t_out = tF.softmax((torch.stack(teacher_out) - center) / teacher_temp, dim=-1)
    s_out = tF.log_softmax(torch.stack(student_out) / student_temp, dim=-1)
    loss = -torch.einsum("tbd,sbd->ts", t_out, s_out)
    loss.fill_diagonal_(0)
    n_terms = loss.numel() - loss.diagonal().numel()
    return loss.sum() / (n_terms * t_out.shape[1])


@torch.no_grad()
def transcribed_sinkhorn(out, iterations=3, epsilon=0.05):
    q = torch.exp(out / epsilon).t()
    q /= torch.sum(q)
    b = q.shape[1]
    for _ in range(iterations):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def transcribed_swav(high, low, temperature=0.1, iterations=3, epsilon=0.05):
    def subloss(z, q):
        return -torch.mean(torch.sum(q * tF.log_softmax(z / temperature, dim=1), dim=1))
    n_crops = len(high) + len(low)
    loss = 0
    for i in range(len(high)):
        with torch.no_grad():
            q = transcribed_sinkhorn(high[i].detach(), iterations, epsilon)
        sub = sum(subloss(high[v], q) for v in range(len(high)) if v != i)
        sub = sub + sum(subloss(z, q) for z in low)
        loss = loss + sub / (n_crops - 1)
    return loss / len(high)


def _lightly():
    """lightly's DINOLoss, SwaVLoss and sinkhorn from their files, or None without lightly."""
    spec = importlib.util.find_spec("lightly")
    if spec is None:
        return None
    root = spec.submodule_search_locations[0]
    names = ["lightly", "lightly.models", "lightly.models.modules",
             "lightly.models.modules.center", "lightly.loss.dino_loss", "lightly.loss.swav_loss"]
    saved = {n: sys.modules.get(n) for n in names}
    try:
        for n in names[:3]:
            sys.modules[n] = types.ModuleType(n)
        loaded = {}
        for n, rel in [(names[3], "models/modules/center.py"), (names[4], "loss/dino_loss.py"),
                       (names[5], "loss/swav_loss.py")]:
            s = importlib.util.spec_from_file_location(n, os.path.join(root, rel))
            mod = importlib.util.module_from_spec(s)
            sys.modules[n] = mod
            if n.endswith("center"):
                sys.modules[names[2]].center = mod
            s.loader.exec_module(mod)
            loaded[n] = mod
        swav = loaded[names[5]]
        return loaded[names[4]].DINOLoss, swav.SwaVLoss, swav.sinkhorn
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


LIGHTLY = _lightly()


def _grads(values):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]


def _grad(t):
    """A torch input's gradient; None (an input the loss never reads with a graph, such as a
    crop that is only a target) is zeros, as minissl returns it."""
    return np.zeros(tuple(t.shape)) if t.grad is None else t.grad.numpy()


def _zeros_if_none(t):
    return np.zeros(t.shape) if t.grad is None else t.grad


@pytest.fixture
def float64_default():
    """lightly makes its temperature ``torch.tensor(t)``: float64 only with this default."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


CASES = [(2, 2, 4, 3), (2, 4, 6, 10), (2, 8, 16, 64), (1, 3, 5, 7)]   # (G, V, B, K)


@pytest.mark.parametrize("g,v,b,k", CASES)
@pytest.mark.parametrize("ts,tt", [(0.1, 0.04), (0.5, 0.2)])
@pytest.mark.parametrize("impl", ["transcribed", "lightly"])
def test_dino_loss_matches_lightly(g, v, b, k, ts, tt, impl, float64_default):
    if impl == "lightly" and LIGHTLY is None:
        pytest.skip("lightly is not installed (pip install --no-deps lightly)")
    rng = np.random.default_rng(g * 100 + v)
    s = [rng.standard_normal((b, k)) for _ in range(v)]
    t = [rng.standard_normal((b, k)) for _ in range(g)]
    c = 0.3 * rng.standard_normal((1, k))
    ms_s = [ms.tensor(a, requires_grad=True) for a in s]
    ours = losses.dino_loss(ms_s, [ms.tensor(a) for a in t], c, ts, tt)
    ours.backward()
    th_s = _grads(s)
    th_t = [torch.tensor(a) for a in t]
    if impl == "lightly":
        fn = LIGHTLY[0](output_dim=k, teacher_temp=tt, student_temp=ts,
                        warmup_teacher_temp_epochs=0).double()
        fn.center.copy_(torch.tensor(c).reshape(1, 1, k))
        ref = fn(th_t, th_s)
    else:
        ref = transcribed_dino(th_t, th_s, torch.tensor(c), tt, ts)
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    for a, bt in zip(ms_s, th_s):
        np.testing.assert_allclose(_zeros_if_none(a), _grad(bt), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("b,k", [(4, 3), (16, 10), (64, 30)])
@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("impl", ["transcribed", "lightly"])
def test_sinkhorn_matches_lightly(b, k, iters, impl):
    if impl == "lightly" and LIGHTLY is None:
        pytest.skip("lightly is not installed (pip install --no-deps lightly)")
    scores = np.tanh(np.random.default_rng(b + k).standard_normal((b, k)))
    sinkhorn = LIGHTLY[2] if impl == "lightly" else transcribed_sinkhorn
    ref = sinkhorn(torch.tensor(scores), iterations=iters, epsilon=0.05).numpy()
    np.testing.assert_allclose(losses.sinkhorn_knopp(scores, 0.05, iters), ref, rtol=1e-10)


@pytest.mark.parametrize("g,v,b,k", CASES)
@pytest.mark.parametrize("temp", [0.1, 0.3])
@pytest.mark.parametrize("impl", ["transcribed", "lightly"])
def test_swav_loss_matches_lightly(g, v, b, k, temp, impl):
    if impl == "lightly" and LIGHTLY is None:
        pytest.skip("lightly is not installed (pip install --no-deps lightly)")
    rng = np.random.default_rng(g * 10 + v)
    s = [np.tanh(rng.standard_normal((b, k))) for _ in range(v)]
    ms_s = [ms.tensor(a, requires_grad=True) for a in s]
    ours = losses.swav_loss(ms_s, g, temp)
    ours.backward()
    th = _grads(s)
    if impl == "lightly":
        ref = LIGHTLY[1](temperature=temp)(th[:g], th[g:])
    else:
        ref = transcribed_swav(th[:g], th[g:], temp)
    ref = ref.reshape(())
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    for a, bt in zip(ms_s, th):
        np.testing.assert_allclose(_zeros_if_none(a), _grad(bt), rtol=1e-9, atol=1e-13)


def test_uniform_values_agree():
    k = 12
    const = [torch.full((3, k), 0.5, dtype=torch.float64) for _ in range(4)]
    assert transcribed_dino(const[:2], const, torch.zeros(1, k), 0.04, 0.1).item() == \
        pytest.approx(math.log(k))
    assert transcribed_swav(const[:2], const[2:]).item() == pytest.approx(math.log(k))
