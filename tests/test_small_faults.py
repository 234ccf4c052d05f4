"""The smaller cases of hostile input: a batch too small for batch norm, an absurd number of
probe draws, zero-size operands, and warnings kept out of the error line."""
import numpy as np
import pytest

import minissl as ms
import minissl.functional as F

from test_cli import QUICK, assert_usage_error, run_cli, simclr_run  # noqa: F401


def test_a_batch_of_one_says_the_method_needs_two_examples(tmp_path):
    proc = run_cli("pretrain", "simclr", "--batch-size", "1", "--epochs", "1", "--out",
                   tmp_path / "run", "--limit", "4", "--no-progress", "--no-plots")
    assert_usage_error(proc, "simclr needs at least 2 examples per batch", "--batch-size")
    assert not (tmp_path / "run").exists()


def test_eval_draws_have_a_sane_cap(simclr_run):
    proc = run_cli("eval", "--checkpoint", simclr_run[0] / "checkpoint.npz", "--draws",
                   "1000000000")
    assert_usage_error(proc, "--draws", "at most 100")


def test_adaptive_avg_pool_of_an_empty_image_is_an_error_not_nan():
    x = ms.tensor(np.zeros((2, 3, 0, 0), np.float32))
    with pytest.raises(ValueError, match="adaptive_avg_pool2d.*no pixels"):
        F.adaptive_avg_pool2d(x, 1)
    assert F.adaptive_avg_pool2d(ms.tensor(np.ones((0, 3, 2, 2), np.float32)), 1).shape \
        == (0, 3, 1, 1)   # no images is fine: nothing to average


def test_layer_norm_over_no_element_is_a_clear_error_and_no_rows_work():
    with pytest.raises(ValueError, match="layer_norm.*no element"):
        F.layer_norm(ms.tensor(np.zeros((2, 0), np.float32)), (0,))
    x = ms.tensor(np.zeros((0, 6), np.float32), requires_grad=True)
    y = F.layer_norm(x, (6,))
    y.sum().backward()
    assert y.shape == (0, 6) and x.grad.shape == (0, 6)


@pytest.mark.parametrize("L,S", [(0, 0), (0, 3), (3, 0)])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_no_query_or_no_key(L, S, causal):
    """As PyTorch: an empty P, so y = P v is zeros of (..., L, Ev), and zero gradients."""
    rng = np.random.default_rng(0)
    q, k = (ms.tensor(rng.standard_normal((2, 4, n, 8)), requires_grad=True) for n in (L, S))
    v = ms.tensor(rng.standard_normal((2, 4, S, 5)), requires_grad=True)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    (y * 3).sum().backward()
    assert y.shape == (2, 4, L, 5) and not np.any(y.numpy())
    for t in (q, k, v):
        assert t.grad.shape == t.shape and not np.any(t.grad)


def test_var_of_one_element_gives_nan_gradient_not_zero_division():
    x = ms.tensor(np.ones(1), requires_grad=True)
    y = x.var()
    y.backward()
    assert np.isnan(y.item()) and np.isnan(x.grad).all()      # as torch.var
    z = ms.tensor(np.array([1.0, 3.0]), requires_grad=True)
    z.var(unbiased=False).backward()
    np.testing.assert_allclose(z.grad, [-1.0, 1.0])


def test_warnings_stay_out_of_the_error_line(tmp_path):
    """A diverging run: NumPy's overflow warnings are one-line notes; the last line is the
    error, alone, with no warning text in it."""
    proc = run_cli("pretrain", "simclr", "--epochs", "2", "--lr", "1e30", "--optimizer", "sgd",
                   "--out", tmp_path / "run", *QUICK)
    line = assert_usage_error(proc, "lower the learning rate")
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == line and "warning" not in line
    assert all(ln.startswith("minissl: warning: ") for ln in lines[:-1])
