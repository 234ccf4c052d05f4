"""The three CPU benchmark workloads in minissl: one full training step each (forward, loss,
backward, optimiser step) on fixed random inputs. benchmarks/torch_workloads.py builds the same
architectures, shapes, optimisers and loss in PyTorch; benchmarks/bench_cpu.py times both.

Each builder takes a NumPy generator and returns ``(step, flops)``: the step closure and the
FLOPs of its matrix products (for the share of the sgemm rate a step reaches).

    mlp_simclr   MLP 64-512-512-128 with BatchNorm, NT-Xent (T=0.5) on 2 x 512 rows, Adam
    conv_simclr  3 conv3x3+BN+ReLU blocks (3-32-64-128, strides 1,2,2) on 2 x 256 images
                 3x32x32, global average pool, MLP head 128-128-64, NT-Xent, SGD momentum 0.9
    gpt_char     2 pre-LN transformer blocks, d=128, 4 heads, T=128, batch 32, vocab 96,
                 causal attention, cross-entropy, AdamW

Importing this module imports minissl (and NumPy): the benchmark's workers import NumPy first,
as a user's script would.
"""
import numpy as np

import minissl as ms
import minissl.functional as F
from minissl import losses, nn, optim


def randn(*shape, rng):
    return ms.tensor(rng.standard_normal(shape, dtype=np.float32))


def _simclr_step(enc, opt, x1, x2):
    def step():
        opt.zero_grad()
        loss = losses.nt_xent(enc(x1), enc(x2), temperature=0.5)
        loss.backward()
        opt.step()
        return loss
    return step


def mlp_simclr(rng):
    enc = nn.fuse(nn.Sequential(nn.Linear(64, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                nn.Linear(512, 128)))       # BatchNorm + ReLU as one op
    opt = optim.Adam(enc.parameters(), 1e-3)
    x1, x2 = randn(512, 64, rng=rng), randn(512, 64, rng=rng)
    step = _simclr_step(enc, opt, x1, x2)
    # Matrix-product FLOPs: forward 2*m*k*n per Linear, backward twice that; two views.
    flops = 2 * 3 * 2 * 512 * (64 * 512 + 512 * 512 + 512 * 128) + 3 * 2 * 1024 * 1024 * 128
    return step, flops


def conv_simclr(rng):
    def blk(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    enc = nn.fuse(nn.Sequential(*blk(3, 32, 1), *blk(32, 64, 2), *blk(64, 128, 2),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 128),
                                nn.ReLU(), nn.Linear(128, 64)))   # BatchNorm + ReLU as one op
    opt = optim.SGD(enc.parameters(), 0.1, momentum=0.9)
    x1, x2 = randn(256, 3, 32, 32, rng=rng), randn(256, 3, 32, 32, rng=rng)
    step = _simclr_step(enc, opt, x1, x2)
    convs = [(32 * 32, 3 * 9, 32), (16 * 16, 32 * 9, 64), (8 * 8, 64 * 9, 128)]
    conv_flops = sum(2 * 256 * hw * k * o for hw, k, o in convs)
    # Backward: dW for every layer, dX for all but the first (its input needs no grad).
    bwd = sum(2 * 256 * hw * k * o * (1 if i == 0 else 2) for i, (hw, k, o) in enumerate(convs))
    flops = 2 * (conv_flops + bwd)
    return step, flops


def gpt_char(rng, causal=True):
    V, T, d, B = 96, 128, 128, 32
    emb = nn.Embedding(V, d)
    pos = nn.Parameter(np.zeros((T, d), dtype=np.float32))
    blocks = nn.Sequential(nn.TransformerBlock(d, 4, causal=causal),
                           nn.TransformerBlock(d, 4, causal=causal))
    head = nn.Linear(d, V)
    params = list(emb.parameters()) + [pos] + list(blocks.parameters()) + list(head.parameters())
    opt = optim.AdamW(params, 3e-4)
    idx = rng.integers(0, V, (B, T))
    tgt = ms.tensor(rng.integers(0, V, (B, T)))

    def step():
        opt.zero_grad()
        logits = head(blocks(emb(idx) + pos))
        loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
        loss.backward()
        opt.step()
        return loss
    rows = B * T
    per_block = 2 * rows * (d * 3 * d + d * d + 2 * d * 4 * d) + 2 * 2 * B * 4 * T * T * (d // 4)
    flops = 3 * (2 * per_block + 2 * rows * d * V)
    return step, flops


WORKLOADS = {"mlp_simclr": mlp_simclr, "conv_simclr": conv_simclr, "gpt_char": gpt_char}
