"""Kernel timings: compiled im2col/col2im and pooling vs the NumPy reference vs torch, float32.

    python benchmarks/bench_kernels_conv.py
"""
import time

import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import numpy as np  # noqa: E402
from minissl.kernels import im2col as K, pool as P

def bench(f, reps=15):
    f(); ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return np.min(ts) * 1e3

try:
    import torch; import torch.nn.functional as F; torch.set_num_threads(2)
except ImportError:
    torch = None
rng = np.random.default_rng(0)
print("conv shapes, float32 (ms): kernel | reference | torch")
for shape, s in [((256, 3, 32, 32), 1), ((256, 32, 32, 32), 2), ((256, 64, 16, 16), 2)]:
    x = rng.standard_normal(shape, dtype=np.float32)
    k, st, p = (3, 3), (s, s), (1, 1)
    cols = K.im2col(x, k, st, p)
    r = [bench(lambda: K.im2col(x, k, st, p)), bench(lambda: K.im2col_ref(x, k, st, p), 5),
         bench(lambda: K.col2im(cols, shape, k, st, p)), bench(lambda: K.col2im_ref(cols, shape, k, st, p), 5)]
    if torch is not None:
        xt = torch.from_numpy(x); u = F.unfold(xt, k, padding=p, stride=st)
        r += [bench(lambda: F.unfold(xt, k, padding=p, stride=st), 5), bench(lambda: F.fold(u, shape[2:], k, padding=p, stride=st), 5)]
    else:
        r += [float("nan")] * 2
    print(f"{shape} s{s}: im2col {r[0]:6.2f} | {r[1]:6.2f} | unfold {r[4]:6.2f}   col2im {r[2]:6.2f} | {r[3]:6.2f} | fold {r[5]:6.2f}   cols {cols.nbytes/1e6:.0f} MB")

print("pool shapes, float32 (ms): kernel | reference | torch")
for shape, k, s, p in [((256, 32, 32, 32), 2, 2, 0), ((256, 32, 32, 32), 3, 2, 1), ((256, 64, 16, 16), 2, 2, 0)]:
    x = rng.standard_normal(shape, dtype=np.float32)
    k2, s2, p2 = (k, k), (s, s), (p, p)
    out, arg = P.max_pool2d_forward(x, k2, s2, p2)
    g = rng.standard_normal(out.shape, dtype=np.float32)
    rows = {
        "max fwd": (lambda: P.max_pool2d_forward(x, k2, s2, p2), lambda: P.max_pool2d_forward_ref(x, k2, s2, p2)),
        "max bwd": (lambda: P.max_pool2d_backward(g, arg, shape, k2, s2, p2), lambda: P.max_pool2d_backward_ref(g, arg, shape, k2, s2, p2)),
        "avg fwd": (lambda: P.avg_pool2d_forward(x, k2, s2, p2), lambda: P.avg_pool2d_forward_ref(x, k2, s2, p2)),
        "avg bwd": (lambda: P.avg_pool2d_backward(g, shape, k2, s2, p2), lambda: P.avg_pool2d_backward_ref(g, shape, k2, s2, p2)),
    }
    tt = {}
    if torch is not None:
        xt = torch.from_numpy(x).requires_grad_(); gt = torch.from_numpy(g)
        with torch.no_grad():
            tt["max fwd"] = bench(lambda: F.max_pool2d(xt, k, s, p, return_indices=True), 5)
            tt["avg fwd"] = bench(lambda: F.avg_pool2d(xt, k, s, p), 5)
        o = F.max_pool2d(xt, k, s, p)
        tt["max bwd"] = bench(lambda: torch.autograd.grad(F.max_pool2d(xt, k, s, p), xt, gt), 5) - tt["max fwd"]
        tt["avg bwd"] = bench(lambda: torch.autograd.grad(F.avg_pool2d(xt, k, s, p), xt, gt), 5) - tt["avg fwd"]
    print(f"{shape} k{k} s{s} p{p}: " + "  ".join(f"{n} {bench(a):6.2f} | {bench(b, 5):6.2f} | {tt.get(n, float('nan')):6.2f}" for n, (a, b) in rows.items()))
