"""Cross-rank gradient checks and the one-process-vs-N-ranks comparison of the tests."""
import numpy as np

import minissl as ms
from minissl import optim
from minissl import distributed as dist


def cross_rank_gradcheck(objective, X, eps=1e-6, atol=1e-8, rtol=1e-6):
    """Check d(sum_r L_r)/dX by central differences, where X (B, *) is the GLOBAL input known
    to every rank, rank r holds rows ``dist.shard(X)`` as a leaf Tensor x_r and
    L_r = objective(x_r) (a scalar Tensor; it may differ between ranks).

    Analytic: x_r.grad after every rank's backward, gathered in rank order. Numeric: every
    rank perturbs the same element of X in lockstep and the losses are summed over ranks.
    Returns the max abs difference; raises AssertionError (on every rank) beyond tolerance.
    """
    x = ms.tensor(np.array(dist.shard(X)), requires_grad=True)
    objective(x).backward()
    analytic = np.concatenate(dist.backend().allgather(x.grad))
    numeric = np.zeros_like(X)
    for i in np.ndindex(*X.shape):
        values = []
        for sign in (1, -1):
            Xp = X.copy()
            Xp[i] += sign * eps
            with ms.no_grad():
                values.append(dist.all_reduce(objective(ms.tensor(np.array(dist.shard(Xp))))
                                              .item(), op="sum"))
        numeric[i] = (values[0] - values[1]) / (2 * eps)
    err = np.abs(analytic - numeric)
    bad = err > atol + rtol * np.abs(numeric)
    assert not bad.any(), (f"cross-rank gradcheck: {bad.sum()} elements off, worst "
                           f"{err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}: "
                           f"analytic {analytic.flat[err.argmax()]:.8g}, numeric "
                           f"{numeric.flat[err.argmax()]:.8g}")
    return float(err.max())


def run_steps(method, batches, rngs, lr=0.05):
    """The loop of ``train.pretrain`` for a few given global batches: returns per step the
    global loss and the averaged gradients, and the final state_dict.

    SGD with momentum, not Adam: the bias of a Linear followed by BatchNorm has a gradient of
    exactly 0 in exact arithmetic, so its computed gradient is round-off (~1e-17) and Adam,
    which divides by the root of its own square, turns two equally right round-offs into
    steps of +-lr. SGD moves weights by lr x gradient, so equal gradients (to 1e-12) must
    give equal weights, which is what the comparison is about."""
    opt = optim.SGD(method.trainable_parameters(), lr=lr, momentum=0.9)
    losses, grads = [], []
    for i, (batch, rng) in enumerate(zip(batches, rngs)):
        opt.zero_grad()
        loss, _ = method.training_step(batch, rng)
        loss.backward()
        dist.all_reduce_gradients(method.parameters())
        grads.append({n: np.array(p.grad) for n, p in method.named_parameters()
                      if p.grad is not None})
        opt.step()
        method.on_step_end(i, len(batches))
        losses.append(dist.all_reduce(loss.item()))
    return losses, grads, {k: np.array(v) for k, v in method.state_dict().items()}


def assert_close(a, b, tol, what, scale=None):
    """|a - b| <= tol * scale, scale by default max(1, |b|): relative to the largest value."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    err = np.abs(a - b).max() if a.size else 0.0
    if scale is None:
        scale = max(1.0, np.abs(b).max() if b.size else 0.0)
    assert err <= tol * scale, f"{what}: max difference {err:.3g} > {tol:g} (scale {scale:.3g})"
