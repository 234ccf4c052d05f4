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


def cpc_loss(predictions, z):
    # CPC (van den Oord et al. 2018, eq. 4): each step's prediction scored against every frame
    # of the batch, the k-step future frame the positive; mean over anchors, then over steps.
    B, T, K, D = predictions.shape
    frames = z.reshape(B * T, D)
    total = 0
    for k in range(1, K + 1):
        p = predictions[:, :T - k, k - 1].reshape(-1, D)
        target = (torch.arange(B)[:, None] * T + torch.arange(k, T)[None]).reshape(-1)
        total = total + TF.cross_entropy(p @ frames.T, target)
    return total / K


# NNCLR, MoCo v3, SimMIM

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
                                  cpc_loss, nnclr_loss, mocov3_loss, simmim_loss)}


def gated_tanh(input, dim=1):
    # The gated activation unit of the gated PixelCNN and WaveNet: tanh(a) * sigmoid(b).
    a, b = input.chunk(2, dim=dim)
    return torch.tanh(a) * torch.sigmoid(b)


# minissl.functional ops that torch.nn.functional does not have.
FUNCTIONAL = {"gated_tanh": gated_tanh}

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


def mu_law_encoding(x, quantization_channels):
    # torchaudio.functional.mu_law_encoding, transcribed.
    mu = torch.tensor(quantization_channels - 1.0, dtype=x.dtype)
    x_mu = torch.sign(x) * torch.log1p(mu * torch.abs(x)) / torch.log1p(mu)
    return ((x_mu + 1) / 2 * mu + 0.5).to(torch.int64)


def mu_law_decoding(x_mu, quantization_channels):
    # torchaudio.functional.mu_law_decoding, transcribed (integer codes decode in float32).
    x_mu = x_mu if x_mu.is_floating_point() else x_mu.to(torch.float)
    mu = torch.tensor(quantization_channels - 1.0, dtype=x_mu.dtype)
    x = x_mu / mu * 2 - 1.0
    return torch.sign(x) * (torch.exp(torch.abs(x) * torch.log1p(mu)) - 1.0) / mu


DATA_OPS = {"random_masking": random_masking, "patchify": patchify, "unpatchify": unpatchify,
            "sincos_pos_embed_2d": sincos_pos_embed_2d, "bert_masking": bert_masking,
            "cosine_tau": cosine_tau, "cosine_warmup_lr": cosine_warmup_lr,
            "mu_law_encoding": mu_law_encoding, "mu_law_decoding": mu_law_decoding,
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


def mlp_from_state(state, prefix, trailing_relu=False, bn_splits=1, act=tnn.ReLU):
    """nn.Sequential rebuilt from its state_dict keys: index i with a 2-D weight is a Linear,
    with a running_mean a BatchNorm1d (affine if it has a weight), an index without keys the
    activation ``act`` (ReLU in the official heads' layout, GELU in DINO's head); the digits
    encoder ends with a ReLU."""
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
            layers.append(act())
    if trailing_relu:
        layers.append(tnn.ReLU())
    return tnn.Sequential(*layers)


def module_from_state(state, prefix, bn_splits=1):
    """The module under ``prefix`` rebuilt from the state_dict keys: a Linear where the
    prefix itself has a 2-D weight, an ``mlp_from_state`` where the children are numbered, a
    container of rebuilt children otherwise. The digits encoders (``*encoder``) flatten the
    images first, end with a ReLU and use the split batch norm of MoCo's config."""
    rest = {k[len(prefix) + 1:] for k in state if k.startswith(prefix + ".")}
    if "last_layer.weight_v" in rest:
        return DINOHead(state, prefix)
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
    if name in MULTI_CROP:
        return multicrop_loss(name, net, cfg, list(views[0]))
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
    if name in MULTI_CROP:
        return multicrop_end_of_step(name, net, cfg, total_steps)
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
TRANSFORMERS = ("gpt", "mlm", "mae", "clip", "videomae", "simmim")
PIXELS = ("inpainting", "colorization")      # a U-Net, also written over a dict of tensors
MULTI_CROP = ("dino", "swav")
METHODS = ("simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg") + SINGLE_INPUT + \
    TRANSFORMERS + PIXELS + ("pixelcnn", "wavenet", "cpc", "denoising_audio") + MULTI_CROP + \
    ("nnclr", "mocov3")


# The gated PixelCNN (van den Oord et al. 2016, figure 2), as a function of its parameters.

def causal_mask(kh, kw, mask_type, stack):
    """PixelCNN's masks: taps that would read pixel (i, j) or a later one are zero ("A"),
    or only the later ones ("B"); the vertical stack sees rows above, the horizontal stack
    the row to the left (the centre tap is (kh // 2, kw // 2))."""
    ci, cj = kh // 2, kw // 2
    rows, cols = torch.arange(kh)[:, None], torch.arange(kw)[None, :]
    b = mask_type == "B"
    if stack == "vertical":
        return ((rows <= ci) if b else (rows < ci)).expand(kh, kw).double()
    return ((rows == ci) & ((cols <= cj) if b else (cols < cj))).double()


def pixelcnn_loss(P, cfg, x):
    bits = (x > cfg["threshold"]).double()
    v = h = bits
    for i in range(cfg["layers"]):
        t, pre = ("A" if i == 0 else "B"), f"encoder.layers.{i}."

        def masked(name, inp, stack):
            w = P[pre + name + ".weight"]
            kh, kw = w.shape[2:]
            return TF.conv2d(inp, w * causal_mask(kh, kw, t, stack), P[pre + name + ".bias"],
                             padding=(kh // 2, kw // 2))

        v2 = masked("vertical", v, "vertical")
        h2 = masked("horizontal", h, "horizontal") + TF.conv2d(v2, P[pre + "v_to_h.weight"],
                                                                P[pre + "v_to_h.bias"])
        h_new = TF.conv2d(gated_tanh(h2), P[pre + "h_out.weight"], P[pre + "h_out.bias"])
        v, h = gated_tanh(v2), (h + h_new if t == "B" else h_new)
    z = TF.conv2d(torch.relu(h), P["head.1.weight"], P["head.1.bias"])
    z = TF.conv2d(torch.relu(z), P["head.3.weight"], P["head.3.bias"])
    return TF.binary_cross_entropy_with_logits(z, bits)


# The audio methods, as functions of their parameters P (name -> tensor), on clips x (B, L).

def conv(P, name, x, **kw):
    return TF.conv1d(x, P[name + ".weight"], P[name + ".bias"], **kw)


def wavenet_loss(P, cfg, x, draws):
    """WaveNet (van den Oord et al. 2016; ibab/tensorflow-wavenet): a random crop per clip,
    mu-law codes, embedding, causal conv, gated dilated causal convs with residual and skip
    1x1 convs, ReLU-1x1-ReLU-1x1 to the logits of the next code."""
    w = min(cfg["window"], x.shape[1])
    crops = x[torch.arange(len(x))[:, None], draws[0][:, None] + torch.arange(w)]
    codes = mu_law_encoding(crops, cfg["quantization_channels"])
    h = conv(P, "causal", TF.pad(TF.embedding(codes[:, :-1], P["embed.weight"]).transpose(1, 2),
                                 (1, 0)))
    skip = 0
    dilations = [2 ** i for _ in range(cfg["stacks"]) for i in range(cfg["layers"])]
    for i, d in enumerate(dilations):
        z = gated_tanh(conv(P, f"dilated.{i}", TF.pad(h, (d, 0)), dilation=d))
        skip = skip + conv(P, f"skip.{i}", z)
        if i < len(dilations) - 1:                     # the last layer feeds the skips only
            h = h + conv(P, f"residual.{i}", z)
    logits = conv(P, "out2", torch.relu(conv(P, "out1", torch.relu(skip))))
    return TF.cross_entropy(logits, codes[:, 1:])


def cpc_step_loss(P, cfg, x):
    """wav2vec / CPC (fairseq wav2vec.py): strided conv encoder (each conv followed by
    CPC_audio's ChannelNorm, a layer norm over the channels of each frame, unless norm is
    "none"), causal residual context convs, one affine map per step, scores p . z / C (score
    "mean", CPC_audio's) or p . z ("sum"), InfoNCE over every frame of the batch (or,
    negatives "sequence", of the anchor's own clip)."""
    z, per = x[:, None], 3 if cfg.get("norm", "channel") == "channel" else 2
    for i, s in enumerate((5, 4, 2)):
        z = conv(P, f"encoder.{per * i}", z, stride=s)
        if per == 3:
            n = f"encoder.{per * i + 1}.norm."
            z = TF.layer_norm(z.transpose(1, 2), (z.shape[1],), P[n + "weight"],
                              P[n + "bias"]).transpose(1, 2)
        z = torch.relu(z)
    c = z
    for i in range(cfg["context_layers"]):
        c = c + torch.relu(conv(P, f"context.{i}", TF.pad(c, (2, 0))))
    (B, C, T), K = z.shape, cfg["prediction_steps"]
    p = conv(P, "predict", c).reshape(B, K, C, T).permute(0, 3, 1, 2)
    if cfg.get("score", "mean") == "mean":             # CPC_audio: scores are means over C
        p = p / C
    z = z.transpose(1, 2)
    if cfg.get("negatives", "batch") == "sequence":     # each clip against its own frames
        return sum(cpc_loss(p[b:b + 1], z[b:b + 1]) for b in range(B)) / B
    return cpc_loss(p, z)


def denoising_audio_loss(P, cfg, x, draws):
    """Denoising autoencoder of waveforms (Vincent et al. 2008): white noise at the drawn SNR,
    a dilated conv stack finds the noise, the output is the input minus it, MSE to the clean."""
    snr, noise = draws
    noisy = x + noise * torch.sqrt((x ** 2).mean(1, keepdim=True) / 10.0 ** (snr[:, None] / 10))
    h = torch.relu(conv(P, "stem", noisy[:, None], padding=4))
    for i, d in enumerate(cfg["dilations"]):
        h = h + torch.relu(conv(P, f"blocks.{i}.0", h, padding=d, dilation=d))
    return TF.mse_loss(noisy - conv(P, "out", h)[:, 0], x)


AUDIO = ("wavenet", "cpc", "denoising_audio")


def audio_loss(name, P, cfg, x, draws):
    if name == "wavenet":
        return wavenet_loss(P, cfg, x, draws)
    if name == "cpc":
        return cpc_step_loss(P, cfg, x)
    return denoising_audio_loss(P, cfg, x, draws)


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


def videomae_loss(P, cfg, x, draws):
    """VideoMAE (MCG-NJU/VideoMAE modeling_pretrain.py): Conv3d tubelet embedding + fixed
    positions; tube masks (one spatial mask per clip, the same at every time slice; here the
    places of the largest noise are hidden); the encoder on x[~mask]; the decoder on [visible
    + their positions, mask token + the hidden positions], predicting the hidden tokens; MSE
    to the hidden tubelets, normalised over each tubelet's values (minissl's norm_pix)."""
    t, p = cfg["tubelet_size"], cfg["patch_size"]
    e = TF.conv3d(x, P["patch_embed.weight"], P["patch_embed.bias"], stride=(t, p, p))
    e = e.flatten(2).transpose(1, 2) + P["pos_embed"]                       # (B, N, D)
    B, N, D = e.shape
    noise = draws[0]                                # (B, h w) tube, (B, N) random
    hidden_count = int(cfg["mask_ratio"] * noise.shape[1])
    mask = noise.argsort(1).argsort(1) >= noise.shape[1] - hidden_count
    mask = mask.repeat(1, N // noise.shape[1])                              # (B, N) bool
    h = e[~mask].reshape(B, -1, D)
    for i in range(cfg["depth"]):
        h = block(P, f"blocks.{i}.", h, cfg["num_heads"], False)
    h = TF.layer_norm(h, (D,), P["norm.weight"], P["norm.bias"])
    h = TF.linear(h, P["decoder_embed.weight"])                             # no bias
    Dd = h.shape[-1]
    pos = P["decoder_pos_embed"].expand(B, -1, -1)
    hidden = pos[mask].reshape(B, -1, Dd)
    d = torch.cat([h + pos[~mask].reshape(B, -1, Dd), P["mask_token"] + hidden], dim=1)
    for i in range(cfg["decoder_depth"]):
        d = block(P, f"decoder_blocks.{i}.", d, cfg["decoder_num_heads"], False)
    d = d[:, -hidden.shape[1]:]
    pred = TF.linear(TF.layer_norm(d, (Dd,), P["decoder_norm.weight"], P["decoder_norm.bias"]),
                     P["head.weight"], P["head.bias"])
    C, T, H, W = x.shape[1:]
    tok = x.reshape(B, C, T // t, t, H // p, p, W // p, p)
    tok = torch.einsum("bcxtyhzw->bxyzthwc", tok).reshape(B, N, -1)        # (t p p c)
    target = tok[mask].reshape(B, -1, tok.shape[-1])
    if cfg["norm_pix"]:
        target = (target - target.mean(-1, keepdim=True)) / \
            (target.var(-1, keepdim=True) + 1e-6).sqrt()
    return TF.mse_loss(pred, target)


def unet(P, x, levels):
    """minissl's U-Net (Ronneberger et al. 2015 with padded convolutions): per level two
    [Conv3x3 - BN - ReLU], 2x2 max pooling down, a 2x2 stride-2 transposed conv up, the skip
    concatenated before the level's convolutions, a 1x1 conv to the logits."""
    def level(pre, h):
        for i in (0, 3):
            bn = f"{pre}.{i + 1}."
            h = TF.batch_norm(TF.conv2d(h, P[f"{pre}.{i}.weight"], padding=1),
                              P[bn + "running_mean"], P[bn + "running_var"], P[bn + "weight"],
                              P[bn + "bias"], True, 0.1, 1e-5)
            P[bn + "num_batches_tracked"] += 1
            h = TF.relu(h)
        return h
    skips = []
    for i in range(levels):
        x = level(f"net.down.{i}", TF.max_pool2d(x, 2) if i else x)
        skips.append(x)
    for i, skip in enumerate(skips[-2::-1]):
        x = TF.conv_transpose2d(x, P[f"net.up.{i}.weight"], P[f"net.up.{i}.bias"], stride=2)
        x = level(f"net.dec.{i}", torch.cat([x, skip], dim=1))
    return TF.conv2d(x, P["net.head.weight"], P["net.head.bias"])


def pixel_loss(name, P, cfg, x, draws):
    """Inpainting (Pathak et al. 2016, L2 term on the hidden pixels, the boxes rebuilt from
    the draws: heights, widths, then top and left as uniform fractions of the free room; the
    hidden pixels set to the stored fill, the mask as an extra channel) and colourisation
    (Zhang et al. 2016 as L2 regression of RGB from the BT.601 luma)."""
    levels = len(cfg["widths"])
    if name == "colorization":
        luma = (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1))
        return TF.mse_loss(torch.sigmoid(unet(P, luma.sum(1, keepdim=True), levels)), x)
    H, W = x.shape[2:]
    h, w, u, v = draws                                            # (B, boxes) each
    top, left = (u * (H - h + 1)).floor(), (v * (W - w + 1)).floor()
    r, c = torch.arange(H).view(1, 1, H, 1), torch.arange(W).view(1, 1, 1, W)
    box = lambda a: a[..., None, None]                            # noqa: E731
    inside = ((r >= box(top)) & (r < box(top + h)) & (c >= box(left)) & (c < box(left + w)))
    mask = inside.any(1, keepdim=True).to(x.dtype)                # (B, 1, H, W)
    inp = torch.cat([x * (1 - mask) + P["fill"] * mask, mask], dim=1)
    out = torch.sigmoid(unet(P, inp, levels))
    return (((out - x) ** 2) * mask).sum() / (mask.sum() * x.shape[1])


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
    elif name == "pixelcnn":
        loss = pixelcnn_loss(P, cfg, x)
    elif name in AUDIO:
        loss = audio_loss(name, P, cfg, x, draws)
    elif name == "videomae":
        loss = videomae_loss(P, cfg, x, draws)
    elif name in PIXELS:
        loss = pixel_loss(name, P, cfg, x, draws)
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
    if name in TRANSFORMERS + PIXELS + ("pixelcnn",) + AUDIO:    # weights as a dict of tensors
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
    if name == "swav" and int(net.step[0]) < meta["config"]["freeze_prototypes_steps"]:
        net.prototypes.weight.grad = None      # main_swav.py: the prototypes' freeze
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


# ----------------------------------------------------------------------------- multi-crop
# DINO and SwAV: the views arrive stacked (V, B, C, H, W), 2 global then the local ones.


def dino_loss(student, teacher, center, student_temp=0.1, teacher_temp=0.04):
    # facebookresearch/dino main_dino.py DINOLoss.forward: every teacher crop against every
    # student crop but its own, the mean of the pairs' batch means.
    total, n = 0, 0
    for iq, t in enumerate(teacher):
        q = TF.softmax((t - center) / teacher_temp, dim=-1).detach()
        for v, s in enumerate(student):
            if v != iq:
                total = total + torch.sum(-q * TF.log_softmax(s / student_temp, dim=-1), -1).mean()
                n += 1
    return total / n


@torch.no_grad()
def sinkhorn(out, epsilon=0.05, iterations=3):
    # facebookresearch/swav main_swav.py distributed_sinkhorn, one process.
    q = torch.exp(out / epsilon).t()                           # (K, B)
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * b
    return (q * b).t()


def swav_loss(scores, temperature=0.1, epsilon=0.05, iterations=3, assign=(0, 1)):
    # main_swav.py train: codes of the crops_for_assign, predicted by every other crop.
    loss = 0
    for i in assign:
        q = sinkhorn(scores[i].detach(), epsilon, iterations)
        sub = 0
        for v in range(len(scores)):
            if v != i:
                sub = sub - torch.mean(torch.sum(q * TF.log_softmax(scores[v] / temperature,
                                                                   dim=1), dim=1))
        loss = loss + sub / (len(scores) - 1)
    return loss / len(assign)


class DINOHead(tnn.Module):
    # vision_transformer.py DINOHead: MLP with GELU, L2 normalisation, weight-normalised
    # last layer (PyTorch's weight_norm: parameters weight_g and weight_v).
    def __init__(self, state, prefix):
        super().__init__()
        self.mlp = mlp_from_state(state, prefix + ".mlp", act=tnn.GELU)
        k, d = state[prefix + ".last_layer.weight_v"].shape
        self.last_layer = tnn.utils.weight_norm(tnn.Linear(d, k, bias=False))

    def forward(self, x):
        return self.last_layer(TF.normalize(self.mlp(x), dim=-1))


def multicrop_forward(backbone, views):
    # utils.py MultiCropWrapper / swav resnet50.forward: one backbone pass per resolution.
    sizes = torch.tensor([v.shape[-1] for v in views])
    ends = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0)
    out, start = [], 0
    for end in ends.tolist():
        out.append(backbone(torch.cat(views[start:end])))
        start = end
    return torch.cat(out)


def multicrop_loss(name, net, cfg, views):
    b = len(views[0])
    if name == "dino":             # main_dino.py train_one_epoch
        student = net.head(multicrop_forward(net.encoder, views)).split(b)
        with torch.no_grad():
            teacher = net.teacher_head(multicrop_forward(net.teacher_encoder, views[:2])).split(b)
        loss = dino_loss(student, teacher, net.center, cfg["student_temp"], cfg["teacher_temp"])
        with torch.no_grad():       # DINOLoss.update_center
            m = cfg["center_momentum"]
            net.center.copy_(net.center * m + torch.cat(teacher).mean(0, keepdim=True) * (1 - m))
        return loss
    with torch.no_grad():          # main_swav.py: normalise the prototypes, then forward
        net.prototypes.weight.copy_(TF.normalize(net.prototypes.weight, dim=1))
    z = TF.normalize(net.projection_head(multicrop_forward(net.encoder, views)), dim=1)
    scores = net.prototypes(z).split(b)
    return swav_loss(scores, cfg["temperature"], cfg["epsilon"], cfg["sinkhorn_iterations"])


def multicrop_end_of_step(name, net, cfg, total_steps):
    if name == "dino":             # the teacher's momentum at step 0 of its cosine schedule
        m = float(cosine_tau([0], cfg["momentum_teacher"], total_steps)[0])
        ema(net.teacher_encoder, net.encoder, m)
        ema(net.teacher_head, net.head, m)
    else:
        net.step += 1

