"""PyTorch parity of whole training runs (several steps, float64) of SwAV and NNCLR.

The conformance vectors pin ONE step. What happens between steps is not in them: SwAV's
prototypes renormalised before every step and frozen (no gradient, no Adam state) for the first
``freeze_prototypes_steps``; NNCLR's support set filled after each loss, wrapping around. Here
minissl's method and a transcription of the reference training loop in PyTorch start from the
same weights, see the same views and take Adam steps side by side; losses and every parameter
and buffer must agree after every step, across the freeze boundary and the queue's wrap.

The references: SwAV, facebookresearch/swav ``main_swav.py`` ``train`` (normalise the
prototypes under no_grad, forward, Sinkhorn codes of the crops for assignment, swapped loss,
``p.grad = None`` for the prototypes while ``iteration < freeze_prototypes_niters``, step);
NNCLR, solo-learn ``solo/methods/nnclr.py`` (``training_step``, ``dequeue_and_enqueue`` of the
normalised z1 after the neighbours are found).
"""
import os
import sys

import numpy as np
import pytest

from minissl import augment, methods, nn, optim, random
from minissl.data import Dataset

torch = pytest.importorskip("torch")
tnn, tF = torch.nn, torch.nn.functional

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
try:
    from torch_port import multicrop_forward, nnclr_loss, swav_loss
finally:
    sys.path.pop(0)

B, STEPS, WIDTH = 16, 6, 32


def _data():
    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 8, 8)).astype(np.float32)
    return Dataset("tiny", x, np.zeros(64, np.int64), x[:8], np.zeros(8, np.int64), 1, ["x"])


def _mlp(*dims, last_bn=None):
    """Linear-BN-ReLU per hidden width, then Linear (and a BN where ``last_bn``): the
    layout (and the state_dict order) of minissl's ``MLPEncoder`` and ``projection_head``."""
    layers = []
    for i in range(len(dims) - 1):
        layers.append(tnn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers += [tnn.BatchNorm1d(dims[i + 1]), tnn.ReLU()]
    if last_bn:
        layers.append(tnn.BatchNorm1d(dims[-1]))
    return tnn.Sequential(*layers)


def _encoder():
    return tnn.Sequential(tnn.Flatten(), _mlp(64, WIDTH, WIDTH), tnn.BatchNorm1d(WIDTH),
                          tnn.ReLU())


def _pairs(mine, theirs):
    """(minissl array, torch tensor) of every parameter and buffer of the networks, in module
    order (the method's own buffers, SwAV's step and NNCLR's queue, are the tests')."""
    a = [(k, v) for k, v in mine.state_dict().items() if "." in k and "num_batches" not in k]
    b = [(k, v) for k, v in theirs.state_dict().items() if "." in k and "num_batches" not in k]
    assert [tuple(np.shape(v)) for _, v in a] == [tuple(v.shape) for _, v in b]
    return [(np.asarray(va), vb) for (_, va), (_, vb) in zip(a, b)]


def _copy_into(mine, theirs):
    with torch.no_grad():
        for va, vb in _pairs(mine, theirs):
            vb.copy_(torch.from_numpy(np.array(va, dtype=np.float64)))


def _assert_same(mine, theirs, what):
    # atol: the biases before a BatchNorm get a gradient of pure round-off (the BN removes
    # them), which Adam divides by sqrt(v) + eps: they drift apart by ~1e-10 (more with
    # PyTorch's threads), and the losses by ~1e-12. A real difference (a prototype step in
    # the freeze, a missed renormalisation) is ~lr = 1e-2.
    for i, (va, vb) in enumerate(_pairs(mine, theirs)):
        np.testing.assert_allclose(va, vb.numpy(), rtol=1e-7, atol=1e-8,
                                   err_msg=f"{what}: entry {i} of the state_dict")


def _method(name, fused=False, **config):
    """The method in float64; ``fused``: its BatchNorm + ReLU pairs as one op (``nn.fuse``, as
    ``bench_digits`` trains)."""
    random.manual_seed(0)
    enc = nn.MLPEncoder(64, (WIDTH, WIDTH))
    m = methods.build(name, _data(), encoder=enc, feature_dim=WIDTH, **config).double()
    return nn.fuse(m) if fused else m


def _batches():
    d = _data()
    for step in range(STEPS):
        rng = np.random.default_rng([1, step])
        yield step, rng, d.train_x[rng.permutation(len(d.train_x))[:B]]


def _twin(rng):
    """A generator in ``rng``'s state: the torch side draws the same views."""
    twin = np.random.Generator(np.random.PCG64())
    twin.bit_generator.state = rng.bit_generator.state
    return twin


def _train_side_by_side(m, theirs, torch_loss, before_update=None, check=None):
    """STEPS Adam steps of minissl's method ``m`` and of ``theirs``, whose loss
    ``torch_loss(x, rng, step)`` draws the views from a twin of minissl's generator;
    ``before_update(step)`` runs between torch's backward and step. Losses and networks must
    agree after every step (and ``check(step)``)."""
    opt_m = optim.Adam(m.trainable_parameters(), lr=1e-2)
    opt_t = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    for step, rng, x in _batches():
        twin = _twin(rng)
        opt_m.zero_grad()
        loss_m, _ = m.training_step(x, rng)
        loss_m.backward()
        opt_m.step()
        m.on_step_end(step, STEPS)

        opt_t.zero_grad()
        loss_t = torch_loss(x, twin, step)
        loss_t.backward()
        if before_update is not None:
            before_update(step)
        opt_t.step()

        assert loss_m.item() == pytest.approx(loss_t.item(), rel=1e-9), f"loss at step {step}"
        _assert_same(m, theirs, f"after step {step}")
        if check is not None:
            check(step)


@pytest.mark.parametrize("fused", [False, True])
def test_swav_training_matches_the_official_loop_across_the_prototype_freeze(fused):
    freeze = 3
    m = _method("swav", fused, n_prototypes=8, proj_hidden=WIDTH, proj_dim=16, n_local=2,
                freeze_prototypes_steps=freeze)
    c = m.config
    theirs = tnn.ModuleDict({"encoder": _encoder(), "projection_head": _mlp(WIDTH, WIDTH, 16),
                             "prototypes": tnn.Linear(16, 8, bias=False)}).double()
    _copy_into(m, theirs)
    protos = theirs["prototypes"].weight

    def loss(x, rng, step):
        views = [torch.from_numpy(v).double() for v in m.transform(x, rng)]
        with torch.no_grad():
            protos.copy_(tF.normalize(protos, dim=1))
        z = tF.normalize(theirs["projection_head"](multicrop_forward(theirs["encoder"], views)),
                         dim=1)
        return swav_loss(theirs["prototypes"](z).split(B), c.temperature, c.epsilon,
                         c.sinkhorn_iterations)

    def freeze_prototypes(step):
        if step < freeze:
            protos.grad = None

    _train_side_by_side(m, theirs, loss, freeze_prototypes)
    assert not np.allclose(np.asarray(m.prototypes.weight.data),
                           tF.normalize(protos, dim=1).detach().numpy()), "never trained"


@pytest.mark.parametrize("fused", [False, True])
def test_nnclr_training_matches_solo_learn_across_the_support_set_wrap(fused):
    m = _method("nnclr", fused, queue_size=24, proj_hidden=WIDTH, proj_dim=16, pred_hidden=WIDTH)
    t = m.config.temperature
    theirs = tnn.ModuleDict({"encoder": _encoder(),
                             "projector": _mlp(WIDTH, WIDTH, WIDTH, 16, last_bn=True),
                             "predictor": _mlp(16, WIDTH, 16)}).double()
    _copy_into(m, theirs)
    queue = torch.from_numpy(np.array(m.queue.data, dtype=np.float64))   # (24, 16) unit rows
    ptr = [0]

    def loss(x, rng, step):
        v1, v2 = (torch.from_numpy(v).double() for v in augment.two_views(x, m.transform, rng))
        z1, z2 = (theirs["projector"](theirs["encoder"](v)) for v in (v1, v2))
        p1, p2 = theirs["predictor"](z1), theirs["predictor"](z2)
        z1, z2 = tF.normalize(z1, dim=-1), tF.normalize(z2, dim=-1)
        nn1 = queue[(z1 @ queue.T).max(dim=1)[1]]                  # find_nn
        nn2 = queue[(z2 @ queue.T).max(dim=1)[1]]
        with torch.no_grad():                                      # dequeue_and_enqueue
            queue[(ptr[0] + torch.arange(B)) % len(queue)] = z1.detach()
            ptr[0] = (ptr[0] + B) % len(queue)
        return nnclr_loss(nn1, p2, t) / 2 + nnclr_loss(nn2, p1, t) / 2

    def same_support_set(step):
        np.testing.assert_allclose(m.queue.data, queue.numpy(), rtol=1e-7, atol=1e-8,
                                   err_msg=f"support set after step {step}")

    _train_side_by_side(m, theirs, loss, check=same_support_set)
