"""The losses of the multi-crop methods: DINO's self-distillation and SwAV's swapped
prediction with Sinkhorn-Knopp codes. Part of ``minissl.losses`` (import them from there); a
file of their own because they take a LIST of outputs, one (B, K) Tensor per crop of a
multi-crop batch (``minissl.multicrop``), the global crops first.

Both are cross-entropies between a constant target distribution made from the global crops
(DINO: the centred, sharpened teacher; SwAV: equipartitioned codes) and the softmax of every
other crop's output, so both go through the max-shifted ``F.log_softmax`` and stay finite at
temperature 0.01 or logits of 1e4.
"""
import math
import numbers

from . import functional as F
from ._loss_checks import _check_matrix, _number, _positive
from .autograd import Tensor
from .backend import get_array_module

__all__ = ["dino_loss", "dino_update_center", "sinkhorn_knopp", "swav_loss"]



def _check_crops(fn, name, crops, min_crops=1):
    """A list (or tuple) of at least ``min_crops`` floating (B, K) Tensors of one shape and
    dtype: the outputs of the crops of one batch, one entry per crop."""
    if not isinstance(crops, (list, tuple)):
        raise TypeError(f"{fn}: {name} must be a list of (B, K) tensors, one per crop, got "
                        f"{type(crops).__name__}")
    if len(crops) < min_crops:
        raise ValueError(f"{fn}: {name} needs at least {min_crops} crop(s), got {len(crops)}")
    for i, c in enumerate(crops):
        _check_matrix(fn, f"{name}[{i}]", c)
        if c.shape != crops[0].shape or c.dtype != crops[0].dtype:
            raise ValueError(f"{fn}: every crop of {name} must have the shape and dtype of "
                             f"{name}[0], {crops[0].shape} {crops[0].dtype}; {name}[{i}] is "
                             f"{c.shape} {c.dtype}")


def _constant(fn, name, value, like):
    """``value`` (Tensor or array) as a host/device array of ``like``'s dtype and module."""
    data = value.data if isinstance(value, Tensor) else value
    xp = get_array_module(like.data)
    if not hasattr(data, "shape") or get_array_module(data) is not xp:
        raise TypeError(f"{fn}: {name} must be a Tensor or an array on {like.device}, got "
                        f"{type(value).__name__}")
    return xp.asarray(data, dtype=like.dtype)


def dino_loss(student_out, teacher_out, center, student_temp=0.1, teacher_temp=0.04):
    r"""DINO's self-distillation cross-entropy over the crops of a multi-crop batch.

    ``teacher_out`` holds the teacher's outputs on the G global crops (G = 2 in DINO),
    ``student_out`` the student's on all V crops, the same G global crops FIRST, then the
    local ones. The teacher's output is centred (c, a running mean kept by
    ``dino_update_center``) and sharpened by a low temperature; every teacher crop i is the
    target of every student crop v except its own view (v = i):

        P_t^i = softmax((t_i - c) / teacher_temp)          (B, K), a constant (stop-gradient)
        log P_s^v = log_softmax(s_v / student_temp)        (B, K)
        loss = 1 / (G (V - 1)) sum_i sum_{v != i} 1/B sum_b -sum_k P_t^i[b, k] log P_s^v[b, k]

    Centring stops one dimension from dominating, sharpening stops the uniform collapse
    (Caron et al. 2021, section 3 and Figure 7). Values: log K when every output is constant
    (teacher = student = uniform); H(P_t) + KL(P_t || P_s) in general.

    Shapes: student_out a list of V (B, K) Tensors, teacher_out a list of G <= V (B, K),
    center (1, K) or (K,) (a Tensor or an array: a constant). Returns a scalar.

    Paper: Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin, "Emerging Properties in
    Self-Supervised Vision Transformers", ICCV 2021, Algorithm 1. Checked against the official
    code (facebookresearch/dino, ``main_dino.py``, ``DINOLoss.forward``: ``v == iq`` skipped,
    sum of the per-pair batch means divided by the number of pairs) and lightly's
    ``lightly/loss/dino_loss.py``. The teacher-temperature warm-up schedule of the official
    code is the caller's (here a constant ``teacher_temp``).
    """
    fn = "dino_loss"
    _check_crops(fn, "student_out", student_out, min_crops=2)
    _check_crops(fn, "teacher_out", teacher_out)
    if len(teacher_out) > len(student_out) or teacher_out[0].shape != student_out[0].shape:
        raise ValueError(f"dino_loss: teacher_out must be G <= V crops of the student's shape; "
                         f"got {len(teacher_out)} x {teacher_out[0].shape} and "
                         f"{len(student_out)} x {student_out[0].shape}")
    student_temp = _positive(fn, "student_temp", student_temp)
    teacher_temp = _positive(fn, "teacher_temp", teacher_temp)
    k = student_out[0].shape[1]
    c = _constant(fn, "center", center, student_out[0])
    if c.size != k:
        raise ValueError(f"dino_loss: center must hold K = {k} values, got shape {c.shape}")
    c = c.reshape(1, k)
    log_p = [F.log_softmax(s / student_temp, dim=1) for s in student_out]      # V x (B, K)
    total, terms = 0, 0
    for i, t in enumerate(teacher_out):
        q = F.softmax((t.detach() - c) / teacher_temp, dim=1)                  # (B, K)
        for v, lp in enumerate(log_p):
            if v != i:                                   # a view is not its own target
                total = total + (q * lp).sum(dim=1).mean() * -1
                terms += 1
    return total / terms


def dino_update_center(center, teacher_out, momentum=0.9):
    r"""DINO's centre update: an EMA of the teacher's mean output over the global crops.

        c <- momentum * c + (1 - momentum) * 1/(G B) sum_i sum_b t_i[b]

    Returns the new centre, an array of ``center``'s shape (no gradient; ``center`` itself is
    not modified). Call it once per step with the same ``teacher_out`` as ``dino_loss``, after
    the loss (the official code updates it at the end of ``DINOLoss.forward``); data-parallel,
    give it the teacher outputs of every rank (the official code all-reduces the sum).
    """
    fn = "dino_update_center"
    _check_crops(fn, "teacher_out", teacher_out)
    momentum = _number(fn, "momentum", momentum)
    c = _constant(fn, "center", center, teacher_out[0])
    if c.size != teacher_out[0].shape[1]:
        raise ValueError(f"dino_update_center: center must hold K = {teacher_out[0].shape[1]} "
                         f"values, got shape {c.shape}")
    xp = get_array_module(c)
    batch_center = xp.concatenate([t.data for t in teacher_out]).mean(axis=0)  # (K,)
    return momentum * c + (1 - momentum) * batch_center.reshape(c.shape)


def _logsumexp(a, axis, xp):
    m = a.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    return m + xp.log(xp.exp(a - m).sum(axis=axis, keepdims=True))


def sinkhorn_knopp(scores, epsilon=0.05, iterations=3):
    r"""SwAV's soft codes: Sinkhorn-Knopp equipartition of B samples over K prototypes.

    With scores S (B, K) (cosines of the samples to the prototypes), the official iteration
    on Q = exp(S / epsilon)^T (K, B):

        Q <- Q / sum(Q)
        repeat ``iterations`` times:
            Q <- Q / (K * row sums)          each prototype gets total mass 1/K
            Q <- Q / (B * column sums)       each sample gets total mass 1/B
        return (B * Q)^T                     (B, K): each row sums to 1 (exactly), each
                                             column to about B/K (exactly at convergence)

    computed here in the log domain (log-sum-exp for every sum), which is the same algebra
    without the overflow of exp(S / epsilon) at large scores or its underflow to a 0/0. Rows
    sum to 1 and columns to B/K in the limit; uniform scores give uniform codes 1/K. No
    gradient: the codes are targets.

    Shapes: scores (B, K), a Tensor (detached) or an array. Returns a (B, K) array.

    Paper: Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual
    Features by Contrasting Cluster Assignments", NeurIPS 2020, section 3.1 and Algorithm 1.
    Checked against the official code (facebookresearch/swav, ``main_swav.py``,
    ``distributed_sinkhorn``) and lightly's ``lightly/loss/swav_loss.py`` (``sinkhorn``).
    Data-parallel, the official code all-reduces the sums over every rank's samples.
    """
    fn = "sinkhorn_knopp"
    s = scores.data if isinstance(scores, Tensor) else scores
    if getattr(s, "ndim", None) != 2 or min(s.shape) < 1 or s.dtype.kind != "f":
        raise ValueError(f"sinkhorn_knopp: scores must be a floating (B, K) matrix, got "
                         f"{getattr(s, 'shape', type(scores).__name__)}")
    epsilon = _positive(fn, "epsilon", epsilon)
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) \
            or iterations < 0:
        raise ValueError(f"sinkhorn_knopp: iterations must be an int >= 0, got {iterations!r}")
    xp = get_array_module(s)
    b, k = s.shape
    log_q = s.T / epsilon                                          # (K, B)
    log_q = log_q - _logsumexp(log_q.reshape(1, -1), 1, xp)        # total mass 1
    for _ in range(int(iterations)):
        log_q = log_q - _logsumexp(log_q, 1, xp) - math.log(k)     # rows (prototypes): 1/K
        log_q = log_q - _logsumexp(log_q, 0, xp) - math.log(b)     # columns (samples): 1/B
    return xp.exp(log_q + math.log(b)).T                           # (B, K)


def swav_loss(scores, n_global=2, temperature=0.1, epsilon=0.05, iterations=3, codes=None):
    r"""SwAV's swapped prediction over the crops of a multi-crop batch.

    ``scores`` holds, per crop, the (B, K) scores of the batch against the K prototypes
    (cosines), the ``n_global`` global crops first. Each global crop i gets codes q_i from
    Sinkhorn-Knopp (``sinkhorn_knopp``, no gradient); every OTHER crop v predicts them:

        q_i   = sinkhorn_knopp(s_i, epsilon, iterations)        (B, K), a constant
        l(i)  = 1/(V - 1) sum_{v != i} 1/B sum_b -sum_k q_i[b, k] log softmax(s_v / T)[b, k]
        loss  = 1/n_global sum_i l(i)

    Only the global crops are assigned codes (the official ``crops_for_assign = [0, 1]``): the
    local crops only predict the codes of the global ones. Values: log K when the scores are
    constant (uniform codes, uniform predictions).

    ``codes``: the q_i given instead of computed (a list of ``n_global`` (B, K) arrays), for a
    data-parallel step whose Sinkhorn runs over the scores of every rank (the official
    ``distributed_sinkhorn`` all-reduces its sums) and gives each rank its rows.

    Shapes: scores a list of V (B, K) Tensors, 1 <= n_global <= V, V >= 2. Returns a scalar.

    Paper: Caron et al., NeurIPS 2020 (as ``sinkhorn_knopp``), eq. (1)-(2). Checked against
    the official code (facebookresearch/swav, ``main_swav.py``, ``train``: ``subloss`` summed
    over ``np.delete(np.arange(sum(nmb_crops)), crop_id)``, divided by ``sum(nmb_crops) - 1``,
    then by ``len(crops_for_assign)``) and lightly's ``SwaVLoss.forward``.
    """
    fn = "swav_loss"
    _check_crops(fn, "scores", scores, min_crops=2)
    if isinstance(n_global, bool) or not isinstance(n_global, numbers.Integral) \
            or not 1 <= n_global <= len(scores):
        raise ValueError(f"swav_loss: n_global must be an int in [1, {len(scores)}] (the "
                         f"crops given), got {n_global!r}")
    temperature = _positive(fn, "temperature", temperature)
    if codes is not None and (len(codes) != n_global or any(
            tuple(getattr(q, "shape", ())) != scores[0].shape for q in codes)):
        raise ValueError(f"swav_loss: codes must be {n_global} arrays of shape "
                         f"{scores[0].shape}, one per global crop")
    log_p = [F.log_softmax(s / temperature, dim=1) for s in scores]            # V x (B, K)
    loss = 0
    for i in range(int(n_global)):
        q = Tensor(_constant(fn, "codes", codes[i], scores[i]) if codes is not None
                   else sinkhorn_knopp(scores[i].detach(), epsilon, iterations))  # (B, K)
        sub = [(q * lp).sum(dim=1).mean() for v, lp in enumerate(log_p) if v != i]
        loss = loss + sum(sub[1:], sub[0]) * (-1.0 / len(sub))
    return loss / int(n_global)
