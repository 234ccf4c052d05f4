"""The PixelCNN recipe of ``benchmarks/bench_pixelcnn.py`` is the same network in both
libraries: with minissl's weights loaded into the ``torch.nn`` version, both give the same
logits on the digits' 8x8 and on MNIST's 28x28, and the same loss and weight gradients."""
import importlib.util
import os
from unittest import mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    path = os.path.join(ROOT, "benchmarks", "bench_pixelcnn.py")
    spec = importlib.util.spec_from_file_location("bench_pixelcnn", path)
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(os.environ, MINISSL_RUNTIME="default"):  # the import's tune(): a no-op
        spec.loader.exec_module(module)
    return module


def _torch_name(name):
    """minissl's parameter name -> the torch.nn recipe's (its layers call the stacks v, h)."""
    name = name.removeprefix("encoder.")
    return name.replace(".vertical.", ".v.").replace(".horizontal.", ".h.")


def _pair(bench, side):
    import minissl as ms
    from minissl.methods.pixelcnn import PixelCNN
    ms.random.manual_seed(0)
    ours, theirs = PixelCNN((1, side, side), bench.CONFIG), bench.torch_model(torch, bench.CONFIG)
    state = {_torch_name(k): torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()}
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.endswith(".mask") for k in missing)
    return ours, theirs


@pytest.mark.parametrize("side", [8, 28])
def test_same_logits_loss_and_gradients(bench, side):
    import minissl as ms
    from minissl.methods.pixelcnn import binarize
    ours, theirs = _pair(bench, side)
    x = binarize(np.random.default_rng(1).random((4, 1, side, side), dtype=np.float32))
    logits = ours(ms.tensor(x))
    want = theirs(torch.from_numpy(x))
    np.testing.assert_allclose(logits.numpy(), want.detach().numpy(), rtol=1e-4, atol=1e-5)
    loss, _ = ours.training_step(x, np.random.default_rng(0))
    loss.backward()
    t = torch.from_numpy(x)
    tloss = torch.nn.functional.binary_cross_entropy_with_logits(want, t)
    tloss.backward()
    assert loss.item() == pytest.approx(tloss.item(), rel=1e-5)
    grads = {_torch_name(n): p.grad for n, p in ours.named_parameters()}
    for n, p in theirs.named_parameters():
        np.testing.assert_allclose(np.asarray(grads[n]), p.grad.numpy(), rtol=1e-3, atol=1e-6,
                                   err_msg=n)
