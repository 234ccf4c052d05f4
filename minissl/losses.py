"""Self-supervised objectives, each a plain function of Tensors that returns a scalar Tensor.

    from minissl import losses
    loss = losses.nt_xent(z1, z2, temperature=0.5)      # z1, z2: (N, D), two views of N images
    loss.backward()

The families (see docs/design.md for the taxonomy):

* contrastive, instance discrimination: ``nt_xent`` (SimCLR), ``info_nce`` (MoCo),
  ``nnclr_loss`` with ``nearest_neighbours`` (NNCLR), ``mocov3_loss`` (MoCo v3)
* contrastive, predictive coding: ``cpc_loss`` (CPC / wav2vec: future frames of a sequence)
* contrastive, multimodal: ``clip_loss`` (CLIP)
* non-contrastive: ``byol_loss`` (BYOL), ``simsiam_loss`` (SimSiam), ``barlow_twins_loss``
  (Barlow Twins), ``vicreg_loss`` (VICReg)
* self-distillation and clustering, over multi-crop lists: ``dino_loss`` with
  ``dino_update_center`` (DINO), ``swav_loss`` with ``sinkhorn_knopp`` (SwAV)
* self-predictive: ``kl_normal`` (the VAE's KL term), ``mae_loss`` (masked autoencoder),
  ``simmim_loss`` (SimMIM)
* diagnostics: ``alignment`` and ``uniformity`` (Wang & Isola 2020)

Every loss is composed of differentiable primitives (``minissl.functional`` and Tensor
methods), so its gradient is the chain rule through ops that are each gradchecked; the
contrastive ones go through the fused, max-shifted ``F.cross_entropy`` (log-sum-exp), so a
temperature of 0.01 or logits of 1e4 do not overflow, and through ``F.normalize``, whose
clamped norm keeps an all-zero embedding row finite (value and gradient).

Conventions: embeddings are (N, D) matrices, one row per example; "cos" is the cosine
similarity of rows; cross-entropies are averaged over their anchors (rows). Shapes are
checked up front and a bad one raises a ValueError naming the loss and the shapes.
"""
import math
import numbers

import numpy as np

from . import functional as F
from ._loss_checks import (_check_float, _check_matrix, _check_pair, _indices, _number,
                           _positive)
from .autograd import Tensor
from .backend import get_array_module
from .losses_multicrop import dino_loss, dino_update_center, sinkhorn_knopp, swav_loss
from .ops.shape import cat

__all__ = ["nt_xent", "info_nce", "clip_loss", "byol_loss", "simsiam_loss",
           "barlow_twins_loss", "vicreg_loss", "kl_normal", "mae_loss", "alignment",
           "uniformity", "cpc_loss",
           "dino_loss", "dino_update_center", "sinkhorn_knopp", "swav_loss",
           "nearest_neighbours", "nnclr_loss", "mocov3_loss", "simmim_loss",
           "simmim_norm_targets"]


# ------------------------------------------------------------------------------------------
# Contrastive: instance discrimination and multimodal
# ------------------------------------------------------------------------------------------

def nt_xent(z1, z2, temperature=0.5):
    r"""SimCLR's normalised-temperature cross-entropy (NT-Xent) of two views.

    Stack the views, z = [z1; z2] (2N, D), and L2-normalise its rows. Row i of the first view
    and row i of the second are a positive pair; for each of the 2N anchors a, with p(a) its
    positive, the loss is a (2N-1)-way classification of the positive against the other
    2N-2 rows, with cosine similarities over the temperature T as logits:

        l(a) = -log  exp(z_a . z_p(a) / T) / sum_{b != a} exp(z_a . z_b / T)
        loss = 1/(2N) sum_a l(a)

    The self-similarity z_a . z_a is excluded (its logit is set to -inf). Its gradient is that
    of the cross-entropy, softmax - onehot, pulled back through the cosine matrix and the
    normalisation.

    Shapes: z1, z2 (N, D) with N >= 2 (one pair has no negatives). Returns a scalar.

    Paper: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of
    Visual Representations", ICML 2020, eq. (1). Checked against the official code
    (google-research/simclr, ``objective.py``, ``add_contrastive_loss``): it masks the
    self-similarity with a large negative number and returns ``loss_a + loss_b``, the SUM of
    the two views' mean cross-entropies, i.e. twice this value; we take the mean over all 2N
    anchors as the paper's eq. (1) and most re-implementations do.
    """
    fn = "nt_xent"
    _check_pair(fn, ("z1", "z2"), z1, z2, min_rows=2)
    temperature = _positive(fn, "temperature", temperature)
    n = z1.shape[0]
    xp = get_array_module(z1.data)
    z = F.normalize(cat([z1, z2], dim=0), dim=1)             # (2N, D), unit rows
    logits = z @ (z.T / temperature)                         # (2N, 2N), cos / T
    logits = logits.fill_diagonal(-math.inf)                 # no self-similarity
    # The positive of row i is row i + N, and of row i + N is row i.
    target = _indices((xp.arange(2 * n) + n) % (2 * n))            # (2N,) the other view
    return F.cross_entropy(logits, target)


def info_nce(query, key, negatives, temperature=0.07):
    r"""MoCo's InfoNCE: each query against its key (positive) and a queue of K negatives.

    With q, k, n_j all L2-normalised rows, the logits of query i are
    [q_i . k_i, q_i . n_1, ..., q_i . n_K] / T, the positive at index 0, and

        loss = 1/N sum_i -log  exp(q_i . k_i / T) / (exp(q_i . k_i / T) + sum_j exp(q_i . n_j / T))

    ``negatives`` is detached: the queue holds keys of earlier batches, a constant here, so no
    gradient reaches it. ``key`` is not detached (MoCo computes it from the momentum encoder
    under no_grad, which already makes it a constant; detach it yourself otherwise).

    Shapes: query, key (N, D); negatives (K, D), K >= 1. Returns a scalar.

    Paper: He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised Visual
    Representation Learning", CVPR 2020, eq. (1); van den Oord, Li, Vinyals, "Representation
    Learning with Contrastive Predictive Coding", 2018 (InfoNCE). Checked against the official
    code (facebookresearch/moco, ``moco/builder.py``, ``MoCo.forward``): logits
    cat([l_pos, l_neg]) / T with labels 0 and cross-entropy.
    """
    fn = "info_nce"
    _check_pair(fn, ("query", "key"), query, key)
    _check_matrix(fn, "negatives", negatives)
    if negatives.shape[1] != query.shape[1]:
        raise ValueError(f"info_nce: negatives must be (K, D) with the D of query; got query "
                         f"{query.shape} and negatives {negatives.shape}")
    if negatives.dtype != query.dtype:
        raise TypeError(f"info_nce: query and negatives must share one dtype, got "
                        f"{query.dtype} and {negatives.dtype}")
    temperature = _positive(fn, "temperature", temperature)
    xp = get_array_module(query.data)
    q = F.normalize(query, dim=1)                              # (N, D)
    k = F.normalize(key, dim=1)                                # (N, D)
    neg = F.normalize(negatives.detach(), dim=1)               # (K, D), a constant
    l_pos = (q * k).sum(dim=1, keepdim=True)                   # (N, 1)
    l_neg = q @ neg.T                                          # (N, K)
    logits = cat([l_pos, l_neg], dim=1) / temperature          # (N, 1 + K)
    target = _indices(xp.zeros(query.shape[0], dtype=np.int64))  # the positive is class 0
    return F.cross_entropy(logits, target)


def clip_loss(image_features, text_features, logit_scale):
    r"""CLIP's symmetric contrastive loss of N matching (image, text) pairs.

    With u_i, v_j the L2-normalised image and text rows and s = exp(logit_scale),

        logits = s * U V^T                                   (N, N), logits_ij = s u_i . v_j
        loss   = ( CE(logits, [0..N-1]) + CE(logits^T, [0..N-1]) ) / 2

    the first cross-entropy classifies each image's text among the N texts (rows), the second
    each text's image among the N images (columns).

    ``logit_scale`` is the learnable LOG of the inverse temperature: a scalar Tensor (shape ()
    or (1,)) or a Python number (then a constant). CLIP initialises it to log(1/0.07) and
    clamps s to at most 100 in its training loop; no clamp is applied here.

    Shapes: image_features, text_features (N, D), N >= 2. Returns a scalar.

    Paper: Radford et al., "Learning Transferable Visual Models From Natural Language
    Supervision", ICML 2021, Figure 3 (pseudo-code). Checked against the official code
    (openai/CLIP, ``clip/model.py``, ``CLIP.forward``: ``logit_scale.exp() * image_features
    @ text_features.t()``) and the paper's symmetric cross-entropy.
    """
    fn = "clip_loss"
    _check_pair(fn, ("image_features", "text_features"), image_features, text_features,
                min_rows=2)
    if isinstance(logit_scale, Tensor):
        if logit_scale.data.size != 1 or logit_scale.ndim > 1:
            raise ValueError(f"clip_loss: logit_scale must be a scalar tensor (shape () or "
                             f"(1,)), got shape {logit_scale.shape}")
        scale = logit_scale.exp()
    elif isinstance(logit_scale, numbers.Real) and not isinstance(logit_scale, bool):
        scale = math.exp(_number(fn, "logit_scale", logit_scale))
    else:
        raise TypeError(f"clip_loss: logit_scale must be a scalar Tensor or a number, got "
                        f"{type(logit_scale).__name__}")
    n = image_features.shape[0]
    xp = get_array_module(image_features.data)
    img = F.normalize(image_features, dim=1)                   # (N, D)
    txt = F.normalize(text_features, dim=1)                    # (N, D)
    logits = scale * (img @ txt.T)                             # (N, N): image i vs text j
    target = _indices(xp.arange(n))                            # pair i matches pair i
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) * 0.5


def cpc_loss(predictions, z, offset=0):
    r"""Contrastive predictive coding: InfoNCE on K future steps, negatives from the batch.

    ``predictions[b, t, k - 1]`` is the model's guess W_k c_{b,t} of the encoding z_{b,t+k}
    k steps after t. For each step k and each anchor (b, t) with t + k < T, the candidates are
    all B T encodings of the batch: the positive z_{b,t+k}, the other frames of the same
    sequence and every frame of the other sequences. With the log-bilinear score
    f_k = exp(z_j^T W_k c_{b,t}) of the paper,

        L_k  = mean_{b, t < T - k}  -log  exp(p . z_{b,t+k}) / sum_{b', t'} exp(p . z_{b',t'})
        loss = 1/K sum_{k=1..K} L_k

    Shapes: predictions (B, T, K, D), z (B, T, D), K < T. Returns a scalar. (Equal z give
    log(B T) for every anchor.) Data-parallel, z may hold the frames of the whole global batch
    (M >= B sequences, ``dist.all_gather``) and predictions those of this rank's sequences
    ``offset .. offset + B - 1`` of it: the anchors are this rank's, the candidates everyone's,
    and the mean of the ranks' losses is the one-process loss.

    Paper: van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive
    Coding", 2018, eq. (4); negatives drawn from the same sequence as in wav2vec (Schneider,
    Baevski, Collobert, Auli, Interspeech 2019; official code facebookresearch/fairseq,
    ``fairseq/models/wav2vec/wav2vec.py``, ``Wav2VecPredictionsModel``, which samples 10 of
    them and scores them with a binary cross-entropy; the ``infonce`` option there is this
    softmax). All frames of the batch stand in for the sampled ones: no sampling noise, and
    at these sizes the B T x B T scores cost less than a gather.
    """
    fn = "cpc_loss"
    _check_float(fn, "predictions", predictions)
    _check_float(fn, "z", z)
    if predictions.ndim != 4 or z.ndim != 3 or predictions.shape[1] != z.shape[1] \
            or predictions.shape[3] != z.shape[2] \
            or not 0 <= offset <= z.shape[0] - predictions.shape[0]:
        raise ValueError(f"{fn}: expected predictions (B, T, K, D) and z (M, T, D) of one T and "
                         f"D, with sequences offset .. offset + B - 1 of z, got "
                         f"{predictions.shape}, {z.shape} and offset {offset}")
    B, T, K, D = predictions.shape
    if not 1 <= K < T:
        raise ValueError(f"{fn}: needs 1 <= K < T (a future frame for every step), got K={K} "
                         f"and T={T}")
    if predictions.dtype != z.dtype:
        raise TypeError(f"{fn}: predictions and z must share one dtype, got "
                        f"{predictions.dtype} and {z.dtype}")
    xp = get_array_module(z.data)
    candidates = z.reshape(z.shape[0] * T, D)                  # (M T, D)
    total = 0.0
    for k in range(1, K + 1):
        p = predictions[:, :T - k, k - 1].reshape(B * (T - k), D)    # (B (T - k), D)
        logits = p @ candidates.T                              # (B (T - k), M T)
        # the positive of anchor (b, t) is row (offset + b) T + t + k of the candidates
        target = ((offset + xp.arange(B))[:, None] * T + xp.arange(k, T)[None]).reshape(-1)
        total = total + F.cross_entropy(logits, _indices(target))
    return total / K


# ------------------------------------------------------------------------------------------
# Non-contrastive
# ------------------------------------------------------------------------------------------

def byol_loss(prediction, target):
    r"""BYOL's regression loss: mean over rows of || p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z).

        loss = 1/N sum_i (2 - 2 p_i . z_i / (|p_i| |z_i|))

    ``target`` (the target network's projection) is detached: no gradient reaches it.
    Values: 0 when p is a positive multiple of z, 4 when p = -z. Both rows are normalised with
    ``F.normalize`` (norm clamped at 1e-12), so an all-zero row gives cos 0, no NaN.

    Shapes: prediction, target (N, D). Returns a scalar. Symmetrise over the two views in the
    training step (the paper sums loss(p1, z2') + loss(p2, z1')).

    Paper: Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, eq. (2). Checked against
    the official code (deepmind/deepmind-research, ``byol/utils/helpers.py``,
    ``regression_loss``: squared distance of l2-normalised vectors, summed over features).
    """
    fn = "byol_loss"
    _check_pair(fn, ("prediction", "target"), prediction, target)
    p = F.normalize(prediction, dim=1)                         # (N, D)
    z = F.normalize(target.detach(), dim=1)                    # (N, D), a constant
    cos = (p * z).sum(dim=1)                                   # (N,)
    return (2 - 2 * cos).mean()


def simsiam_loss(prediction, target):
    r"""SimSiam's negative cosine similarity with stop-gradient: mean over rows of -cos(p, z).

        loss = -1/N sum_i p_i . z_i / (max(|p_i|, 1e-8) max(|z_i|, 1e-8))

    ``target`` is detached (the stop-gradient that keeps SimSiam from collapsing). Values: -1
    when p is a positive multiple of z, +1 when p = -z.

    Shapes: prediction, target (N, D). Returns a scalar. The symmetric loss of the paper is
    (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2.

    Paper: Chen, He, "Exploring Simple Siamese Representation Learning", CVPR 2021, eq. (1)
    and Algorithm 1. Checked against the official code (facebookresearch/simsiam,
    ``main_simsiam.py``: ``nn.CosineSimilarity(dim=1)``, eps 1e-8, on a detached target).
    """
    fn = "simsiam_loss"
    _check_pair(fn, ("prediction", "target"), prediction, target)
    cos = F.cosine_similarity(prediction, target.detach(), dim=1, eps=1e-8)  # (N,)
    return -cos.mean()


def _standardize(z, eps):
    """Each column of z (N, D) shifted to mean 0 and divided by sqrt(biased var + eps):
    ``BatchNorm1d(D, affine=False)`` in training mode."""
    centered = z - z.mean(dim=0, keepdim=True)                         # (N, D)
    var = (centered * centered).mean(dim=0, keepdim=True)              # (1, D), biased
    return centered / (var + eps).sqrt()


def barlow_twins_loss(z1, z2, lambd=5e-3):
    r"""Barlow Twins' redundancy reduction: push the cross-correlation of the views to I.

    Each view is standardised per feature over the batch (mean 0, biased variance 1, eps
    1e-5, no affine: BatchNorm1d(affine=False)), giving z1n, z2n (N, D), and

        C    = z1n^T z2n / N                                  (D, D) cross-correlation
        loss = sum_i (1 - C_ii)^2  +  lambd * sum_{i != j} C_ij^2

    The first term makes each feature invariant to the augmentation, the second decorrelates
    the features. The standardisation makes the loss invariant (up to eps) to an affine map
    a * z + b with a > 0 of each feature of each view.

    Shapes: z1, z2 (N, D), N >= 2 (a batch statistic of one row is meaningless). Returns a
    scalar.

    Paper: Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", ICML 2021, eq. (1)-(2). Checked against the official code
    (facebookresearch/barlowtwins, ``main.py``, ``BarlowTwins.forward``: ``bn(z1).T @
    bn(z2) / batch_size``, on-diagonal ``(c_ii - 1)^2`` plus ``lambd`` times the off-diagonal
    squares).
    """
    fn = "barlow_twins_loss"
    _check_pair(fn, ("z1", "z2"), z1, z2, min_rows=2)
    lambd = _number(fn, "lambd", lambd)
    n, d = z1.shape
    xp = get_array_module(z1.data)
    z1n = _standardize(z1, 1e-5)                               # (N, D)
    z2n = _standardize(z2, 1e-5)                               # (N, D)
    c = (z1n.T @ z2n) / n                                      # (D, D)
    eye = xp.eye(d, dtype=z1.dtype)
    # (C - I)^2 weighted 1 on the diagonal and lambd off it: both terms in one sum.
    weight = eye + lambd * (1 - eye)                           # (D, D)
    diff = c - eye                                             # (D, D)
    return (diff * diff * weight).sum()


def _off_diagonal_sq_sum(m):
    """sum_{i != j} m_ij^2 of a square (D, D) matrix (the diagonal masked out, not subtracted,
    so no cancellation)."""
    off = m.fill_diagonal(0.0)
    return (off * off).sum()


def vicreg_loss(z1, z2, sim_weight=25.0, var_weight=25.0, cov_weight=1.0, eps=1e-4):
    r"""VICReg: variance-invariance-covariance regularisation of two views.

    With x = z1, y = z2 (N, D) and x_c, y_c their column-centred versions:

        invariance  s = 1/(N D) sum_ij (x_ij - y_ij)^2                     (F.mse_loss)
        variance    v = 1/2 [ mean_j relu(1 - sqrt(Var(x_:j) + eps))
                            + mean_j relu(1 - sqrt(Var(y_:j) + eps)) ]      (unbiased Var)
        covariance  c = 1/D sum_{i != j} Cov(x)_ij^2 + 1/D sum_{i != j} Cov(y)_ij^2,
                    Cov(x) = x_c^T x_c / (N - 1)
        loss = sim_weight * s + var_weight * v + cov_weight * c

    The variance hinge keeps every feature's standard deviation at least 1 (no collapse); the
    covariance term decorrelates features. Values: 0 for identical views whose features are
    uncorrelated with standard deviation >= 1; var_weight * (1 - sqrt(eps)) for identical
    constant (collapsed) views.

    Shapes: z1, z2 (N, D), N >= 2 (the unbiased variance needs two rows). Returns a scalar.

    Paper: Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning", ICLR 2022, eq. (1)-(6). Checked against the official code
    (facebookresearch/vicreg, ``main_vicreg.py``, ``VICReg.forward``): the variance hinge is
    averaged over the two views (``/ 2`` each) while the covariance terms are summed, both
    divided by the number of features, as here.
    """
    fn = "vicreg_loss"
    _check_pair(fn, ("z1", "z2"), z1, z2, min_rows=2)
    eps = _positive(fn, "eps", eps)
    sim_weight = _number(fn, "sim_weight", sim_weight)
    var_weight = _number(fn, "var_weight", var_weight)
    cov_weight = _number(fn, "cov_weight", cov_weight)
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)

    def var_and_cov(z):
        zc = z - z.mean(dim=0, keepdim=True)                   # (N, D), centred
        std = (zc.var(dim=0) + eps).sqrt()                     # (D,), unbiased variance
        hinge = (1 - std).relu().mean()
        cov = (zc.T @ zc) / (n - 1)                            # (D, D)
        return hinge, _off_diagonal_sq_sum(cov) / d

    var1, cov1 = var_and_cov(z1)
    var2, cov2 = var_and_cov(z2)
    variance = (var1 + var2) * 0.5
    covariance = cov1 + cov2
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance


# ------------------------------------------------------------------------------------------
# Self-predictive
# ------------------------------------------------------------------------------------------

def kl_normal(mu, logvar):
    r"""KL( N(mu, diag(exp(logvar))) || N(0, I) ), summed over the latent dims, mean over rows.

        KL_i = -1/2 sum_j (1 + logvar_ij - mu_ij^2 - exp(logvar_ij))
        loss = 1/B sum_i KL_i

    Gradient: d/dmu = mu / B, d/dlogvar = (exp(logvar) - 1) / (2B). Zero at mu = 0,
    logvar = 0 (the posterior equals the prior).

    Shapes: mu, logvar (B, D). Returns a scalar.

    Paper: Kingma, Welling, "Auto-Encoding Variational Bayes", ICLR 2014, Appendix B.
    """
    fn = "kl_normal"
    _check_pair(fn, ("mu", "logvar"), mu, logvar)
    per_dim = 1 + logvar - mu * mu - logvar.exp()              # (B, D)
    return (per_dim.sum(dim=1) * -0.5).mean()


def mae_loss(pred, target, mask, norm_pix=False):
    r"""Masked autoencoder loss: mean squared error per patch, averaged over masked patches.

        t       = target, or with norm_pix (target - mean_p) / sqrt(var_p + 1e-6) per patch
                  (mean and UNBIASED variance over the P values of the patch)
        e_bl    = 1/P sum_p (pred_blp - t_blp)^2                       (B, L)
        loss    = sum_bl mask_bl e_bl / sum_bl mask_bl

    Only the masked patches (mask 1) count: the visible ones are given to the encoder and
    predicting them is trivial. The mask may be boolean, integer or floating (a weight per
    patch); it gets no gradient. The target is not detached (it is pixels, normally constant).

    Shapes: pred, target (B, L, P) (L patches of P values each), mask (B, L). Returns a scalar.
    norm_pix needs P >= 2, and the mask must select at least one patch.

    Paper: He, Chen, Xie, Li, Dollar, Girshick, "Masked Autoencoders Are Scalable Vision
    Learners", CVPR 2022, Sec. 3 ("Reconstruction target", normalised pixels). Checked against
    the official code (facebookresearch/mae, ``models_mae.py``, ``forward_loss``).
    """
    fn = "mae_loss"
    _check_float(fn, "pred", pred)
    _check_float(fn, "target", target)
    if pred.ndim != 3 or target.shape != pred.shape:
        raise ValueError(f"mae_loss: pred and target must be (B, L, P) of one shape, got "
                         f"{pred.shape} and {target.shape}")
    if pred.dtype != target.dtype:
        raise TypeError(f"mae_loss: pred and target must share one dtype, got {pred.dtype} "
                        f"and {target.dtype}")
    xp = get_array_module(pred.data)
    m = mask.data if isinstance(mask, Tensor) else mask
    if not hasattr(m, "shape") or not hasattr(m, "dtype"):
        raise TypeError(f"mae_loss: mask must be a Tensor or an ndarray, got "
                        f"{type(mask).__name__}")
    if get_array_module(m) is not xp:
        raise ValueError(f"mae_loss: mask is on another device than pred ({pred.device})")
    if tuple(m.shape) != pred.shape[:2]:
        raise ValueError(f"mae_loss: mask must be (B, L) = {pred.shape[:2]} for pred of shape "
                         f"{pred.shape}, got {tuple(m.shape)}")
    if norm_pix and pred.shape[2] < 2:
        raise ValueError(f"mae_loss: norm_pix needs P >= 2 values per patch (unbiased "
                         f"variance), got pred of shape {pred.shape}")
    m = xp.asarray(m).astype(pred.dtype)                        # (B, L), a constant
    count = float(m.sum())
    if not count > 0:
        raise ValueError(f"mae_loss: the mask of shape {tuple(m.shape)} selects no patch "
                         f"(its sum is {count})")
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)               # (B, L, 1)
        var = target.var(dim=-1, keepdim=True)                 # (B, L, 1), unbiased
        target = (target - mean) / (var + 1e-6).sqrt()
    diff = pred - target                                       # (B, L, P)
    per_patch = (diff * diff).mean(dim=-1)                     # (B, L)
    return (per_patch * m).sum() / count


# ------------------------------------------------------------------------------------------
# Diagnostics (Wang & Isola 2020)
# ------------------------------------------------------------------------------------------

def alignment(z1, z2, alpha=2):
    r"""Alignment of positive pairs on the hypersphere: mean over rows of |u_i - v_i|^alpha.

        loss = 1/N sum_i || z1_i/|z1_i| - z2_i/|z2_i| ||_2^alpha

    Lower is better (positives close). Rows are L2-normalised first (a no-op for unit rows).
    For unit vectors and alpha = 2 it equals 2 - 2 cos, i.e. ``byol_loss`` without the stop-
    gradient. For alpha < 2 the gradient is infinite where a pair coincides.

    Shapes: z1, z2 (N, D). Returns a scalar.

    Paper: Wang, Isola, "Understanding Contrastive Representation Learning through Alignment
    and Uniformity on the Hypersphere", ICML 2020, eq. (4). Checked against the official code
    (ssnl/align_uniform, ``align_uniform/__init__.py``, ``align_loss``).
    """
    fn = "alignment"
    _check_pair(fn, ("z1", "z2"), z1, z2)
    alpha = _positive(fn, "alpha", alpha)
    diff = F.normalize(z1, dim=1) - F.normalize(z2, dim=1)    # (N, D)
    sq_dist = (diff * diff).sum(dim=1)                         # (N,)
    if alpha == 2:
        return sq_dist.mean()
    return (sq_dist ** (alpha / 2)).mean()


def uniformity(z, t=2):
    r"""Uniformity on the hypersphere: log of the mean Gaussian potential over distinct pairs.

        loss = log( 2/(N(N-1)) sum_{i<j} exp(-t |u_i - u_j|^2) ),   u_i = z_i / |z_i|

    Lower is better (points spread out); 0 when all rows coincide (collapse), -4t for two
    antipodal points. Computed as a log-mean-exp shifted by its (constant) maximum, and with
    |u_i - u_j|^2 = |u_i|^2 + |u_j|^2 - 2 u_i . u_j from one Gram matrix.

    Shapes: z (N, D), N >= 2. Returns a scalar.

    Paper: Wang, Isola, ICML 2020 (as ``alignment``), eq. (5). Checked against the official code
    (ssnl/align_uniform, ``uniform_loss``: ``pdist(x).pow(2).mul(-t).exp().mean().log()``).
    """
    fn = "uniformity"
    _check_matrix(fn, "z", z, min_rows=2)
    t = _positive(fn, "t", t)
    n = z.shape[0]
    xp = get_array_module(z.data)
    u = F.normalize(z, dim=1)                                  # (N, D)
    sq_norm = (u * u).sum(dim=1, keepdim=True)                 # (N, 1), 1 (0 for a zero row)
    sq_dist = sq_norm + sq_norm.T - 2 * (u @ u.T)              # (N, N)
    i, j = np.triu_indices(n, k=1)
    energy = sq_dist[xp.asarray(i), xp.asarray(j)] * -t        # (N(N-1)/2,), distinct pairs
    # log mean exp(e) = m + log mean exp(e - m): every exponent <= 0, and the shift m is a
    # constant (its gradient would cancel exactly), so it is taken from the data.
    m = Tensor(energy.data.max(keepdims=True).reshape(()))
    return (energy - m).exp().mean().log() + m


# ------------------------------------------------------------------------------------------
# NNCLR, MoCo v3, SimMIM
# ------------------------------------------------------------------------------------------

def nearest_neighbours(z, support):
    r"""NNCLR's support-set lookup: for each row of z, the row of ``support`` nearest in cosine.

        NN(z_i) = support[j*],   j* = argmax_j  z_i . s_j / (|z_i| |s_j|)

    Returns the support rows as stored (not re-normalised), a new Tensor (N, D) with NO
    gradient: the support set is a queue of earlier batches' embeddings, and the paper
    backpropagates only through the other view's prediction. Ties go to the smallest j; an
    all-zero z_i (cosine 0 with every row) picks row 0.

    Shapes: z (N, D), support (Q, D). Returns (N, D).

    Paper: Dwibedi, Aytar, Tompson, Sermanet, Zisserman, "With a Little Help from My Friends:
    Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021, eq. (2)
    (no official code). As lightly's ``NNMemoryBankModule`` (``lightly/models/modules/
    nn_memory_bank.py``: normalise both, ``einsum`` similarity, ``argmax``, index the bank)
    and solo-learn's ``NNCLR.find_nn`` (``solo/methods/nnclr.py``).
    """
    fn = "nearest_neighbours"
    _check_matrix(fn, "z", z)
    _check_matrix(fn, "support", support)
    if support.shape[1] != z.shape[1] or support.dtype != z.dtype:
        raise ValueError(f"nearest_neighbours: support must be (Q, D) with the D and dtype of "
                         f"z; got z {z.shape} {z.dtype} and support {support.shape} "
                         f"{support.dtype}")
    xp = get_array_module(z.data)
    zn = F.normalize(z.detach(), dim=1).data                   # (N, D)
    sn = F.normalize(support.detach(), dim=1).data             # (Q, D)
    idx = xp.argmax(zn @ sn.T, axis=1)                         # (N,) first maximum
    return Tensor(support.data[idx])                           # (N, D), a constant


def nnclr_loss(neighbours, predictions, temperature=0.1):
    r"""NNCLR's contrastive loss: each nearest neighbour must pick its image's prediction.

    With u_i = NN(z_i)/|NN(z_i)| (the support-set neighbour of view 1's projection) and
    p_j = p_j^+/|p_j^+| (view 2's predictions), an N-way classification per neighbour:

        l_i  = -log  exp(u_i . p_i / T) / sum_k exp(u_i . p_k / T)
        loss = 1/N sum_i l_i

    ``neighbours`` is detached (they come from the support queue). The paper symmetrises,
    (nnclr_loss(NN(z1), p2) + nnclr_loss(NN(z2), p1)) / 2, in the training step. Unlike
    ``nt_xent``, the negatives are the other images' predictions only (N - 1, not 2N - 2).

    Shapes: neighbours, predictions (N, D), N >= 2. Returns a scalar.

    Paper: Dwibedi et al., ICCV 2021 (see ``nearest_neighbours``), eq. (2). Checked against
    solo-learn's ``nnclr_loss_func`` (``solo/losses/nnclr.py``: ``nn @ p.T / temperature``,
    cross-entropy with the diagonal as targets). lightly's NNCLR example instead feeds the
    pair to its ``NTXentLoss``, i.e. ``nt_xent(neighbours, predictions)`` (2N anchors).
    """
    fn = "nnclr_loss"
    _check_pair(fn, ("neighbours", "predictions"), neighbours, predictions, min_rows=2)
    temperature = _positive(fn, "temperature", temperature)
    xp = get_array_module(predictions.data)
    u = F.normalize(neighbours.detach(), dim=1)                # (N, D), a constant
    p = F.normalize(predictions, dim=1)                        # (N, D)
    logits = (u @ p.T) / temperature                           # (N, N)
    return F.cross_entropy(logits, _indices(xp.arange(u.shape[0])))


def mocov3_loss(query, key, temperature=1.0):
    r"""MoCo v3's in-batch InfoNCE, scaled by 2T as the official code.

    With q_i, k_j L2-normalised, query i's positive is key i and the other N - 1 keys of the
    batch are its negatives (no queue):

        loss = 2T * 1/N sum_i -log  exp(q_i . k_i / T) / sum_j exp(q_i . k_j / T)

    The 2T factor makes the gradient's scale independent of T (the official code's comment
    leaves it unexplained; it multiplies the cross-entropy). Collapsed embeddings (all rows
    equal) give 2T log N. ``key`` is not detached: MoCo v3 computes it under no_grad with the
    momentum encoder; detach it yourself otherwise. Symmetrise in the training step:
    mocov3_loss(q1, k2) + mocov3_loss(q2, k1).

    Shapes: query, key (N, D), N >= 2. Returns a scalar.

    Paper: Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers",
    ICCV 2021, Algorithm 1. Checked against the official code (facebookresearch/moco-v3,
    ``moco/builder.py``, ``MoCo.contrastive_loss``: ``einsum('nc,mc->nm') / T``, labels
    ``arange(N)`` (offset by rank), ``CrossEntropyLoss()(logits, labels) * (2 * T)``).
    """
    fn = "mocov3_loss"
    _check_pair(fn, ("query", "key"), query, key, min_rows=2)
    temperature = _positive(fn, "temperature", temperature)
    xp = get_array_module(query.data)
    q = F.normalize(query, dim=1)                              # (N, D)
    k = F.normalize(key, dim=1)                                # (N, D)
    logits = (q @ k.T) / temperature                           # (N, N), positives on the diagonal
    return F.cross_entropy(logits, _indices(xp.arange(q.shape[0]))) * (2 * temperature)


def simmim_loss(pred, target, mask):
    r"""SimMIM's reconstruction loss: mean absolute pixel error over the masked pixels only.

        loss = sum_{b,c,h,w} mask_bhw |pred_bchw - target_bchw| / (sum_{b,h,w} mask_bhw + 1e-5) / C

    i.e. the L1 error averaged over the masked pixels and the channels (the 1e-5 guards an
    empty mask, as the official code). The mask (1 = masked, at pixel resolution: the patch
    mask repeated patch_size times along H and W) gets no gradient; nor does the target.

    Shapes: pred, target (B, C, H, W), mask (B, H, W). Returns a scalar.

    Paper: Xie, Zhang, Cao, Lin, Bao, Yao, Dai, Hu, "SimMIM: A Simple Framework for Masked
    Image Modeling", CVPR 2022, eq. (1). Checked against the official code (microsoft/SimMIM,
    ``models/simmim.py``, ``SimMIM.forward``: ``F.l1_loss(x, x_rec, reduction='none')``,
    ``(loss_recon * mask).sum() / (mask.sum() + 1e-5) / self.in_chans``).
    """
    fn = "simmim_loss"
    _check_float(fn, "pred", pred)
    _check_float(fn, "target", target)
    if pred.ndim != 4 or target.shape != pred.shape or pred.dtype != target.dtype:
        raise ValueError(f"simmim_loss: pred and target must be (B, C, H, W) of one shape and "
                         f"dtype, got {pred.shape} {pred.dtype} and {target.shape} "
                         f"{target.dtype}")
    xp = get_array_module(pred.data)
    m = mask.data if isinstance(mask, Tensor) else mask
    if not hasattr(m, "shape") or get_array_module(m) is not xp:
        raise TypeError(f"simmim_loss: mask must be a Tensor or an array on pred's device "
                        f"({pred.device}), got {type(mask).__name__}")
    B, C, H, W = pred.shape
    if tuple(m.shape) != (B, H, W):
        raise ValueError(f"simmim_loss: mask must be (B, H, W) = {(B, H, W)} for pred of "
                         f"shape {pred.shape}, got {tuple(m.shape)}")
    m = xp.asarray(m).astype(pred.dtype)[:, None]              # (B, 1, H, W), a constant
    err = (pred - target.detach()).abs()                       # (B, C, H, W)
    return (err * m).sum() / ((float(m.sum()) + 1e-5) * C)


def simmim_norm_targets(x, window):
    r"""SimMIM's normalised targets: each pixel of each channel standardised by the pixels of
    the ``window`` x ``window`` square around it that lie inside the image,

        t_bchw = (x_bchw - mu_bchw) / sqrt(s2_bchw + 1e-6),
        mu = mean of the n pixels of the square,  s2 = max(0, (mean of x^2 - mu^2) n / (n-1))

    (the unbiased variance; n = window^2 inside the image, fewer at its borders). The loss
    then asks for local contrast, not colour or brightness. ``window``: odd, >= 3.

    x: array (B, C, H, W) (float32 or float64, NumPy or CuPy); returns an array of its shape
    and dtype (computed in float64: box sums by cumulative sums). Official code:
    microsoft/Swin-Transformer ``models/simmim.py``, ``norm_targets`` (avg_pool2d with
    stride 1 and padding window // 2, ``count_include_pad=False`` for the means), used when
    ``MODEL.SIMMIM.NORM_TARGET.ENABLE`` (SwinV2's SimMIM configs: window 47 at 192 px).
    """
    if isinstance(x, Tensor):
        x = x.data
    if not isinstance(window, numbers.Integral) or window < 3 or window % 2 == 0:
        raise ValueError(f"simmim_norm_targets: window must be an odd integer >= 3, got "
                         f"{window!r}")
    if getattr(x, "ndim", None) != 4 or x.dtype.kind != "f" or x.shape[2] * x.shape[3] < 2:
        raise ValueError(f"simmim_norm_targets: x must be a float array (B, C, H, W) of 2 or "
                         f"more pixels, got {getattr(x, 'shape', type(x).__name__)}")
    xp = get_array_module(x)
    r = window // 2

    def box(a):   # sum over the window around each pixel, the image zero-padded
        s = xp.pad(a, ((0, 0), (0, 0), (r + 1, r), (r + 1, r))).cumsum(2).cumsum(3)
        return (s[:, :, window:, window:] - s[:, :, :-window, window:]
                - s[:, :, window:, :-window] + s[:, :, :-window, :-window])

    x64 = x.astype(np.float64)
    n = box(xp.ones((1, 1) + x.shape[2:]))                          # pixels inside, (1,1,H,W)
    mean = box(x64) / n
    var = xp.maximum((box(x64 * x64) / n - mean * mean) * (n / (n - 1)), 0.0)
    return ((x64 - mean) / xp.sqrt(var + 1e-6)).astype(x.dtype)
