import minissl
minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)
import os, sys, time, numpy as np
import torch
nt = int(os.environ.get("OMP_NUM_THREADS", "2")); torch.set_num_threads(nt)
from minissl.kernels import softmax as S, norm as Nm, activation as A, optim as O, embedding as E
def bench(f, budget=0.4):
    f(); best = 1e9; t0 = time.perf_counter(); k = 0
    while time.perf_counter() - t0 < budget or k < 5:
        t = time.perf_counter(); f(); best = min(best, time.perf_counter() - t); k += 1
    return best * 1e3
rng = np.random.default_rng(0)
rows = []
def row(name, ext, ref, tor):
    rows.append((name, ext, ref, tor)); print(f"{name:32s} ext {ext:8.3f}  ref {ref:8.3f} ({ref/ext:5.1f}x)  torch {tor:8.3f} ({tor/ext:4.2f}x)", flush=True)
F = torch.nn.functional
which = sys.argv[1:] or ["ce", "attn", "ln", "bn", "gelu", "adam", "emb"]
if "attn" in which:   # causal attention scores of gpt_char: (32, 4, 128, 128) as rows
    B, H, T = 32, 4, 128
    x = rng.standard_normal((B * H * T, T)).astype(np.float32); g = rng.standard_normal((B * H * T, T)).astype(np.float32)
    tx = torch.from_numpy(x).view(B * H, T, T); tmask = torch.ones(T, T, dtype=torch.bool).triu(1); sc = T ** -0.5
    y = S.softmax_forward(x, sc, T)
    row("causal softmax fwd (16384,128)", bench(lambda: S.softmax_forward(x, sc, T)), bench(lambda: S.softmax_forward_ref(x, sc, T)), bench(lambda: torch.softmax((tx * sc).masked_fill(tmask, float("-inf")), -1)))
    ty = torch.from_numpy(y).view(B * H, T, T); tgr = torch.from_numpy(g).view(B * H, T, T)
    row("causal softmax bwd (16384,128)", bench(lambda: S.softmax_backward(g, y, sc, T)), bench(lambda: S.softmax_backward_ref(g, y, sc, T)), bench(lambda: torch.ops.aten._softmax_backward_data(tgr, ty, -1, torch.float32) * sc))
if "ce" in which:
  for N, C in [(1024, 1024), (4096, 96)]:
    x = rng.standard_normal((N, C)).astype(np.float32); t = rng.integers(0, C, N); g = np.ones(N, np.float32)
    tx = torch.from_numpy(x); tt = torch.from_numpy(t)
    loss, lse = S.cross_entropy_forward(x, t)
    row(f"CE fwd ({N},{C})", bench(lambda: S.cross_entropy_forward(x, t)), bench(lambda: S.cross_entropy_forward_ref(x, t)), bench(lambda: F.cross_entropy(tx, tt, reduction="none")))
    tg = torch.ones(N); tls = torch.log_softmax(tx, 1); tw0 = torch.tensor(0.)
    row(f"CE bwd ({N},{C})", bench(lambda: S.cross_entropy_backward(g, x, t, lse)), bench(lambda: S.cross_entropy_backward_ref(g, x, t, lse)),
        bench(lambda: torch.ops.aten._log_softmax_backward_data(torch.ops.aten.nll_loss_backward(tg, tls, tt, None, 0, -100, tw0), tls, 1, torch.float32)))
    row(f"softmax fwd ({N},{C})", bench(lambda: S.softmax_forward(x)), bench(lambda: S.softmax_forward_ref(x)), bench(lambda: torch.softmax(tx, -1)))
if "ln" in which:
    x = rng.standard_normal((4096, 128)).astype(np.float32); w = rng.standard_normal(128).astype(np.float32); b = rng.standard_normal(128).astype(np.float32)
    g = rng.standard_normal((4096, 128)).astype(np.float32)
    y, m, r = Nm.layer_norm_forward(x, w, b, 1e-5)
    tx, tw, tb = map(torch.from_numpy, (x, w, b)); tg = torch.from_numpy(g)
    _, tm, tr = torch.native_layer_norm(tx, [128], tw, tb, 1e-5)
    row("LN fwd (4096,128)", bench(lambda: Nm.layer_norm_forward(x, w, b, 1e-5)), bench(lambda: Nm.layer_norm_forward_ref(x, w, b, 1e-5)), bench(lambda: torch.native_layer_norm(tx, [128], tw, tb, 1e-5)))
    row("LN bwd (4096,128)", bench(lambda: Nm.layer_norm_backward(g, x, m, r, w)), bench(lambda: Nm.layer_norm_backward_ref(g, x, m, r, w)), bench(lambda: torch.ops.aten.native_layer_norm_backward(tg, tx, [128], tm, tr, tw, tb, [True, True, True])))
if "bn" in which:
  for shape in [(512, 512, 1), (256, 32, 1024), (256, 64, 256), (256, 128, 64)]:   # mlp, conv_simclr
    x = rng.standard_normal(shape).astype(np.float32); C = shape[1]; w = rng.standard_normal(C).astype(np.float32); b = rng.standard_normal(C).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    y, m, v, r = Nm.batch_norm_forward(x, w, b, 1e-5)
    tx, tw, tb, tg = map(torch.from_numpy, (x, w, b, g))
    _, sm, sr = torch.native_batch_norm(tx, tw, tb, None, None, True, 0.1, 1e-5)[:3]
    row(f"BN fwd {shape}", bench(lambda: Nm.batch_norm_forward(x, w, b, 1e-5)), bench(lambda: Nm.batch_norm_forward_ref(x, w, b, 1e-5)), bench(lambda: torch.native_batch_norm(tx, tw, tb, None, None, True, 0.1, 1e-5)))
    row(f"BN bwd {shape}", bench(lambda: Nm.batch_norm_backward(g, x, m, r, w)), bench(lambda: Nm.batch_norm_backward_ref(g, x, m, r, w)), bench(lambda: torch.ops.aten.native_batch_norm_backward(tg, tx, tw, None, None, sm, sr, True, 1e-5, [True, True, True])))
    # with the fused ReLU of nn.fuse (PyTorch: batch norm, then relu / threshold_backward)
    yr = Nm.batch_norm_forward(x, w, b, 1e-5, relu=True)[0]; tyr = torch.from_numpy(yr)
    row(f"BN+ReLU fwd {shape}", bench(lambda: Nm.batch_norm_forward(x, w, b, 1e-5, relu=True)), bench(lambda: Nm.batch_norm_forward_ref(x, w, b, 1e-5, relu=True)), bench(lambda: torch.relu(torch.native_batch_norm(tx, tw, tb, None, None, True, 0.1, 1e-5)[0])))
    row(f"BN+ReLU bwd {shape}", bench(lambda: Nm.batch_norm_backward(g, x, m, r, w, relu_output=yr)), bench(lambda: Nm.batch_norm_backward_ref(g, x, m, r, w, relu_output=yr)), bench(lambda: torch.ops.aten.native_batch_norm_backward(torch.ops.aten.threshold_backward(tg, tyr, 0), tx, tw, None, None, sm, sr, True, 1e-5, [True, True, True])))
if "gelu" in which:
    x = rng.standard_normal((4096, 512)).astype(np.float32); g = rng.standard_normal((4096, 512)).astype(np.float32)
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    row("GELU fwd (4096,512)", bench(lambda: A.gelu_forward(x)), bench(lambda: A.gelu_forward_ref(x)), bench(lambda: F.gelu(tx)))
    row("GELU bwd (4096,512)", bench(lambda: A.gelu_backward(g, x)), bench(lambda: A.gelu_backward_ref(g, x)), bench(lambda: torch.ops.aten.gelu_backward(tg, tx)))
if "adam" in which:
    n = 300_000
    p = rng.standard_normal(n).astype(np.float32); gr = rng.standard_normal(n).astype(np.float32)
    m = np.zeros(n, np.float32); v = np.zeros(n, np.float32)
    tp = torch.from_numpy(p.copy()).requires_grad_(); tp.grad = torch.from_numpy(gr)
    opt = torch.optim.Adam([tp], lr=1e-3, foreach=False); opt.step()
    row("Adam 300k", bench(lambda: O.adam_step(p, gr, m, v, 3, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)), bench(lambda: O.adam_step_ref(p, gr, m, v, 3, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)), bench(opt.step))
    opt = torch.optim.AdamW([tp], lr=1e-3, foreach=False); opt.step()
    row("AdamW 300k", bench(lambda: O.adam_step(p, gr, m, v, 3, 1e-3, 0.9, 0.999, 1e-8, 0.01, True)), bench(lambda: O.adam_step_ref(p, gr, m, v, 3, 1e-3, 0.9, 0.999, 1e-8, 0.01, True)), bench(opt.step))
    buf = np.zeros(n, np.float32)
    opt = torch.optim.SGD([tp], lr=1e-3, momentum=0.9, foreach=False); opt.step()
    row("SGD momentum 300k", bench(lambda: O.sgd_step(p, gr, buf, 1e-3, 0.9, 0.0, 0.0, False, False)), bench(lambda: O.sgd_step_ref(p, gr, buf, 1e-3, 0.9, 0.0, 0.0, False, False)), bench(opt.step))
if "emb" in which:
    idx = rng.integers(0, 96, (32, 128)); go = rng.standard_normal((32, 128, 128)).astype(np.float32)
    ti, tgo = torch.from_numpy(idx), torch.from_numpy(go)
    row("embedding bwd (32,128)->(96,128)", bench(lambda: E.embedding_backward(idx, go, 96)), bench(lambda: E.embedding_backward_ref(idx, go, 96)), bench(lambda: torch.ops.aten.embedding_dense_backward(tgo, ti, 96, -1, False)))
