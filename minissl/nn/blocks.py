"""Building blocks of the self-supervised methods: attention, transformer block, patch and
position embeddings, a small ResNet-style convolutional encoder, MLP heads.

References
* Vaswani et al., "Attention Is All You Need", 2017 (multi-head attention).
* Radford et al., "Language Models are Unsupervised Multitask Learners" (GPT-2), 2019, and
  Karpathy's nanoGPT (pre-LN block: x + attn(ln1(x)); x + mlp(ln2(x))).
* Dosovitskiy et al., "An Image is Worth 16x16 Words" (ViT), 2021 (patch embedding).
* He et al., "Deep Residual Learning for Image Recognition", 2016 (basic residual block).
* Chen et al., "A Simple Framework for Contrastive Learning" (SimCLR), 2020, and Grill et al.,
  "Bootstrap Your Own Latent" (BYOL), 2020 (Linear-BN-ReLU projector and predictor heads).

Shapes: B batch, T sequence length (tokens or patches), C = dim channels, H heads,
D = C / H head size, L number of patches.
"""
import numpy as np

from .. import functional as F
from ..ops.attention import packed_self_attention
from ..random import get_generator
from .layers import (AdaptiveAvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, GELU,
                     LayerNorm, Linear, ReLU, Sequential, _dtype, _positive)
from .module import Module, Parameter

__all__ = ["MultiheadSelfAttention", "TransformerBlock", "PositionalEmbedding", "PatchEmbed",
           "BasicBlock", "ConvEncoder", "MLP", "MLPEncoder"]


class MultiheadSelfAttention(Module):
    """Multi-head self-attention: softmax(Q K^T / sqrt(D) [+ mask]) V per head, heads
    concatenated and projected.

    ``qkv`` (Linear C -> 3C) computes [Q | K | V] in that order along its output (so its
    weight matches nanoGPT's ``c_attn`` and PyTorch reference blocks that ``split(C, 2)``);
    ``proj`` (Linear C -> C) mixes the heads. ``causal=True`` lets position t attend only to
    positions <= t (autoregressive models).
    """

    def __init__(self, dim, num_heads, causal=False, rng=None, dtype=None):
        super().__init__()
        _positive("MultiheadSelfAttention", dim=dim, num_heads=num_heads)
        if dim % num_heads:
            raise ValueError(f"MultiheadSelfAttention: dim {dim} is not divisible by "
                             f"num_heads {num_heads}")
        rng = get_generator(rng)
        self.dim, self.num_heads, self.causal = dim, num_heads, causal
        self.qkv = Linear(dim, 3 * dim, rng=rng, dtype=dtype)
        self.proj = Linear(dim, dim, rng=rng, dtype=dtype)

    def forward(self, x, attn_mask=None):
        if x.ndim != 3 or x.shape[2] != self.dim:
            raise ValueError(f"MultiheadSelfAttention: expected input (B, T, {self.dim}), got "
                             f"shape {x.shape}")
        # One op for: split qkv (B, T, 3C) into q, k, v (B, H, T, D), D = C / H, then
        # scaled_dot_product_attention, then heads side by side again (B, T, C).
        y = packed_self_attention(self.qkv(x), self.num_heads, attn_mask=attn_mask,
                                  is_causal=self.causal)        # (B, T, C)
        return self.proj(y)                                     # (B, T, C)

    def extra_repr(self):
        return f"dim={self.dim}, num_heads={self.num_heads}, causal={self.causal}"


class TransformerBlock(Module):
    """Pre-LN transformer block: x = x + attn(ln1(x)); x = x + mlp(ln2(x)).

    ``mlp`` is Linear(C, mlp_ratio C) - GELU - Linear(mlp_ratio C, C). Parameter names:
    ln1.*, attn.qkv.*, attn.proj.*, ln2.*, mlp.0.*, mlp.2.*.
    """

    def __init__(self, dim, num_heads, mlp_ratio=4, causal=False, rng=None, dtype=None):
        super().__init__()
        rng = get_generator(rng)
        hidden = int(dim * mlp_ratio)
        self.ln1 = LayerNorm(dim, dtype=dtype)
        self.attn = MultiheadSelfAttention(dim, num_heads, causal, rng=rng, dtype=dtype)
        self.ln2 = LayerNorm(dim, dtype=dtype)
        self.mlp = Sequential(Linear(dim, hidden, rng=rng, dtype=dtype), GELU(),
                              Linear(hidden, dim, rng=rng, dtype=dtype))

    def forward(self, x, attn_mask=None):
        x = x + self.attn(self.ln1(x), attn_mask)               # (B, T, C)
        return x + self.mlp(self.ln2(x))                        # (B, T, C)


class PositionalEmbedding(Module):
    """A learned position embedding added to a sequence: x (B, T, C) + weight[:T] (T <= max_len).

    weight (max_len, dim) is initialised N(0, std^2) (std=0.02, as GPT-2 and ViT) or zeros
    with std=0.
    """

    def __init__(self, max_len, dim, std=0.02, rng=None, dtype=None):
        super().__init__()
        _positive("PositionalEmbedding", max_len=max_len, dim=dim)
        self.max_len, self.dim = max_len, dim
        dt = _dtype(dtype)
        if std:
            w = get_generator(rng).normal(0.0, std, size=(max_len, dim)).astype(dt)
        else:
            w = np.zeros((max_len, dim), dtype=dt)
        self.weight = Parameter(w)

    def forward(self, x):
        if x.ndim != 3 or x.shape[2] != self.dim or x.shape[1] > self.max_len:
            raise ValueError(f"PositionalEmbedding: expected input (B, T <= {self.max_len}, "
                             f"{self.dim}), got shape {x.shape}")
        T = x.shape[1]
        pos = self.weight if T == self.max_len else self.weight[:T]
        return x + pos                                          # (B, T, C) + (T, C)

    def extra_repr(self):
        return f"max_len={self.max_len}, dim={self.dim}"


class PatchEmbed(Module):
    """Image to a sequence of patch embeddings (ViT): a Conv2d with kernel = stride = patch
    size is one linear map per non-overlapping patch.

    x (B, C_in, H, W) -> (B, L, dim), L = (H / p) (W / p), patches in row-major order.
    """

    def __init__(self, img_size, patch_size, in_chans, dim, rng=None, dtype=None):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"PatchEmbed: img_size {img_size} is not divisible by patch_size "
                             f"{patch_size}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.grid = img_size // patch_size
        self.num_patches = self.grid * self.grid
        self.proj = Conv2d(in_chans, dim, patch_size, stride=patch_size, rng=rng, dtype=dtype)

    def forward(self, x):
        want = (self.in_chans, self.img_size, self.img_size)
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(f"PatchEmbed: expected input (B, {want[0]}, {want[1]}, {want[2]}), "
                             f"got shape {x.shape}")
        x = self.proj(x)                                        # (B, dim, H/p, W/p)
        return x.flatten(2).transpose(1, 2)                     # (B, L, dim)


class BasicBlock(Module):
    """ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    conv1 is 3x3 with ``stride``, conv2 3x3; the shortcut is the identity, or a 1x1 conv with
    ``stride`` + BN when the shape changes. Convolutions have no bias (BN follows).
    """

    def __init__(self, in_channels, out_channels, stride=1, rng=None, dtype=None):
        super().__init__()
        rng = get_generator(rng)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, rng=rng,
                            dtype=dtype)
        self.bn1 = BatchNorm2d(out_channels, dtype=dtype)
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, rng=rng,
                            dtype=dtype)
        self.bn2 = BatchNorm2d(out_channels, dtype=dtype)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = Sequential(Conv2d(in_channels, out_channels, 1, stride, bias=False,
                                              rng=rng, dtype=dtype),
                                       BatchNorm2d(out_channels, dtype=dtype))
        else:
            self.shortcut = None

    def forward(self, x):
        out = self.bn1(self.conv1(x))                           # (B, C_out, H/s, W/s)
        if not self.bn1.fused_relu:                             # (else nn.fuse made bn1 apply it)
            out = F.relu(out)
        out = self.bn2(self.conv2(out))                         # (B, C_out, H/s, W/s)
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + skip)

    def _fuse(self):
        """nn.fuse: bn1 and the ReLU after it as one op."""
        self.bn1.fused_relu = True


class ConvEncoder(Module):
    """A small ResNet: conv3x3-BN-ReLU stem, one ``BasicBlock`` per entry of ``widths`` (with
    the matching stride), global average pool.

    x (B, in_channels, H, W) -> features (B, widths[-1]); ``out_dim`` = widths[-1].
    """

    def __init__(self, in_channels=3, widths=(32, 64, 128), strides=(1, 2, 2), rng=None,
                 dtype=None):
        super().__init__()
        widths, strides = tuple(widths), tuple(strides)
        if not widths or len(widths) != len(strides):
            raise ValueError(f"ConvEncoder: widths {widths} and strides {strides} must be "
                             "non-empty and of the same length")
        rng = get_generator(rng)
        self.in_channels, self.widths, self.strides = in_channels, widths, strides
        self.out_dim = widths[-1]
        self.stem = Sequential(Conv2d(in_channels, widths[0], 3, 1, 1, bias=False, rng=rng,
                                      dtype=dtype),
                               BatchNorm2d(widths[0], dtype=dtype), ReLU())
        blocks, c = [], widths[0]
        for w, s in zip(widths, strides):
            blocks.append(BasicBlock(c, w, s, rng=rng, dtype=dtype))
            c = w
        self.blocks = Sequential(*blocks)
        self.pool = Sequential(AdaptiveAvgPool2d(1), Flatten())

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ConvEncoder: expected input (B, {self.in_channels}, H, W), got "
                             f"shape {x.shape}")
        x = self.stem(x)                                        # (B, widths[0], H, W)
        x = self.blocks(x)                                      # (B, widths[-1], H', W')
        return self.pool(x)                                     # (B, widths[-1])


class MLP(Sequential):
    """Projector / predictor head: [Linear - BN - ReLU] for each hidden layer, then Linear.

    ``dims`` = (in, hidden..., out). ``batch_norm=False`` drops the BNs; ``last_bn=True``
    adds a BatchNorm1d after the last Linear (SimSiam's projector). Children are numbered
    like a Sequential: Linear "0", BN "1", ReLU "2", Linear "3", ...
    """

    def __init__(self, dims, batch_norm=True, last_bn=False, rng=None, dtype=None):
        dims = tuple(int(d) for d in dims)
        if len(dims) < 2:
            raise ValueError(f"MLP: dims must list at least an input and an output size, "
                             f"got {dims}")
        rng = get_generator(rng)
        layers = []
        for i in range(len(dims) - 1):
            last = i == len(dims) - 2
            layers.append(Linear(dims[i], dims[i + 1], rng=rng, dtype=dtype))
            if (batch_norm and not last) or (last and last_bn):
                layers.append(BatchNorm1d(dims[i + 1], dtype=dtype))
            if not last:
                layers.append(ReLU())
        super().__init__(*layers)
        self.dims, self.out_dim = dims, dims[-1]


class MLPEncoder(Sequential):
    """The digits-protocol encoder: Linear-BN-ReLU-Linear-BN-ReLU (one triple per hidden size).

    x (N, in_dim) or images (N, C, H, W) with C H W = in_dim, flattened first -> features
    (N, hidden[-1]); ``out_dim`` = hidden[-1].
    """

    def __init__(self, in_dim, hidden=(256, 256), rng=None, dtype=None):
        hidden = tuple(int(h) for h in hidden)
        if not hidden:
            raise ValueError("MLPEncoder: hidden must list at least one layer size")
        rng = get_generator(rng)
        layers, d = [], int(in_dim)
        for h in hidden:
            layers += [Linear(d, h, rng=rng, dtype=dtype), BatchNorm1d(h, dtype=dtype), ReLU()]
            d = h
        super().__init__(*layers)
        self.in_dim, self.hidden, self.out_dim = int(in_dim), hidden, hidden[-1]

    def forward(self, x):
        if x.ndim > 2:
            x = x.reshape(x.shape[0], -1)                       # (N, C H W)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"MLPEncoder: expected input (N, {self.in_dim}) or images with "
                             f"{self.in_dim} values each, got shape {x.shape}")
        return super().forward(x)                               # (N, hidden[-1])
