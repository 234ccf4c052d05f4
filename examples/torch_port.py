"""A PyTorch port of minissl, written from the papers and their official codes, for
``examples/port_check.py``: the SSL losses, the data ops (masking, patches, position embedding,
schedules) and the training step of every method.

Nothing here imports minissl: the port sees only the conformance files (their inputs, initial
weights, augmented views and random draws), so agreement means two independent
implementations compute the same numbers.
"""
import math

import torch
import torch.nn as tnn
import torch.nn.functional as TF

# ----------------------------------------------------------------------------- losses


def nt_xent(z1, z2, temperature=0.5):
    # SimCLR (Chen et al. 2020, eq. 1): 2N anchors, the positive is the other view,
    # the 2N - 2 other rows are negatives, self-similarity excluded.
    n = z1.shape[0]
    z = TF.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return TF.cross_entropy(sim, target)


def info_nce(query, key, negatives, temperature=0.07):
    # MoCo (He et al. 2020, eq. 1; builder.py): the positive logit first, then the queue's;
    # the queue gets no gradient.
    q, k = TF.normalize(query, dim=1), TF.normalize(key, dim=1)
    neg = TF.normalize(negatives, dim=1).detach()
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ neg.T], dim=1) / temperature
    return TF.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def clip_loss(image_features, text_features, logit_scale):
    # CLIP (Radford et al. 2021, Figure 3): symmetric cross-entropy over the pairings.
    img, txt = TF.normalize(image_features, dim=1), TF.normalize(text_features, dim=1)
    logits = logit_scale.exp() * img @ txt.T
    labels = torch.arange(len(img))
    return (TF.cross_entropy(logits, labels) + TF.cross_entropy(logits.T, labels)) / 2


def byol_loss(prediction, target):
    # BYOL (Grill et al. 2020, eq. 2): || p/|p| - z/|z| ||^2 = 2 - 2 cos, stop-gradient on z.
    p, z = TF.normalize(prediction, dim=1), TF.normalize(target.detach(), dim=1)
    return (2 - 2 * (p * z).sum(1)).mean()


def simsiam_loss(prediction, target):
    # SimSiam (Chen & He 2021, eq. 1; nn.CosineSimilarity): -cos, stop-gradient on z.
    return -TF.cosine_similarity(prediction, target.detach(), dim=1).mean()


def barlow_twins_loss(z1, z2, lambd=5e-3):
    # Barlow Twins (Zbontar et al. 2021, eq. 1): cross-correlation of the batch-
    # standardised views (biased variance, eps 1e-5, as BatchNorm1d without affine).
    n = z1.shape[0]
    a = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
    b = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
    c = a.T @ b / n
    on = ((torch.diagonal(c) - 1) ** 2).sum()
    off = (c ** 2).sum() - (torch.diagonal(c) ** 2).sum()
    return on + lambd * off


def vicreg_loss(z1, z2, sim_weight=25.0, var_weight=25.0, cov_weight=1.0, eps=1e-4):
    # VICReg (Bardes et al. 2022, eqs. 1-6; official main_vicreg.py).
    n, d = z1.shape
    inv = TF.mse_loss(z1, z2)
    x, y = z1 - z1.mean(0), z2 - z2.mean(0)
    std_x, std_y = torch.sqrt(x.var(0) + eps), torch.sqrt(y.var(0) + eps)
    var = TF.relu(1 - std_x).mean() / 2 + TF.relu(1 - std_y).mean() / 2
    cx, cy = x.T @ x / (n - 1), y.T @ y / (n - 1)
    off = ~torch.eye(d, dtype=torch.bool)
    cov = cx[off].pow(2).sum() / d + cy[off].pow(2).sum() / d
    return sim_weight * inv + var_weight * var + cov_weight * cov


def kl_normal(mu, logvar):
    # VAE (Kingma & Welling 2014, appendix B): KL(N(mu, sigma^2) || N(0, I)).
    return (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(-1)).mean()


def mae_loss(pred, target, mask, norm_pix=False):
    # MAE (He et al. 2022; official models_mae.py forward_loss).
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


# NNCLR, MoCo v3, SimMIM (issue 18)

def nnclr_loss(neighbours, predictions, temperature=0.1):
    # NNCLR (Dwibedi et al. 2021, eq. 2; solo-learn losses/nnclr.py): each neighbour picks
    # its image's prediction among the batch's; the neighbours come from a buffer.
    nn = TF.normalize(neighbours.detach(), dim=-1)
    p = TF.normalize(predictions, dim=-1)
    return TF.cross_entropy(nn @ p.T / temperature, torch.arange(len(nn)))


def mocov3_loss(query, key, temperature=1.0):
    # MoCo v3 (moco-v3 builder.py, contrastive_loss): in-batch InfoNCE scaled by 2T.
    q, k = TF.normalize(query, dim=1), TF.normalize(key, dim=1)
    logits = torch.einsum("nc,mc->nm", q, k) / temperature
    return TF.cross_entropy(logits, torch.arange(len(q))) * (2 * temperature)


def simmim_loss(pred, target, mask):
    # SimMIM (models/simmim.py, SimMIM.forward): L1 on the masked pixels, per channel.
    m = mask.unsqueeze(1)
    err = TF.l1_loss(target.detach(), pred, reduction="none")
    return (err * m).sum() / (m.sum() + 1e-5) / pred.shape[1]


def nearest_neighbours(z, support):
    # lightly NNMemoryBankModule / solo-learn find_nn: the most cosine-similar support row.
    sim = TF.normalize(z, dim=1) @ TF.normalize(support, dim=1).T
    return support[sim.argmax(dim=1)]


LOSSES = {f.__name__: f for f in (nt_xent, info_nce, clip_loss, byol_loss, simsiam_loss,
                                  barlow_twins_loss, vicreg_loss, kl_normal, mae_loss,
                                  nnclr_loss, mocov3_loss, simmim_loss)}

# ----------------------------------------------------------------------------- data ops


def random_masking(noise, len_keep):
    # MAE models_mae.py random_masking, given its noise (there: torch.rand(N, L)).
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask[:, :len_keep] = 0
    return ids_shuffle[:, :len_keep], torch.gather(mask, 1, ids_restore), ids_restore


def patchify(imgs, p):
    # models_mae.py patchify: nchpwq -> nhwpqc.
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x, p, channels, grid):
    h, w = grid
    x = x.reshape(x.shape[0], h, w, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], channels, h * p, w * p)


def sincos_pos_embed_2d(dim, grid_size):
    # util/pos_embed.py get_2d_sincos_pos_embed: the first half encodes the column index.
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")

    def embed(pos):
        out = pos.reshape(-1, 1).double() * omega
        return torch.cat([out.sin(), out.cos()], dim=1)
    return torch.cat([embed(cols), embed(rows)], dim=1)


def bert_masking(ids, noise, u, random_ids, mask_id, mask_prob, mask_token_prob,
                 random_token_prob):
    # create_pretraining_data.py: n = max(1, round(T p)) positions per row, then 80/10/10.
    n = max(1, int(round(ids.shape[1] * mask_prob)))
    chosen = torch.zeros_like(ids, dtype=torch.bool)
    chosen.scatter_(1, torch.argsort(noise, dim=1)[:, :n], True)
    to_mask = chosen & (u < mask_token_prob)
    to_random = chosen & (u >= mask_token_prob) & (u < mask_token_prob + random_token_prob)
    inputs = torch.where(to_mask, mask_id, torch.where(to_random, random_ids, ids))
    return inputs, torch.where(chosen, ids, -100)


def cosine_tau(step, base_tau, total_steps):
    # BYOL section 3.2: tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2.
    return torch.tensor([1 - (1 - base_tau) * (math.cos(math.pi * int(k) / total_steps) + 1) / 2
                         for k in step])


def cosine_warmup_lr(step, base_lr, warmup_steps, total_steps, final_lr):
    def lr(t):
        if t < warmup_steps:
            return base_lr * t / warmup_steps
        if t >= total_steps:
            return final_lr
        progress = (t - warmup_steps) / (total_steps - warmup_steps)
        return final_lr + (base_lr - final_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.tensor([lr(int(t)) for t in step])


DATA_OPS = {"random_masking": random_masking, "patchify": patchify, "unpatchify": unpatchify,
            "sincos_pos_embed_2d": sincos_pos_embed_2d, "bert_masking": bert_masking,
            "cosine_tau": cosine_tau, "cosine_warmup_lr": cosine_warmup_lr,
            "nearest_neighbours": nearest_neighbours}

# ----------------------------------------------------------------------------- methods


class SplitBatchNorm1d(tnn.BatchNorm1d):
    """MoCo's CIFAR demo SplitBatchNorm (there 2-D), for (N, C): per-slice statistics in
    training, the slices being samples n mod S; running statistics averaged over slices."""

    def __init__(self, num_features, num_splits, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        n, c = x.shape
        s = self.num_splits
        rm, rv = self.running_mean.repeat(s), self.running_var.repeat(s)
        y = TF.batch_norm(x.view(-1, c * s), rm, rv, self.weight.repeat(s),
                          self.bias.repeat(s), True, self.momentum, self.eps).view(n, c)
        self.running_mean.copy_(rm.view(s, c).mean(0))
        self.running_var.copy_(rv.view(s, c).mean(0))
        self.num_batches_tracked += 1
        return y


def mlp_from_state(state, prefix, trailing_relu=False, bn_splits=1):
    """nn.Sequential rebuilt from its state_dict keys: index i with a 2-D weight is a Linear,
    with a running_mean a BatchNorm1d (affine if it has a weight), an index without keys a
    ReLU (the official heads' layout); the digits encoder ends with a ReLU."""
    idx = sorted({int(k[len(prefix) + 1:].split(".")[0]) for k in state
                  if k.startswith(prefix + ".")})
    layers = []
    for i in range(idx[-1] + 1):
        key = f"{prefix}.{i}."
        if key + "running_mean" in state:
            c = state[key + "running_mean"].shape[0]
            affine = key + "weight" in state
            layers.append(SplitBatchNorm1d(c, bn_splits, affine=affine) if bn_splits > 1
                          else tnn.BatchNorm1d(c, affine=affine))
        elif key + "weight" in state:
            o, i_ = state[key + "weight"].shape
            layers.append(tnn.Linear(i_, o, bias=key + "bias" in state))
        else:
            layers.append(tnn.ReLU())
    if trailing_relu:
        layers.append(tnn.ReLU())
    return tnn.Sequential(*layers)


def module_from_state(state, prefix, bn_splits=1):
    """The module under ``prefix`` rebuilt from the state_dict keys: a Linear where the
    prefix itself has a 2-D weight, an ``mlp_from_state`` where the children are numbered, a
    container of rebuilt children otherwise. The digits encoders (``*encoder``) flatten the
    images first, end with a ReLU and use the split batch norm of MoCo's config."""
    rest = {k[len(prefix) + 1:] for k in state if k.startswith(prefix + ".")}
    if "weight" in rest and state[prefix + ".weight"].ndim == 2:
        o, i = state[prefix + ".weight"].shape
        return tnn.Linear(i, o, bias="bias" in rest)
    children = sorted({k.split(".")[0] for k in rest})
    if all(c.isdigit() for c in children):
        if prefix.endswith("encoder"):
            return tnn.Sequential(tnn.Flatten(), mlp_from_state(state, prefix, True, bn_splits))
        return mlp_from_state(state, prefix)
    box = tnn.Module()
    for c in children:
        box.add_module(c, module_from_state(state, f"{prefix}.{c}", bn_splits))
    return box


def torch_key(key):
    """The port's name of a minissl state_dict key (the encoders gained a Flatten at 0)."""
    head, _, tail = key.partition(".")
    return f"{head}.1.{tail}" if head.endswith("encoder") and tail[:1].isdigit() else key


class Method(tnn.Module):
    """The networks of one method, rebuilt from the vector's state_dict keys and loaded."""

    def __init__(self, meta, state):
        super().__init__()
        splits = meta["config"].get("bn_splits", 1)
        for name in sorted({k.split(".")[0] for k in state if "." in k}):
            self.add_module(name, module_from_state(state, name, splits))
        for k in state:
            if "." not in k:
                self.register_buffer(k, state[k].clone())
        own = self.state_dict()
        assert sorted(own) == sorted(torch_key(k) for k in state), "port: other layout"
        for k, v in state.items():
            own[torch_key(k)].copy_(v)
        trained = {torch_key(k) for k in meta["trained"]}
        for k, p in self.named_parameters():
            p.requires_grad = k in trained


@torch.no_grad()
def ema(target, online, tau):
    # BYOL / MoCo momentum update; minissl also copies the BN buffers (docs/faithful.md).
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.mul_(tau).add_((1 - tau) * po)
    for bt, bo in zip(target.buffers(), online.buffers()):
        bt.copy_(bo)


def decode(decoder, z, x):
    return decoder.net(z).reshape(x.shape)                     # pixel logits (B, C, H, W)


def single_input_loss(name, net, cfg, x, views, draws):
    """The self-predictive methods: autoencoders (Vincent et al. 2008, Kingma & Welling
    2014, Bernoulli likelihood), RotNet (Gidaris et al. 2018, all four rotations of each
    image, image-major, counter-clockwise) and the AR(p) model."""
    if name in ("autoencoder", "denoising"):   # the DAE's corrupted input is its view
        inp = views[0] if views else x
        return TF.binary_cross_entropy_with_logits(decode(net.decoder, net.encoder(inp), x), x)
    if name == "vae":
        h = net.encoder(x)
        mu, logvar = net.to_mu(h), net.to_logvar(h)
        z = mu + (0.5 * logvar).exp() * draws[0]               # reparameterisation
        recon = TF.binary_cross_entropy_with_logits(decode(net.decoder, z, x), x,
                                                    reduction="sum") / len(x)
        return recon + cfg["beta"] * kl_normal(mu, logvar)
    if name == "rotation":
        v = views[0].repeat_interleave(4, dim=0)               # (4B, C, H, W)
        k = torch.arange(4).repeat(len(views[0]))               # 0 1 2 3 0 1 ...
        x4 = torch.stack([torch.rot90(img, int(r), dims=(1, 2)) for img, r in zip(v, k)])
        return TF.cross_entropy(net.head(net.encoder(x4)), k)
    p = cfg["order"]                                            # ar: x_t from x_{t-1..t-p}
    L = x.shape[1]
    lags = torch.stack([x[:, p - j:L - j] for j in range(1, p + 1)], dim=-1).reshape(-1, p)
    return TF.mse_loss(net.linear(lags).reshape(-1), x[:, p:].reshape(-1))


def step_loss(name, net, cfg, views, draws, x=None):
    """The loss of one training step of method ``name`` (the official forward passes)."""
    if name in SINGLE_INPUT:
        return single_input_loss(name, net, cfg, x, views, draws)
    v1, v2 = views
    if name == "simclr":           # tf2/model.py: both views as one batch of 2N
        z = net.projector(net.encoder(torch.cat([v1, v2])))
        return nt_xent(z[:len(v1)], z[len(v1):], cfg["temperature"])
    if name == "moco":             # builder.py forward, single-GPU shuffle of the demo
        q = net.projector(net.encoder(v1))
        perm = draws[0]
        with torch.no_grad():
            ema(net.key_encoder, net.encoder, cfg["momentum"])
            ema(net.key_projector, net.projector, cfg["momentum"])
            k = TF.normalize(net.key_projector(net.key_encoder(v2[perm])), dim=1)
            k = k[torch.argsort(perm)]
        net.keys = k
        return info_nce(q, k, net.queue, cfg["temperature"])
    if name == "byol":             # byol_experiment.py: one forward per view
        p1 = net.predictor(net.projector(net.encoder(v1)))
        p2 = net.predictor(net.projector(net.encoder(v2)))
        with torch.no_grad():
            t1 = net.target_projector(net.target_encoder(v1))
            t2 = net.target_projector(net.target_encoder(v2))
        return byol_loss(p1, t2) + byol_loss(p2, t1)
    if name == "mocov3":           # moco-v3 builder.py forward: momentum update, then keys
        q1 = net.predictor(net.projector(net.encoder(v1)))
        q2 = net.predictor(net.projector(net.encoder(v2)))
        with torch.no_grad():
            m = float(net.momentum[0])
            ema(net.momentum_encoder, net.encoder, m)
            ema(net.momentum_projector, net.projector, m)
            k1 = net.momentum_projector(net.momentum_encoder(v1))
            k2 = net.momentum_projector(net.momentum_encoder(v2))
        t = cfg["temperature"]
        return mocov3_loss(q1, k2, t) + mocov3_loss(q2, k1, t)
    z1, z2 = net.projector(net.encoder(v1)), net.projector(net.encoder(v2))
    if name == "nnclr":            # solo-learn nnclr.py training_step
        p1, p2 = net.predictor(z1), net.predictor(z2)
        z1, z2 = TF.normalize(z1, dim=-1), TF.normalize(z2, dim=-1)
        nn1 = net.queue[(z1 @ TF.normalize(net.queue, dim=1).T).max(dim=1)[1]]
        nn2 = net.queue[(z2 @ TF.normalize(net.queue, dim=1).T).max(dim=1)[1]]
        net.keys = z1.detach()
        t = cfg["temperature"]
        return nnclr_loss(nn1, p2, t) / 2 + nnclr_loss(nn2, p1, t) / 2
    if name == "simsiam":          # simsiam/builder.py + main_simsiam.py criterion
        p1, p2 = net.predictor(z1), net.predictor(z2)
        return 0.5 * (simsiam_loss(p1, z2) + simsiam_loss(p2, z1))
    if name == "barlow_twins":
        return barlow_twins_loss(z1, z2, cfg["lambd"])
    return vicreg_loss(z1, z2, cfg["sim_weight"], cfg["var_weight"], cfg["cov_weight"])


def end_of_step(name, net, cfg, total_steps):
    if name == "byol":             # tau at step 0 of the cosine schedule, then the EMA
        tau = float(cosine_tau([0], cfg["base_tau"], total_steps)[0])
        ema(net.target_encoder, net.encoder, tau)
        ema(net.target_projector, net.projector, tau)
    if name == "mocov3":           # adjust_moco_momentum for the next step
        net.momentum[0] = cosine_tau([1], cfg["base_momentum"], total_steps)[0]
    if name in ("moco", "nnclr"):  # _dequeue_and_enqueue
        with torch.no_grad():
            ptr, b = int(net.queue_ptr[0]), len(net.keys)
            net.queue[ptr:ptr + b] = net.keys
            net.queue_ptr[0] = (ptr + b) % len(net.queue)


SINGLE_INPUT = ("autoencoder", "denoising", "vae", "rotation", "ar")
TRANSFORMERS = ("gpt", "mlm", "mae", "clip", "simmim")
METHODS = ("simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg") + SINGLE_INPUT + \
    TRANSFORMERS + ("nnclr", "mocov3")


# The transformer methods, written as functions of their parameters P (name -> tensor).

def block(P, pre, x, heads, causal):
    """Pre-LN block (nanoGPT / timm ViT): x + attn(ln1(x)), then x + mlp(ln2(x)); qkv packed
    as [Q | K | V] along the output of one Linear."""
    B, T, C = x.shape
    h = TF.layer_norm(x, (C,), P[pre + "ln1.weight"], P[pre + "ln1.bias"])
    qkv = TF.linear(h, P[pre + "attn.qkv.weight"], P[pre + "attn.qkv.bias"])
    q, k, v = (t.reshape(B, T, heads, C // heads).transpose(1, 2) for t in qkv.split(C, -1))
    y = TF.scaled_dot_product_attention(q, k, v, is_causal=causal)
    x = x + TF.linear(y.transpose(1, 2).reshape(B, T, C), P[pre + "attn.proj.weight"],
                      P[pre + "attn.proj.bias"])
    h = TF.layer_norm(x, (C,), P[pre + "ln2.weight"], P[pre + "ln2.bias"])
    h = TF.gelu(TF.linear(h, P[pre + "mlp.0.weight"], P[pre + "mlp.0.bias"]))
    return x + TF.linear(h, P[pre + "mlp.2.weight"], P[pre + "mlp.2.bias"])


def text_hidden(P, ids, cfg, causal):
    x = P["wte.weight"][ids] + P["wpe.weight"][:ids.shape[1]]
    for i in range(cfg["n_layer"]):
        x = block(P, f"h.{i}.", x, cfg["n_head"], causal)
    return TF.layer_norm(x, (x.shape[-1],), P["ln_f.weight"], P["ln_f.bias"])


def clip_step_loss(P, cfg, stored, views, draws, image_encoder):
    """CLIP (openai/CLIP model.py): image features through the encoder and a bias-free
    projection; text through a causal transformer, the feature at the end-of-text token (id
    1), projected; the captions are the stored table indexed by label and drawn template."""
    y = torch.as_tensor(stored["in_y"])
    ids = torch.as_tensor(stored["const_captions"])[y, draws[0]]           # (B, T)
    img = image_encoder(views[0]) @ P["image_proj.weight"].T
    h = P["text.token_embedding.weight"][ids] + P["text.positional.weight"][:ids.shape[1]]
    for i in range(cfg["text_layers"]):
        h = block(P, f"text.blocks.{i}.", h, cfg["text_heads"], True)
    h = TF.layer_norm(h, (h.shape[-1],), P["text.ln_final.weight"], P["text.ln_final.bias"])
    txt = h[torch.arange(len(ids)), (ids == 1).int().argmax(1)] @ P["text.proj.weight"].T
    return clip_loss(img, txt, P["logit_scale"])


def transformer_loss(name, P, cfg, x, views, draws):
    if name == "gpt":              # nanoGPT: next-token cross-entropy, head not tied here
        logits = text_hidden(P, x[:, :-1], cfg, True) @ P["lm_head.weight"].T
        return TF.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
    if name == "mlm":              # BERT: 80/10/10 from the draws, loss at chosen positions
        inputs, targets = bert_masking(x, *draws, cfg["vocab_size"], cfg["mask_prob"],
                                       cfg["mask_token_prob"], cfg["random_token_prob"])
        h = text_hidden(P, inputs, cfg, False)
        h = TF.gelu(TF.linear(h, P["head.0.weight"], P["head.0.bias"]))
        h = TF.layer_norm(h, (h.shape[-1],), P["head.2.weight"], P["head.2.bias"])
        logits = TF.linear(h, P["head.3.weight"], P["head.3.bias"])
        return TF.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    if name == "simmim":
        return simmim_step_loss(P, cfg, views, draws)
    # MAE (models_mae.py): patch embedding + fixed positions, keep the patches of the given
    # noise, encoder, decoder with mask tokens in the original order, loss on removed patches.
    imgs, p = views[0], cfg["patch_size"]
    e = TF.conv2d(imgs, P["encoder.patch_embed.proj.weight"],
                  P["encoder.patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    e = e + P["encoder.pos_embed"]
    B, L, D = e.shape
    ids_keep, mask, ids_restore = random_masking(draws[0], int(L * (1 - cfg["mask_ratio"])))
    e = torch.gather(e, 1, ids_keep[..., None].expand(-1, -1, D))
    for i in range(cfg["depth"]):
        e = block(P, f"encoder.blocks.{i}.", e, cfg["num_heads"], False)
    e = TF.layer_norm(e, (D,), P["encoder.norm.weight"], P["encoder.norm.bias"])
    d = TF.linear(e, P["decoder_embed.weight"], P["decoder_embed.bias"])
    Dd = d.shape[-1]
    d = torch.cat([d, P["mask_token"].expand(B, L - d.shape[1], Dd)], dim=1)
    d = torch.gather(d, 1, ids_restore[..., None].expand(-1, -1, Dd)) + P["decoder_pos_embed"]
    for i in range(cfg["decoder_depth"]):
        d = block(P, f"decoder_blocks.{i}.", d, cfg["decoder_num_heads"], False)
    d = TF.layer_norm(d, (Dd,), P["decoder_norm.weight"], P["decoder_norm.bias"])
    pred = TF.linear(d, P["decoder_pred.weight"], P["decoder_pred.bias"])
    return mae_loss(pred, patchify(imgs, p), mask, cfg["norm_pix"])


def simmim_step_loss(P, cfg, views, draws):
    """SimMIM (models/simmim.py + data_simmim.py MaskGenerator): one permutation per image
    masks ceil(ratio r^2) of its r x r squares; the mask token replaces the masked patch
    embeddings before the positions; a 1x1 conv + PixelShuffle predicts the pixels."""
    imgs, p = views[0], cfg["patch_size"]
    B, C, H, _ = imgs.shape
    r, s = H // cfg["mask_patch_size"], cfg["mask_patch_size"] // p
    count = math.ceil(r * r * cfg["mask_ratio"])
    mask = torch.zeros(B, r * r)
    for b in range(B):
        mask[b, draws[b][:count]] = 1
    mask = mask.reshape(B, r, r).repeat_interleave(s, 1).repeat_interleave(s, 2)  # (B, g, g)
    e = TF.conv2d(imgs, P["encoder.patch_embed.proj.weight"],
                  P["encoder.patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    w = mask.flatten(1).unsqueeze(-1).to(e.dtype)
    e = e * (1 - w) + P["encoder.mask_token"] * w + P["encoder.pos_embed"]
    for i in range(cfg["depth"]):
        e = block(P, f"encoder.blocks.{i}.", e, cfg["num_heads"], False)
    e = TF.layer_norm(e, (e.shape[-1],), P["encoder.norm.weight"], P["encoder.norm.bias"])
    g = H // p
    z = e.transpose(1, 2).reshape(B, -1, g, g)
    x_rec = TF.pixel_shuffle(TF.conv2d(z, P["decoder.0.weight"], P["decoder.0.bias"]), p)
    pixel_mask = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).to(imgs.dtype)
    return simmim_loss(x_rec, imgs, pixel_mask)


def transformer_step(meta, stored):
    """A transformer method's step, its weights as a dict of tensors; CLIP's image encoder
    (with batch norm) as a module, its entries of the dict being that module's."""
    name, cfg = meta["op"].split(".")[0], meta["config"]
    trained = set(meta["trained"])
    P = {k: torch.tensor(stored[f"init_{k}"], requires_grad=k in trained)
         for k in meta["state"]}
    x = torch.as_tensor(stored[f"in_{meta['inputs'][0]}"])
    views = [torch.as_tensor(stored[f"view_{i}"]) for i in range(meta["views"])]
    draws = [torch.as_tensor(stored[f"draw_{i}"]) for i in range(len(meta["draws"]))]
    if name == "clip":
        enc = {k: v.detach() for k, v in P.items() if k.startswith("encoder.")}
        image_encoder = module_from_state(enc, "encoder").train()
        own = image_encoder.state_dict()
        for k, v in enc.items():
            own[torch_key(k)[len("encoder."):]].copy_(v)
        P.update({"encoder." + k[2:]: p for k, p in image_encoder.named_parameters()})
        loss = clip_step_loss(P, cfg, stored, views, draws, image_encoder)
    else:
        loss = transformer_loss(name, P, cfg, x, views, draws)
    loss.backward()
    opt = torch.optim.SGD([P[k] for k in meta["trained"]], lr=meta["kwargs"]["lr"])
    got = {"out": loss.detach().numpy()}
    got.update({f"grad_{k}": P[k].grad.numpy().copy() for k in meta["trained"]})
    opt.step()
    if name == "clip":           # the scale is clamped at log(max_logit_scale) after a step
        with torch.no_grad():
            P["logit_scale"].clamp_(max=math.log(cfg["max_logit_scale"]))
        P.update({"encoder." + k[2:]: v for k, v in image_encoder.state_dict().items()})
    got.update({f"after_{k}": P[k].detach().numpy() for k in meta["state"]})
    return got


def training_step(meta, stored):
    """{key: array} of the port's step on a stored training-step vector (same keys as the
    file's ``out``, ``grad_*`` and ``after_*``)."""
    name = meta["op"].split(".")[0]
    if name in TRANSFORMERS:
        return transformer_step(meta, stored)
    state = {k: torch.as_tensor(stored[f"init_{k}"]) for k in meta["state"]}
    net = Method(meta, state).train()
    views = [torch.as_tensor(stored[f"view_{i}"]) for i in range(meta["views"])]
    draws = [torch.as_tensor(stored[f"draw_{i}"]) for i in range(len(meta["draws"]))]
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad],
                          lr=meta["kwargs"]["lr"])
    x = torch.as_tensor(stored[f"in_{meta['inputs'][0]}"])
    loss = step_loss(name, net, meta["config"], views, draws, x)
    loss.backward()
    own = dict(net.named_parameters())
    got = {"out": loss.detach().numpy()}
    for k in meta["trained"]:
        g = own[torch_key(k)].grad
        got[f"grad_{k}"] = (torch.zeros_like(own[torch_key(k)]) if g is None else g).numpy()
    opt.step()
    end_of_step(name, net, meta["config"], meta["kwargs"]["total_steps"])
    after = net.state_dict()
    got.update({f"after_{k}": after[torch_key(k)].detach().numpy() for k in meta["state"]})
    return got
