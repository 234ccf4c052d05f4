"""The masked-image benchmarks (``benchmarks/bench_nn_v3_mim.py``, ``benchmarks/bench_mae.py``).

Their PyTorch recipes, which the README's SimMIM and MAE figures compare against, are minissl's
methods step for step: with minissl's weights copied in, one training step on the same batch
and the same random draws (crop, flip, masks) gives the same loss and the same gradient for
every parameter, in float64. A recipe that drifted from the method (another mask, another loss
normalisation, a missing position embedding) would make the comparison meaningless. And
``--diagnose`` probes the tokens it says it probes and scores the fill it names (no PyTorch
needed; named ``test_torch_parity_*`` so that CI's PyTorch stage runs the parity tests)."""
import os
import sys

import numpy as np
import pytest

from minissl import data, losses, methods

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    """The two benchmark modules, imported without the process tuning of their first line."""
    old = os.environ.get("MINISSL_RUNTIME")
    os.environ["MINISSL_RUNTIME"] = "default"
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_mae
        import bench_nn_v3_mim
    finally:
        sys.path.pop(0)
        if old is None:
            del os.environ["MINISSL_RUNTIME"]
        else:
            os.environ["MINISSL_RUNTIME"] = old
    return bench_nn_v3_mim, bench_mae


def same_step(mim, method, pairs, torch_step, x, seed):
    """Copies minissl's weights into ``pairs`` (each parameter once), runs both steps on ``x``
    with generators of the same ``seed``; asserts equal losses and gradients."""
    mim.copy_weights(torch, method, pairs)
    named = dict(method.named_parameters())
    loss, _ = method.training_step(x, np.random.default_rng(seed))
    loss.backward()
    theirs = torch_step(x, np.random.default_rng(seed))
    theirs.backward()
    assert loss.item() == pytest.approx(theirs.item(), rel=1e-10)
    for tp, name in pairs:
        np.testing.assert_allclose(named[name].grad, tp.grad.numpy(), rtol=1e-7, atol=1e-10,
                                   err_msg=name)


@pytest.fixture(scope="module")
def digits64():
    d = data.digits()
    return d, d.train_x[:24].astype(np.float64)


@needs_torch
@pytest.mark.parametrize("mask_patch_size", [2, 4])
def test_simmim_recipe_is_minissls_simmim(bench, digits64, mask_patch_size):
    mim, _ = bench
    d, x = digits64
    ours = methods.build("simmim", d, patch_size=2, mask_patch_size=mask_patch_size,
                         embed_dim=16, depth=2, num_heads=2).double()
    vit, decoder, step = mim.torch_simmim(torch, ours)
    vit.double(), decoder.double()
    same_step(mim, ours, mim.simmim_pairs(vit, decoder), step, x, seed=3)


@needs_torch
@pytest.mark.parametrize("mask_patch_size", [0, 2])
def test_simmim_conv_recipe_is_minissls_simmim_on_the_cnn(bench, mask_patch_size):
    # ``--encoder conv``: bench_shapes.py's CNN; its masks at the stem's stride 1, its decoder
    # at the encoder's stride 4 (mask_patch_size 0: squares of 4 px).
    mim, _ = bench
    d = data.shapes(n_train=8, n_test=2, size=8, seed=0)
    ours = mim.build("simmim", d, encoder="conv")
    if mask_patch_size:
        ours = methods.build("simmim", d, encoder=mim.bench_shapes.conv_encoder(),
                             mask_patch_size=mask_patch_size)
    ours = ours.double()
    assert (ours.patch_size, ours.stride) == (1, 4)
    enc, decoder, step = mim.torch_simmim(torch, ours)
    enc.double(), decoder.double()
    same_step(mim, ours, mim.simmim_pairs(enc, decoder), step,
              d.train_x[:8].astype(np.float64), seed=4)


@needs_torch
def test_simmim_recipe_with_norm_targets_is_minissls(bench):
    # The official norm_targets (avg_pool2d) against minissl's box sums, inside one step of
    # the CNN recipe, and alone on a batch.
    mim, _ = bench
    d = data.shapes(n_train=8, n_test=2, size=8, seed=0)
    ours = mim.build("simmim", d, encoder="conv", norm_target_window=5).double()
    enc, decoder, step = mim.torch_simmim(torch, ours)
    enc.double(), decoder.double()
    same_step(mim, ours, mim.simmim_pairs(enc, decoder), step,
              d.train_x[:8].astype(np.float64), seed=4)
    x = np.random.default_rng(0).random((2, 3, 9, 7))
    official = mim.torch_norm_targets(torch.nn.functional, torch.from_numpy(x), 5).numpy()
    np.testing.assert_allclose(losses.simmim_norm_targets(x, 5), official, rtol=1e-9,
                               atol=1e-9)


@needs_torch
def test_mae_recipe_is_minissls_mae(bench, digits64):
    mim, mae_bench = bench
    d, x = digits64
    ours = methods.build("mae", d, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=8,
                         decoder_depth=1, decoder_num_heads=2).double()
    r = mae_bench.torch_mae(torch, ours)
    for m in (r.enc, r.dec, r.decoder_embed, r.decoder_pred):
        m.double()
    same_step(mim, ours, mae_bench.mae_pairs(r), r.step, x, seed=5)


@pytest.mark.parametrize("name", ["simmim", "mae"])
def test_diagnose_probes_each_depth_and_scores_the_mean_image_fill(bench, name, monkeypatch,
                                                                   capsys):
    mim, _ = bench
    d = data.digits()
    m = methods.build(name, d, embed_dim=8, depth=2, num_heads=2)
    seen = []
    monkeypatch.setattr(mim, "probe", lambda features, d, labels: seen.append(
        features(d.test_x[:3])) or [0.0] * len(labels))
    mim.diagnose(m, d)
    L, D = 16, 8
    assert [f.shape for f in seen] == [(3, D)] * 4 + [(3, L * D)]   # depths 0, 1, 2, features
    np.testing.assert_array_equal(seen[3], m.features(d.test_x[:3]))
    np.testing.assert_allclose(seen[4].reshape(3, L, D).mean(1), seen[3], atol=1e-6)  # whole map
    line = capsys.readouterr().out.splitlines()[0]
    fill = float(line.rsplit(" ", 1)[1])
    x, mean_image = d.test_x.astype(np.float64), d.train_x.mean(0, keepdims=True)
    if name == "simmim":    # the same masks as the diagnosis: drawn first from seed 0
        mask = m.masks(len(x), np.random.default_rng(0)).repeat(2, 1).repeat(2, 2)[:, None]
        want = (np.abs(mean_image - x) * mask).sum() / mask.sum()
    else:
        _, mask, _ = m.reconstruct(x, np.random.default_rng(0))
        want = (((mean_image - x) ** 2) * mask).sum() / mask.sum()
    assert fill == pytest.approx(want, abs=1e-4)


@needs_torch
def test_mae_recipe_draws_minissls_initial_weights(bench, capsys):
    """The README compares the two libraries over seeds, each from its own draw of the
    initial weights: those draws must come from the same distribution, parameter by
    parameter (a two-sample Kolmogorov-Smirnov test over 8 seeds; constants equal), with the
    same fixed parts (positions, LayerNorm eps, GELU, no dropout, the trained parameters)."""
    pytest.importorskip("scipy")
    _, mae_bench = bench
    pools = mae_bench.init_stats(data.digits(), range(8))
    assert "fixed, not drawn (positions, LayerNorm eps, GELU, dropout, trained parameters): " \
        "the same" in capsys.readouterr().out
    from scipy.stats import ks_2samp
    for name, (ours, theirs) in pools.items():
        if np.ptp(ours) == 0:
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
        else:
            assert ks_2samp(ours, theirs).pvalue > 1e-3, name


@needs_torch
def test_mae_fixed_differences_names_what_differs(bench):
    _, mae_bench = bench
    ours = methods.build("mae", data.digits(), embed_dim=16, depth=1, num_heads=2,
                         decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)
    r = mae_bench.torch_mae(torch, ours)
    assert mae_bench.fixed_differences(ours, r) == []
    r.enc.norm.eps = 1e-6
    r.dec.pos += 1
    r.params.pop()
    assert mae_bench.fixed_differences(ours, r)[:1] == ["decoder positions"]
    assert len(mae_bench.fixed_differences(ours, r)) == 3


@needs_torch
def test_mae_pytorch_draw_is_the_pytorch_runs_initial_weights(bench):
    """``--init pytorch``: minissl starts from exactly the weights PyTorch's run of the seed
    starts from."""
    _, mae_bench = bench
    d = data.digits()
    ours = mae_bench.pytorch_draw(torch, methods.build("mae", d), seed=3)
    torch.manual_seed(3)
    r = mae_bench.torch_mae(torch, methods.build("mae", d))
    named = dict(ours.named_parameters())
    for tp, name in mae_bench.mae_pairs(r):
        np.testing.assert_array_equal(np.asarray(named[name].data), tp.detach().numpy(),
                                      err_msg=name)


def test_finetune_starts_every_draw_from_the_same_weights_and_restores_them(bench, monkeypatch):
    """``--finetune``: each draw of each number of labels fine-tunes the encoder from the
    weights it was given (fine-tuning changes them in place), and hands them back after;
    the untrained encoder is the one ``minissl_run`` starts from for that seed."""
    mim, _ = bench
    d = data.digits()
    method = mim.untrained(d, "simmim", 1, encoder="conv")
    again = mim.untrained(d, "simmim", 1, encoder="conv")
    before = method.encoder.state_dict()
    for k, v in again.encoder.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    seen = []

    def fake_finetune(m, train_x, train_y, test_x, test_y, k, epochs, seed):
        seen.append((k, seed, [v.copy() for v in m.encoder.state_dict().values()]))
        for p in m.encoder.parameters():      # as training would: the weights move
            p.data += 1.0
        return k / 100 + seed / 1000

    monkeypatch.setattr(mim.evaluate, "finetune", fake_finetune)
    accs = mim.finetuned(method, d, epochs=7, draws=3)
    assert [(k, s) for k, s, _ in seen] == [(k, s) for k in (1, 5, 10) for s in range(3)]
    for _, _, weights in seen:
        for got, want in zip(weights, before.values()):
            np.testing.assert_array_equal(got, want)
    assert accs == pytest.approx([k / 100 + 0.001 for k in (1, 5, 10)])
    for k, v in method.encoder.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
