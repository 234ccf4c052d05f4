"""Self-predictive learning with autoencoders: reconstruct the input through a learned code.

Three methods of the same shape, encoder f (whose output h are the features we evaluate) and
decoder g (which maps a code back to pixel logits):

* ``Autoencoder``: minimise the reconstruction loss L(x, g(f(x))) (Hinton & Salakhutdinov,
  "Reducing the Dimensionality of Data with Neural Networks", Science 2006, whose deep
  autoencoders squeeze x through a narrow code). Here the code is the encoder's output, as
  for every other method, and on the digits it is wider than the input (256 for 64 pixels):
  nothing but the architecture and the optimiser keeps it from learning the identity, which
  is the problem the denoising autoencoder solves.
* ``DenoisingAutoencoder``: corrupt x into x~ ~ q(x~ | x) and reconstruct the *clean* x,
  L(x, g(f(x~))) (Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust
  Features with Denoising Autoencoders", ICML 2008). Undoing the corruption needs the
  statistical structure of the data (strokes, not pixels), so the identity no longer solves
  the task and the code may be over-complete. The 2008 paper's corruption is masking noise
  (a fraction nu of the inputs set to 0); the journal version (Vincent et al., JMLR 2010,
  section 4.2) adds isotropic Gaussian noise x~ = x + N(0, sigma^2 I). Both are here, and
  combine: mask first, then add noise.
* ``VAE``: a latent-variable model p(x|z) p(z) with p(z) = N(0, I), fitted by maximising the
  evidence lower bound (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014):

      log p(x) >= E_{q(z|x)}[log p(x|z)] - KL(q(z|x) || p(z)),
      q(z|x) = N(mu(h), diag(exp(logvar(h)))),  h = f(x).

  The expectation is estimated with one sample and the reparameterisation trick
  z = mu + exp(logvar / 2) * eps, eps ~ N(0, I), so that the gradient reaches mu and logvar;
  the KL of two Gaussians is closed-form (``losses.kl_normal``). The loss minimised is
  recon + beta * KL (beta = 1 is the ELBO; beta > 1 is Higgins et al.'s beta-VAE, ICLR 2017).
  ``sample(n, rng)`` decodes z ~ p(z) into new images.

Reconstruction loss (``recon_loss``): ``"bce"`` (the default) is binary cross-entropy with
logits, the negative log-likelihood of a Bernoulli decoder p(x|z) = prod Bern(x_i; sigmoid(l_i)),
which is what both Vincent et al. (the "cross-entropy loss" L_H for inputs in [0, 1]) and
Kingma & Welling (MNIST experiments; also PyTorch's example ``pytorch/examples``
``vae/main.py``, checked: a 784-400-20 MLP, BCE summed over pixels + the closed-form KLD) use.
For grey levels x in [0, 1] it is still the cross-entropy between Bern(x) and Bern(s(l)),
minimised at sigmoid(l) = x; as a density of a continuous x it lacks a normaliser (Loaiza-Ganem
& Cunningham, "The continuous Bernoulli", NeurIPS 2019, which a later version of that example
adds), so the VAE's loss is the ELBO of the Bernoulli model, as in the paper, not a bound on a
continuous density. ``"mse"`` is the squared error of the sigmoid output (a Gaussian decoder
with fixed variance). Either way the decoder outputs logits, and ``reconstruct`` returns
sigmoid(logits) in [0, 1].

Architectures follow ``default_encoder``: for the 8x8 digits f is the quality-bar MLP encoder
(64-256-256, Linear-BN-ReLU twice, features = its 256-d output, comparable with every other
method) and g mirrors it (code-256-64, Linear-BN-ReLU-Linear); for larger images f is the
small ResNet ``ConvEncoder`` and g a ``ConvDecoder`` that upsamples with transposed
convolutions. For the autoencoder and the DAE the code is h itself; the VAE's code is the
latent z, with Linear heads mu(h), logvar(h) (features are still h, before the heads).
"""
import math
from dataclasses import dataclass

import numpy as np

from .. import augment, distributed as dist, losses, nn
from .. import functional as F
from ..autograd import no_grad
from ..backend import get_array_module
from .base import SSLMethod, default_encoder, encoder_args

__all__ = ["AutoencoderConfig", "DenoisingConfig", "VAEConfig", "Autoencoder",
           "DenoisingAutoencoder", "VAE", "MLPDecoder", "ConvDecoder", "default_decoder",
           "reconstruction_loss", "build_autoencoder", "build_denoising", "build_vae"]

_RECON_LOSSES = ("bce", "mse")


# ------------------------------------------------------------------------------- decoders

class MLPDecoder(nn.Module):
    """Code (B, in_dim) -> pixel logits (B, C, H, W) through an MLP in_dim-hidden...-C*H*W.

    Linear-BN-ReLU for each hidden width, then a plain Linear (``nn.MLP``): the mirror image
    of ``nn.MLPEncoder``.
    """

    def __init__(self, in_dim, image_shape, hidden=(256,), rng=None, dtype=None):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        out_dim = math.prod(self.image_shape)
        self.net = nn.MLP((int(in_dim), *hidden, out_dim), rng=rng, dtype=dtype)
        self.in_dim = int(in_dim)

    def forward(self, z):
        if z.ndim != 2 or z.shape[1] != self.in_dim:
            raise ValueError(f"MLPDecoder: expected a code (B, {self.in_dim}), got shape "
                             f"{z.shape}")
        return self.net(z).reshape(z.shape[0], *self.image_shape)   # (B, C, H, W)


class ConvDecoder(nn.Module):
    """Code (B, in_dim) -> pixel logits (B, C, H, W) with transposed convolutions.

    Linear-BN-ReLU to a (widths[0], H0, W0) map, then ``len(widths) - 1`` upsampling stages
    ConvTranspose2d(3, stride 2, padding 1)-BN-ReLU that double the size (the mirror of the
    stride-2 stages of ``ConvEncoder``), then a 3x3 Conv2d to C logit channels.

    A stride-2 transposed conv with kernel 3 and padding 1 maps a side s to 2 s - 1 + op
    (op = output_padding in {0, 1}), so any target side is reached exactly: start from
    H0 = ceil(H / 2^n) and pick op = 1 where the next side is even, 0 where it is odd.
    """

    def __init__(self, in_dim, image_shape, widths=(128, 64, 32), rng=None, dtype=None):
        super().__init__()
        C, H, W = (int(s) for s in image_shape)
        widths = tuple(int(w) for w in widths)
        if not widths:
            raise ValueError("ConvDecoder: widths must list at least one channel count")
        self.image_shape, self.in_dim, self.widths = (C, H, W), int(in_dim), widths
        hs, ws = [H], [W]                                       # sides, from the output back
        for _ in widths[1:]:
            hs.insert(0, -(-hs[0] // 2))
            ws.insert(0, -(-ws[0] // 2))
        self.start = (widths[0], hs[0], ws[0])
        self.fc = nn.Sequential(nn.Linear(in_dim, math.prod(self.start), rng=rng, dtype=dtype),
                                nn.BatchNorm1d(math.prod(self.start), dtype=dtype), nn.ReLU())
        ups = []
        for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
            op = (hs[i + 1] - (2 * hs[i] - 1), ws[i + 1] - (2 * ws[i] - 1))   # 0 or 1 each
            ups += [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=op,
                                       bias=False, rng=rng, dtype=dtype),
                    nn.BatchNorm2d(cout, dtype=dtype), nn.ReLU()]
        self.up = nn.Sequential(*ups)
        self.out = nn.Conv2d(widths[-1], C, 3, padding=1, rng=rng, dtype=dtype)

    def forward(self, z):
        if z.ndim != 2 or z.shape[1] != self.in_dim:
            raise ValueError(f"ConvDecoder: expected a code (B, {self.in_dim}), got shape "
                             f"{z.shape}")
        x = self.fc(z).reshape(z.shape[0], *self.start)         # (B, widths[0], H0, W0)
        x = self.up(x)                                          # (B, widths[-1], H, W)
        return self.out(x)                                      # (B, C, H, W) logits


def default_decoder(image_shape, in_dim, hidden=(256,), widths=(128, 64, 32)):
    """The decoder that mirrors ``default_encoder(image_shape)``: an ``MLPDecoder``
    (in_dim-256-C*H*W) for small grey images (the digits), a ``ConvDecoder`` otherwise."""
    C, H, W = image_shape
    if H * W <= 256 and C == 1:                                 # the rule of default_encoder
        return MLPDecoder(in_dim, image_shape, hidden)
    return ConvDecoder(in_dim, image_shape, widths)


# ---------------------------------------------------------------------------------- losses

def reconstruction_loss(logits, target, kind="bce", reduction="mean"):
    """Reconstruction loss of pixel ``logits`` against ``target`` pixels in [0, 1].

    ``kind="bce"``: binary cross-entropy with logits, -[x log s(l) + (1 - x) log(1 - s(l))]
    per pixel (the Bernoulli negative log-likelihood); ``kind="mse"``: (s(l) - x)^2, with
    s the sigmoid. ``reduction`` as in ``F.mse_loss``: "mean" over all pixels, "sum", "none".
    """
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)
    if kind == "mse":
        return F.mse_loss(F.sigmoid(logits), target, reduction=reduction)
    raise ValueError(f"reconstruction_loss: kind must be one of {_RECON_LOSSES}, got {kind!r}")


def _check_config(who, config, config_class):
    if not isinstance(config, config_class):
        raise TypeError(f"{who}: config must be a {config_class.__name__}, got "
                        f"{type(config).__name__}")
    if config.recon_loss not in _RECON_LOSSES:
        raise ValueError(f"{who}: recon_loss must be one of {_RECON_LOSSES}, got "
                         f"{config.recon_loss!r}")


def _check_images(who, x, image_shape, min_batch=1):
    """x must be an array of images (B, C, H, W) of ``image_shape`` with B >= min_batch."""
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 4 or shape[1:] != tuple(image_shape):
        raise ValueError(f"{who}: expected images (B, {', '.join(map(str, image_shape))}), got "
                         f"{'shape ' + str(shape) if shape else type(x).__name__}")
    if shape[0] < min_batch:
        raise ValueError(f"{who}: needs at least {min_batch} images, got shape {shape}")


def _host(x):
    """A host (NumPy) copy or view of a NumPy or CuPy array."""
    return x.get() if get_array_module(x) is not np else x


def _eval_batches(module, fn, x, batch_size):
    """``fn`` applied to ``x`` in slices of ``batch_size``, in eval mode without a graph;
    the results concatenated as a float32 host array."""
    was_training = module.training
    module.eval()
    out = []
    with no_grad():
        for i in range(0, len(x), batch_size):
            out.append(fn(x[i:i + batch_size]).numpy())
    module.train(was_training)
    return np.concatenate(out).astype(np.float32)


def _mse(reconstruction, x):
    return float(np.mean((reconstruction - np.asarray(_host(x), dtype=np.float32)) ** 2))


# ------------------------------------------------------------------------------ autoencoder

@dataclass
class AutoencoderConfig:
    recon_loss: str = "bce"       # "bce" (Bernoulli NLL, the papers' choice) or "mse"


@dataclass
class DenoisingConfig(AutoencoderConfig):
    mask_prob: float = 0.25       # masking noise nu: each pixel set to 0 with this probability
                                  # (Vincent 2008 tries nu in {0.1, 0.25, 0.4}; Bernoulli per
                                  # pixel here, a fixed count nu*d in the paper: same mean)
    noise_std: float = 0.1        # additive Gaussian noise sigma (JMLR 2010: 0.05 - 0.5),
                                  # added after the masking; 0 disables either corruption


class Autoencoder(SSLMethod):
    """Plain autoencoder: minimise L(x, g(f(x))) (see the module docstring).

    ``encoder`` and ``feature_dim`` default to ``default_encoder(image_shape)``; ``decoder``
    (code (B, feature_dim) -> logits (B, C, H, W)) to the matching ``default_decoder``.
    """

    name = "autoencoder"
    config_class = AutoencoderConfig

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None, decoder=None):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.config = config or self.config_class()
        _check_config(type(self).__name__, self.config, self.config_class)
        if encoder is None:
            encoder, feature_dim = default_encoder(self.image_shape)
        elif feature_dim is None:
            raise ValueError(f"{type(self).__name__}: pass feature_dim with a custom encoder")
        self.feature_dim = int(feature_dim)
        self.encoder = encoder                                  # f: x -> h (B, D)
        self.decoder = decoder or default_decoder(self.image_shape, self.feature_dim)  # g

    def corrupt(self, x, rng):
        """The encoder's input for a clean batch x: x itself (the DAE overrides this)."""
        return x

    def forward(self, x):
        """Pixel logits (B, C, H, W) of the reconstruction of the batch x."""
        return self.decoder(self.encoder(self.as_input(x)))

    def training_step(self, x, rng):
        # BatchNorm in training mode needs two rows to have a variance.
        _check_images(f"{type(self).__name__}.training_step", x, self.image_shape, 2)
        inputs, x = dist.shard(self.corrupt(x, rng), x)         # this rank's rows
        logits = self(inputs)                                    # (B, C, H, W)
        loss = reconstruction_loss(logits, self.as_input(x), self.config.recon_loss)
        return loss, {}

    def reconstruct(self, x, *, batch_size=1024):
        """sigmoid(g(f(x))): reconstructions in [0, 1] of images x, a float32 host array,
        computed in eval mode (BatchNorm with its running statistics)."""
        _check_images(f"{type(self).__name__}.reconstruct", x, self.image_shape)
        return _eval_batches(self, lambda xb: F.sigmoid(self(xb)), x, batch_size)

    def reconstruction_mse(self, x, inputs=None, *, batch_size=1024):
        """Mean squared error per pixel between ``x`` and the reconstruction of ``inputs``
        (default: x itself; pass corrupted images to measure denoising)."""
        inputs = x if inputs is None else inputs
        if tuple(inputs.shape) != tuple(x.shape):
            raise ValueError(f"{type(self).__name__}.reconstruction_mse: inputs of shape "
                             f"{tuple(inputs.shape)} do not match x of shape {tuple(x.shape)}")
        return _mse(self.reconstruct(inputs, batch_size=batch_size), x)


class DenoisingAutoencoder(Autoencoder):
    """Denoising autoencoder: minimise L(x, g(f(x~))), x~ the corrupted x (Vincent 2008).

    The corruption is ``corrupt(x, rng)``: masking noise with probability ``mask_prob`` per
    pixel (all channels of a pixel together), then additive Gaussian noise of std
    ``noise_std`` (not clipped: the noise keeps its variance). The features are f of the
    *clean* input, as in the paper's use of the learnt representation. Unlike the paper the
    decoder's weights are not tied to the encoder's (W' = W^T): BatchNorm sits between the
    layers, and untied weights are what later implementations use.
    """

    name = "denoising"
    config_class = DenoisingConfig

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None, decoder=None):
        super().__init__(image_shape, config, encoder, feature_dim, decoder)
        c = self.config
        if not (0.0 <= c.mask_prob <= 1.0 and c.noise_std >= 0.0):
            raise ValueError(f"DenoisingAutoencoder: need 0 <= mask_prob <= 1 and noise_std >= "
                             f"0, got mask_prob={c.mask_prob}, noise_std={c.noise_std}")
        steps = []
        if c.mask_prob > 0:
            steps.append(augment.PixelDropout(c.mask_prob))
        if c.noise_std > 0:
            steps.append(augment.GaussianNoise(c.noise_std))
        if not steps:
            raise ValueError("DenoisingAutoencoder: mask_prob and noise_std are both 0, so "
                             "nothing is corrupted; use Autoencoder for that")
        self.corruption = augment.Compose(steps)

    def corrupt(self, x, rng):
        return self.corruption(x, rng)


# -------------------------------------------------------------------------------------- VAE

@dataclass
class VAEConfig:
    latent_dim: int = 16          # size of z (the paper's MNIST runs use 2 - 200, the PyTorch
                                  # example 20; 16 for the 64-pixel digits)
    beta: float = 1.0             # weight of the KL term: 1 is the ELBO, > 1 a beta-VAE
    recon_loss: str = "bce"       # "bce" (Bernoulli decoder, as the paper) or "mse"


class VAE(SSLMethod):
    """Variational autoencoder (Kingma & Welling 2014), see the module docstring.

    loss = recon + beta * KL with recon = sum over pixels of the per-pixel loss, averaged over
    the batch (a per-image negative log-likelihood, so that its scale against the KL, also
    per image, is the ELBO's). Features are the encoder output h (B, D); ``encode`` gives the
    posterior parameters mu, logvar (B, latent_dim).
    """

    name = "vae"

    def __init__(self, image_shape, config=None, encoder=None, feature_dim=None, decoder=None):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.config = config or VAEConfig()
        _check_config("VAE", self.config, VAEConfig)
        if self.config.latent_dim < 1 or self.config.beta < 0:
            raise ValueError(f"VAE: need latent_dim >= 1 and beta >= 0, got "
                             f"{self.config.latent_dim} and {self.config.beta}")
        if encoder is None:
            encoder, feature_dim = default_encoder(self.image_shape)
        elif feature_dim is None:
            raise ValueError("VAE: pass feature_dim with a custom encoder")
        self.feature_dim = int(feature_dim)
        L = self.config.latent_dim
        self.encoder = encoder                                  # f: x -> h (B, D)
        self.to_mu = nn.Linear(self.feature_dim, L)             # h -> mu (B, L)
        self.to_logvar = nn.Linear(self.feature_dim, L)         # h -> log sigma^2 (B, L)
        self.decoder = decoder or default_decoder(self.image_shape, L)   # z -> logits

    def encode(self, x):
        """Posterior parameters (mu, logvar), Tensors (B, latent_dim), of the batch x."""
        h = self.encoder(self.as_input(x))                      # (B, D)
        return self.to_mu(h), self.to_logvar(h)

    def reparameterize(self, mu, logvar, rng):
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn on the host from ``rng``."""
        # Data-parallel: the noise of the global batch, this rank's rows of it.
        eps = rng.standard_normal((len(mu) * dist.world_size(),) + tuple(mu.shape[1:]))
        eps = self.as_input(dist.shard(eps))                    # in the model's dtype
        return mu + (logvar * 0.5).exp() * eps                  # (B, L)

    def training_step(self, x, rng):
        _check_images("VAE.training_step", x, self.image_shape, 2)
        x = dist.shard(x)                                       # this rank's rows
        mu, logvar = self.encode(x)                             # (B, L) each
        z = self.reparameterize(mu, logvar, rng)                # (B, L)
        logits = self.decoder(z)                                # (B, C, H, W)
        recon = reconstruction_loss(logits, self.as_input(x), self.config.recon_loss,
                                    reduction="sum") / x.shape[0]
        kl = losses.kl_normal(mu, logvar)
        loss = recon + kl * self.config.beta
        return loss, {"recon": recon.item(), "kl": kl.item()}

    def reconstruct(self, x, *, batch_size=1024):
        """sigmoid(g(mu(x))): the decoding of the posterior mean, in [0, 1], a float32 host
        array (eval mode; deterministic, unlike a reconstruction from a sampled z)."""
        _check_images("VAE.reconstruct", x, self.image_shape)
        return _eval_batches(self, lambda xb: F.sigmoid(self.decoder(self.encode(xb)[0])), x,
                             batch_size)

    def reconstruction_mse(self, x, *, batch_size=1024):
        """Mean squared error per pixel between x and ``reconstruct(x)``."""
        return _mse(self.reconstruct(x, batch_size=batch_size), x)

    def sample(self, n, rng):
        """n new images sigmoid(g(z)), z ~ N(0, I): a float32 host array (n, C, H, W)."""
        if int(n) != n or n < 1:
            raise ValueError(f"VAE.sample: n must be a positive integer, got {n!r}")
        z = rng.standard_normal((int(n), self.config.latent_dim)).astype(np.float32)
        return _eval_batches(self, lambda zb: F.sigmoid(self.decoder(self.as_input(zb))), z,
                             1024)


# ---------------------------------------------------------------------------------- builders

def build_autoencoder(data, encoder=None, feature_dim=None, **overrides):
    """An ``Autoencoder`` for an image ``Dataset``; ``overrides`` set ``AutoencoderConfig``."""
    return Autoencoder(data.image_shape, AutoencoderConfig(**overrides),
                       **encoder_args(encoder, feature_dim))


def build_denoising(data, encoder=None, feature_dim=None, **overrides):
    """A ``DenoisingAutoencoder`` for an image ``Dataset``; ``overrides`` set
    ``DenoisingConfig`` (mask_prob, noise_std, recon_loss)."""
    return DenoisingAutoencoder(data.image_shape, DenoisingConfig(**overrides),
                                **encoder_args(encoder, feature_dim))


def build_vae(data, encoder=None, feature_dim=None, **overrides):
    """A ``VAE`` for an image ``Dataset``; ``overrides`` set ``VAEConfig``."""
    return VAE(data.image_shape, VAEConfig(**overrides), **encoder_args(encoder, feature_dim))

