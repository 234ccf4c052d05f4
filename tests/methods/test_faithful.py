"""The methods as the official codes write them (issue "faithful to the official code"):
split batch norm and MoCo's key-batch shuffle, SimSiam's and SimCLR's heads, SimCLR's one
batch of 2N views, MAE's augmentation and masking from explicit noise, BERT's masking from
explicit draws. Each test fails on the behaviour before the change."""
import numpy as np
import pytest

import minissl as ms
import minissl.nn as nn
from minissl import augment, data, methods, optim, random
from minissl.gradcheck import gradcheck
from minissl.methods import masked


@pytest.fixture(scope="module")
def digits():
    return data.digits()


def _bn_pair(C, S, kind, rng):
    split = (nn.SplitBatchNorm2d if kind == 2 else nn.SplitBatchNorm1d)(C, num_splits=S)
    plain = (nn.BatchNorm2d if kind == 2 else nn.BatchNorm1d)(C)
    for bn in (split, plain):
        bn.double()
        bn.weight.data[:] = np.linspace(0.5, 1.5, C)
        bn.bias.data[:] = np.linspace(-1, 1, C)
        bn.running_mean.data[:] = rng.standard_normal(C)
        bn.running_var.data[:] = rng.uniform(0.5, 2, C)
    plain.load_state_dict(split.state_dict())
    return split, plain


@pytest.mark.parametrize("shape", [(12, 3), (8, 3, 5), (8, 2, 3, 3)])
def test_split_batchnorm_is_batchnorm_per_slice(shape):
    rng = np.random.default_rng(0)
    S, C = 4, shape[1]
    split, plain = _bn_pair(C, S, len(shape) - 2 if len(shape) == 4 else 1, rng)
    x = rng.standard_normal(shape)
    y = split(ms.tensor(x)).numpy()
    means, vars_ = [], []
    for s in range(S):                              # slice s = samples n with n mod S = s
        p = nn.BatchNorm2d(C) if len(shape) == 4 else nn.BatchNorm1d(C)
        p.double().load_state_dict(plain.state_dict())
        np.testing.assert_allclose(y[s::S], p(ms.tensor(x[s::S])).numpy(), atol=1e-12)
        means.append(p.running_mean.numpy())
        vars_.append(p.running_var.numpy())
    np.testing.assert_allclose(split.running_mean.numpy(), np.mean(means, 0), atol=1e-12)
    np.testing.assert_allclose(split.running_var.numpy(), np.mean(vars_, 0), atol=1e-12)
    assert int(split.num_batches_tracked.numpy()) == 1
    # Not BatchNorm over the whole batch ...
    assert not np.allclose(y, plain(ms.tensor(x)).numpy())
    # ... but exactly BatchNorm in eval, with the ordinary running statistics.
    split.eval(), plain.eval()
    plain.load_state_dict(split.state_dict())
    np.testing.assert_array_equal(split(ms.tensor(x)).numpy(), plain(ms.tensor(x)).numpy())


def test_split_batchnorm_with_one_split_is_batchnorm():
    rng = np.random.default_rng(1)
    split, plain = _bn_pair(3, 1, 2, rng)
    x = ms.tensor(rng.standard_normal((6, 3, 2, 2)))
    np.testing.assert_array_equal(split(x).numpy(), plain(x).numpy())
    np.testing.assert_array_equal(split.running_var.numpy(), plain.running_var.numpy())


def test_split_batchnorm_names_gradcheck_and_errors():
    assert list(nn.SplitBatchNorm1d(4, 2).state_dict()) == list(nn.BatchNorm1d(4).state_dict())
    assert [n for n, _ in nn.SplitBatchNorm2d(4, 2).named_parameters()] == ["weight", "bias"]
    rng = np.random.default_rng(2)
    for bn, shape in ((nn.SplitBatchNorm1d(3, 2), (8, 3)), (nn.SplitBatchNorm2d(2, 3),
                                                             (6, 2, 2, 2))):
        bn.double()
        bn.weight.data[:] = rng.uniform(0.5, 1.5, bn.num_features)
        x = ms.tensor(rng.standard_normal(shape), requires_grad=True)
        assert gradcheck(lambda x, *p: bn(x), [x] + list(bn.parameters()))
    with pytest.raises(ValueError, match=r"SplitBatchNorm1d: batch of 6 .*num_splits=4"):
        nn.SplitBatchNorm1d(3, 4)(ms.tensor(np.zeros((6, 3))))
    with pytest.raises(ValueError, match="num_splits"):
        nn.SplitBatchNorm1d(3, 0)


def test_convert_split_batchnorm_shares_the_arrays():
    net = nn.MLPEncoder(4, (6,))
    before = net.state_dict()
    bn = net[1]
    nn.convert_split_batchnorm(net, 2)
    assert type(net[1]) is nn.SplitBatchNorm1d and net[1].num_splits == 2
    assert net[1].weight is bn.weight and net[1].running_mean is bn.running_mean
    assert list(net.state_dict()) == list(before)


def test_moco_key_encoder_sees_a_shuffled_batch_with_split_statistics(digits):
    random.manual_seed(0)
    m = methods.build("moco", digits, queue_size=64)
    bns = [mod for mod in m.key_encoder.modules() if isinstance(mod, nn.BatchNorm1d)]
    assert bns and all(type(b) is nn.SplitBatchNorm1d and b.num_splits == 8 for b in bns)
    assert all(type(b) is nn.SplitBatchNorm1d for b in m.encoder.modules()
               if isinstance(b, nn.BatchNorm1d))
    x = digits.train_x[:32]
    seen = []
    real = m.key_encoder.forward
    m.key_encoder.forward = lambda v: seen.append(v.numpy().copy()) or real(v)
    loss, _ = m.training_step(x, np.random.default_rng(5))
    loss.backward()
    # Replay the step's draws: the two views, then the permutation.
    rng = np.random.default_rng(5)
    _, v2 = augment.two_views(x, m.transform, rng)
    perm = rng.permutation(len(x))
    assert not np.array_equal(perm, np.arange(len(x)))
    np.testing.assert_array_equal(seen[0], v2[perm].astype(np.float32))
    # The keys are unshuffled: key i is image i's, computed in the shuffled batch.
    with ms.no_grad():
        k = m.key_projector(real(ms.tensor(v2[perm].astype(np.float32)))).numpy()
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    np.testing.assert_allclose(m._keys, k[np.argsort(perm)], rtol=1e-5, atol=1e-6)


def test_moco_says_when_the_batch_does_not_split(digits):
    m = methods.build("moco", digits, queue_size=64)
    with pytest.raises(ValueError, match=r"MoCo: a batch of 12 images .* bn_splits=8"):
        m.training_step(digits.train_x[:12], np.random.default_rng(0))
    m = methods.build("moco", digits, queue_size=64, bn_splits=3)
    loss, _ = m.training_step(digits.train_x[:12], np.random.default_rng(0))
    assert np.isfinite(loss.item())
    # Divisible, but one image per simulated device: no batch statistics to take.
    m = methods.build("moco", digits, queue_size=64)
    with pytest.raises(ValueError, match=r"MoCo: a batch of 8 images .* 1 image per "
                                         r"simulated device .* at least 16"):
        m.training_step(digits.train_x[:8], np.random.default_rng(0))


def test_simsiam_projector_ends_as_the_official_builder(digits):
    m = methods.build("simsiam", digits)
    proj = list(m.projector)
    last_bn, last_linear = proj[-1], proj[-2]
    assert type(last_bn) is nn.BatchNorm1d and not last_bn.affine and last_bn.weight is None
    assert last_linear.bias is not None and not last_linear.bias.requires_grad
    trained = {id(p) for p in m.trainable_parameters()}
    assert id(last_linear.bias) not in trained and id(last_linear.weight) in trained
    assert all(mod.bias is None for mod in proj[:-2] if isinstance(mod, nn.Linear))
    assert sum(isinstance(mod, nn.Linear) for mod in proj) == 2     # the CIFAR variant
    m3 = methods.build("simsiam", digits, proj_layers=3)            # the ImageNet builder
    assert [type(mod).__name__ for mod in m3.projector] == [
        "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear",
        "BatchNorm1d"]
    b0 = last_linear.bias.numpy().copy()
    opt = optim.SGD(m.trainable_parameters(), lr=0.1)
    loss, _ = m.training_step(digits.train_x[:16], np.random.default_rng(0))
    loss.backward()
    opt.step()
    np.testing.assert_array_equal(last_linear.bias.numpy(), b0)


@pytest.mark.parametrize("joint", [True, False])
def test_simclr_encoder_sees_one_batch_of_2n(digits, joint):
    m = methods.build("simclr", digits, joint_batch=joint)
    shapes = []
    real = m.encoder.forward
    m.encoder.forward = lambda v: shapes.append(v.shape[0]) or real(v)
    m.training_step(digits.train_x[:16], np.random.default_rng(0))
    assert shapes == ([32] if joint else [16, 16])


def test_simclr_head_has_batch_norm_on_every_layer(digits):
    m = methods.build("simclr", digits)
    kinds = [type(mod).__name__ for mod in m.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    out_bn = m.projector[4]
    assert out_bn.affine and not out_bn.bias.requires_grad          # TF's center=False
    assert all(mod.bias is None for mod in m.projector if isinstance(mod, nn.Linear))


def test_other_two_view_methods_keep_one_batch_per_view(digits):
    for name in ("byol", "simsiam", "barlow_twins", "vicreg"):
        m = methods.build(name, digits)
        shapes = []
        real = m.encoder.forward
        m.encoder.forward = lambda v, real=real: shapes.append(v.shape[0]) or real(v)
        m.training_step(digits.train_x[:16], np.random.default_rng(0))
        assert shapes[:2] == [16, 16], name


def test_mae_trains_on_the_official_crop_and_flip(digits):
    random.manual_seed(0)
    m = methods.build("mae", digits)
    crop, flip = m.transform.transforms
    assert isinstance(crop, augment.RandomResizedCrop) and crop.scale == (0.2, 1.0)
    assert isinstance(flip, augment.RandomHorizontalFlip) and flip.p == 0.5
    seen = []
    real = m.forward
    m.forward = lambda x, rng, noise=None: seen.append(x.numpy().copy()) or real(x, rng, noise)
    x = digits.train_x[:8]
    m.training_step(x, np.random.default_rng(3))
    want = m.transform(x, np.random.default_rng(3))
    np.testing.assert_array_equal(seen[0], want.astype(np.float32))
    assert not np.allclose(seen[0], x)


def test_random_masking_takes_its_noise():
    noise = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.4, 0.6]])
    keep, mask, restore = masked.random_masking(noise, 2)
    np.testing.assert_array_equal(keep, [[1, 3], [0, 2]])
    np.testing.assert_array_equal(mask, [[1, 0, 1, 0], [0, 1, 0, 1]])
    np.testing.assert_array_equal(restore, [[3, 0, 2, 1], [0, 3, 1, 2]])
    d = data.digits()
    m = methods.build("mae", d)
    L = m.num_patches
    noise = np.random.default_rng(0).random((2, L))
    a = m.random_masking(2, None, noise)
    b = m.random_masking(2, np.random.default_rng(0))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_bert_masking_from_explicit_draws():
    ids = np.arange(20).reshape(2, 10) % 7
    noise = np.tile(np.linspace(0, 0.9, 10), (2, 1))      # positions 0, 1 are chosen (n = 2)
    u = np.array([[0.5, 0.85] + [0.0] * 8, [0.95, 0.7] + [0.0] * 8])
    rand = np.full((2, 10), 3)
    inputs, targets = masked.bert_masking(ids, noise, u, rand, mask_id=7)
    np.testing.assert_array_equal(inputs[0, :2], [7, 3])  # [MASK], random
    np.testing.assert_array_equal(inputs[1, :2], [ids[1, 0], 7])   # unchanged, [MASK]
    np.testing.assert_array_equal(inputs[:, 2:], ids[:, 2:])
    np.testing.assert_array_equal(targets[:, :2], ids[:, :2])
    assert (targets[:, 2:] == -100).all()
