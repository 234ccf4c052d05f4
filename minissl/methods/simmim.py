"""SimMIM: masked image modelling with a linear head that predicts raw pixels.

Xie, Zhang, Cao, Lin, Bao, Yao, Dai & Hu, "SimMIM: A Simple Framework for Masked Image
Modeling", CVPR 2022 (arXiv:2111.09886); official code microsoft/SimMIM
(``models/simmim.py``: ``VisionTransformerForSimMIM`` and ``SimMIM``; ``data/data_simmim.py``:
``MaskGenerator`` and the pretraining transform).

Where MAE drops the masked patches and decodes with a transformer, SimMIM keeps every patch in
the encoder and replaces the masked ones by a learned mask token BEFORE the position
embedding, then predicts each patch's pixels from its encoded token with one linear layer:

    t     = PatchEmbed(x)                                (B, L, D)
    t     = t (1 - w) + mask_token w + pos_embed          w = the patch mask (B, L, 1)
    h     = LayerNorm(blocks(t))                          (B, L, D) -> (B, D, h, w)
    x_rec = PixelShuffle_p(Conv1x1(h))                    (B, C, H, W)
    loss  = losses.simmim_loss(x_rec, x, mask upsampled to pixels)   L1 on masked pixels only

With ``norm_target_window`` the target is not x but each pixel standardised over the square
of that many pixels around it (``losses.simmim_norm_targets``: the official code's
``NORM_TARGET`` option, which its SwinV2 configs turn on), so colour and brightness need not be
predicted, only local contrast.

The mask (``mask_generator``, official ``MaskGenerator``): the image is cut into squares of
``mask_patch_size`` pixels, ceil(ratio * count) of them are chosen uniformly per image (one
``rng.permutation(count)`` per image, as ``np.random.permutation``), each square covering
(mask_patch_size / patch_size)^2 model patches. Large masked squares keep the task from being
solved by interpolating neighbours (paper Table 1).

The design needs of the encoder only a "patch embedding" whose output positions the mask
token can replace and a last map of stride s that the head decodes (official Swin: a 4 px
patch embedding, stride 32, ``Conv2d(1024, 32 * 32 * 3, 1)`` + ``PixelShuffle(32)``). So
``encoder=`` takes a conv network instead of the ViT (``conv_stages``; the paper used ViT and
Swin only): its stem (conv-BN-ReLU) is the patch embedding, at stride 1 masks are drawn per
pixel in squares of ``mask_patch_size`` (default s, as the official 32 of Swin), and the
last map before its global pool goes through ``Conv2d(width, s * s * C, 1)`` + ``PixelShuffle
(s)``. The masked pixels are also zeroed in the input: a 3x3 stem sees one pixel beyond each
position, which a non-overlapping patch embedding does not. Features: the encoder's output
(the global average pool) on the unmasked image.

Differences (docs/faithful.md): the ViT of ``masked.ViTEncoder`` (fixed 2-D sin-cos
positions, no [CLS] token; the official ViT has a [CLS] token and learned or relative
positions), features = mean of the patch tokens of the unmasked image (the official
fine-tuning pools likewise); mask token drawn N(0, 0.02) (official: truncated at +-0.02 for
the ViT, untruncated in effect for Swin); the
sizes; the augmentation's crop is bilinear (official bicubic) and has no Normalize; mask
square 2 px and patch 2 px on the 8x8 digits (official 32 px squares of 4 px patches for Swin,
of 16 px patches for ViT, at 192 or 224 px: squares of 2x2 ViT patches would be the quadrants of a
digit, measured worse); Adam instead of AdamW with layer-wise schedules.
"""
import math
from dataclasses import dataclass

import numpy as np

from .. import augment, distributed as dist, losses, nn
from ..autograd import Tensor, no_grad
from ..backend import get_array_module, to_device
from ..random import get_generator
from .base import SSLMethod
from .masked import ViTEncoder, choose_patch_size


@dataclass
class SimMIMConfig:
    patch_size: int = 0           # model patch p; 0: chosen for the image (2 for 8x8 digits);
                                  # with a conv encoder: its stem's stride
    mask_patch_size: int = 0      # side of the masked squares in pixels, a multiple of p;
                                  # 0: the encoder's stride (the ViT's p; official: 32, Swin's
                                  # stride, with p = 4 at 192 px)
    mask_ratio: float = 0.6       # fraction of squares masked (official: 0.6)
    embed_dim: int = 64           # encoder width (ViT-B: 768)
    depth: int = 4                # encoder blocks (ViT-B: 12)
    num_heads: int = 4            # encoder heads (ViT-B: 12)
    mlp_ratio: float = 4.0        # MLP hidden width / width
    norm_target_window: int = 0   # 0: the targets are the pixels (the paper); an odd window
                                  # >= 3: each pixel standardised over that square around it
                                  # (losses.simmim_norm_targets; official NORM_TARGET, 47 px
                                  # at 192 px in the SwinV2 configs)


def mask_generator(rng, batch_size, input_size, mask_patch_size, model_patch_size, mask_ratio):
    """SimMIM's random masks of a batch: int64 (B, g, g), g = input_size / model_patch_size,
    1 = masked. Per image: ``rng.permutation(r * r)[:ceil(r * r * ratio)]`` of the r x r
    squares (r = input_size / mask_patch_size) are masked, each repeated over the s x s model
    patches it covers (s = mask_patch_size / model_patch_size), as the official
    ``MaskGenerator.__call__``."""
    if input_size % mask_patch_size or mask_patch_size % model_patch_size:
        raise ValueError(f"mask_generator: the image size {input_size} must be a multiple of "
                         f"mask_patch_size {mask_patch_size}, itself a multiple of the patch "
                         f"size {model_patch_size}")
    r = input_size // mask_patch_size
    s = mask_patch_size // model_patch_size
    count = int(math.ceil(r * r * mask_ratio))
    masks = np.zeros((batch_size, r * r), dtype=np.int64)
    for b in range(batch_size):
        masks[b, rng.permutation(r * r)[:count]] = 1
    return masks.reshape(batch_size, r, r).repeat(s, axis=1).repeat(s, axis=2)


def simmim_augmentation(size):
    """The official pretraining transform (``SimMIMTransform``): ``RandomResizedCrop(size,
    scale=(0.67, 1), ratio=(3/4, 4/3))`` then ``RandomHorizontalFlip()``."""
    return augment.Compose([augment.RandomResizedCrop(size, scale=(0.67, 1.0),
                                                      ratio=(3 / 4, 4 / 3)),
                            augment.RandomHorizontalFlip()])


class PixelShuffle(nn.Module):
    """(B, C r^2, h, w) -> (B, C, h r, w r), as ``torch.nn.PixelShuffle(r)``: channel
    c r^2 + i r + j goes to pixel (i, j) of its r x r block."""

    def __init__(self, upscale_factor):
        super().__init__()
        self.upscale_factor = int(upscale_factor)

    def forward(self, x):
        B, Cr2, h, w = x.shape
        r = self.upscale_factor
        x = x.reshape(B, Cr2 // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3)  # (B,C,h,r,w,r)
        return x.reshape(B, Cr2 // (r * r), h * r, w * r)


class SimMIMEncoder(ViTEncoder):
    """``masked.ViTEncoder`` with a learned mask token that replaces the masked patches'
    embeddings before the positions are added (official ``VisionTransformerForSimMIM``)."""

    def __init__(self, img_size, patch_size, in_chans, dim, depth, num_heads, mlp_ratio=4.0,
                 rng=None, dtype=None):
        rng = get_generator(rng)
        super().__init__(img_size, patch_size, in_chans, dim, depth, num_heads, mlp_ratio,
                         rng=rng, dtype=dtype)
        dt = self.patch_embed.proj.weight.dtype
        self.mask_token = nn.Parameter(rng.normal(0.0, 0.02, size=(1, 1, dim)).astype(dt))

    def forward_masked(self, x, mask):
        """Images x (B, C, H, W), patch mask (B, L) array (1 = masked) -> tokens (B, L, D)."""
        t = self.patch_embed(x)                                 # (B, L, D)
        xp = get_array_module(t.data)
        w = Tensor(xp.asarray(mask).reshape(len(mask), -1, 1).astype(t.dtype))  # (B, L, 1)
        t = t * (1 - w) + self.mask_token * w + self.pos_embed
        return self.encode(t)                                   # (B, L, D)


def conv_stages(encoder):
    """(stem, body) of a conv ``encoder`` for SimMIM, as lists of its own modules: the stem,
    whose output map is SimMIM's "patch embedding" (the mask token replaces its masked
    positions), and the body that turns it into the last map before the global pool.
    ``nn.ConvEncoder`` (``--encoder resnet``): its ``stem`` and ``blocks``; an ``nn.Sequential``
    of conv layers (``benchmarks/bench_shapes.py``'s): split after its first ReLU, cut at its
    ``AdaptiveAvgPool2d``."""
    if isinstance(encoder, nn.ConvEncoder):
        return [encoder.stem], [encoder.blocks]
    layers = list(encoder.children()) if isinstance(encoder, nn.Sequential) else []
    kinds = [type(layer) for layer in layers]
    if nn.ReLU in kinds and nn.AdaptiveAvgPool2d in kinds[kinds.index(nn.ReLU):]:
        act, pool = kinds.index(nn.ReLU), kinds.index(nn.AdaptiveAvgPool2d)
        return layers[:act + 1], layers[act + 1:pool]
    raise ValueError(f"SimMIM: a custom encoder must be an nn.ConvEncoder or an nn.Sequential "
                     f"of conv layers with a ReLU ending its stem and an AdaptiveAvgPool2d "
                     f"after its last map; got {type(encoder).__name__}")


def _run(layers, x):
    for layer in layers:
        x = layer(x)
    return x


class SimMIM(SSLMethod):
    """SimMIM with a ViT encoder, or a conv ``encoder`` (see the module docstring)."""

    name = "simmim"

    def __init__(self, image_shape, config=None, rng=None, dtype=None, transform=None,
                 encoder=None):
        super().__init__()
        c = self.config = config or SimMIMConfig()
        C, H, W = image_shape
        if not 0 < c.mask_ratio < 1:
            raise ValueError(f"SimMIM: mask_ratio must be in (0, 1), got {c.mask_ratio}")
        w = c.norm_target_window
        if w != 0 and (w < 3 or w % 2 == 0):
            raise ValueError(f"SimMIM: norm_target_window must be 0 or an odd number >= 3, "
                             f"got {w}")
        rng = get_generator(rng)
        if encoder is None:      # the ViT: masks and the decoder at its patch size
            p = stride = c.patch_size or choose_patch_size(H)
            if H != W or H % p:
                raise ValueError(f"SimMIM: needs square images whose size is a multiple of "
                                 f"patch_size {p}; got {image_shape}")
            self.encoder = SimMIMEncoder(H, p, C, c.embed_dim, c.depth, c.num_heads,
                                         c.mlp_ratio, rng=rng, dtype=dtype)
            width = c.embed_dim
        else:                    # a conv net: masks at its stem's stride, decoder at its own
            self.encoder = encoder
            p, stride, stem_width, width = self._conv_strides(image_shape)
            if c.patch_size not in (0, p):
                raise ValueError(f"SimMIM: patch_size {c.patch_size} is not the stride {p} "
                                 f"of the conv encoder's stem")
            dt = next(iter(encoder.parameters())).dtype
            self.mask_token = nn.Parameter(                                # (1, C_stem, 1, 1)
                rng.normal(0.0, 0.02, size=(1, stem_width, 1, 1)).astype(dt))
        mp = c.mask_patch_size or stride
        if H != W or H % mp or mp % p or H % stride:
            raise ValueError(f"SimMIM: needs square images whose size is a multiple of "
                             f"mask_patch_size {mp}, itself a multiple of patch_size {p}; got "
                             f"{image_shape}")
        self.image_shape, self.patch_size, self.mask_patch_size = (C, H, W), p, mp
        self.stride, self.grid = stride, H // p
        # One linear map per position of the last map to its stride x stride x C pixels.
        self.decoder = nn.Sequential(nn.Conv2d(width, stride * stride * C, 1, rng=rng,
                                               dtype=dtype), PixelShuffle(stride))
        self.transform = transform or simmim_augmentation(H)

    def _conv_strides(self, image_shape):
        """(stem stride, encoder stride, stem width, last map width) of the conv encoder,
        read off one blank image in eval mode."""
        stem, body = conv_stages(self.encoder)
        was_training = self.encoder.training
        self.encoder.eval()
        with no_grad():
            s = _run(stem, self.as_input(np.zeros((1, *image_shape))))
            h = _run(body, s)
        self.encoder.train(was_training)
        H = image_shape[1]
        if s.ndim != 4 or h.ndim != 4 or H % s.shape[-1] or H % h.shape[-1]:
            raise ValueError(f"SimMIM: the conv encoder must keep maps whose size divides the "
                             f"image's {H}; got the stem's {s.shape}, the last {h.shape}")
        return H // s.shape[-1], H // h.shape[-1], s.shape[1], h.shape[1]

    def masks(self, batch_size, rng):
        """Patch masks (B, g, g) drawn from ``rng`` (see ``mask_generator``)."""
        return mask_generator(rng, batch_size, self.image_shape[1], self.mask_patch_size,
                              self.patch_size, self.config.mask_ratio)

    def reconstruct(self, x, mask):
        """x_rec (B, C, H, W) Tensor from images x (B, C, H, W) and patch masks (B, g, g)."""
        x = self.as_input(x)
        B = x.shape[0]
        if isinstance(self.encoder, SimMIMEncoder):
            h = self.encoder.forward_masked(x, mask)                # (B, L, D)
            h = h.permute(0, 2, 1).reshape(B, -1, self.grid, self.grid)   # (B, D, g, g)
            return self.decoder(h)                                  # (B, C, H, W)
        xp = get_array_module(x.data)
        w = Tensor(xp.asarray(mask)[:, None].astype(x.dtype))          # (B, 1, g, g)
        p = self.patch_size
        pixels = Tensor(xp.asarray(mask).repeat(p, 1).repeat(p, 2)[:, None].astype(x.dtype))
        stem, body = conv_stages(self.encoder)
        # The masked pixels are zeroed first: a stem wider than its stride (a 3x3 conv) would
        # otherwise show the positions next to a masked square a rim of its pixels.
        t = _run(stem, x * (1 - pixels))                                # (B, C_stem, g, g)
        t = t * (1 - w) + self.mask_token * w
        return self.decoder(_run(body, t))                              # (B, C, H, W)

    def targets(self, x):
        """What the decoder learns to predict of images x (B, C, H, W) array: the pixels, or
        their local standardisation (``norm_target_window``)."""
        w = self.config.norm_target_window
        return losses.simmim_norm_targets(x, w) if w else x

    def picture_rows(self, x, rng=0):
        """Rows of a picture of images x (B, C, H, W): the masked input (hidden squares at 0),
        the reconstruction pasted into the hidden squares of the target, the target (the
        pixels, or their standardisation with ``norm_target_window``); masks from ``rng``."""
        x = np.asarray(to_device(x, "cpu"), np.float32)
        mask = self.masks(len(x), get_generator(rng))                  # (B, g, g)
        hidden = mask.repeat(self.patch_size, 1).repeat(self.patch_size, 2)[:, None]
        was_training = self.training
        self.eval()
        with no_grad():
            rec = to_device(self.reconstruct(x, mask).data, "cpu")     # (B, C, H, W)
        self.train(was_training)
        target = self.targets(x)
        return [x * (1 - hidden), target * (1 - hidden) + rec * hidden, target], \
            ["input", "output", "target"]

    def training_step(self, x, rng):
        """Draws from ``rng``: the augmentation (crop and flip), then one
        ``permutation(count)`` per image for its mask. Data-parallel: drawn for the global
        batch; each rank reconstructs its rows and the reconstructions are gathered, so the
        loss is that of the global batch (its denominator counts every rank's masked pixels:
        the mean of per-rank losses, as the official DDP run takes, differs by the 1e-5)."""
        if isinstance(x, Tensor):
            x = x.data
        rng = get_generator(rng)
        x = self.as_input(self.transform(x, rng))               # (B, C, H, W)
        mask = self.masks(len(x), rng)                          # (B, g, g) int64
        x_rec = dist.all_gather(self.reconstruct(*dist.shard(x.data, mask)))  # (B, C, H, W)
        pixel_mask = mask.repeat(self.patch_size, 1).repeat(self.patch_size, 2)  # (B, H, W)
        xp = get_array_module(x.data)
        target = Tensor(self.targets(x.data))                   # (B, C, H, W), a constant
        loss = losses.simmim_loss(x_rec, target, xp.asarray(pixel_mask))
        return loss, {}


def build(data, encoder=None, feature_dim=None, **overrides):
    """SimMIM for an image ``Dataset``; ``overrides`` set fields of ``SimMIMConfig`` (and
    ``rng``). ``encoder``: a conv network (see ``conv_stages``) in place of the ViT, whose
    sizes the config's ViT fields then no longer set; ``feature_dim`` is only checked against
    it, the width of its last map."""
    rng = overrides.pop("rng", None)
    m = SimMIM(data.image_shape, SimMIMConfig(**overrides), rng=rng, encoder=encoder)
    if encoder is not None and feature_dim is not None and feature_dim != m.decoder[0].in_channels:
        raise ValueError(f"SimMIM: feature_dim {feature_dim} is not the width "
                         f"{m.decoder[0].in_channels} of the encoder's last map")
    return m
