"""nn.fuse: BatchNorm + ReLU fused only when asked, with state_dict names unchanged and the
same values, gradients and running statistics as the unfused model."""
import copy

import numpy as np
import pytest

import minissl as ms
import minissl.nn as nn
from minissl.ops import norm as norm_ops


def _count_fused(monkeypatch):
    """A list that records the ``relu`` flag of every training-mode batch norm op."""
    seen = []
    real = norm_ops.BatchNormTrain.__init__

    def spy(self, eps, present, relu=False, running=(None, None, 0.0)):
        seen.append(relu)
        real(self, eps, present, relu, running)
    monkeypatch.setattr(norm_ops.BatchNormTrain, "__init__", spy)
    return seen


def _models():
    mlp = nn.Sequential(nn.Linear(5, 6, rng=1), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2,
                                                                                    rng=2))
    block = nn.BasicBlock(3, 4, stride=2, rng=3)
    return [(mlp, (8, 5)), (block, (2, 3, 6, 6))]


@pytest.mark.parametrize("which", [0, 1])
def test_nothing_is_fused_unless_asked(monkeypatch, which):
    model, shape = _models()[which]
    seen = _count_fused(monkeypatch)
    model(ms.tensor(np.ones(shape, np.float32)))
    assert seen and not any(seen)
    nn.fuse(model)
    seen.clear()
    model(ms.tensor(np.ones(shape, np.float32)))
    assert any(seen)


@pytest.mark.parametrize("which", [0, 1])
def test_fused_equals_unfused_with_the_same_state_dict(which):
    model, shape = _models()[which]
    model = model.double()
    plain = copy.deepcopy(model)
    assert nn.fuse(model) is model
    assert list(model.state_dict()) == list(plain.state_dict())
    x = np.random.default_rng(0).standard_normal(shape)
    y, z = model(ms.tensor(x)), plain(ms.tensor(x))
    np.testing.assert_allclose(y.numpy(), z.numpy(), rtol=1e-12, atol=1e-12)
    (y * y).sum().backward()
    (z * z).sum().backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-10, atol=1e-12, err_msg=name)
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)


def test_fused_relu_says_so():
    seq = nn.fuse(nn.Sequential(nn.BatchNorm1d(2), nn.ReLU()))
    assert "fused" in repr(seq[1])
