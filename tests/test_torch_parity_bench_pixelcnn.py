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


def _pair(bench, side):
    ours = bench.minissl_draw((1, side, side), 0)
    return ours, bench.copy_into_torch(torch, ours, bench.torch_model(torch, bench.CONFIG))


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
    grads = {bench.torch_name(n): p.grad for n, p in ours.named_parameters()}
    for n, p in theirs.named_parameters():
        np.testing.assert_allclose(np.asarray(grads[n]), p.grad.numpy(), rtol=1e-3, atol=1e-6,
                                   err_msg=n)


def test_init_stats_pools_each_parameter_of_both_draws(bench, capsys):
    """``--init-stats``: every parameter, each library's own draw of the seed (the PyTorch
    draw is the one ``torch_run`` starts from)."""
    pytest.importorskip("scipy")
    pools = bench.init_stats((1, 8, 8), range(2))
    assert "KS p" in capsys.readouterr().out
    ours, theirs = bench.minissl_draw((1, 8, 8), 1), bench.torch_draw(torch, (1, 8, 8), 1)
    assert len(pools) == len(list(theirs.parameters()))
    for name, p in ours.named_parameters():
        a, b = pools[name]
        n = p.data.size
        np.testing.assert_array_equal(a[n:], np.ravel(p.data), err_msg=name)
        t = dict(theirs.named_parameters())[bench.torch_name(name)]
        np.testing.assert_array_equal(b[n:], t.detach().numpy().ravel(), err_msg=name)


def test_init_pytorch_and_minissl_start_both_libraries_from_one_draw(bench):
    """``--init``: with no step taken, minissl from PyTorch's draw scores what PyTorch's own
    run starts from, and PyTorch from minissl's draw what minissl's own starts from."""
    from types import SimpleNamespace
    rng = np.random.default_rng(0)
    d = SimpleNamespace(image_shape=(1, 8, 8), train_x=rng.random((40, 1, 8, 8)),
                        test_x=rng.random((20, 1, 8, 8)).astype(np.float32))
    for seed in (0, 1):
        own = bench.minissl_run(d, 0, seed), bench.torch_run(d, 0, seed)
        crossed = bench.torch_run(d, 0, seed, "minissl"), bench.minissl_run(d, 0, seed, "pytorch")
        assert crossed == pytest.approx(own, rel=1e-5)
        assert abs(own[0] - own[1]) > 1e-4                  # two different draws


def test_compare_steps_both_libraries_train_alike_from_one_draw(bench):
    """``--compare-steps``: from minissl's draw, on the bench's batches, in float64, both
    libraries' Adam steps give the same losses and weights step after step, and the same
    test NLL after them."""
    from types import SimpleNamespace
    rng = np.random.default_rng(0)
    d = SimpleNamespace(image_shape=(1, 8, 8), train_x=rng.random((70, 1, 8, 8)),
                        test_x=rng.random((20, 1, 8, 8)).astype(np.float32))
    rows = list(bench.compare_steps(d, 0, 4))
    assert [r["step"] for r in rows[:-1]] == [1, 2, 3, 4]
    for r in rows[:-1]:
        assert r["minissl_loss"] == pytest.approx(r["torch_loss"], rel=1e-10), r
        assert r["weight_drift"] < 1e-9, r
    assert rows[-2]["minissl_loss"] < rows[0]["minissl_loss"]            # it trains
    end = rows[-1]
    assert end["minissl_test_bits"] == pytest.approx(end["torch_test_bits"], rel=1e-10)
