"""PyTorch parity of minissl.nn in float64: a torch model's state_dict, converted to NumPy,
loads into the same minissl architecture and gives the same outputs, input and parameter
gradients and running statistics, in training and in evaluation mode."""
import numpy as np
import pytest

import minissl as ms
import minissl.nn as nn

torch = pytest.importorskip("torch")
tnn = torch.nn

RTOL, ATOL = 1e-10, 1e-12


def to_numpy_state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def compare_step(tm, mm, x, gy_seed):
    """One forward/backward of both models on x with the same output cotangent; compares
    outputs, the input gradient and every parameter gradient."""
    xt = torch.tensor(x, requires_grad=True)
    xm = ms.tensor(x, requires_grad=True)
    yt, ym = tm(xt), mm(xm)
    np.testing.assert_allclose(ym.data, yt.detach().numpy(), rtol=RTOL, atol=ATOL)
    gy = np.random.default_rng(gy_seed).standard_normal(tuple(yt.shape))
    yt.backward(torch.tensor(gy))
    ym.backward(gy)
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), rtol=1e-9, atol=ATOL)
    tgrads = {n: p.grad.numpy() for n, p in tm.named_parameters()}
    mgrads = {n: p.grad for n, p in mm.named_parameters()}
    assert tgrads.keys() == mgrads.keys()
    for n in tgrads:
        np.testing.assert_allclose(mgrads[n], tgrads[n], rtol=1e-9, atol=1e-11, err_msg=n)
    tm.zero_grad()
    mm.zero_grad()


def compare_state(tm, mm):
    ts, ms_ = to_numpy_state(tm), mm.state_dict()
    assert list(ts) == list(ms_)
    for k in ts:
        assert ms_[k].shape == ts[k].shape and ms_[k].dtype == ts[k].dtype, k
        np.testing.assert_allclose(ms_[k], ts[k], rtol=RTOL, atol=ATOL, err_msg=k)


def test_conv_net_state_dict_train_and_eval():
    torch.manual_seed(0)
    tm = tnn.Sequential(
        tnn.Conv2d(3, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(4, 6, (3, 2), stride=2, padding=1, bias=False), tnn.BatchNorm2d(6),
        tnn.ReLU(), tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(6, 5),
        tnn.LayerNorm(5), tnn.GELU(), tnn.Linear(5, 3)).double()
    mm = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, bias=False), nn.BatchNorm2d(6),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
        nn.LayerNorm(5), nn.GELU(), nn.Linear(5, 3)).double()
    # Non-trivial norm parameters and running statistics, so that every term counts.
    with torch.no_grad():
        for m in tm.modules():
            if isinstance(m, (tnn.BatchNorm2d, tnn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    mm.load_state_dict(to_numpy_state(tm))
    compare_state(tm, mm)
    rng = np.random.default_rng(0)
    for step in range(2):                       # training: batch stats, running stats move
        x = rng.standard_normal((4, 3, 8, 8)) * 2 + 0.5
        compare_step(tm, mm, x, step)
        compare_state(tm, mm)
    assert int(mm[1].num_batches_tracked.data) == 2
    tm.eval()
    mm.eval()
    compare_step(tm, mm, rng.standard_normal((3, 3, 8, 8)), 5)
    compare_state(tm, mm)


def test_other_layers_match():
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    pairs = [
        (tnn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1),
         nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 5)),
        (tnn.AvgPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1), (2, 3, 5, 6)),
        (tnn.MaxPool2d((2, 3), 1, (1, 1)), nn.MaxPool2d((2, 3), 1, (1, 1)), (2, 3, 5, 6)),
        (tnn.AdaptiveAvgPool2d((2, 3)), nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 5, 7)),
        (tnn.BatchNorm1d(4), nn.BatchNorm1d(4), (6, 4)),
        (tnn.BatchNorm1d(4, momentum=None), nn.BatchNorm1d(4, momentum=None), (6, 4, 3)),
        (tnn.LayerNorm((3, 4)), nn.LayerNorm((3, 4)), (2, 3, 4)),
        (tnn.Sequential(tnn.Linear(4, 3), tnn.Sigmoid(), tnn.Linear(3, 3), tnn.Tanh()),
         nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 3), nn.Tanh()), (5, 4)),
    ]
    for i, (tm, mm, shape) in enumerate(pairs):
        tm, mm = tm.double(), mm.double()
        mm.load_state_dict(to_numpy_state(tm))
        for step in range(2):
            compare_step(tm, mm, rng.standard_normal(shape), 10 * i + step)
        compare_state(tm, mm)
        tm.eval()
        mm.eval()
        compare_step(tm, mm, rng.standard_normal(shape), 10 * i + 9)


def test_embedding_matches():
    torch.manual_seed(2)
    te = tnn.Embedding(7, 3).double()
    me = nn.Embedding(7, 3).double()
    me.load_state_dict(to_numpy_state(te))
    idx = np.array([[1, 3, 3], [6, 0, 1]])
    yt, ym = te(torch.tensor(idx)), me(ms.tensor(idx))
    np.testing.assert_allclose(ym.data, yt.detach().numpy(), rtol=RTOL)
    gy = np.random.default_rng(0).standard_normal(yt.shape)
    yt.backward(torch.tensor(gy))
    ym.backward(gy)
    np.testing.assert_allclose(me.weight.grad, te.weight.grad.numpy(), rtol=RTOL)


class TorchBlock(tnn.Module):
    """The pre-LN block of the PyTorch benchmark reference (qkv and proj at its top level)."""

    def __init__(self, d, h, causal):
        super().__init__()
        self.ln1, self.ln2 = tnn.LayerNorm(d), tnn.LayerNorm(d)
        self.qkv, self.proj = tnn.Linear(d, 3 * d), tnn.Linear(d, d)
        self.mlp = tnn.Sequential(tnn.Linear(d, 4 * d), tnn.GELU(), tnn.Linear(4 * d, d))
        self.h, self.causal = h, causal

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, 2)
        q, k, v = [t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v)]
        att = (q @ k.transpose(-2, -1)) / (C // self.h) ** 0.5
        if self.causal:
            att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_matches_the_reference_block(causal):
    torch.manual_seed(3)
    tb = TorchBlock(8, 2, causal).double()
    mb = nn.TransformerBlock(8, 2, causal=causal).double()
    # Our attention projections live in the ``attn`` child: rename on the way in.
    sd = {(("attn." + k) if k.split(".")[0] in ("qkv", "proj") else k): v
          for k, v in to_numpy_state(tb).items()}
    mb.load_state_dict(sd)
    x = np.random.default_rng(3).standard_normal((2, 5, 8))
    xt = torch.tensor(x, requires_grad=True)
    xm = ms.tensor(x, requires_grad=True)
    yt, ym = tb(xt), mb(xm)
    np.testing.assert_allclose(ym.data, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    gy = np.random.default_rng(4).standard_normal(x.shape)
    yt.backward(torch.tensor(gy))
    ym.backward(gy)
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for n, p in mb.named_parameters():
        tn = n[len("attn."):] if n.startswith("attn.") else n
        np.testing.assert_allclose(p.grad, dict(tb.named_parameters())[tn].grad.numpy(),
                                   rtol=1e-9, atol=1e-11, err_msg=n)


def test_parameter_names_and_shapes_equal_torch():
    pairs = [(tnn.Conv2d(3, 8, 5, bias=False), nn.Conv2d(3, 8, 5, bias=False)),
             (tnn.Conv2d(4, 8, 3, 1, 2, 2, 4), nn.Conv2d(4, 8, 3, 1, 2, 2, 4)),
             (tnn.Conv1d(6, 4, 3, 2, 1, 3, 2, False), nn.Conv1d(6, 4, 3, 2, 1, 3, 2, False)),
             (tnn.ConvTranspose2d(3, 8, (2, 3)), nn.ConvTranspose2d(3, 8, (2, 3))),
             (tnn.BatchNorm2d(5), nn.BatchNorm2d(5)),
             (tnn.BatchNorm1d(5, affine=False), nn.BatchNorm1d(5, affine=False)),
             (tnn.LayerNorm(4, bias=False), nn.LayerNorm(4, bias=False)),
             (tnn.Embedding(9, 4), nn.Embedding(9, 4)),
             (tnn.Linear(3, 2), nn.Linear(3, 2))]
    for tm, mm in pairs:
        ts, mst = to_numpy_state(tm), mm.state_dict()
        assert [(k, v.shape, v.dtype) for k, v in ts.items()] == \
               [(k, v.shape, v.dtype) for k, v in mst.items()], type(mm).__name__
