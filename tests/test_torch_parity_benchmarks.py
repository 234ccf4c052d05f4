"""The PyTorch recipes of the benchmarks are the minissl recipes: started from the same
weights they compute the same figures (no training: any difference is the model or the
evaluation, not the optimisation)."""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from minissl import data  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import bench_inpaint  # noqa: E402


@pytest.mark.parametrize("task", ["inpainting", "colorization"])
def test_the_pytorch_unet_from_minissl_weights_scores_what_minissl_scores(task):
    d = data.shapes(n_train=64, n_test=24, size=16, seed=1)
    ours, base = bench_inpaint.minissl_run(task, d, 0, seed=3)
    theirs, their_base = bench_inpaint.torch_run(task, d, 0, seed=3)
    assert their_base == base
    assert theirs == pytest.approx(ours, abs=1e-3)
    own, _ = bench_inpaint.torch_run(task, d, 0, seed=3, same_init=False)
    assert abs(own - ours) > 1e-3          # PyTorch's own draws: another network
