"""benchmarks/bench_audio.py runs one recipe in both libraries: its torch.nn CPC, given
minissl's CPC's weights, has the same loss, the same gradient of every weight and the same
features for the probe; ``--init`` starts either library from the other's draw, the two
libraries' own draws share one distribution (``--init-stats``), and from one draw the two
train alike, step after step (``--compare-steps``)."""
import os
import sys
from unittest import mock

import numpy as np
import pytest

from minissl import data, random
from minissl.methods.cpc import CPC, CPCConfig

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import bench_audio  # noqa: E402


@pytest.mark.parametrize("settings", [{}, {"norm": "none", "context_layers": 2, "score": "sum"},
                                      {"negatives": "sequence", "features": "context"}])
def test_torch_cpc_is_minissl_cpc(settings):
    settings = dict(dict(channels=8, prediction_steps=3), **settings)
    random.manual_seed(0)
    m = CPC(CPCConfig(**settings)).double()
    net = bench_audio.torch_model("cpc", 0, settings).double()
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in m.state_dict().items()}
    net.load_state_dict(state)                    # same names, same layouts: strict
    x = data.audio(n_per_class=2, clip_length=600, seed=0).train_x[:6].astype(np.float64)
    loss, _ = m.training_step(x)
    loss.backward()
    t_loss = net.loss(torch.from_numpy(x))
    t_loss.backward()
    np.testing.assert_allclose(float(loss.data), t_loss.item(), rtol=1e-10)
    grads = dict(net.named_parameters())
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, grads[name].grad.numpy(), rtol=1e-8, atol=1e-12,
                                   err_msg=name)
    with torch.no_grad():
        np.testing.assert_allclose(m.features(x), net.features(torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_init_starts_each_library_from_the_named_draw():
    """``--init pytorch``: minissl starts from exactly the weights PyTorch's own run of the
    seed starts from; ``--init minissl``: PyTorch from minissl's; ``own``: two draws."""
    for seed in (0, 1):
        ours, theirs = (bench_audio.initial_network(lib, "cpc", None, seed)
                        for lib in ("minissl", "torch"))
        ours_x = bench_audio.initial_network("minissl", "cpc", None, seed, "pytorch")
        theirs_x = bench_audio.initial_network("torch", "cpc", None, seed, "minissl")
        mine, yours = ours.state_dict(), theirs.state_dict()
        for name, t in theirs_x.state_dict().items():
            np.testing.assert_array_equal(t.numpy(), mine[name], err_msg=name)
            np.testing.assert_array_equal(ours_x.state_dict()[name], yours[name].numpy(),
                                          err_msg=name)
        assert not np.array_equal(mine["predict.weight"], yours["predict.weight"].numpy())


def test_init_refuses_networks_whose_weights_are_named_apart():
    with pytest.raises(ValueError, match="wavenet's two networks name their weights apart"):
        bench_audio.initial_network("minissl", "wavenet", None, 0, "pytorch")


def test_cpc_draws_agree_in_distribution(capsys):
    """``--init-stats``: the README compares the libraries each from its own draw, fair only
    if the draws share one distribution, parameter by parameter (KS over 10 seeds, constants
    equal); a kaiming bound 10 % too wide is caught."""
    pytest.importorskip("scipy")
    pools = bench_audio.init_stats("cpc", None, range(10))
    assert "KS p" in capsys.readouterr().out
    assert len(pools) == len(bench_audio.torch_model("cpc", 0).state_dict())
    assert bench_audio.compare_draws.differing(pools) == []
    wide = lambda fan_in: 1.1 / np.sqrt(fan_in)                       # noqa: E731
    with mock.patch("minissl.nn.layers._kaiming_uniform_bound", wide):
        pools = bench_audio.init_stats("cpc", None, range(10))
    assert set(bench_audio.compare_draws.differing(pools)) == {
        name for name in pools if name.endswith("weight") and ".norm." not in name}


def test_cpc_trains_alike_in_both_libraries_from_one_draw():
    """``--compare-steps``: from one draw, on the bench's batches, in float64, both
    libraries' Adam steps give the same losses and weights, step after step."""
    d = data.audio(n_per_class=7, clip_length=600, seed=0)        # one batch an epoch
    rows = list(bench_audio.compare_steps("cpc", d, 0, 4, 3e-3))
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    for step, loss, t_loss, drift in rows:
        assert loss == pytest.approx(t_loss, rel=1e-10), step
        assert drift < 1e-9, step
    assert rows[-1][1] < rows[0][1]                                  # it trains
