"""benchmarks/bench_audio.py runs one recipe in both libraries: its torch.nn CPC, given
minissl's CPC's weights, has the same loss, the same gradient of every weight and the same
features for the probe."""
import os
import sys

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
