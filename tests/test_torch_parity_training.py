"""PyTorch parity of whole training runs (several steps, float64) of SwAV, NNCLR, DINO and
MoCo v3.

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
normalised z1 after the neighbours are found); DINO, facebookresearch/dino ``main_dino.py``
``train_one_epoch`` (teacher on the global views, ``DINOLoss`` then its centre update, the EMA
with the cosine ``momentum_schedule[it]``; minissl's documented differences kept: the last layer
trained from step 0, the BN buffers copied); MoCo v3, facebookresearch/moco-v3 ``MoCo.forward``
(the momentum update with this step's m before the keys, ``adjust_moco_momentum`` per step).
"""
import os
import sys

import numpy as np
import pytest

from minissl import augment, methods, nn, optim, random
from minissl.data import Dataset
from minissl.methods.base import cosine_tau

torch = pytest.importorskip("torch")
tnn, tF = torch.nn, torch.nn.functional

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
try:
    from torch_port import (DINOHead, dino_loss, ema, mlp_from_state, mocov3_loss,
                            multicrop_forward, nnclr_loss, swav_loss)
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


def _named_pairs(mine, theirs):
    """As ``_pairs``, by state_dict key: ``theirs`` rebuilt from minissl's keys
    (``torch_port.mlp_from_state``), weight_norm's weight_g / weight_v in PyTorch's order."""
    b = theirs.state_dict()
    a = [(k, v) for k, v in mine.state_dict().items() if "." in k and "num_batches" not in k]
    assert sorted(k for k, _ in a) == sorted(k for k in b if "num_batches" not in k)
    return [(np.asarray(v), b[k]) for k, v in a]


def _copy_into(mine, theirs, pairs=_pairs):
    with torch.no_grad():
        for va, vb in pairs(mine, theirs):
            vb.copy_(torch.from_numpy(np.array(va, dtype=np.float64)))


def _assert_same(mine, theirs, what, pairs=_pairs, atol=1e-8):
    # atol: the biases before a BatchNorm get a gradient of pure round-off (the BN removes
    # them), which Adam divides by sqrt(v) + eps: they drift apart by ~1e-10 (more with
    # PyTorch's threads), and the losses by ~1e-12. A real difference (a prototype step in
    # the freeze, a missed renormalisation) is ~lr = 1e-2.
    for i, (va, vb) in enumerate(pairs(mine, theirs)):
        np.testing.assert_allclose(va, vb.numpy(), rtol=1e-7, atol=atol,
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


def _train_side_by_side(m, theirs, torch_loss, before_update=None, check=None, after=None,
                        pairs=_pairs, atol=1e-8):
    """STEPS Adam steps of minissl's method ``m`` and of ``theirs``, whose loss
    ``torch_loss(x, rng, step)`` draws the views from a twin of minissl's generator;
    ``before_update(step)`` runs between torch's backward and step, ``after(step)`` after its
    step. Losses and networks must agree after every step (and ``check(step)``)."""
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
        if after is not None:
            after(step)

        assert loss_m.item() == pytest.approx(loss_t.item(), rel=1e-9), f"loss at step {step}"
        _assert_same(m, theirs, f"after step {step}", pairs, atol)
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


def _twin_of(m, *names, **modules):
    """The PyTorch network of minissl's ``m`` rebuilt from its state_dict (same keys), in
    float64, its weights copied; ``names`` are MLPs, ``modules`` name -> builder(state, name)."""
    state = m.state_dict()
    parts = {n: mlp_from_state(state, n, trailing_relu=n.endswith("encoder")) for n in names}
    parts.update({n: build(state, n) for n, build in modules.items()})
    theirs = tnn.ModuleDict(parts).double()
    _copy_into(m, theirs, _named_pairs)
    for n, p in theirs.named_parameters():
        p.requires_grad = dict(m.named_parameters())[n].requires_grad
    return theirs


def test_dino_training_matches_the_official_loop_teacher_and_centre():
    m = _method("dino", out_dim=16, head_hidden=WIDTH, bottleneck_dim=8, n_local=2)
    c = m.config
    theirs = _twin_of(m, "encoder", "teacher_encoder", head=DINOHead, teacher_head=DINOHead)
    center = torch.zeros(1, c.out_dim, dtype=torch.float64)
    flat = lambda net: lambda x: theirs[net](x.flatten(1))      # noqa: E731  (MLPEncoder's)

    def loss(x, rng, step):
        views = [torch.from_numpy(v).double() for v in m.transform(x, rng)]
        student = theirs["head"](multicrop_forward(flat("encoder"), views)).split(B)
        with torch.no_grad():
            teacher = theirs["teacher_head"](multicrop_forward(flat("teacher_encoder"),
                                                               views[:2])).split(B)
        out = dino_loss(student, teacher, center, c.student_temp, c.teacher_temp)
        with torch.no_grad():                                      # DINOLoss.update_center
            center.mul_(c.center_momentum).add_(torch.cat(teacher).mean(0, keepdim=True)
                                                * (1 - c.center_momentum))
        return out

    def teacher_ema(step):                                         # momentum_schedule[it]
        tau = cosine_tau(c.momentum_teacher, step, STEPS)
        ema(theirs["teacher_encoder"], theirs["encoder"], tau)
        ema(theirs["teacher_head"], theirs["head"], tau)

    def same_centre(step):
        np.testing.assert_allclose(m.center.data, center.numpy(), rtol=1e-7, atol=1e-10,
                                   err_msg=f"centre after step {step}")

    # atol: the head's biases before its BatchNorms start at 0 (DINOHead._init_weights) and
    # get round-off gradients only, so they are round-off themselves, ~1e-9 after a few steps.
    _train_side_by_side(m, theirs, loss, check=same_centre, after=teacher_ema,
                        pairs=_named_pairs, atol=1e-7)
    assert not np.allclose(m.teacher_head.mlp[0].weight.data, m.head.mlp[0].weight.data)


def test_mocov3_training_matches_the_official_loop_and_momentum_schedule():
    m = _method("mocov3", proj_hidden=WIDTH, proj_dim=16)
    c = m.config
    theirs = _twin_of(m, "encoder", "projector", "predictor", "momentum_encoder",
                      "momentum_projector")
    momentum = [c.base_momentum]
    flat = lambda net: lambda x: theirs[net](x.flatten(1))      # noqa: E731

    def loss(x, rng, step):
        v1, v2 = (torch.from_numpy(v).double() for v in augment.two_views(x, m.transform, rng))
        q1, q2 = (theirs["predictor"](theirs["projector"](flat("encoder")(v))) for v in (v1, v2))
        with torch.no_grad():                     # MoCo.forward: update first, then the keys
            ema(theirs["momentum_encoder"], theirs["encoder"], momentum[0])
            ema(theirs["momentum_projector"], theirs["projector"], momentum[0])
            k1, k2 = (theirs["momentum_projector"](flat("momentum_encoder")(v))
                      for v in (v1, v2))
        return mocov3_loss(q1, k2, c.temperature) + mocov3_loss(q2, k1, c.temperature)

    def next_momentum(step):                      # adjust_moco_momentum before the next step
        momentum[0] = cosine_tau(c.base_momentum, step + 1, STEPS)

    _train_side_by_side(m, theirs, loss, after=next_momentum, pairs=_named_pairs)
