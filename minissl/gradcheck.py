"""Finite-difference gradient checking, public so users can check their own ops.

Two modes, both with central differences in float64 (error O(eps^2)):

* ``"full"``: the whole Jacobian. Row j (d y_j / d x) comes from one backward pass with the
  one-hot cotangent e_j; column k (d y / d x_k) from ``(f(x + eps e_k) - f(x - eps e_k)) / 2eps``.
  A mismatch names the input, the input element, the output element and both values.
* ``"projection"``: one random direction u per input and v on the output, so two forward passes
  check ``v^T J u`` whatever the size (Chainer's and PyTorch's "fast" check): the analytic side
  is ``sum_i <u_i, backward(v)_i>``, the numeric side ``(v.f(x + eps u) - v.f(x - eps u)) / 2eps``.

``"auto"`` (default) takes the full Jacobian when it has at most 20 000 entries.
"""
import numpy as np

from .autograd import Tensor, no_grad
from .backend import get_array_module, to_device


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with its finite-difference estimate."""


def _output(fn, inputs):
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    return out


def _close(a, n, atol, rtol):
    return abs(a - n) <= atol + rtol * abs(n)


def _prepare(inputs):
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"gradcheck: input {i} is a {type(t).__name__}, not a Tensor")
        if t.requires_grad and t.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} has dtype {t.dtype}; finite differences need "
                            "float64 (make it with dtype=np.float64)")
        # Own, writable, contiguous data: we perturb it in place.
        t.data = t.data.copy()
        t.grad = None
    return inputs


def _perturbed(fn, inputs, t, idx, delta):
    """f(x) with element ``idx`` of tensor ``t`` moved by ``delta`` (then restored)."""
    old = t.data[idx].copy()
    t.data[idx] = old + delta
    with no_grad():
        y = _output(fn, inputs).data
    # A copy BEFORE restoring: the output may be a view of the input (reshape, slicing).
    y = np.array(to_device(y, "cpu"), dtype=np.float64)
    t.data[idx] = old
    return y


def _full(fn, inputs, eps, atol, rtol):
    out = _output(fn, inputs)
    if not out.requires_grad:
        raise GradcheckError("gradcheck: the output does not require grad (no input reaches it)")
    xp = get_array_module(out.data)
    n_out = out.data.size
    # Analytic Jacobian, one row per output element.
    analytic = {i: np.zeros((n_out, t.data.size)) for i, t in enumerate(inputs)
                if t.requires_grad}
    for j in range(n_out):
        for t in inputs:
            t.grad = None
        e = xp.zeros(out.data.size, dtype=out.dtype)
        e[j] = 1
        out.backward(e.reshape(out.shape), retain_graph=True)
        for i in analytic:
            g = inputs[i].grad
            if g is not None:
                analytic[i][j] = to_device(g, "cpu").ravel()
    # Numeric Jacobian, one column per input element.
    for i, rows in analytic.items():
        t = inputs[i]
        for k in range(t.data.size):
            idx = np.unravel_index(k, t.shape)
            col = (_perturbed(fn, inputs, t, idx, eps)
                   - _perturbed(fn, inputs, t, idx, -eps)).ravel() / (2 * eps)
            for j in range(n_out):
                if not _close(rows[j, k], col[j], atol, rtol):
                    raise GradcheckError(
                        f"gradcheck: input {i} (shape {t.shape}), element {tuple(map(int, idx))}"
                        f", output element {j}: analytic {rows[j, k]!r} vs numeric {col[j]!r}")
    for t in inputs:
        t.grad = None
    return True


def _projection(fn, inputs, eps, atol, rtol, seed):
    rng = np.random.default_rng(seed)
    out = _output(fn, inputs)
    if not out.requires_grad:
        raise GradcheckError("gradcheck: the output does not require grad (no input reaches it)")
    xp = get_array_module(out.data)
    v = xp.asarray(rng.standard_normal(out.shape))
    for t in inputs:
        t.grad = None
    out.backward(v)
    checked = [t for t in inputs if t.requires_grad]
    us = [xp.asarray(rng.standard_normal(t.shape)) for t in checked]
    analytic = 0.0
    for t, u in zip(checked, us):
        if t.grad is not None:
            analytic += float((t.grad * u).sum())

    def value(sign):
        for t, u in zip(checked, us):
            t.data += sign * eps * u
        with no_grad():
            y = _output(fn, inputs).data
        # Reduce BEFORE restoring: the output may be a view of an input (reshape, slicing).
        val = float((y * v).sum())
        for t, u in zip(checked, us):
            t.data -= sign * eps * u
        return val

    numeric = (value(1) - value(-1)) / (2 * eps)
    for t in inputs:
        t.grad = None
    if not _close(analytic, numeric, atol, rtol):
        raise GradcheckError(f"gradcheck (random projection v^T J u): analytic {analytic!r} vs "
                             f"numeric {numeric!r}")
    return True


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, mode="auto", seed=0):
    """Check the gradients of ``fn`` at ``inputs`` against central finite differences.

    ``fn`` takes the Tensors of ``inputs`` (float64; those with ``requires_grad`` are checked)
    and returns a Tensor. Returns True, or raises ``GradcheckError`` naming the input, the
    element and both values. An element passes when ``|analytic - numeric| <= atol + rtol *
    |numeric|``. ``mode`` is "full", "projection" or "auto" (see the module docstring).
    """
    inputs = _prepare(inputs)
    if mode == "auto":
        with no_grad():
            n_out = _output(fn, inputs).data.size
        n_in = sum(t.data.size for t in inputs if t.requires_grad)
        mode = "full" if n_out * n_in <= 20000 else "projection"
    if mode == "full":
        return _full(fn, inputs, eps, atol, rtol)
    if mode == "projection":
        return _projection(fn, inputs, eps, atol, rtol, seed)
    raise ValueError(f"gradcheck: unknown mode {mode!r} (full, projection or auto)")
