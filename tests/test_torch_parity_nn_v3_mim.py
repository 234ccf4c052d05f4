"""PyTorch parity (float64, values and input gradients) of the NNCLR, MoCo v3 and SimMIM losses.

The torch versions are transcriptions of the reference codes (named at each), in their own
construction: solo-learn's ``nnclr_loss_func`` (NNCLR has no official release), MoCo v3's
``MoCo.contrastive_loss`` (einsum, ``CrossEntropyLoss() * 2T``), SimMIM's ``SimMIM.forward``
(``repeat_interleave`` of the patch mask, ``F.l1_loss(reduction='none')``). Where lightly is
installed (``pip install --no-deps lightly``: it is not a dependency, and CI does not have it)
its own modules are loaded too, by file, without its package ``__init__`` (which needs
torchvision): ``NNMemoryBankModule`` against ``losses.nearest_neighbours``, and ``NTXentLoss``
on (neighbour, prediction), the loss of lightly's NNCLR example, against ``losses.nt_xent``.
"""
import importlib.util
import os
import sys
import types

import numpy as np
import pytest

import minissl as ms
from minissl import losses

torch = pytest.importorskip("torch")
tF = torch.nn.functional

from test_torch_parity_losses import SIZES, _compare  # noqa: E402  (needs torch)


def torch_nnclr(nn, p, temperature):
    # solo-learn solo/losses/nnclr.py, nnclr_loss_func, one process (gather is the identity).
    nn = tF.normalize(nn, dim=-1)
    p = tF.normalize(p, dim=-1)
    logits = nn @ p.T / temperature
    n = nn.size(0)
    labels = torch.arange(0, n)
    return tF.cross_entropy(logits, labels)


def torch_mocov3(q, k, T):
    # facebookresearch/moco-v3 moco/builder.py, MoCo.contrastive_loss, rank 0 of 1.
    q = torch.nn.functional.normalize(q, dim=1)
    k = torch.nn.functional.normalize(k, dim=1)
    logits = torch.einsum("nc,mc->nm", [q, k]) / T
    N = logits.shape[0]
    labels = torch.arange(N, dtype=torch.long)
    return torch.nn.CrossEntropyLoss()(logits, labels) * (2 * T)


def torch_simmim(x_rec, x, patch_mask, patch_size):
    # microsoft/SimMIM models/simmim.py, SimMIM.forward after the decoder.
    mask = patch_mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2) \
        .unsqueeze(1).contiguous()
    loss_recon = tF.l1_loss(x, x_rec, reduction="none")
    return (loss_recon * mask).sum() / (mask.sum() + 1e-5) / x.shape[1]


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("t", [0.01, 0.1, 0.5])
def test_nnclr_loss_parity(n, d, t, rng):
    # solo-learn's neighbours come from a buffer (no gradient there to compare): values and
    # the predictions' gradient (tests/test_losses_nn_v3_mim.py checks the stop-gradient).
    nn, p = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    _compare(lambda a, b: losses.nnclr_loss(a, b, t), lambda a, b: torch_nnclr(a, b, t),
             [nn, p], [False, True])


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("t", [0.01, 0.2, 1.0])
def test_mocov3_loss_parity(n, d, t, rng):
    _compare(lambda a, b: losses.mocov3_loss(a, b, t), lambda a, b: torch_mocov3(a, b, t),
             [rng.standard_normal((n, d)), rng.standard_normal((n, d))], [True, True])


@pytest.mark.parametrize("b,c,g,p", [(1, 1, 2, 2), (2, 3, 4, 2), (3, 1, 2, 4)])
def test_simmim_loss_parity(b, c, g, p, rng):
    patch_mask = (rng.random((b, g, g)) < 0.6).astype(np.float64)
    pixel_mask = patch_mask.repeat(p, 1).repeat(p, 2)
    shape = (b, c, g * p, g * p)
    _compare(lambda r, x: losses.simmim_loss(r, x, pixel_mask),
             lambda r, x: torch_simmim(r, x, torch.tensor(patch_mask), p),
             [rng.standard_normal(shape), rng.standard_normal(shape)], [True, False])


# ------------------------------------------------------------------------------- lightly

def _load_lightly():
    """lightly's memory-bank and NT-Xent modules loaded by file under stub parent packages
    (their real ``__init__`` files import torchvision); None if lightly is not installed."""
    spec = importlib.util.find_spec("lightly")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = spec.submodule_search_locations[0]
    saved = {k: v for k, v in sys.modules.items() if k == "lightly" or k.startswith("lightly.")}
    try:
        for pkg in ("lightly", "lightly.models", "lightly.models.modules", "lightly.loss",
                    "lightly.utils"):
            mod = types.ModuleType(pkg)
            mod.__path__ = [os.path.join(root, *pkg.split(".")[1:])]
            sys.modules[pkg] = mod
        sys.modules["lightly.models.utils"] = types.ModuleType("lightly.models.utils")
        sys.modules["lightly.models"].utils = sys.modules["lightly.models.utils"]
        loaded = {}
        for name in ("utils.dist", "models.modules.memory_bank",
                     "models.modules.nn_memory_bank", "loss.ntx_ent_loss"):
            full = "lightly." + name
            s = importlib.util.spec_from_file_location(
                full, os.path.join(root, *name.split(".")) + ".py")
            module = importlib.util.module_from_spec(s)
            sys.modules[full] = module
            s.loader.exec_module(module)
            loaded[name] = module
        return loaded
    finally:
        for k in [k for k in sys.modules if k == "lightly" or k.startswith("lightly.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def lightly():
    mods = _load_lightly()
    if mods is None:
        pytest.skip("lightly is not installed (pip install --no-deps lightly)")
    return mods


@pytest.mark.parametrize("n,q,d", [(1, 3, 2), (8, 64, 4), (32, 128, 16)])
def test_nearest_neighbours_is_lightlys_nn_memory_bank(lightly, n, q, d, rng):
    z, support = rng.standard_normal((n, d)), rng.standard_normal((q, d))
    bank = lightly["models.modules.nn_memory_bank"].NNMemoryBankModule(size=(q, d))
    bank.bank = torch.tensor(support.T.copy() if bank.bank.shape == (d, q) else support)
    theirs = bank(torch.tensor(z), update=False).numpy()
    ours = losses.nearest_neighbours(ms.tensor(z), ms.tensor(support)).numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_lightlys_nnclr_criterion_is_nt_xent_of_neighbours_and_predictions(lightly, n, d, t,
                                                                           rng):
    criterion = lightly["loss.ntx_ent_loss"].NTXentLoss(temperature=t)
    _compare(lambda a, b: losses.nt_xent(a, b, t), criterion,
             [rng.standard_normal((n, d)), rng.standard_normal((n, d))], [True, True])
