"""The self-supervised methods, one file per row of the SSL taxonomy (see docs/design.md).

``METHODS`` maps a method's name to ``(module, builder, family, data kind)``; ``build(name,
data, **overrides)`` imports the module only when asked and builds the method for a loaded
data object (an image ``Dataset``, an ``AudioDataset``, a ``VideoDataset``, a ``TextCorpus`` or
an ``ARSeries``).
"""
import importlib
import inspect

# name: (module, builder function, family in the taxonomy, what it trains on)
METHODS = {
    "autoencoder": ("autoencoder", "build_autoencoder", "self-predictive: autoencoders", "images"),
    "denoising": ("autoencoder", "build_denoising", "self-predictive: autoencoders", "images"),
    "vae": ("autoencoder", "build_vae", "self-predictive: autoencoders", "images"),
    "denoising_audio": ("denoising_audio", "build", "self-predictive: autoencoders", "audio"),
    "inpainting": ("inpainting", "build_inpainting", "self-predictive: autoencoders", "images"),
    "colorization": ("inpainting", "build_colorization", "self-predictive: autoencoders",
                     "images"),
    "gpt": ("autoregressive", "build", "self-predictive: autoregression", "text"),
    "ar": ("autoregressive", "build_ar", "self-predictive: autoregression", "series"),
    "pixelcnn": ("pixelcnn", "build", "self-predictive: autoregression", "images"),
    "wavenet": ("wavenet", "build", "self-predictive: autoregression", "audio"),
    "mlm": ("masked", "build_mlm", "self-predictive: masking", "text"),
    "mae": ("masked", "build_mae", "self-predictive: masking", "images"),
    "videomae": ("videomae", "build", "self-predictive: masking", "video"),
    "rotation": ("rotation", "build", "self-predictive: innate relationships", "images"),
    "simclr": ("simclr", "build", "contrastive: instance discrimination", "images"),
    "moco": ("moco", "build", "contrastive: instance discrimination", "images"),
    "byol": ("byol", "build", "contrastive: non-contrastive", "images"),
    "simsiam": ("simsiam", "build", "contrastive: non-contrastive", "images"),
    "barlow_twins": ("barlow_twins", "build", "contrastive: non-contrastive", "images"),
    "vicreg": ("vicreg", "build", "contrastive: non-contrastive", "images"),
    "clip": ("clip", "build", "contrastive: multimodal", "images"),
    "cpc": ("cpc", "build", "contrastive: predictive coding", "audio"),
    "dino": ("dino", "build", "contrastive: non-contrastive (self-distillation)", "images"),
    "swav": ("swav", "build", "contrastive: clustering", "images"),
    "nnclr": ("nnclr", "build", "contrastive: instance discrimination", "images"),
    "mocov3": ("mocov3", "build", "contrastive: instance discrimination", "images"),
    "simmim": ("simmim", "build", "self-predictive: masking", "images"),
}


# name: (module, config dataclass): the settings ``build(name, data, **overrides)`` accepts.
CONFIGS = {
    "autoencoder": ("autoencoder", "AutoencoderConfig"),
    "denoising": ("autoencoder", "DenoisingConfig"),
    "vae": ("autoencoder", "VAEConfig"),
    "denoising_audio": ("denoising_audio", "DenoisingAudioConfig"),
    "inpainting": ("inpainting", "InpaintingConfig"),
    "colorization": ("inpainting", "ColorizationConfig"),
    "gpt": ("autoregressive", "GPTConfig"),
    "ar": ("autoregressive", "ARConfig"),
    "pixelcnn": ("pixelcnn", "PixelCNNConfig"),
    "wavenet": ("wavenet", "WaveNetConfig"),
    "mlm": ("masked", "MaskedLMConfig"),
    "mae": ("masked", "MAEConfig"),
    "videomae": ("videomae", "VideoMAEConfig"),
    "rotation": ("rotation", "RotNetConfig"),
    "simclr": ("simclr", "SimCLRConfig"),
    "moco": ("moco", "MoCoConfig"),
    "byol": ("byol", "BYOLConfig"),
    "simsiam": ("simsiam", "SimSiamConfig"),
    "barlow_twins": ("barlow_twins", "BarlowTwinsConfig"),
    "vicreg": ("vicreg", "VICRegConfig"),
    "clip": ("clip", "CLIPConfig"),
    "cpc": ("cpc", "CPCConfig"),
    "dino": ("dino", "DINOConfig"),
    "swav": ("swav", "SwAVConfig"),
    "nnclr": ("nnclr", "NNCLRConfig"),
    "mocov3": ("mocov3", "MoCoV3Config"),
    "simmim": ("simmim", "SimMIMConfig"),
}


def builder(name):
    """The ``build(data, **overrides)`` function of method ``name``."""
    try:
        module, fn, _, _ = METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), fn)


def build(name, data, **overrides):
    """Build method ``name`` for the loaded ``data`` (see ``minissl.data.load``).

    ``overrides`` set fields of the method's config (``config_class(name)``); the image
    methods but MAE (``accepts_encoder``) also take ``encoder=`` (any ``nn.Module`` mapping
    (B, C, H, W) images to (B, D) features) and ``feature_dim=D`` (default: the encoder's
    ``out_dim``); ``base.build_encoder`` makes the built-in ones by name. SimMIM must put its
    mask token after the encoder's stem, so besides its own ViT it takes only a conv encoder
    it can split there (``simmim.conv_stages``; a ValueError naming the encoder otherwise)."""
    return builder(name)(data, **overrides)


def accepts_encoder(name):
    """Whether ``build(name, data, encoder=...)`` takes a custom encoder."""
    return "encoder" in inspect.signature(builder(name)).parameters


def config_class(name):
    """The config dataclass of method ``name`` (its fields are the method's settings), or
    None for a method registered without one in ``CONFIGS``."""
    builder(name)  # validates the name
    if name not in CONFIGS:
        return None
    module, cls = CONFIGS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def data_kind(name):
    builder(name)  # validates the name
    return METHODS[name][3]
