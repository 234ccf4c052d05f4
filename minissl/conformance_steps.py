"""Conformance vectors of whole methods: one training step of every method of ``minissl list``.

A port of a method is checked end to end: it loads the initial weights, is fed the same
augmented inputs and random draws, computes the loss, backpropagates, takes one plain SGD step
(``p <- p - lr * grad`` for every trained parameter) and calls its end-of-step update (BYOL's
and MoCo's EMA, MoCo's enqueue, CLIP's clamp); then every weight and buffer must match.

File (format in ``minissl/conformance.py`` and docs/conformance.md): meta ``op`` is
``"<method>.training_step"``; ``in_<name>`` the batch (images, ids, series; CLIP also the
labels); ``view_<i>`` the outputs of the method's augmentation, in the order the step asks for
them (a port uses them instead of augmenting); ``draw_<i>`` every other random draw of the
step, in order, with ``meta["draws"]`` = [[generator method, shape], ...]; ``const_<name>``
data the method holds besides its weights (``meta["constants"]``: CLIP's tokenised captions,
end-of-text id 1); ``init_<key>`` the state_dict before the step (parameters and buffers, PyTorch's names); ``out`` the loss;
``grad_<key>`` the gradient of every trained parameter; ``after_<key>`` the state_dict after
the step. The widths are tiny (encoder MLP 64-8, heads of 4 to 8) so the files stay small.

Randomness is made explicit by two generator classes: ``RecordingGenerator`` records every
draw the step makes outside the augmentation (the augmentation's outputs are recorded
instead), and ``ReplayGenerator`` hands the recorded draws back in order, checking that the
step asks for the same kind and shape; a port does the same with its own draws replaced.
"""
import dataclasses

import numpy as np

from . import nn, optim
from .methods import METHODS

STEP_SEED = 7          # the generator of the recorded step
LR = 0.1               # the SGD step
TOTAL_STEPS = 10       # what on_step_end(0, TOTAL_STEPS) is told (BYOL's tau schedule)
BATCH = 16
_KINDS = ("random", "standard_normal", "integers", "permutation", "uniform", "normal")


class RecordingGenerator(np.random.Generator):
    """A ``numpy.random.Generator`` that records the result of each draw while not
    ``paused``: ``draws`` = [(method name, array), ...]."""

    def __init__(self, seed):
        super().__init__(np.random.PCG64(seed))
        self.draws, self.paused = [], False


class ReplayGenerator(np.random.Generator):
    """Returns the recorded ``draws`` in order instead of drawing; raises if the step asks
    for another kind or shape of draw than the recorded one, or for more draws."""

    def __init__(self, draws):
        super().__init__(np.random.PCG64(0))
        self.draws, self.used = list(draws), 0


def _recording(kind):
    def draw(self, *args, **kwargs):
        out = getattr(np.random.Generator, kind)(self, *args, **kwargs)
        if not self.paused:
            self.draws.append((kind, np.array(out)))
        return out
    return draw


def _replaying(kind):
    def draw(self, *args, **kwargs):
        want = getattr(np.random.Generator, kind)(np.random.default_rng(0), *args, **kwargs)
        if self.used >= len(self.draws):
            raise AssertionError(f"replay: the step asks for draw {self.used} ({kind}), only "
                                 f"{len(self.draws)} were recorded")
        got_kind, value = self.draws[self.used]
        if got_kind != kind or np.shape(value) != np.shape(want):
            raise AssertionError(f"replay: draw {self.used} was {got_kind} {np.shape(value)}, "
                                 f"the step asks for {kind} {np.shape(want)}")
        self.used += 1
        return np.array(value, dtype=np.asarray(want).dtype)
    return draw


for _k in _KINDS:
    setattr(RecordingGenerator, _k, _recording(_k))
    setattr(ReplayGenerator, _k, _replaying(_k))


# The attributes that hold a method's input transformations (augmentation; the denoising
# autoencoder's corruption): a port is fed their outputs.
_TRANSFORMS = ("transform", "corruption")


class _RecordViews:
    """Wraps a method's augmentation: runs it with the generator's recording paused and
    appends each output to ``views`` (a port is fed the views, not the augmentation's draws)."""

    def __init__(self, transform, views):
        self.transform, self.views = transform, views

    def __call__(self, x, rng):
        rng.paused = True
        try:
            y = self.transform(x, np.random.Generator(rng.bit_generator))
        finally:
            rng.paused = False
        self.views.append(np.array(y))
        return y


class _ReplayViews:
    def __init__(self, views):
        self.views = views              # shared by the wrapped attributes, consumed in order

    def __call__(self, x, rng):
        if not self.views:
            raise AssertionError("replay: the step asks for more augmented views than stored")
        return self.views.pop(0)


# ----------------------------------------------------------------------------- the methods

def _image_parts(name):
    from .methods import autoencoder as ae
    from .methods import (barlow_twins, byol, clip, masked, moco, rotation, simclr, simsiam,
                          vicreg)
    shape = (1, 8, 8)
    enc = nn.MLPEncoder(64, (8,))
    if name == "simclr":
        return simclr.SimCLR(shape, simclr.SimCLRConfig(proj_hidden=8, proj_dim=4), enc, 8)
    if name == "moco":
        c = moco.MoCoConfig(queue_size=32, proj_hidden=8, proj_dim=4, bn_splits=2)
        return moco.MoCo(shape, c, nn.convert_split_batchnorm(enc, c.bn_splits), 8)
    if name == "byol":
        return byol.BYOL(shape, byol.BYOLConfig(proj_hidden=8, proj_dim=4), enc, 8)
    if name == "simsiam":
        return simsiam.SimSiam(shape, simsiam.SimSiamConfig(proj_dim=8, pred_hidden=4), enc, 8)
    if name == "barlow_twins":
        return barlow_twins.BarlowTwins(shape, barlow_twins.BarlowTwinsConfig(proj_dims=(8, 8)),
                                        enc, 8)
    if name == "vicreg":
        return vicreg.VICReg(shape, vicreg.VICRegConfig(proj_dims=(8, 8)), enc, 8)
    if name == "rotation":
        return rotation.RotNet(shape, rotation.RotNetConfig(head_hidden=8), enc, 8)
    if name == "clip":
        c = clip.CLIPConfig(embed_dim=4, text_width=8, text_layers=1, text_heads=2,
                            context_length=12)
        return clip.CLIP(shape, [str(i) for i in range(10)], c, enc, 8)
    if name == "mae":
        return masked.MAE(shape, masked.MAEConfig(patch_size=4, embed_dim=8, depth=1,
                                                  num_heads=2, decoder_embed_dim=8,
                                                  decoder_depth=1, decoder_num_heads=2))
    if name == "pixelcnn":
        from .methods import pixelcnn
        return pixelcnn.PixelCNN(shape, pixelcnn.PixelCNNConfig(channels=2, layers=2,
                                                                head_channels=4))
    kind = {"autoencoder": (ae.Autoencoder, ae.AutoencoderConfig()),
            "denoising": (ae.DenoisingAutoencoder, ae.DenoisingConfig()),
            "vae": (ae.VAE, ae.VAEConfig(latent_dim=4))}[name]
    return kind[0](shape, kind[1], enc, 8, decoder=ae.MLPDecoder(
        kind[1].latent_dim if name == "vae" else 8, shape, hidden=(8,)))


def build_case(name):
    """(method, batch): the tiny method ``name`` (initialised from seed 0, float64, training
    mode) and its batch (inputs by name)."""
    from .methods import autoregressive as ar
    from .methods import masked
    nn.manual_seed(0)
    r = np.random.default_rng(1)
    kind = METHODS[name][3]
    if kind == "images":
        from .data import digits
        m = _image_parts(name)
        d = digits()
        batch = {"x": d.train_x[:BATCH].astype(np.float64)}
        if name == "clip":
            batch["y"] = d.train_y[:BATCH].astype(np.int64)
    elif name == "gpt":
        m = ar.CharGPT(ar.GPTConfig(vocab_size=6, block_size=8, n_layer=1, n_head=2, n_embd=8))
        batch = {"ids": r.integers(0, 6, (4, 9))}
    elif name == "mlm":
        m = masked.MaskedLM(masked.MaskedLMConfig(vocab_size=6, block_size=8, n_layer=1,
                                                  n_head=2, n_embd=8))
        batch = {"ids": r.integers(0, 6, (4, 8))}
    elif kind == "audio":
        m = _audio_method(name)
        batch = {"clips": r.uniform(-0.9, 0.9, (4, _AUDIO_LENGTH.get(name, 16)))}
    else:
        m = ar.ARModel(ar.ARConfig(order=3))
        batch = {"series": r.standard_normal((4, 12))}
    return m.double().train(), batch


_AUDIO_LENGTH = {"cpc": 385}    # 385 samples: 8 frames of CPC's encoder


def _audio_method(name):
    """The tiny audio methods. WaveNet's crop (12 of 16 samples) is a draw; the denoiser's
    read-out starts at zero (an identity), so it gets random weights here: its gradient would
    otherwise not reach the layers below."""
    from .methods import cpc, denoising_audio, wavenet
    if name == "wavenet":
        return wavenet.WaveNet(wavenet.WaveNetConfig(
            quantization_channels=16, residual_channels=4, dilation_channels=3,
            skip_channels=5, layers=2, stacks=2, window=12))
    if name == "cpc":
        return cpc.CPC(cpc.CPCConfig(channels=3, context_layers=2, prediction_steps=3))
    m = denoising_audio.DenoisingAudioAutoencoder(
        denoising_audio.DenoisingAudioConfig(channels=3, dilations=(1, 2)))
    m.out.weight.data[...] = np.random.default_rng(2).standard_normal(m.out.weight.shape)
    return m


def _arg(batch):
    values = list(batch.values())
    return values[0] if len(values) == 1 else tuple(values)


def _named_trained(m):
    return [(k, p) for k, p in m.named_parameters() if p.requires_grad]


def take_step(m, batch, rng):
    """The step every vector stores: loss, backward, SGD(lr=LR), on_step_end(0, TOTAL_STEPS).
    Returns (loss, {name: grad})."""
    opt = optim.SGD([p for _, p in _named_trained(m)], lr=LR)
    opt.zero_grad()
    loss, _ = m.training_step(_arg(batch), rng)
    loss.backward()
    grads = {k: np.array(p.grad, dtype=np.float64) for k, p in _named_trained(m)
             if p.grad is not None}
    opt.step()
    m.on_step_end(0, TOTAL_STEPS)
    return float(loss.item()), grads


def _state(m):
    return {k: np.array(v.numpy() if hasattr(v, "numpy") else v)
            for k, v in m.state_dict().items()}


def step_vector(name):
    """(meta, arrays) of method ``name``'s training-step vector."""
    m, batch = build_case(name)
    init = _state(m)
    rng = RecordingGenerator(STEP_SEED)
    views = []
    for attr in _TRANSFORMS:
        if getattr(m, attr, None) is not None:
            setattr(m, attr, _RecordViews(getattr(m, attr), views))
    loss, grads = take_step(m, batch, rng)
    arrays = {f"in_{k}": np.asarray(v) for k, v in batch.items()}
    arrays.update({f"view_{i}": v.astype(np.float64) for i, v in enumerate(views)})
    arrays.update({f"draw_{i}": v for i, (_, v) in enumerate(rng.draws)})
    arrays.update({f"init_{k}": v for k, v in init.items()})
    constants = {"captions": m.captions} if name == "clip" else {}
    arrays.update({f"const_{k}": np.asarray(v) for k, v in constants.items()})
    arrays["out"] = np.array(loss)
    arrays.update({f"grad_{k}": g for k, g in grads.items()})
    arrays.update({f"after_{k}": v for k, v in _state(m).items()})
    meta = {"op": f"{name}.training_step", "inputs": list(batch), "views": len(views),
            "constants": list(constants),
            "draws": [[k, list(np.shape(v))] for k, v in rng.draws],
            "state": list(init), "trained": [k for k, _ in _named_trained(m)],
            "kwargs": {"optimizer": "SGD", "lr": LR, "step": 0, "total_steps": TOTAL_STEPS},
            "config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(m.config).items()}}
    return meta, arrays


def replay_step(meta, stored):
    """This minissl's step on a stored vector: the tiny method built afresh, loaded with the
    stored initial state, fed the stored views and draws. Returns the arrays to compare
    (``out``, ``grad_*``, ``after_*``)."""
    name = meta["op"].split(".")[0]
    m, _ = build_case(name)
    from .autograd import tensor
    m.load_state_dict({k: tensor(stored[f"init_{k}"]) for k in meta["state"]})
    batch = {k: stored[f"in_{k}"] for k in meta["inputs"]}
    views = [stored[f"view_{i}"] for i in range(meta["views"])]
    for attr in _TRANSFORMS:
        if getattr(m, attr, None) is not None:
            setattr(m, attr, _ReplayViews(views))
    rng = ReplayGenerator((k, stored[f"draw_{i}"]) for i, (k, _) in enumerate(meta["draws"]))
    loss, grads = take_step(m, batch, rng)
    if views or rng.used != len(meta["draws"]):
        raise AssertionError(f"{meta['op']}: {len(views)} views and "
                             f"{len(meta['draws']) - rng.used} draws were stored but not used")
    got = {"out": np.array(loss)}
    got.update({f"grad_{k}": g for k, g in grads.items()})
    got.update({f"after_{k}": v.astype(np.float64) if v.dtype.kind == "f" else v
                for k, v in _state(m).items()})
    return got
