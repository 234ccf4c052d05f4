"""PyTorch parity of minissl.losses in float64: values and input gradients.

The torch versions below are written from each paper's official formulation (see the
docstrings in minissl/losses.py for the repositories they were checked against), on purpose
in a different form from ours wherever the official code differs in construction: SimCLR's
two-block logits with a large negative mask instead of one (2N, 2N) matrix with -inf, MoCo's
(D, K) queue layout, BatchNorm1d(affine=False) for Barlow Twins, torch.distributions for the
KL, torch.pdist for uniformity.
"""
import math

import numpy as np
import pytest

import minissl as ms
from minissl import losses

torch = pytest.importorskip("torch")
tF = torch.nn.functional


# ------------------------------------------------------------------------------------------
# Torch versions of the official formulas
# ------------------------------------------------------------------------------------------


def torch_nt_xent(z1, z2, t):
    # SimCLR (google-research/simclr objective.py layout): logits of view a against [b, a],
    # the self-similarity pushed down by a large number; mean over both views' anchors.
    large = 1e9
    h1, h2 = tF.normalize(z1, dim=1), tF.normalize(z2, dim=1)
    n = h1.shape[0]
    labels = torch.arange(n)
    self_mask = torch.eye(n, dtype=h1.dtype) * large
    l_aa = h1 @ h1.T / t - self_mask
    l_bb = h2 @ h2.T / t - self_mask
    l_ab = h1 @ h2.T / t
    l_ba = h2 @ h1.T / t
    loss_a = tF.cross_entropy(torch.cat([l_ab, l_aa], dim=1), labels)
    loss_b = tF.cross_entropy(torch.cat([l_ba, l_bb], dim=1), labels)
    return (loss_a + loss_b) / 2


def torch_info_nce(q, k, neg, t):
    # MoCo (facebookresearch/moco builder.py): the queue is stored (D, K).
    q, k = tF.normalize(q, dim=1), tF.normalize(k, dim=1)
    queue = tF.normalize(neg.detach(), dim=1).T
    l_pos = torch.einsum("nc,nc->n", q, k)[:, None]
    l_neg = torch.einsum("nc,ck->nk", q, queue)
    logits = torch.cat([l_pos, l_neg], dim=1) / t
    return tF.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))


def torch_clip(img, txt, logit_scale):
    # CLIP (paper Fig. 3; openai/CLIP model.py for the logits).
    img, txt = tF.normalize(img, dim=1), tF.normalize(txt, dim=1)
    logits_per_image = logit_scale.exp() * img @ txt.T
    labels = torch.arange(img.shape[0])
    return (tF.cross_entropy(logits_per_image, labels)
            + tF.cross_entropy(logits_per_image.T, labels)) / 2


def torch_byol(p, z):
    # BYOL regression loss: squared distance of l2-normalised vectors, target stop-gradient.
    p, z = tF.normalize(p, dim=-1), tF.normalize(z.detach(), dim=-1)
    return ((p - z) ** 2).sum(dim=-1).mean()


def torch_simsiam(p, z):
    # SimSiam (facebookresearch/simsiam main_simsiam.py): nn.CosineSimilarity(dim=1).
    return -torch.nn.CosineSimilarity(dim=1)(p, z.detach()).mean()


def torch_barlow(z1, z2, lambd):
    # Barlow Twins (facebookresearch/barlowtwins main.py): BatchNorm1d(affine=False).
    n, d = z1.shape
    bn = torch.nn.BatchNorm1d(d, affine=False).double().train()
    c = bn(z1).T @ bn(z2) / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c[~torch.eye(d, dtype=torch.bool)].pow(2).sum()
    return on_diag + lambd * off_diag


def torch_vicreg(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, eps=1e-4):
    # VICReg (facebookresearch/vicreg main_vicreg.py, VICReg.forward).
    n, d = x.shape
    repr_loss = tF.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + eps)
    std_y = torch.sqrt(y.var(dim=0) + eps)
    std_loss = tF.relu(1 - std_x).mean() / 2 + tF.relu(1 - std_y).mean() / 2
    off = ~torch.eye(d, dtype=torch.bool)
    cov_x = x.T @ x / (n - 1)
    cov_y = y.T @ y / (n - 1)
    cov_loss = cov_x[off].pow(2).sum() / d + cov_y[off].pow(2).sum() / d
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def torch_kl(mu, logvar):
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    return torch.distributions.kl_divergence(q, p).sum(dim=1).mean()


def torch_mae(pred, target, mask, norm_pix):
    # MAE (facebookresearch/mae models_mae.py, forward_loss).
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def torch_cpc(pred, z):
    # CPC (van den Oord et al. 2018, eq. 4) as one einsum: every prediction scored against every
    # frame of the batch, log-softmax over all frames, the k-step future frame picked out.
    B, T, K, _ = pred.shape
    scores = torch.einsum("btkd,scd->btksc", pred, z).reshape(B, T, K, B * T)
    logp = torch.log_softmax(scores, dim=-1)
    per_step = []
    for k in range(1, K + 1):
        pos = torch.arange(B)[:, None] * T + torch.arange(k, T)[None]      # (B, T - k)
        picked = logp[:, :T - k, k - 1].gather(-1, pos[..., None])
        per_step.append(-picked.mean())
    return torch.stack(per_step).mean()


def torch_alignment(x, y, alpha):
    # Wang & Isola (ssnl/align_uniform), on normalised rows.
    x, y = tF.normalize(x, dim=1), tF.normalize(y, dim=1)
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def torch_uniformity(x, t):
    x = tF.normalize(x, dim=1)
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


# ------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------


def _compare(ours, theirs, arrays, grad_flags, rtol=1e-9, atol=1e-10):
    """Evaluate both losses on the same float64 data; compare values and input gradients."""
    m_in = [ms.tensor(a, requires_grad=g) for a, g in zip(arrays, grad_flags)]
    t_in = [torch.tensor(a, dtype=torch.float64, requires_grad=g)
            for a, g in zip(arrays, grad_flags)]
    m_out, t_out = ours(*m_in), theirs(*t_in)
    assert m_out.dtype == np.float64 and m_out.shape == ()
    assert m_out.item() == pytest.approx(t_out.item(), rel=rtol, abs=atol)
    m_out.backward()
    t_out.backward()
    for i, (m, t) in enumerate(zip(m_in, t_in)):
        if t.grad is None:
            assert m.grad is None, f"input {i}: torch gives no gradient, minissl does"
        else:
            np.testing.assert_allclose(np.asarray(m.grad), t.grad.numpy(), rtol=rtol,
                                       atol=atol, err_msg=f"gradient of input {i}")


SIZES = [(2, 2), (3, 7), (8, 4), (32, 16)]


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("t", [0.01, 0.1, 0.5])
def test_nt_xent_parity(n, d, t, rng):
    _compare(lambda a, b: losses.nt_xent(a, b, t), lambda a, b: torch_nt_xent(a, b, t),
             [rng.standard_normal((n, d)), rng.standard_normal((n, d))], [True, True])


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("k", [1, 16])
@pytest.mark.parametrize("t", [0.01, 0.07, 0.5])
def test_info_nce_parity(n, d, k, t, rng):
    # negatives require grad on both sides: both must give them none.
    _compare(lambda a, b, c: losses.info_nce(a, b, c, t),
             lambda a, b, c: torch_info_nce(a, b, c, t),
             [rng.standard_normal((n, d)), rng.standard_normal((n, d)),
              rng.standard_normal((k, d))], [True, True, True])


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("scale", [0.0, math.log(1 / 0.07), math.log(1e4)])
def test_clip_parity(n, d, scale, rng):
    _compare(losses.clip_loss, torch_clip,
             [rng.standard_normal((n, d)), rng.standard_normal((n, d)), np.array(scale)],
             [True, True, True])


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("which", ["byol", "simsiam"])
def test_byol_simsiam_parity(n, d, which, rng):
    ours, theirs = {"byol": (losses.byol_loss, torch_byol),
                    "simsiam": (losses.simsiam_loss, torch_simsiam)}[which]
    _compare(ours, theirs, [rng.standard_normal((n, d)), rng.standard_normal((n, d))],
             [True, True])


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("lambd", [5e-3, 0.5])
def test_barlow_twins_parity(n, d, lambd, rng):
    _compare(lambda a, b: losses.barlow_twins_loss(a, b, lambd),
             lambda a, b: torch_barlow(a, b, lambd),
             [rng.standard_normal((n, d)), 3 * rng.standard_normal((n, d)) + 1], [True, True])


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("spread", [0.3, 3.0])
@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 5.0, 2.0, 1e-3)])
def test_vicreg_parity(n, d, spread, weights, rng):
    _compare(lambda a, b: losses.vicreg_loss(a, b, *weights),
             lambda a, b: torch_vicreg(a, b, *weights),
             [spread * rng.standard_normal((n, d)), spread * rng.standard_normal((n, d))],
             [True, True])


@pytest.mark.parametrize("n,d", SIZES)
def test_kl_normal_parity(n, d, rng):
    _compare(losses.kl_normal, torch_kl,
             [rng.standard_normal((n, d)), rng.standard_normal((n, d))], [True, True])


@pytest.mark.parametrize("shape", [(1, 1, 2), (2, 5, 3), (4, 16, 12)])
@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_parity(shape, norm_pix, rng):
    mask = (rng.random(shape[:2]) < 0.5).astype(np.float64)
    mask.flat[0] = 1.0
    mask_t = torch.tensor(mask)
    _compare(lambda p, t: losses.mae_loss(p, t, mask, norm_pix),
             lambda p, t: torch_mae(p, t, mask_t, norm_pix),
             [rng.standard_normal(shape), rng.standard_normal(shape)], [True, True])


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("alpha", [1, 2, 3])
def test_alignment_parity(n, d, alpha, rng):
    _compare(lambda a, b: losses.alignment(a, b, alpha), lambda a, b: torch_alignment(a, b, alpha),
             [rng.standard_normal((n, d)), rng.standard_normal((n, d))], [True, True])


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("t", [0.5, 2, 5])
def test_uniformity_parity(n, d, t, rng):
    _compare(lambda a: losses.uniformity(a, t), lambda a: torch_uniformity(a, t),
             [rng.standard_normal((n, d))], [True])


@pytest.mark.parametrize("loss", ["nt_xent", "clip"])
def test_parity_with_an_all_zero_row(loss, rng):
    # F.normalize clamps the norm at 1e-12 in both libraries: same finite value and gradient.
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    a[1] = 0.0
    if loss == "nt_xent":
        _compare(lambda x, y: losses.nt_xent(x, y, 0.5), lambda x, y: torch_nt_xent(x, y, 0.5),
                 [a, b], [True, True], rtol=1e-7)
    else:
        _compare(losses.clip_loss, torch_clip, [a, b, np.array(1.0)], [True, True, True],
                 rtol=1e-7)


@pytest.mark.parametrize("b, t, k, d", [(1, 2, 1, 3), (3, 8, 4, 5), (8, 12, 6, 16)])
def test_cpc_loss_parity(b, t, k, d, rng):
    _compare(losses.cpc_loss, torch_cpc, [rng.standard_normal((b, t, k, d)),
                                          rng.standard_normal((b, t, d))], [True, True])
