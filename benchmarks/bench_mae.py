"""MAE in minissl and the same recipe written in PyTorch, probed identically (the few-label
linear probe of ``bench_digits.py``) on the digits, over seeds.

The recipe is the quality bar's (``examples/digits_protocol.py``): ``MAEConfig``'s defaults
(ViT of 4 blocks of width 64 over 16 patches of 2 px, decoder 2 blocks of 64, 75 % of the
patches removed, pixel targets), the official crop and flip, Adam 1e-3, 100 epochs of batch
256 (400 steps). Both libraries get the same batches, crops and masking noise, drawn in NumPy
from the same seeded generator (``bench_digits.batches``); both probe the mean of the encoder's
final tokens over all patches of the unmasked image. PyTorch's ViT is ``bench_nn_v3_mim``'s
(``nn.TransformerEncoderLayer(norm_first=True)``, the same pre-LN block), initialised as the
official ``models_mae.py``: xavier-uniform Linear weights and patch projection, zero biases.

The options are ``bench_nn_v3_mim.py``'s (``--diagnose``, ``--same-init``, ``--batch-size``).

    python benchmarks/bench_mae.py --epochs 100 --seeds 0 1 2
"""
import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import os
import sys
import types

from minissl import methods
from minissl.methods import masked

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_nn_v3_mim as mim  # noqa: E402


def build(method, d):
    return methods.build(method, d)


def torch_mae(torch, ours):
    """The PyTorch MAE of the minissl ``MAE`` ``ours`` (its sizes, augmentation and masking
    draws): a namespace of its modules (``enc``, ``dec`` whose blocks, norm, positions and
    mask token are the decoder's, ``decoder_embed``, ``decoder_pred``), ``params`` and
    ``step(x, rng)`` -> the loss of one batch, drawing from ``rng`` as ``MAE.training_step``.
    facebookresearch/mae ``models_mae.py`` (``MaskedAutoencoderViT``) without the [CLS]."""
    tnn = torch.nn
    C, H, _ = ours.image_shape
    c, L = ours.config, ours.num_patches
    r = types.SimpleNamespace(
        enc=mim.torch_vit(torch, C, H, c.patch_size, c.embed_dim, c.depth, c.num_heads,
                          mask_token=False),
        dec=mim.torch_vit(torch, C, H, c.patch_size, c.decoder_embed_dim, c.decoder_depth,
                          c.decoder_num_heads),
        decoder_embed=tnn.Linear(c.embed_dim, c.decoder_embed_dim),
        decoder_pred=tnn.Linear(c.decoder_embed_dim, c.patch_size ** 2 * C))
    for m in (r.enc, r.dec, r.decoder_embed, r.decoder_pred):
        mim.xavier_(torch, m)

    def step(x, rng):
        x = ours.transform(x, rng)                                    # (B, C, H, W)
        ids_keep, mask, ids_restore = masked.random_masking(rng.random((len(x), L)),
                                                            ours.len_keep)
        ids_keep, ids_restore = torch.from_numpy(ids_keep), torch.from_numpy(ids_restore)
        latent = r.enc.tokens(torch.from_numpy(x), ids_keep=ids_keep)  # (B, K, D)
        t = r.decoder_embed(latent)                                   # (B, K, Dd)
        fill = r.dec.mask_token.expand(len(x), L - t.shape[1], -1)
        t = torch.cat([t, fill], dim=1)                               # (B, L, Dd), shuffled
        t = torch.gather(t, 1, ids_restore.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        pred = r.decoder_pred(r.dec.encode(t + r.dec.pos))            # (B, L, p p C)
        target = torch.from_numpy(masked.patchify(x, c.patch_size))
        loss = ((pred - target) ** 2).mean(dim=-1)                    # (B, L)
        mask = torch.from_numpy(mask).to(loss.dtype)
        return (loss * mask).sum() / mask.sum()

    r.step = step
    r.params = [p for m in (r.enc, r.decoder_embed, r.decoder_pred) for p in m.parameters()]
    r.params += [p for n, p in r.dec.named_parameters() if not n.startswith("patch_embed")]
    return r


def mae_pairs(r):
    """Every parameter of ``torch_mae``'s namespace with its name in minissl's ``MAE``."""
    return (mim.vit_pairs(r.enc, "encoder.patch_embed.proj", "encoder.blocks", "encoder.norm")
            + mim.vit_pairs(r.dec, None, "decoder_blocks", "decoder_norm", "mask_token")
            + [(getattr(r, m).weight, f"{m}.weight") for m in ("decoder_embed", "decoder_pred")]
            + [(getattr(r, m).bias, f"{m}.bias") for m in ("decoder_embed", "decoder_pred")])


def _torch_mae(torch, d, epochs, seed, ours, batch, same_init=False):
    r = torch_mae(torch, ours)
    if same_init:
        mim.copy_weights(torch, ours, mae_pairs(r))
    return (mim._train(torch, r.params, d, epochs, seed, r.step, batch=batch),
            mim._features(torch, r.enc, flatten=False))


if __name__ == "__main__":
    mim.main(recipes=("mae",), build=build, torch_recipes={"mae": _torch_mae}, doc=__doc__)
