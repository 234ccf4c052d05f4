"""The audio recipes in minissl and in PyTorch: the same networks, batches, noise and crops, and
the figure each method is judged by, against its trivial baseline.

Data: ``minissl.data.audio()`` (10 procedural sound classes, 800 training and 200 test clips
of 2048 samples at 8 kHz), or ``--data DIR``, a folder of WAV files with one subfolder per
class (``benchmarks/make_spoken_digits.py`` writes one of spoken digits). Optimiser: Adam,
batch 32 (drop last). Both libraries get the same batches and the same random draws (crops,
noise), made in NumPy from one seeded generator.

* ``wavenet``: residual 32, dilation 32, skip 64, dilations 1..128 twice, 256 mu-law codes,
  random crops of 512 samples, Adam 1e-3. Figure: test NLL (nats per sample, whole clips)
  against the marginal mu-law distribution of the training set.
* ``cpc``: encoder kernels (10, 8, 4), strides (5, 4, 2), 64 channels, ChannelNorm, 4 causal
  context layers, 6 prediction steps, Adam 3e-3 (``minissl.methods.cpc.CPCConfig``: the
  PyTorch network is built from the same config), scores p . z / C. Figure: accuracy of a
  linear probe (all labels) on the time-averaged encoder frames z (``probe``; also printed:
  ``probe_encoder`` and ``probe_context``, of z and of the context c), against raw samples,
  a log spectrogram (flattened, and averaged over time like the features) and the random-init
  net. ``--trace N`` prints, every N minissl steps, the loss, the InfoNCE top-1 of each
  prediction step k and the probes.
* ``denoising_audio``: 32 channels, dilations 1..32, noise at 0-10 dB, Adam 1e-3. Figure: SNR
  of the test clips with white noise at 5 dB, and after denoising.

``--init`` picks each seed's initial weights (cpc, whose two networks name their weights
alike): each library's own draw (``own``, the default), or one draw for both, minissl's
(``minissl``) or PyTorch's (``pytorch``): the cross experiment that tells a difference in
training from one in the draw. ``--init-stats N`` compares the two libraries' initial weights
over seeds 0..N-1 parameter by parameter (``compare_draws.table``); ``--compare-steps N``
trains both from minissl's draw in float64 on the first N batches and prints both losses and
how far the weights drift apart. Neither trains a recipe. ``--epochs 0`` gives the figures of
the random-init network (of the draw ``--init`` names).

    python benchmarks/bench_audio.py --method cpc --epochs 16 --seeds 0 1 2
    python benchmarks/bench_audio.py --method cpc --epochs 24 --seeds 0 --library minissl \
        --trace 100
    python benchmarks/make_spoken_digits.py --out spoken_digits --per-digit 60 --seed 0
    python benchmarks/bench_audio.py --method cpc --epochs 16 --seeds 0 1 2 --data spoken_digits
    python benchmarks/bench_audio.py --method cpc --epochs 16 --seeds 0 --data spoken_digits \
        --no-baselines --init pytorch
    python benchmarks/bench_audio.py --method cpc --init-stats 300
    python benchmarks/bench_audio.py --method cpc --seeds 0 --data spoken_digits \
        --compare-steps 20
    python benchmarks/bench_audio.py --method wavenet --epochs 2 --library minissl
"""
import argparse
import json
import os
import sys

import numpy as np

from minissl import data, evaluate, methods, optim, random
from minissl.data.user import wav_clips
from minissl.methods import cpc
from minissl.methods.denoising_audio import add_noise, snr_db
from minissl.methods.wavenet import marginal_nll

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_draws  # noqa: E402

BATCH = 32
INITS = ("own", "minissl", "pytorch")
RECIPES = {   # method: (settings, learning rate)
    "wavenet": ({"window": 512}, 1e-3),
    "cpc": ({}, 3e-3),
    "denoising_audio": ({}, 1e-3),
}


def batches(d, epochs, seed):
    """(generator for the step's random draws, batch of clips), the same for both libraries."""
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(d.train_x))
        for i in range(len(order) // BATCH):
            yield rng, d.train_x[order[i * BATCH:(i + 1) * BATCH]]


# ----------------------------------------------------------------------------- minissl

def minissl_model(method, d, seed):
    random.manual_seed(seed)
    return methods.build(method, d, **RECIPES[method][0])


# ------------------------------------------------------------------------ initial weights

def same_names(method, ours, theirs):
    """Raises unless the two networks' state dicts name the same tensors, of the same shapes
    (cpc's do; wavenet's and denoising_audio's torch.nn recipes name their layers apart)."""
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    if a != b:
        raise ValueError(f"--init: {method}'s two networks name their weights apart "
                         f"({sorted(set(a.items()) ^ set(b.items()))[:4]} ..); only cpc's "
                         f"can start from one draw")


def initial_network(library, method, d, seed, init="own"):
    """The network ``library`` trains for ``seed``, from its own draw of the initial weights
    (``init="own"``) or from the draw of the library ``init`` names, copied in."""
    if library == "minissl":
        m = minissl_model(method, d, seed)
        if init == "pytorch":
            theirs = torch_model(method, seed)
            same_names(method, m, theirs)
            m.load_state_dict({k: t.numpy() for k, t in theirs.state_dict().items()})
        return m
    import torch
    net = torch_model(method, seed)
    if init == "minissl":
        ours = minissl_model(method, d, seed)
        same_names(method, ours, net)
        net.load_state_dict({k: torch.from_numpy(np.array(v))
                             for k, v in ours.state_dict().items()})
    return net


def compare_steps(method, d, seed, steps, lr):
    """Both libraries from minissl's draw of ``seed``, in float64, on the bench's first
    ``steps`` batches with the same draws: yields per step the two losses and the largest
    difference of a weight after the step, relative to that weight's largest magnitude."""
    import copy
    import itertools
    import torch
    m = minissl_model(method, d, seed).double()
    net = initial_network("torch", method, d, seed, "minissl").double()
    opts = optim.Adam(m.trainable_parameters(), lr=lr), torch.optim.Adam(net.parameters(), lr=lr)
    for step, (rng, x) in enumerate(itertools.islice(batches(d, steps, seed), steps), 1):
        x, rng_t = x.astype(np.float64), copy.deepcopy(rng)
        loss = minissl_step(m, opts[0], x, rng)[0].item()
        t_loss = torch_step(method, net, opts[1], x, rng_t).item()
        theirs = dict(net.named_parameters())
        drift = max(float(np.abs(p.data - theirs[n].detach().numpy()).max()
                          / np.abs(p.data).max()) for n, p in m.named_parameters())
        yield step, loss, t_loss, drift


def init_stats(method, d, seeds):
    """Both libraries' initial weights over ``seeds``, compared parameter by parameter
    (``compare_draws.table``, whose pools it returns)."""
    pools = {}
    for seed in seeds:
        ours, theirs = minissl_model(method, d, seed), torch_model(method, seed)
        same_names(method, ours, theirs)
        mine = ours.state_dict()
        for name, t in theirs.state_dict().items():
            compare_draws.pool(pools, name, mine[name], t.numpy())
    return compare_draws.table(pools)


def minissl_train(m, d, epochs, seed, lr, trace=0):
    """Adam on the shared batches; every ``trace`` steps (0: never) a JSON line of the loss,
    the step's logged metrics (CPC: InfoNCE top-1 per step k) and the figures."""
    opt = optim.Adam(m.trainable_parameters(), lr=lr)
    for step, (rng, x) in enumerate(batches(d, epochs, seed), 1):
        loss, metrics = minissl_step(m, opt, x, rng)
        if trace and step % trace == 0:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4),
                              **{k: round(float(v), 4) for k, v in metrics.items()},
                              **minissl_figures(m.name, m, d)}), flush=True)
    return m


def minissl_step(m, opt, x, rng):
    opt.zero_grad()
    loss, metrics = m.training_step(x, rng)
    loss.backward()
    opt.step()
    return loss, metrics


def minissl_figures(method, m, d):
    if method == "wavenet":
        return {"test_nll": m.nll(d.test_x)}
    if method == "cpc":
        return cpc_probes(m, d)
    return {"snr_out": m.snr_in_out(d.test_x)[1]}


# ----------------------------------------------------------------------------- PyTorch

def torch_model(method, seed, settings=None):
    """The PyTorch network of ``method`` (``settings``: its config, default the recipe's)."""
    import torch
    from torch import nn
    import torch.nn.functional as tF
    torch.manual_seed(seed)

    class WaveNet(nn.Module):
        def __init__(self, Q=256, R=32, D=32, S=64, layers=8, stacks=2):
            super().__init__()
            self.Q, self.dil = Q, [2 ** i for _ in range(stacks) for i in range(layers)]
            self.embed, self.causal = nn.Embedding(Q, R), nn.Conv1d(R, R, 2)
            self.dilated = nn.ModuleList([nn.Conv1d(R, 2 * D, 2, dilation=d) for d in self.dil])
            self.res = nn.ModuleList([nn.Conv1d(D, R, 1) for _ in self.dil[1:]])
            self.skip = nn.ModuleList([nn.Conv1d(D, S, 1) for _ in self.dil])
            self.out1, self.out2 = nn.Conv1d(S, S, 1), nn.Conv1d(S, Q, 1)

        def loss(self, codes):                                   # codes (B, T) int64
            h = self.causal(tF.pad(self.embed(codes[:, :-1]).transpose(1, 2), (1, 0)))
            skip = 0
            for i, (d, conv, sk) in enumerate(zip(self.dil, self.dilated, self.skip)):
                a, b = conv(tF.pad(h, (d, 0))).chunk(2, dim=1)
                z = torch.tanh(a) * torch.sigmoid(b)
                skip = skip + sk(z)
                if i < len(self.res):
                    h = h + self.res[i](z)
            logits = self.out2(tF.relu(self.out1(tF.relu(skip))))    # (B, Q, T-1)
            return tF.cross_entropy(logits, codes[:, 1:])

    class CPC(nn.Module):
        """minissl.methods.cpc.CPC written with torch.nn, from the same ``CPCConfig``."""

        def __init__(self, cfg):
            super().__init__()
            C, self.K, self.cfg = cfg.channels, cfg.prediction_steps, cfg
            enc = []
            for i, (k, s) in enumerate(zip(cpc.KERNELS, cpc.STRIDES)):
                enc += [nn.Conv1d(1 if i == 0 else C, C, k, s)]
                enc += [ChannelNorm(C)] if cfg.norm == "channel" else []
                enc += [nn.ReLU()]
            self.encoder = nn.Sequential(*enc)
            self.context = nn.ModuleList([nn.Conv1d(C, C, 3) for _ in range(cfg.context_layers)])
            self.predict = nn.Conv1d(C, self.K * C, 1)

        def encode(self, x):
            z = self.encoder(x[:, None])
            c = z
            for conv in self.context:
                c = c + tF.relu(conv(tF.pad(c, (2, 0))))
            return z, c

        def features(self, x):                           # time-averaged z (or c)
            z, c = self.encode(x)
            return (z if self.cfg.features == "encoder" else c).mean(2)

        def loss(self, x):
            z, c = self.encode(x)
            B, C, T = z.shape
            p = self.predict(c).reshape(B, self.K, C, T)
            p = p / C if self.cfg.score == "mean" else p
            zf = z.transpose(1, 2).reshape(B * T, C)
            total = 0
            for k in range(1, self.K + 1):
                if self.cfg.negatives == "sequence":             # the clip's own T frames
                    logits = p[:, k - 1, :, :T - k].transpose(1, 2) @ z   # (B, T - k, T)
                    target = torch.arange(k, T).expand(B, T - k)
                    total = total + tF.cross_entropy(logits.reshape(-1, T), target.reshape(-1))
                    continue
                pk = p[:, k - 1, :, :T - k].transpose(1, 2).reshape(-1, C)
                target = (torch.arange(B)[:, None] * T + torch.arange(k, T)[None]).reshape(-1)
                total = total + tF.cross_entropy(pk @ zf.T, target)
            return total / self.K

    class ChannelNorm(nn.Module):                     # LayerNorm over the channels of a frame
        def __init__(self, C):
            super().__init__()
            self.norm = nn.LayerNorm(C)

        def forward(self, x):
            return self.norm(x.transpose(1, 2)).transpose(1, 2)

    class Denoiser(nn.Module):
        def __init__(self, C=32, dilations=(1, 2, 4, 8, 16, 32)):
            super().__init__()
            self.stem = nn.Conv1d(1, C, 9, padding=4)
            self.blocks = nn.ModuleList([nn.Conv1d(C, C, 3, padding=d, dilation=d)
                                         for d in dilations])
            self.out = nn.Conv1d(C, 1, 1)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

        def forward(self, x):
            h = tF.relu(self.stem(x[:, None]))
            for conv in self.blocks:
                h = h + tF.relu(conv(h))
            return x - self.out(h)[:, 0]

    if method == "cpc":
        return CPC(cpc.CPCConfig(**(RECIPES["cpc"][0] if settings is None else settings)))
    return {"wavenet": WaveNet, "denoising_audio": Denoiser}[method]()


def torch_step_loss(method, net, x, rng):
    """The loss of one step, with the draws minissl's ``training_step`` makes from ``rng``."""
    import torch
    import torch.nn.functional as tF
    from minissl import functional as F
    if method == "wavenet":
        w = RECIPES["wavenet"][0]["window"]
        start = rng.integers(0, x.shape[1] - w + 1, len(x))
        crops = x[np.arange(len(x))[:, None], start[:, None] + np.arange(w)]
        return net.loss(torch.from_numpy(F.mu_law_encoding(crops, 256).data))
    if method == "cpc":
        return net.loss(torch.from_numpy(x))
    snr = rng.uniform(0.0, 10.0, len(x))
    noisy = add_noise(x, snr, rng)
    return tF.mse_loss(net(torch.from_numpy(noisy)), torch.from_numpy(x))


def torch_train(method, net, d, epochs, seed, lr):
    import torch
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for rng, x in batches(d, epochs, seed):
        torch_step(method, net, opt, x, rng)
    return net


def torch_step(method, net, opt, x, rng):
    opt.zero_grad()
    loss = torch_step_loss(method, net, x, rng)
    loss.backward()
    opt.step()
    return loss


def torch_figures(method, net, d):
    import torch
    from minissl import functional as F
    with torch.no_grad():
        if method == "wavenet":
            codes = F.mu_law_encoding(d.test_x, 256).data
            return {"test_nll": float(np.mean([net.loss(torch.from_numpy(codes[i:i + 50]))
                                               for i in range(0, len(codes), 50)]))}
        if method == "cpc":
            feats = [net.features(torch.from_numpy(x)).numpy() for x in (d.train_x, d.test_x)]
            z, c = zip(*[[f.mean(2).numpy() for f in net.encode(torch.from_numpy(x))]
                         for x in (d.train_x, d.test_x)])
            return {"probe": probe(*feats, d), "probe_encoder": probe(*z, d),
                    "probe_context": probe(*c, d)}
        noisy = add_noise(d.test_x, np.full(len(d.test_x), 5.0), np.random.default_rng(0))
        out = net(torch.from_numpy(noisy)).numpy()
        return {"snr_out": float(snr_db(d.test_x, out).mean())}


# ---------------------------------------------------------------------------- baselines

def probe(train_features, test_features, d):
    """The same linear probe for every feature: logistic regression on all training labels."""
    return evaluate.linear_probe(train_features, d.train_y, test_features, d.test_y, steps=500)


def cpc_probes(m, d):
    """The probe of the configured features, and of both time-averaged z and c."""
    z, c = ([m.map_batches(lambda b: f(b).mean(dim=2), x, 256) for x in (d.train_x, d.test_x)]
            for f in (m.encode_frames, lambda b: m.aggregate(m.encode_frames(b))))
    return {"probe": probe(m.features(d.train_x), m.features(d.test_x), d),
            "probe_encoder": probe(*z, d), "probe_context": probe(*c, d)}


def baselines(method, d):
    if method == "wavenet":
        return {"marginal_nll": marginal_nll(d.train_x, d.test_x)}
    if method == "cpc":
        spec = [data.log_spectrogram(x).reshape(len(x), -1) for x in (d.train_x, d.test_x)]
        rand = cpc_probes(minissl_model("cpc", d, 0), d)
        spec_mean = [data.log_spectrogram(x).mean(1) for x in (d.train_x, d.test_x)]
        return {"raw_probe": probe(d.train_x, d.test_x, d), "spectrogram_probe": probe(*spec, d),
                "time_averaged_spectrogram_probe": probe(*spec_mean, d),
                **{"random_init_" + k: v for k, v in rand.items()}}
    noisy = add_noise(d.test_x, np.full(len(d.test_x), 5.0), np.random.default_rng(0))
    return {"snr_in": float(snr_db(d.test_x, noisy).mean())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=list(RECIPES), required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--library", choices=["both", "minissl", "torch"], default="both")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--data", metavar="DIR", help="a folder of WAV files, one subfolder per "
                    "class (benchmarks/make_spoken_digits.py writes one); default: the "
                    "procedural sounds")
    ap.add_argument("--trace", type=int, default=0, metavar="N",
                    help="minissl: every N steps, print the loss, the logged metrics and the "
                         "figures")
    ap.add_argument("--init", choices=INITS, default="own",
                    help="each library's own draw of the initial weights, or minissl's or "
                         "PyTorch's draw for both (cpc)")
    ap.add_argument("--init-stats", type=int, metavar="N",
                    help="compare the two libraries' initial weights over seeds 0..N-1; "
                         "train nothing")
    ap.add_argument("--compare-steps", type=int, metavar="N",
                    help="train both libraries from minissl's draw in float64 for N steps and "
                         "print both losses and the weights' drift apart after each")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting of the method's config, in both libraries (cpc: "
                         "norm=none, negatives=sequence)")
    args = ap.parse_args()
    for kv in args.set:
        key, _, value = kv.partition("=")
        RECIPES[args.method][0][key] = int(value) if value.isdigit() else value
    if args.init_stats:
        init_stats(args.method, None, range(args.init_stats))
        return
    d = wav_clips(args.data) if args.data else data.audio()
    if args.library != "minissl" or args.compare_steps:
        import torch
        torch.set_num_threads(1)
    if args.compare_steps:
        for seed in args.seeds:
            for step, a, b, drift in compare_steps(args.method, d, seed, args.compare_steps,
                                                   RECIPES[args.method][1]):
                print(json.dumps({"seed": seed, "step": step, "minissl_loss": a,
                                  "torch_loss": b, "weight_drift": drift}), flush=True)
        return
    if not args.no_baselines:
        print(json.dumps({"method": args.method, "data": d.name,
                          "baselines": baselines(args.method, d)}), flush=True)
    lr = RECIPES[args.method][1]
    for seed in args.seeds:
        run = {"method": args.method, "seed": seed, "init": args.init, "epochs": args.epochs}
        if args.library in ("both", "minissl"):
            m = minissl_train(initial_network("minissl", args.method, d, seed, args.init), d,
                              args.epochs, seed, lr, args.trace)
            print(json.dumps({"library": "minissl", **run,
                              **minissl_figures(args.method, m, d)}), flush=True)
        if args.library in ("both", "torch"):
            net = torch_train(args.method,
                              initial_network("torch", args.method, d, seed, args.init), d,
                              args.epochs, seed, lr)
            print(json.dumps({"library": "torch", **run, **torch_figures(args.method, net, d)}),
                  flush=True)


if __name__ == "__main__":
    main()
