"""The dtype policy, applied by the engine to every op (``Function.__call__``) and by name to
every loss: inputs are float32 or float64; integer and bool inputs only for the ops that are
exact on them. Anything else is a TypeError naming the op and the dtype, never a wrong
number (float16 norms overflow: NT-Xent of a batch scaled by 300 came out 2.94, not 2.71;
sigmoid of int64 gave int zeros; adaptive_avg_pool2d of int64 truncated)."""
import numpy as np
import pytest

import minissl as ms
import minissl.functional as F
from minissl import losses


def t(shape=(4, 6), dtype=np.float16, seed=0):
    return ms.tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def ints(shape=(2, 3, 4, 4)):
    return ms.tensor(np.arange(np.prod(shape)).reshape(shape))


def test_nt_xent_of_float16_is_refused_not_wrong():
    z1, z2 = t(dtype=np.float32, seed=1) * 300, t(dtype=np.float32, seed=2) * 300
    right = losses.nt_xent(z1, z2).item()
    with pytest.raises(TypeError, match="nt_xent.*float16"):
        losses.nt_xent(z1.astype(np.float16), z2.astype(np.float16))
    assert right == pytest.approx(losses.nt_xent(z1.double(), z2.double()).item(), rel=1e-5)


FLOAT_OPS = {
    "normalize": lambda x: F.normalize(x, dim=1),
    "sigmoid": F.sigmoid, "tanh": F.tanh, "gelu": F.gelu, "relu": F.relu,
    "softmax": lambda x: F.softmax(x, 1), "log_softmax": lambda x: F.log_softmax(x, 1),
    "exp": lambda x: x.exp(), "sum": lambda x: x.sum(), "mean": lambda x: x.mean(),
    "var": lambda x: x.var(), "add": lambda x: x + x, "matmul": lambda x: x @ x.T,
    "linear": lambda x: F.linear(x, x),
    "layer_norm": lambda x: F.layer_norm(x, (6,)),
    "mse_loss": lambda x: F.mse_loss(x, x),
    "reshape": lambda x: x.reshape(6, 4),
}


@pytest.mark.parametrize("name", FLOAT_OPS)
def test_every_op_refuses_float16_naming_itself_and_the_dtype(name):
    with pytest.raises(TypeError, match="float16"):
        FLOAT_OPS[name](t())
    FLOAT_OPS[name](t(dtype=np.float32))     # the same op in float32 works


@pytest.mark.parametrize("fn,op", [
    (F.sigmoid, "Sigmoid"), (lambda x: F.adaptive_avg_pool2d(x, 1), "AvgPool"),
    (lambda x: x.mean(), "Mean"), (lambda x: x.exp(), "Exp"), (lambda x: x / 2, "Div"),
    (lambda x: F.softmax(x, 1), "Softmax"), (lambda x: x.clamp(0.5, 2.5), "Clamp")])
def test_float_ops_refuse_integers_naming_the_op(fn, op):
    with pytest.raises(TypeError, match=f"{op}.*int64"):
        fn(ints())


def test_exact_ops_keep_working_on_integers():
    x = ints((2, 3))
    np.testing.assert_array_equal((x + x * 2 - 1).numpy(), np.arange(6).reshape(2, 3) * 3 - 1)
    assert (x.sum() + 0).item() == 15 and x.max().item() == 5
    np.testing.assert_array_equal(ms.cat([x, x])[3].numpy(), [3, 4, 5])
    np.testing.assert_array_equal(x.T.reshape(6).numpy(), [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(F.relu(-x).numpy(), np.zeros((2, 3)))
    assert x.float().sigmoid().dtype == np.float32       # the way to compute on integers


@pytest.mark.parametrize("loss,args", [
    (losses.byol_loss, 2), (losses.barlow_twins_loss, 2), (losses.vicreg_loss, 2),
    (losses.simsiam_loss, 2)])
def test_losses_refuse_float16_and_integers_by_name(loss, args):
    for bad in (t(dtype=np.float16), ints((4, 6))):
        with pytest.raises(TypeError, match=f"{loss.__name__}.*{bad.dtype}"):
            loss(*[bad] * args)
