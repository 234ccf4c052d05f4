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

``--init`` picks each seed's initial weights: each library's own draw (``own``, the
default), or one draw for both, minissl's (``minissl``; ``--same-init`` is its old name) or
PyTorch's (``pytorch``): the cross experiment that tells a difference in training from one in
the draw of the weights. ``--init-stats N`` instead compares the two libraries' initial
weights over N seeds, parameter by parameter (``init_stats``), and trains nothing.
``--diagnose`` and ``--batch-size`` are ``bench_nn_v3_mim.py``'s.

    python benchmarks/bench_mae.py --epochs 100 --seeds 0 1 2
    python benchmarks/bench_mae.py --epochs 100 --seeds 0 1 2 --init pytorch
    python benchmarks/bench_mae.py --init-stats 50
"""
import minissl

minissl.runtime.tune()   # the process settings of a training loop (minissl/runtime.py)

import argparse
import os
import sys
import types

import numpy as np

from minissl import data, methods, random
from minissl.methods import masked

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_digits  # noqa: E402
import compare_draws  # noqa: E402
import bench_nn_v3_mim as mim  # noqa: E402

INITS = ("own", "minissl", "pytorch")


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


def pytorch_draw(torch, ours, seed):
    """The PyTorch recipe's initial weights for ``seed`` (those of its own run, which seeds
    torch then builds ``torch_mae``) copied into the minissl ``MAE`` ``ours``."""
    torch.manual_seed(seed)
    pairs = mae_pairs(torch_mae(torch, ours))
    named = dict(ours.named_parameters())
    if sorted(name for _, name in pairs) != sorted(named):
        raise ValueError("pytorch_draw: the pairs do not name each minissl parameter once")
    for tp, name in pairs:
        named[name].data[...] = tp.detach().numpy()
    return ours


def run(library, d, epochs, seed, batch, init="own"):
    """(final loss, features) of one library's run; ``init`` (``INITS``) whose draw of the
    initial weights it starts from."""
    if library == "pytorch":
        return mim.torch_run(d, epochs, "mae", seed, batch, build=build,
                             recipes={"mae": _torch_mae}, same_init=init == "minissl")
    if init == "pytorch":
        import torch

        def start(method, d):
            return pytorch_draw(torch, build(method, d), seed)
        return mim.minissl_run(d, epochs, "mae", seed, batch, build=start)
    return mim.minissl_run(d, epochs, "mae", seed, batch, build=build)


def fixed_differences(ours, r):
    """What the two libraries fix rather than draw, where it differs (empty: nothing): the
    sin-cos positions, every LayerNorm's eps, the activation, dropout, and which parameters
    are trained (``r.params`` against the minissl parameters ``mae_pairs`` names)."""
    import torch
    out = []
    for name, a, b in (("encoder positions", ours.encoder.pos_embed, r.enc.pos),
                       ("decoder positions", ours.decoder_pos_embed, r.dec.pos)):
        if not np.allclose(np.asarray(getattr(a, "data", a)), b.numpy(), atol=1e-7):
            out.append(name)
    eps = {m.eps for m in ours.modules() if type(m).__name__ == "LayerNorm"}
    eps_t = {m.eps for vit in (r.enc, r.dec) for m in vit.modules()
             if isinstance(m, torch.nn.LayerNorm)}
    if eps != eps_t:
        out.append(f"LayerNorm eps {eps} vs {eps_t}")
    for vit in (r.enc, r.dec):
        for blk in vit.blocks:
            if blk.activation is not torch.nn.functional.gelu or blk.dropout.p or \
                    blk.self_attn.dropout:
                out.append("activation or dropout of a PyTorch block")
    if {id(p) for p in r.params} != {id(tp) for tp, _ in mae_pairs(r)}:
        out.append("trained parameters")
    return out


def init_stats(d, seeds):
    """Both libraries' initial weights over ``seeds``, compared parameter by parameter
    (``compare_draws.table``, whose pools it returns), after what they fix rather than draw
    (``fixed_differences``)."""
    import torch
    pools = {}
    for seed in seeds:
        random.manual_seed(seed)
        ours = build("mae", d)
        torch.manual_seed(seed)
        named, r = dict(ours.named_parameters()), torch_mae(torch, ours)
        for tp, name in mae_pairs(r):
            compare_draws.pool(pools, name, named[name].data, tp.detach().numpy())
    print("fixed, not drawn (positions, LayerNorm eps, GELU, dropout, trained parameters): "
          + (", ".join(fixed_differences(ours, r)) or "the same"))
    return compare_draws.table(pools)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=mim.BATCH)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--libraries", nargs="+", default=["minissl", "pytorch"],
                    choices=["minissl", "pytorch"])
    ap.add_argument("--init", choices=INITS, default="own",
                    help="each library's own draw of the initial weights, or minissl's or "
                         "PyTorch's draw for both")
    ap.add_argument("--same-init", dest="init", action="store_const", const="minissl",
                    help="the same as --init minissl")
    ap.add_argument("--init-stats", type=int, metavar="N",
                    help="compare the initial weights over seeds 0..N-1; train nothing")
    ap.add_argument("--diagnose", action="store_true",
                    help="after each minissl run, its reconstruction and per-depth probes")
    args = ap.parse_args()
    d = data.digits()
    if args.init_stats:
        init_stats(d, range(args.init_stats))
        return
    print("raw pixels digits probe 1/5/10: " + " ".join(
        f"{a:.3f}" for a in mim.probe(lambda x: x.reshape(len(x), -1), d, mim.LABELS)))
    accs = {lib: [] for lib in args.libraries}
    for seed in args.seeds:
        for lib in args.libraries:
            loss, features = run(lib, d, args.epochs, seed, args.batch_size, args.init)
            accs[lib].append(mim.probe(features, d, mim.LABELS))
            print(f"{lib:8s} mae init {args.init} seed {seed}: final loss {loss:.4f}   probe "
                  "1/5/10: " + " ".join(f"{a:.3f}" for a in accs[lib][-1]), flush=True)
            if args.diagnose and lib == "minissl":
                mim.diagnose(features.__self__, d)
    for lib in args.libraries:
        print(f"{lib:8s} mae init {args.init} over {len(accs[lib])} seed(s): probe 1/5/10 "
              + bench_digits.seeds_summary(accs[lib]))


if __name__ == "__main__":
    main()
