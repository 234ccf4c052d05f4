"""minissl.nn: registration, state dicts, initialisation, train/eval behaviour, and a
float64 gradient check of every layer and block (w.r.t. its input and its parameters)."""
import copy
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minissl as ms
import minissl.nn as nn
from minissl.gradcheck import gradcheck
from minissl.random import default_generator, manual_seed


def t64(rng, *shape, scale=1.0):
    return ms.tensor(rng.standard_normal(shape) * scale, requires_grad=True)


def check_module(module, *inputs, **kw):
    """Gradcheck ``module`` (cast to float64) w.r.t. its float inputs and every parameter."""
    module.double()
    params = list(module.parameters())
    n = len(inputs)

    def fn(*ts):
        return module(*ts[:n])
    assert gradcheck(fn, list(inputs) + params, **kw)


# ----------------------------------------------------------------------------- registration

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4, rng=0)
        self.scale = nn.Parameter(np.ones(4, dtype=np.float32))
        self.register_buffer("count", ms.tensor(np.zeros((), dtype=np.int64)))
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4, 2, rng=1)
        self.not_a_param = ms.tensor([1.0])

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)) * self.scale)


def test_registration_order_and_names():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "scale", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    # state_dict: own params, own buffers, then children (PyTorch's order); plain Tensors
    # assigned as attributes are not state.
    assert list(net.state_dict()) == ["scale", "count", "fc1.weight", "fc1.bias",
                                      "fc2.weight", "fc2.bias"]
    assert [n for n, _ in net.named_buffers()] == ["count"]
    assert [n for n, _ in net.named_children()] == ["fc1", "act", "fc2"]
    assert [n for n, _ in net.named_modules()] == ["", "fc1", "act", "fc2"]
    assert isinstance(net.fc1.weight, nn.Parameter) and net.fc1.weight.requires_grad


def test_reassign_keeps_position_and_none_clears():
    net = Net()
    net.fc1 = nn.Linear(3, 4)          # replaced in place: still the first child
    assert [n for n, _ in net.named_children()] == ["fc1", "act", "fc2"]
    net.scale = None                    # a declared but absent parameter
    assert "scale" not in dict(net.named_parameters())
    with pytest.raises(TypeError, match="scale"):
        net.scale = ms.tensor([1.0])    # a plain Tensor is not a Parameter
    with pytest.raises(TypeError, match="count"):
        net.count = np.zeros(())        # a buffer must stay a Tensor
    del net.fc2
    assert "fc2" not in dict(net.named_children())
    with pytest.raises(AttributeError, match="fc2"):
        net.fc2


def test_shared_parameter_listed_once_and_init_required():
    a = nn.Linear(2, 2)
    seq = nn.Sequential(a, nn.ReLU(), a)
    assert len(list(seq.parameters())) == 2

    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2))
    with pytest.raises(AttributeError, match="__init__"):
        Bad()


def test_parameter_from_array_tensor_and_list():
    a = np.zeros((2, 3))
    p = nn.Parameter(a)
    assert p.data is a and p.dtype == np.float64 and p.requires_grad
    t = ms.tensor([1.0, 2.0])
    assert nn.Parameter(t).data is t.data
    assert nn.Parameter([1.0, 2.0]).dtype == np.float32
    with pytest.raises(TypeError, match="floating"):
        nn.Parameter(np.arange(3))
    assert "Parameter containing" in repr(p)


def test_sequential_and_modulelist():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[-1], nn.Linear) and seq[1] is list(seq)[1]
    sub = seq[1:]
    assert isinstance(sub, nn.Sequential) and [n for n, _ in sub.named_children()] == ["1", "2"]
    with pytest.raises(IndexError, match="out of range"):
        seq[3]
    seq.append(nn.Tanh())
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    ml = nn.ModuleList([nn.Linear(1, 1), nn.Linear(1, 2)])
    ml.append(nn.Linear(2, 2))
    ml[0] = nn.Identity()
    assert len(ml) == 3 and isinstance(ml[0], nn.Identity)
    assert [n for n, _ in ml.named_parameters()] == ["1.weight", "1.bias", "2.weight", "2.bias"]


def test_repr_is_readable():
    r = repr(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)))
    assert r.splitlines()[0] == "Sequential("
    assert "(0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)" \
        in r
    assert "(1): BatchNorm2d(8, eps=1e-05, momentum=0.1" in r


# ----------------------------------------------------------------------------- state dicts

def test_state_dict_is_a_host_copy_and_round_trips(rng):
    a, b = Net(), Net()
    b.fc1 = nn.Linear(3, 4, rng=5)
    sd = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["fc1.weight"][...] = 7.0                     # mutating the copy leaves the model alone
    assert not np.any(a.fc1.weight.data == 7.0)
    sd = a.state_dict()
    keep = b.fc1.weight                             # the Parameter object survives the load
    out = b.load_state_dict(sd)
    assert out.missing_keys == [] and out.unexpected_keys == []
    assert b.fc1.weight is keep
    x = ms.tensor(rng.standard_normal((5, 3)).astype(np.float32))
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_load_state_dict_errors_name_keys_and_shapes():
    net = Net()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    sd = net.state_dict()
    sd["fc2.weight"] = np.zeros((3, 4), np.float32)
    del sd["fc1.bias"]
    sd["extra.weight"] = np.zeros(1)
    with pytest.raises(ValueError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    assert "missing keys: fc1.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "fc2.weight" in msg and "(3, 4)" in msg and "(2, 4)" in msg
    # Nothing was copied by the failed load (it validates everything first).
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    # Non-strict: missing/unexpected are reported, shape mismatches still raise.
    with pytest.raises(ValueError, match="size mismatch for fc2.weight"):
        net.load_state_dict(sd, strict=False)
    sd["fc2.weight"] = np.full((2, 4), 3.0)         # float64 values, cast to float32
    res = net.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["fc1.bias"] and res.unexpected_keys == ["extra.weight"]
    assert net.fc2.weight.dtype == np.float32 and np.all(net.fc2.weight.data == 3)
    with pytest.raises(TypeError, match="dict"):
        net.load_state_dict([1, 2])


def test_load_accepts_tensors_and_keeps_int_buffers():
    bn = nn.BatchNorm1d(3)
    sd = {k: ms.tensor(v) for k, v in nn.BatchNorm1d(3).state_dict().items()}
    sd["num_batches_tracked"] = ms.tensor(np.array(5, dtype=np.int64))
    bn.load_state_dict(sd)
    assert bn.num_batches_tracked.dtype == np.int64 and int(bn.num_batches_tracked.data) == 5


def test_train_eval_zero_grad_to_and_deepcopy(rng):
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.BatchNorm1d(3))
    assert all(m.training for m in net.modules())
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    x = ms.tensor(rng.standard_normal((4, 3)).astype(np.float32))
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.to(np.float64)
    assert net[0].weight.dtype == np.float64 and net[2].running_var.dtype == np.float64
    assert net[2].num_batches_tracked.dtype == np.int64
    net.to("cpu").float()
    assert net[0].weight.dtype == np.float32
    with pytest.raises(ValueError, match="device"):
        net.to("tpu")
    twin = copy.deepcopy(net)                       # BYOL's target network
    twin[0].weight.data += 1
    assert not np.allclose(twin[0].weight.data, net[0].weight.data)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in net.named_parameters()]


def test_module_to_cuda_moves_state(device):
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).to(device)
    assert all(t.device == device for t in list(net.parameters()) + list(net.buffers()))
    x = ms.tensor(np.ones((4, 3), np.float32), device=device)
    assert net(x).device == device
    assert all(isinstance(v, np.ndarray) for v in net.state_dict().values())


# ----------------------------------------------------------------------------- initialisation

def test_default_init_distributions():
    manual_seed(0)
    lin = nn.Linear(400, 300)
    b = 1 / math.sqrt(400)
    w = lin.weight.data
    assert w.dtype == np.float32 and w.shape == (300, 400) and lin.bias.shape == (300,)
    assert np.abs(w).max() <= b and np.abs(lin.bias.data).max() <= b
    assert abs(w.std() - b / math.sqrt(3)) < 0.01 * b       # U(-b, b) has std b / sqrt 3
    conv = nn.Conv2d(8, 16, (3, 5))
    b = 1 / math.sqrt(8 * 3 * 5)
    assert conv.weight.shape == (16, 8, 3, 5) and np.abs(conv.weight.data).max() <= b
    assert np.abs(conv.weight.data).max() > 0.9 * b
    tconv = nn.ConvTranspose2d(8, 4, 3)
    b = 1 / math.sqrt(4 * 3 * 3)                            # PyTorch: fan_in from dim 1
    assert tconv.weight.shape == (8, 4, 3, 3) and np.abs(tconv.weight.data).max() <= b
    assert np.abs(tconv.weight.data).max() > 0.9 * b
    emb = nn.Embedding(1000, 64)
    assert abs(emb.weight.data.std() - 1) < 0.02 and abs(emb.weight.data.mean()) < 0.02
    bn = nn.BatchNorm2d(5)
    assert np.all(bn.weight.data == 1) and np.all(bn.bias.data == 0)
    assert np.all(bn.running_mean.data == 0) and np.all(bn.running_var.data == 1)
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.shape == ()
    assert bn.momentum == 0.1 and bn.eps == 1e-5
    ln = nn.LayerNorm((2, 3))
    assert ln.weight.shape == (2, 3) and np.all(ln.weight.data == 1)
    pos = nn.PositionalEmbedding(8, 4, std=0)
    assert np.all(pos.weight.data == 0)


def test_seeding_is_reproducible():
    manual_seed(3)
    a = nn.Linear(5, 4).weight.data.copy()
    manual_seed(3)
    assert np.array_equal(nn.Linear(5, 4).weight.data, a)
    assert not np.array_equal(nn.Linear(5, 4).weight.data, a)     # the stream moved on
    assert np.array_equal(nn.Linear(5, 4, rng=11).weight.data, nn.Linear(5, 4, rng=11).weight.data)
    g = np.random.default_rng(2)
    assert default_generator() is not g
    with pytest.raises(ValueError, match="seed"):
        manual_seed(-1)
    with pytest.raises(TypeError, match="rng"):
        nn.Linear(2, 2, rng="x")


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 3)
    with pytest.raises(TypeError, match="kernel_size"):
        nn.Conv2d(3, 4, 2.5)
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiheadSelfAttention(10, 3)
    with pytest.raises(ValueError, match="Dropout"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("tanh")


# ----------------------------------------------------------------------------- gradient checks

@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.booleans(),
       st.integers(0, 2 ** 16))
def test_gradcheck_linear(batch, fin, fout, bias, seed):
    rng = np.random.default_rng(seed)
    check_module(nn.Linear(fin, fout, bias=bias, rng=seed), t64(rng, batch, 2, fin))


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2),
       st.integers(0, 1), st.booleans(), st.integers(0, 2 ** 16))
def test_gradcheck_conv2d(kh, kw, cout, stride, padding, bias, seed):
    rng = np.random.default_rng(seed)
    conv = nn.Conv2d(2, cout, (kh, kw), stride=stride, padding=padding, bias=bias, rng=seed)
    check_module(conv, t64(rng, 2, 2, 4, 5))


@given(st.integers(1, 3), st.integers(1, 2), st.integers(0, 1), st.data(),
       st.integers(0, 2 ** 16))
def test_gradcheck_conv_transpose2d(k, stride, padding, data, seed):
    rng = np.random.default_rng(seed)
    out_pad = data.draw(st.integers(0, stride - 1))           # PyTorch: < stride
    conv = nn.ConvTranspose2d(2, 3, k, stride=stride, padding=min(padding, k - 1),
                              output_padding=out_pad, rng=seed)
    check_module(conv, t64(rng, 2, 2, 3, 3))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2)])
def test_gradcheck_batchnorm1d(shape, training, rng):
    bn = nn.BatchNorm1d(3)
    bn.weight.data[:] = rng.uniform(0.5, 1.5, 3)
    bn.bias.data[:] = rng.standard_normal(3)
    bn.running_mean.data[:] = rng.standard_normal(3)
    bn.running_var.data[:] = rng.uniform(0.5, 2, 3)
    bn.train(training)
    check_module(bn, t64(rng, *shape))


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_batchnorm2d(training, rng):
    bn = nn.BatchNorm2d(2).train(training)
    bn.weight.data[:] = [0.7, 1.3]
    check_module(bn, t64(rng, 3, 2, 2, 3))


def test_gradcheck_layernorm_and_embedding(rng):
    ln = nn.LayerNorm((2, 3))
    ln.weight.data[...] = rng.uniform(0.5, 1.5, (2, 3))
    check_module(ln, t64(rng, 4, 2, 3))
    emb = nn.Embedding(6, 3, rng=0)
    idx = ms.tensor(np.array([[0, 2, 2], [5, 0, 1]]))
    check_module(emb, idx)                     # w.r.t. the weight; index 2, 0 picked twice


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.GELU(), nn.Sigmoid(), nn.Tanh(),
                                   nn.Flatten(), nn.Identity(), nn.Flatten(0, 1)])
def test_gradcheck_activations(layer, rng):
    x = rng.standard_normal((3, 2, 2))
    x = np.where(np.abs(x) < 0.1, 0.5, x)      # away from relu's kink
    check_module(layer, ms.tensor(x, requires_grad=True))   # Flatten/Identity: views of x


def test_gradcheck_dropout_with_a_fixed_mask(rng):
    drop = nn.Dropout(0.4)

    def fn(x):
        manual_seed(7)                         # the same mask at every evaluation
        return drop(x)
    x = t64(rng, 4, 5)
    assert gradcheck(fn, [x])
    drop.eval()
    assert drop(x) is x


@pytest.mark.parametrize("layer", [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1),
                                   nn.AvgPool2d(2), nn.AvgPool2d((2, 3), 1, (1, 0)),
                                   nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((2, 3))])
def test_gradcheck_pooling(layer, rng):
    # A permutation of spread-out values: no two window entries tie for the maximum.
    x = rng.permutation(2 * 2 * 5 * 6).reshape(2, 2, 5, 6) * 0.1
    check_module(layer, ms.tensor(x, requires_grad=True))


def test_gradcheck_sequential_conv_net(rng):
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=1), nn.BatchNorm2d(3), nn.Tanh(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 2, rng=2))
    check_module(net, t64(rng, 3, 2, 4, 4))


# ----------------------------------------------------------------------------- blocks

@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_attention_and_transformer_block(causal, rng):
    check_module(nn.MultiheadSelfAttention(4, 2, causal=causal, rng=0), t64(rng, 2, 3, 4))
    check_module(nn.TransformerBlock(4, 2, mlp_ratio=2, causal=causal, rng=1),
                 t64(rng, 2, 3, 4), mode="projection")


def test_attention_is_causal(rng):
    attn = nn.MultiheadSelfAttention(4, 2, causal=True, rng=0)
    x = rng.standard_normal((1, 5, 4)).astype(np.float32)
    y = attn(ms.tensor(x)).data
    x2 = x.copy()
    x2[0, 3:] += 10.0                           # change the future of positions 0..2
    y2 = attn(ms.tensor(x2)).data
    np.testing.assert_allclose(y[0, :3], y2[0, :3], rtol=1e-5, atol=1e-6)
    assert not np.allclose(y[0, 3:], y2[0, 3:])


def test_attention_matches_a_per_head_loop(rng):
    attn = nn.MultiheadSelfAttention(6, 3, rng=0).double()
    x = rng.standard_normal((2, 4, 6))
    qkv = x @ attn.qkv.weight.data.T + attn.qkv.bias.data
    q, k, v = np.split(qkv, 3, axis=-1)
    heads = []
    for h in range(3):
        s = slice(2 * h, 2 * h + 2)
        a = q[..., s] @ k[..., s].transpose(0, 2, 1) / math.sqrt(2)
        a = np.exp(a - a.max(-1, keepdims=True))
        heads.append((a / a.sum(-1, keepdims=True)) @ v[..., s])
    ref = np.concatenate(heads, -1) @ attn.proj.weight.data.T + attn.proj.bias.data
    np.testing.assert_allclose(attn(ms.tensor(x)).data, ref, rtol=1e-10)


def test_gradcheck_embeddings(rng):
    pos = nn.PositionalEmbedding(5, 4, rng=0)
    check_module(pos, t64(rng, 2, 3, 4))       # T=3 < max_len: rows 3, 4 get zero gradient
    patch = nn.PatchEmbed(4, 2, 2, 3, rng=0).double()
    x = t64(rng, 2, 2, 4, 4)
    assert patch(x).shape == (2, 4, 3)
    check_module(patch, x)
    with pytest.raises(ValueError, match="PatchEmbed"):
        patch(t64(rng, 2, 2, 6, 6))
    with pytest.raises(ValueError, match="PositionalEmbedding"):
        pos(t64(rng, 1, 6, 4))


def test_patch_embed_orders_patches_row_major(rng):
    patch = nn.PatchEmbed(4, 2, 1, 1, rng=0).double()
    patch.proj.weight.data[...] = 1.0
    patch.proj.bias.data[...] = 0.0
    x = rng.standard_normal((1, 1, 4, 4))
    sums = [x[0, 0, i:i + 2, j:j + 2].sum() for i in (0, 2) for j in (0, 2)]
    np.testing.assert_allclose(patch(ms.tensor(x)).data[0, :, 0], sums, rtol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_conv_encoder(training, rng):
    enc = nn.ConvEncoder(in_channels=2, widths=(3, 4), strides=(1, 2), rng=0).double()
    enc.train(training)
    assert [n for n, _ in enc.named_children()] == ["stem", "blocks", "pool"]
    assert isinstance(enc.blocks[1].shortcut, nn.Sequential) and enc.blocks[0].shortcut is None
    x = t64(rng, 3, 2, 4, 4)
    assert enc(x).shape == (3, 4) and enc.out_dim == 4
    check_module(enc, x, mode="projection")


def test_gradcheck_mlp_heads(rng):
    head = nn.MLP([3, 5, 2], last_bn=True, rng=0)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear",
                                                "BatchNorm1d"]
    assert [type(m).__name__ for m in nn.MLP([3, 5, 4, 2], batch_norm=False)] == [
        "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    check_module(head, t64(rng, 6, 3))
    enc = nn.MLPEncoder(4, hidden=(5, 3), rng=0).double()
    x = t64(rng, 6, 1, 2, 2)                   # images, flattened by the encoder
    assert enc(x).shape == (6, 3) and enc.out_dim == 3
    check_module(enc, x)
    with pytest.raises(ValueError, match="MLPEncoder"):
        enc(t64(rng, 6, 5))


# ----------------------------------------------------------------------------- train / eval

def test_batchnorm_running_stats_and_eval(rng):
    bn = nn.BatchNorm1d(3, momentum=0.2).double()
    x = rng.standard_normal((8, 3)) * 2 + 1
    y = bn(ms.tensor(x)).data
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-10)
    np.testing.assert_allclose(bn.running_mean.data, 0.2 * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.data, 0.8 + 0.2 * x.var(0, ddof=1), rtol=1e-12)
    assert int(bn.num_batches_tracked.data) == 1
    bn.eval()
    x2 = rng.standard_normal((2, 3))
    y2 = bn(ms.tensor(x2)).data
    ref = (x2 - bn.running_mean.data) / np.sqrt(bn.running_var.data + 1e-5)
    np.testing.assert_allclose(y2, ref, rtol=1e-10)
    assert int(bn.num_batches_tracked.data) == 1                 # eval does not count
    with pytest.raises(ValueError, match="channels"):
        bn(ms.tensor(rng.standard_normal((2, 4))))
    with pytest.raises(ValueError, match="4-D"):
        nn.BatchNorm2d(3)(ms.tensor(x))


def test_batchnorm_cumulative_average_and_no_tracking(rng):
    bn = nn.BatchNorm1d(2, momentum=None).double()
    xs = [rng.standard_normal((4, 2)) + i for i in range(3)]
    for x in xs:
        bn(ms.tensor(x))
    np.testing.assert_allclose(bn.running_mean.data, np.mean([x.mean(0) for x in xs], 0),
                               rtol=1e-12)
    free = nn.BatchNorm1d(2, track_running_stats=False).double().eval()
    assert free.running_mean is None and list(free.state_dict()) == ["weight", "bias"]
    x = xs[0]
    np.testing.assert_allclose(free(ms.tensor(x)).data,
                               (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-10)


def test_dropout_train_and_eval(rng):
    manual_seed(0)
    drop = nn.Dropout(0.25)
    x = ms.tensor(np.ones((200, 50), np.float32))
    y = drop(x).data
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    drop.eval()
    np.testing.assert_array_equal(drop(x).data, x.data)
    assert nn.Dropout(0.0)(x) is x


@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize("training", [True, False])
def test_sequential_fuses_batch_norm_and_relu_without_changing_anything(kind, training):
    """After nn.fuse, Sequential runs BatchNorm + ReLU as one fused op: the output, every
    gradient and the running statistics equal those of calling the modules one by one."""
    rng = np.random.default_rng(0)
    if kind == "1d":
        seq = nn.Sequential(nn.Linear(5, 6, rng=1), nn.BatchNorm1d(6), nn.ReLU(),
                            nn.Linear(6, 3, rng=2))
        x = rng.standard_normal((8, 5))
    else:
        seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=1), nn.BatchNorm2d(3), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        x = rng.standard_normal((4, 2, 5, 5))
    seq = seq.double().train(training)
    manual = copy.deepcopy(seq)
    nn.fuse(seq)
    y = seq(ms.tensor(x))
    z = ms.tensor(x)
    for m in manual:
        z = m(z)
    np.testing.assert_allclose(y.numpy(), z.numpy(), rtol=1e-12, atol=1e-12)
    (y * y).sum().backward()
    (z * z).sum().backward()
    for (name, p), q in zip(seq.named_parameters(), manual.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-10, atol=1e-12, err_msg=name)
    for a, b in zip(seq.buffers(), manual.buffers()):
        np.testing.assert_array_equal(a.data, b.data)


def test_sequential_leaves_a_batch_norm_with_its_own_forward_alone():
    class Shifted(nn.BatchNorm1d):
        def forward(self, x):
            return super().forward(x) + 1.0

    seq = nn.fuse(nn.Sequential(Shifted(3), nn.ReLU()).double())
    x = np.random.default_rng(0).standard_normal((6, 3))
    np.testing.assert_allclose(seq(ms.tensor(x)).numpy(),
                               np.maximum((x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) + 1, 0),
                               rtol=1e-6)


def test_split_batchnorm_honours_fuse():
    # nn.fuse sets fused_relu on BasicBlock's bn1: MoCo's split BN in a conv encoder applies it.
    rng = np.random.default_rng(0)
    x = ms.tensor(rng.standard_normal((4, 3, 2, 2)))
    bn = nn.SplitBatchNorm2d(3, num_splits=2, dtype=np.float64)
    plain = bn(x).numpy()
    bn.fused_relu = True
    np.testing.assert_allclose(bn(x).numpy(), np.maximum(plain, 0))
    block = nn.convert_split_batchnorm(nn.BasicBlock(3, 4, rng=rng).double(), 2)
    unfused = block(x).numpy()
    np.testing.assert_allclose(nn.fuse(block)(x).numpy(), unfused, rtol=1e-12, atol=1e-12)


def test_convert_split_batchnorm_after_fuse_keeps_the_relu():
    # A fused Sequential's ReLU passes its input through; the split BN must take over the ReLU.
    rng = np.random.default_rng(1)
    x = ms.tensor(rng.standard_normal((8, 5)))
    seq = nn.Sequential(nn.Linear(5, 6, rng=rng), nn.BatchNorm1d(6), nn.ReLU()).double()
    want = seq(x).numpy()
    nn.fuse(seq)
    np.testing.assert_allclose(nn.convert_split_batchnorm(seq, 1)(x).numpy(), want,
                               rtol=1e-12, atol=1e-12)
