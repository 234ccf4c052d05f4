"""The three benchmark workloads of benchmarks/minissl_workloads.py, written in PyTorch.

The same architectures, shapes, optimisers, hyper-parameters and loss as the minissl builders,
in PyTorch's stock modules with their default settings (no ``torch.compile``, no fused
attention, no thread or allocator tuning): what a user porting the model would write. Each
builder takes the device and returns the step closure (forward, loss, backward, optimiser
step on fixed random inputs).

    python benchmarks/torch_workloads.py [cpu|cuda] [reps]

prints each workload's median step time as ``<name> <device> median <ms> ms/step``
(benchmarks/bench_gpu.py reads these lines; benchmarks/bench_cpu.py imports the builders).
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


def nt_xent(z1, z2, temperature=0.5):
    """SimCLR's loss as minissl.losses.nt_xent: the mean over the 2N anchors of the
    cross-entropy of cosine similarities / T, the self-similarity masked with -inf."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)                    # (2N, D), unit rows
    logits = (z @ z.T) / temperature                               # (2N, 2N)
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device),
                                float("-inf"))
    positive = torch.arange(2 * n, device=z.device).roll(n)        # i <-> i + N
    return F.cross_entropy(logits, positive)


def _simclr_step(enc, opt, x1, x2):
    def step():
        opt.zero_grad()
        loss = nt_xent(enc(x1), enc(x2), temperature=0.5)
        loss.backward()
        opt.step()
        return loss
    return step


def mlp_simclr(device="cpu"):
    enc = nn.Sequential(nn.Linear(64, 512), nn.BatchNorm1d(512), nn.ReLU(),
                        nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                        nn.Linear(512, 128)).to(device)
    opt = torch.optim.Adam(enc.parameters(), 1e-3)
    x1, x2 = torch.randn(512, 64, device=device), torch.randn(512, 64, device=device)
    return _simclr_step(enc, opt, x1, x2)


def conv_simclr(device="cpu"):
    def blk(i, o, s):
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    enc = nn.Sequential(*blk(3, 32, 1), *blk(32, 64, 2), *blk(64, 128, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 128),
                        nn.ReLU(), nn.Linear(128, 64)).to(device)
    opt = torch.optim.SGD(enc.parameters(), 0.1, momentum=0.9)
    x1 = torch.randn(256, 3, 32, 32, device=device)
    x2 = torch.randn(256, 3, 32, 32, device=device)
    return _simclr_step(enc, opt, x1, x2)


class SelfAttention(nn.Module):
    """Multi-head self-attention as minissl.nn.MultiheadSelfAttention: one qkv projection,
    softmax(q k^T / sqrt(d_head)) v per head (written out, as minissl computes it), proj."""

    def __init__(self, dim, num_heads, causal):
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.num_heads, self.causal = num_heads, causal

    def forward(self, x):                                          # x (B, T, C)
        B, T, C = x.shape
        heads = self.qkv(x).view(B, T, 3, self.num_heads, C // self.num_heads)
        q, k, v = heads.permute(2, 0, 3, 1, 4)                     # each (B, H, T, C/H)
        scores = q @ k.transpose(-2, -1) / (C // self.num_heads) ** 0.5   # (B, H, T, T)
        if self.causal:
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        y = scores.softmax(-1) @ v                                 # (B, H, T, C/H)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class TransformerBlock(nn.Module):
    """Pre-LN block as minissl.nn.TransformerBlock: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, dim, num_heads, causal, mlp_ratio=4):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, causal)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def gpt_char(device="cpu", causal=True):
    V, T, d, B = 96, 128, 128, 32
    emb = nn.Embedding(V, d).to(device)
    pos = nn.Parameter(torch.zeros(T, d, device=device))
    blocks = nn.Sequential(TransformerBlock(d, 4, causal), TransformerBlock(d, 4, causal))
    blocks, head = blocks.to(device), nn.Linear(d, V).to(device)
    params = [*emb.parameters(), pos, *blocks.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, 3e-4)
    idx = torch.randint(0, V, (B, T), device=device)
    tgt = torch.randint(0, V, (B, T), device=device)

    def step():
        opt.zero_grad()
        logits = head(blocks(emb(idx) + pos))                      # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
        loss.backward()
        opt.step()
        return loss
    return step


WORKLOADS = {"mlp_simclr": mlp_simclr, "conv_simclr": conv_simclr, "gpt_char": gpt_char}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    device = argv[0] if argv else "cpu"
    reps = int(argv[1]) if len(argv) > 1 else 10
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_cpu import time_step     # standard library only: imports nothing else
    sync = torch.cuda.synchronize if device == "cuda" else None
    for name, build in WORKLOADS.items():
        torch.manual_seed(0)
        median, best = time_step(build(device), reps, sync=sync)
        print(f"{name:12s} {device} median {1e3 * median:.2f} ms/step  min {1e3 * best:.2f}")


if __name__ == "__main__":
    main()
