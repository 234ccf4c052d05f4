"""The gated PixelCNN: a strictly causal receptive field without the blind spot (exactly,
with autograd), the loss going down, sampling, the baseline, and the command line on the
digits and on (fake) MNIST files."""
import json

import numpy as np
import pytest

import minissl as ms
from minissl import methods, optim
from minissl.data import digits
from minissl.methods.pixelcnn import PixelCNN, PixelCNNConfig, bernoulli_baseline_bits

from test_cli import run_cli
from test_cli_owndata import write_idx


def dependencies(fn, bits, i, j):
    """The input pixels whose value reaches output pixel (i, j) of ``fn`` (nonzero gradient)."""
    x = ms.tensor(bits, requires_grad=True)
    fn(x)[0, :, i, j].sum().backward()
    return {tuple(p) for p in np.argwhere(np.abs(x.grad[0, 0]) > 0)}


@pytest.mark.parametrize("i,j", [(0, 0), (0, 5), (3, 0), (4, 4), (7, 7), (5, 7)])
def test_every_output_sees_only_earlier_pixels_and_no_blind_spot(i, j):
    ms.manual_seed(0)
    m = PixelCNN((1, 8, 8), PixelCNNConfig(channels=4, layers=4, head_channels=4)).double()
    bits = (np.random.default_rng(1).random((1, 1, 8, 8)) < 0.5).astype(np.float64)
    # The last horizontal stack: smooth (gated units), so a reachable pixel has a gradient.
    seen = dependencies(m.encoder.stacks, bits, i, j)
    assert all(p < (i, j) for p in seen), sorted(p for p in seen if p >= (i, j))
    # No blind spot: 4 layers of 3-wide filters reach every earlier pixel within 4 rows
    # above and 4 columns either side -- the pixels up and to the right included, which
    # the original PixelCNN's stacked masks never see.
    near = {(r, c) for r in range(max(0, i - 4), i + 1) for c in range(max(0, j - 4),
                                                                      min(8, j + 5))}
    assert {p for p in near if p < (i, j)} <= seen
    # The logits: never the pixel itself or a later one.
    assert all(p < (i, j) for p in dependencies(m, bits, i, j))


def test_loss_goes_down():
    ms.manual_seed(0)
    d = digits()
    m = PixelCNN(d.image_shape, PixelCNNConfig(channels=8, layers=3, head_channels=16))
    opt = optim.Adam(m.trainable_parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    before = m.bits_per_dim(d.test_x[:200])
    for step in range(60):
        batch = d.train_x[rng.choice(len(d.train_x), 32, replace=False)]
        loss, metrics = m.training_step(batch, rng)
        assert np.isclose(metrics["bits_per_dim"], loss.item() / np.log(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.bits_per_dim(d.test_x[:200])
    assert after < before - 0.3, (before, after)
    assert m.heldout_metrics(d)["test_bits_per_dim"] == pytest.approx(
        m.bits_per_dim(d.test_x))


def test_sampling_draws_binary_images_of_the_data_shape():
    ms.manual_seed(0)
    m = PixelCNN((1, 5, 4), PixelCNNConfig(channels=2, layers=2, head_channels=2))
    s = m.sample(3, np.random.default_rng(0))
    assert s.shape == (3, 1, 5, 4) and set(np.unique(s)) <= {0.0, 1.0}
    assert m.training           # the mode is restored


def test_bernoulli_baseline_is_the_entropy_of_the_marginals():
    train = np.zeros((8, 1, 1, 2))
    train[:4, 0, 0, 0] = 1                      # pixel 0: p = 5/10 smoothed; pixel 1: 1/10
    test = np.zeros((2, 1, 1, 2))
    test[0, 0, 0, 0] = 1
    expected = np.mean([1.0, 1.0, -np.log2(0.9), -np.log2(0.9)])
    assert np.isclose(bernoulli_baseline_bits(train, test), expected)


def test_registered_and_rejects_colour_images():
    assert methods.METHODS["pixelcnn"][2] == "self-predictive: autoregression"
    assert methods.config_class("pixelcnn") is PixelCNNConfig
    with pytest.raises(ValueError, match=r"PixelCNN: needs one-channel images.*\(3, 8, 8\)"):
        PixelCNN((3, 8, 8))
    with pytest.raises(ValueError, match="PixelCNN: expected images"):
        PixelCNN((1, 8, 8)).training_step(np.zeros((2, 1, 7, 8)), np.random.default_rng(0))


def test_command_line_digits_and_mnist_files(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("pretrain", "pixelcnn", "--data", "digits", "--epochs", "1", "--limit",
                   "64", "--batch-size", "32", "--no-progress", "--no-plots", "--set",
                   "channels=4", "--set", "layers=2", "--out", run)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"test_bits_per_dim", "bernoulli_bits_per_dim", "bits_per_dim"} <= set(record)
    proc = run_cli("eval", "--checkpoint", run / "checkpoint.npz")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["test_bits_per_dim"] == pytest.approx(record["test_bits_per_dim"])
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("t10k", 4)):
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    proc = run_cli("pretrain", "pixelcnn", "--data", "mnist", "--data-root", tmp_path / "data",
                   "--epochs", "1", "--batch-size", "4", "--no-progress", "--no-plots",
                   "--set", "channels=2", "--set", "layers=2", "--out", tmp_path / "mnist")
    assert proc.returncode == 0, proc.stderr
    assert "test_bits_per_dim" in proc.stdout
