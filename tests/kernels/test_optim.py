"""Fused optimiser updates: the compiled kernels against the NumPy reference (bit for bit: the
same operations in the same order, compiled without fused multiply-adds), several steps
against torch.optim, in-place semantics, views, size 0 and input validation."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minissl.kernels import optim as K
from minissl.kernels._dispatch import load
from minissl.kernels.optim import adam_step_ref, sgd_step_ref
from support.cuda_emulator import close

DTYPES = [np.float32, np.float64]
EXT = load("optim")
needs_ext = pytest.mark.skipif(EXT is None, reason="Cython build missing or reference forced")

sgd_configs = st.fixed_dictionaries({
    "lr": st.sampled_from([0.1, 1e-2]),
    "momentum": st.sampled_from([0.0, 0.9, 0.5]),
    "dampening": st.sampled_from([0.0, 0.1]),
    "weight_decay": st.sampled_from([0.0, 1e-2]),
    "nesterov": st.booleans(),
})
adam_configs = st.fixed_dictionaries({
    "lr": st.sampled_from([1e-3, 3e-2]),
    "beta1": st.sampled_from([0.9, 0.8]),
    "beta2": st.sampled_from([0.999, 0.99]),
    "eps": st.sampled_from([1e-8, 1e-6]),
    "weight_decay": st.sampled_from([0.0, 0.05]),
    "decoupled": st.booleans(),
})
shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)


def run_sgd(step_fn, p, grads, cfg, buf):
    for k, g in enumerate(grads):
        step_fn(p, g, buf, cfg["lr"], cfg["momentum"], cfg["dampening"], cfg["weight_decay"],
                cfg["nesterov"], k == 0)


def run_adam(step_fn, p, grads, cfg, m, v):
    for k, g in enumerate(grads):
        step_fn(p, g, m, v, k + 1, cfg["lr"], cfg["beta1"], cfg["beta2"], cfg["eps"],
                cfg["weight_decay"], cfg["decoupled"])


def problem(rng, shape, dtype, steps=4):
    p = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(steps)]
    return p, grads


# --------------------------------------------------------------------------- compiled vs reference

@needs_ext
@given(shape=shapes, dtype=st.sampled_from(DTYPES), cfg=sgd_configs, seed=st.integers(0, 2**31))
def test_sgd_matches_reference_bit_for_bit(shape, dtype, cfg, seed):
    rng = np.random.default_rng(seed)
    p, grads = problem(rng, shape, dtype)
    p_ref, buf, buf_ref = p.copy(), np.zeros_like(p), np.zeros_like(p)
    run_sgd(K.sgd_step, p, grads, cfg, buf)
    run_sgd(K.sgd_step_ref, p_ref, grads, cfg, buf_ref)
    np.testing.assert_array_equal(p, p_ref)
    np.testing.assert_array_equal(buf, buf_ref)


@needs_ext
@given(shape=shapes, dtype=st.sampled_from(DTYPES), cfg=adam_configs, seed=st.integers(0, 2**31))
def test_adam_matches_reference_bit_for_bit(shape, dtype, cfg, seed):
    rng = np.random.default_rng(seed)
    p, grads = problem(rng, shape, dtype)
    p_ref = p.copy()
    m, v, m_ref, v_ref = (np.zeros_like(p) for _ in range(4))
    run_adam(K.adam_step, p, grads, cfg, m, v)
    run_adam(K.adam_step_ref, p_ref, grads, cfg, m_ref, v_ref)
    for a, b in ((p, p_ref), (m, m_ref), (v, v_ref)):
        np.testing.assert_array_equal(a, b)


@needs_ext
def test_large_arrays_run_in_parallel_with_the_same_bits():
    rng = np.random.default_rng(0)
    p, grads = problem(rng, (300, 701), np.float32, steps=2)
    cfg = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled=True)
    p_ref = p.copy()
    m, v, m_ref, v_ref = (np.zeros_like(p) for _ in range(4))
    run_adam(K.adam_step, p, grads, cfg, m, v)
    run_adam(K.adam_step_ref, p_ref, grads, cfg, m_ref, v_ref)
    np.testing.assert_array_equal(p, p_ref)


@needs_ext
def test_compiled_entry_points_reject_what_the_wrappers_would_not_pass():
    p = np.zeros(4)
    with pytest.raises(ValueError, match="minissl.kernels.optim._cpu"):
        EXT.adam_step(p, np.zeros(3), p.copy(), p.copy(), 1e-3, 1.0, 0.1, 0.999, 1e-3, 1e-8,
                      1.0, 0.0)
    with pytest.raises(ValueError, match="momentum needs a buffer"):
        EXT.sgd_step(p, p.copy(), None, 0.1, 0.9, 1.0, 0.0, False, False)
    with pytest.raises(ValueError, match="minissl.kernels.optim._cpu"):
        EXT.sgd_step(np.zeros(8)[::2], p, None, 0.1, 0.0, 1.0, 0.0, False, False)
    with pytest.raises(ValueError, match="must be distinct, non-overlapping"):
        EXT.sgd_step(p, p, None, 0.1, 0.0, 1.0, 0.0, False, False)


@needs_ext
def test_overlapping_arrays_raise():
    p = np.zeros(8)
    with pytest.raises(ValueError, match="non-overlapping"):
        K.adam_step(p, np.ones(8), p, np.zeros(8), 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
    with pytest.raises(ValueError, match="non-overlapping"):
        K.sgd_step(p[:6], np.ones(6), p[2:], 0.1, 0.9, 0.0, 0.0, False, True)


# --------------------------------------------------------------------------------- against PyTorch

@pytest.fixture(scope="module")
def torch():
    """PyTorch on one thread (see test_kernels_softmax.py)."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


def assert_close_to_torch(ours, theirs, dtype):
    """float32: a few ulps. PyTorch's vector loops fuse some multiply-adds, so the last bit
    differs now and then, and Adam's division by sqrt(v) + eps can amplify that."""
    if dtype == np.float64:
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
    else:
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("impl", ["public", "ref"])
@given(shape=shapes.filter(lambda s: 0 not in s), dtype=st.sampled_from(DTYPES), cfg=sgd_configs,
       seed=st.integers(0, 2**31))
def test_sgd_matches_torch(torch, impl, shape, dtype, cfg, seed):
    step = K.sgd_step if impl == "public" else K.sgd_step_ref
    if cfg["nesterov"] and (cfg["momentum"] == 0 or cfg["dampening"] != 0):
        cfg = dict(cfg, nesterov=False)               # torch.optim.SGD rejects these
    rng = np.random.default_rng(seed)
    p, grads = problem(rng, shape, dtype)
    tp = torch.tensor(p, requires_grad=True)
    opt = torch.optim.SGD([tp], foreach=False, **cfg)
    buf = np.zeros_like(p)
    for k, g in enumerate(grads):
        tp.grad = torch.from_numpy(g)
        opt.step()
        step(p, g, buf, cfg["lr"], cfg["momentum"], cfg["dampening"], cfg["weight_decay"],
             cfg["nesterov"], k == 0)
        assert_close_to_torch(p, tp.detach().numpy(), dtype)
    if cfg["momentum"]:
        assert_close_to_torch(buf, opt.state[tp]["momentum_buffer"].numpy(), dtype)


@pytest.mark.torch
@pytest.mark.parametrize("impl", ["public", "ref"])
@given(shape=shapes.filter(lambda s: 0 not in s), dtype=st.sampled_from(DTYPES),
       cfg=adam_configs, seed=st.integers(0, 2**31))
def test_adam_matches_torch(torch, impl, shape, dtype, cfg, seed):
    """Adam (decoupled=False) is torch.optim.Adam, AdamW (decoupled=True) torch.optim.AdamW."""
    step = K.adam_step if impl == "public" else K.adam_step_ref
    rng = np.random.default_rng(seed)
    p, grads = problem(rng, shape, dtype)
    tp = torch.tensor(p, requires_grad=True)
    cls = torch.optim.AdamW if cfg["decoupled"] else torch.optim.Adam
    opt = cls([tp], lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"],
              weight_decay=cfg["weight_decay"], foreach=False)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for k, g in enumerate(grads):
        tp.grad = torch.from_numpy(g)
        opt.step()
        step(p, g, m, v, k + 1, cfg["lr"], cfg["beta1"], cfg["beta2"], cfg["eps"],
             cfg["weight_decay"], cfg["decoupled"])
        assert_close_to_torch(p, tp.detach().numpy(), dtype)
    state = opt.state[tp]
    assert_close_to_torch(m, state["exp_avg"].numpy(), dtype)
    assert_close_to_torch(v, state["exp_avg_sq"].numpy(), dtype)


# --------------------------------------------------------------------------------------- semantics

def test_hand_computed_first_adam_step():
    """After bias correction the first step moves each weight by lr * g / (|g| + eps')."""
    p = np.array([1.0, -2.0, 0.5])
    g = np.array([0.5, -4.0, 0.0])
    m, v = np.zeros(3), np.zeros(3)
    K.adam_step(p, g, m, v, 1, 0.1, 0.9, 0.999, 1e-8, 0.0, False)
    np.testing.assert_allclose(m, 0.1 * g)
    np.testing.assert_allclose(v, 0.001 * g * g)
    np.testing.assert_allclose(p, [1.0 - 0.1 * 0.5 / (0.5 + 1e-8),
                                   -2.0 + 0.1 * 4.0 / (4.0 + 1e-8), 0.5])


def test_hand_computed_sgd_steps():
    p, g, buf = np.array([1.0]), np.array([2.0]), np.zeros(1)
    K.sgd_step(p, g, buf, 0.1, 0.9, 0.0, 0.5, False, True)    # d = 2 + 0.5 = 2.5, buf = d
    np.testing.assert_allclose([p[0], buf[0]], [1.0 - 0.25, 2.5])
    K.sgd_step(p, g, buf, 0.1, 0.9, 0.0, 0.0, True, False)    # buf = 2.25 + 2, d = 2 + 0.9 buf
    np.testing.assert_allclose(buf, [4.25])
    np.testing.assert_allclose(p, [0.75 - 0.1 * (2 + 0.9 * 4.25)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_updates_in_place_and_leaves_grad_alone(dtype):
    rng = np.random.default_rng(1)
    p, (g,) = problem(rng, (5, 3), dtype, steps=1)
    g_before, p_id = g.copy(), id(p)
    m, v = np.zeros_like(p), np.zeros_like(p)
    assert K.adam_step(p, g, m, v, 1, 1e-2, 0.9, 0.999, 1e-8, 0.1, False) is None
    assert id(p) == p_id and (m != 0).all() and (v != 0).all()
    np.testing.assert_array_equal(g, g_before)
    buf = np.zeros_like(p)
    K.sgd_step(p, g, buf, 0.1, 0.9, 0.0, 0.1, True, True)
    np.testing.assert_array_equal(g, g_before)
    K.sgd_step(p, g, None, 0.1, 0.0, 0.0, 0.0, False, False)   # no momentum: no buffer needed


@pytest.mark.parametrize("dtype", DTYPES)
def test_views_are_updated_in_place(dtype):
    """A strided view of a larger array (a parameter slice) is updated where it lives."""
    rng = np.random.default_rng(2)
    big = rng.standard_normal((6, 8)).astype(dtype)
    before = big.copy()
    grad = rng.standard_normal((6, 4)).astype(dtype)
    m, v = np.zeros((6, 4), dtype), np.zeros((6, 4), dtype)
    K.adam_step(big[:, ::2], grad, m, v, 1, 1e-2, 0.9, 0.999, 1e-8, 0.0, True)
    np.testing.assert_array_equal(big[:, 1::2], before[:, 1::2])     # untouched columns
    np.testing.assert_allclose(big[:, ::2], before[:, ::2] - 1e-2 * np.sign(grad), rtol=1e-4)
    buf = np.zeros((6, 8), dtype)                                       # F-ordered views
    K.sgd_step(big.T, grad.repeat(2, 1).T, buf.T, 0.1, 0.9, 0.0, 0.0, False, True)
    np.testing.assert_array_equal(buf, grad.repeat(2, 1))


def test_size_zero_and_zero_dim():
    p = np.zeros((0, 3), np.float32)
    K.adam_step(p, p.copy(), p.copy(), p.copy(), 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
    K.sgd_step(p, p.copy(), p.copy(), 0.1, 0.9, 0.0, 0.0, False, True)
    p0, g0 = np.array(1.0), np.array(2.0)
    K.sgd_step(p0, g0, None, 0.5, 0.0, 0.0, 0.0, False, False)
    assert p0.shape == () and p0 == 0.0


def test_on_device(device):
    from minissl.backend import to_device
    rng = np.random.default_rng(0)
    p, (g,) = problem(rng, (4, 5), np.float64, steps=1)
    expected = p.copy()
    K.adam_step_ref(expected, g, np.zeros_like(p), np.zeros_like(p), 1, 1e-2, 0.9, 0.999, 1e-8,
                    0.0, False)
    pd = to_device(p, device)
    md, vd = to_device(np.zeros_like(p), device), to_device(np.zeros_like(p), device)
    K.adam_step(pd, to_device(g, device), md, vd, 1, 1e-2, 0.9, 0.999, 1e-8, 0.0, False)
    np.testing.assert_allclose(to_device(pd, "cpu"), expected, rtol=1e-12)


# -------------------------------------------------------------------------------------- validation

P = np.zeros((2, 3))
RO = np.zeros((2, 3))
RO.flags.writeable = False


@pytest.mark.parametrize("call, exc, words", [
    (lambda: K.sgd_step(P, np.zeros((3, 2)), None, 0.1, 0.0, 0.0, 0.0, False, False),
     ValueError, ["sgd_step", "grad", "(2, 3)", "(3, 2)"]),
    (lambda: K.sgd_step(P, P, None, 0.1, 0.9, 0.0, 0.0, False, False), ValueError,
     ["sgd_step", "momentum_buf"]),
    (lambda: K.sgd_step(P, P, np.zeros((2, 3), np.float32), 0.1, 0.9, 0.0, 0.0, False, False),
     TypeError, ["sgd_step", "momentum_buf", "float32"]),
    (lambda: K.sgd_step(RO, P, None, 0.1, 0.0, 0.0, 0.0, False, False), ValueError,
     ["sgd_step", "param", "read-only"]),
    (lambda: K.sgd_step(np.zeros(3, np.int64), np.zeros(3, np.int64), None, 0.1, 0.0, 0.0, 0.0,
                        False, False), TypeError, ["sgd_step", "int64"]),
    (lambda: K.adam_step(P, P, P.copy(), np.zeros(6), 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False),
     ValueError, ["adam_step", "exp_avg_sq", "(6,)"]),
    (lambda: K.adam_step(P, P, P.copy(), P.copy(), 0, 1e-3, 0.9, 0.999, 1e-8, 0.0, False),
     ValueError, ["adam_step", "step"]),
    (lambda: K.adam_step(P, P, RO, P.copy(), 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False),
     ValueError, ["adam_step", "exp_avg", "read-only"]),
    (lambda: K.adam_step(P, [0.0] * 6, P.copy(), P.copy(), 1, 1e-3, 0.9, 0.999, 1e-8, 0.0,
                         False), TypeError, ["adam_step", "grad", "list"]),
])
def test_bad_input_raises_with_the_function_name(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# --------------------------------------------------------------- CUDA kernels vs the reference
# Through the public functions on device arrays: the CUDA source run by the emulator
# (tests/support/cuda_emulator.py), or on a GPU (the ``runner`` fixture, conftest.py).

@given(n=st.integers(0, 200), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       momentum=st.sampled_from([0.0, 0.9]), nesterov=st.booleans(),
       weight_decay=st.sampled_from([0.0, 1e-2]), dampening=st.sampled_from([0.0, 0.1]))
def test_cuda_sgd_step_matches_reference(runner, n, dtype, seed, momentum, nesterov, weight_decay,
                                    dampening):
    if nesterov and (momentum == 0 or dampening != 0):
        nesterov = False
    rng = np.random.default_rng(seed)
    p, grad, buf = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    p_ref, buf_ref = p.copy(), buf.copy()
    for first in (True, False):
        sgd_step_ref(p_ref, grad, buf_ref, 0.1, momentum, dampening, weight_decay, nesterov,
                     first)
    with runner as r:
        dp, dbuf = r.dev(p), r.dev(buf)
        for first in (True, False):
            K.sgd_step(dp, r.dev(grad), dbuf, 0.1, momentum, dampening, weight_decay,
                       nesterov, first)
        p, buf = r.host(dp), r.host(dbuf)
    close(p, p_ref, dtype, rtol32=1e-6, atol32=1e-7)
    if momentum:
        close(buf, buf_ref, dtype, rtol32=1e-6, atol32=1e-7)


@given(n=st.integers(0, 200), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
       weight_decay=st.sampled_from([0.0, 1e-2]), decoupled=st.booleans())
def test_cuda_adam_step_matches_reference(runner, n, dtype, seed, weight_decay, decoupled):
    rng = np.random.default_rng(seed)
    p, grad = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    p_ref, m_ref, v_ref = p.copy(), m.copy(), v.copy()
    for step in (1, 2, 3):
        adam_step_ref(p_ref, grad, m_ref, v_ref, step, 1e-2, 0.9, 0.999, 1e-8, weight_decay,
                      decoupled)
    with runner as r:
        dp, dm, dv = r.dev(p), r.dev(m), r.dev(v)
        for step in (1, 2, 3):
            K.adam_step(dp, r.dev(grad), dm, dv, step, 1e-2, 0.9, 0.999, 1e-8, weight_decay,
                        decoupled)
        p, m, v = r.host(dp), r.host(dm), r.host(dv)
    for a, b in ((p, p_ref), (m, m_ref), (v, v_ref)):
        close(a, b, dtype, rtol32=1e-6, atol32=1e-7)


def test_cuda_optimizer_views_update_in_place(runner):
    """A strided param view takes the reference path, which updates the view in place."""
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = base.copy()
    expected[:, ::2] -= 0.5
    grad = np.ones((3, 2), np.float32)
    with runner as r:
        dbase = r.dev(base)
        K.sgd_step(dbase[:, ::2], r.dev(grad), None, 0.5, 0, 0, 0, False, True)
        out = r.host(dbase)
    np.testing.assert_array_equal(out, expected)
