"""The self-supervised methods, one file per row of the SSL taxonomy (see docs/design.md).

``METHODS`` maps a method's name to ``(module, builder, family, data kind)``; ``build(name,
data, **overrides)`` imports the module only when asked and builds the method for a loaded
data object (an image ``Dataset``, a ``TextCorpus`` or an ``ARSeries``).
"""
import importlib

# name: (module, builder function, family in the taxonomy, what it trains on)
METHODS = {
    "autoencoder": ("autoencoder", "build_autoencoder", "self-predictive: autoencoders", "images"),
    "denoising": ("autoencoder", "build_denoising", "self-predictive: autoencoders", "images"),
    "vae": ("autoencoder", "build_vae", "self-predictive: autoencoders", "images"),
    "gpt": ("autoregressive", "build", "self-predictive: autoregression", "text"),
    "ar": ("autoregressive", "build_ar", "self-predictive: autoregression", "series"),
    "mlm": ("masked", "build_mlm", "self-predictive: masking", "text"),
    "mae": ("masked", "build_mae", "self-predictive: masking", "images"),
    "rotation": ("rotation", "build", "self-predictive: innate relationships", "images"),
    "simclr": ("simclr", "build", "contrastive: instance discrimination", "images"),
    "moco": ("moco", "build", "contrastive: instance discrimination", "images"),
    "byol": ("byol", "build", "contrastive: non-contrastive", "images"),
    "simsiam": ("simsiam", "build", "contrastive: non-contrastive", "images"),
    "barlow_twins": ("barlow_twins", "build", "contrastive: non-contrastive", "images"),
    "vicreg": ("vicreg", "build", "contrastive: non-contrastive", "images"),
    "clip": ("clip", "build", "contrastive: multimodal", "images"),
}


def builder(name):
    """The ``build(data, **overrides)`` function of method ``name``."""
    try:
        module, fn, _, _ = METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), fn)


def build(name, data, **overrides):
    """Build method ``name`` for the loaded ``data`` (see ``minissl.data.load``)."""
    return builder(name)(data, **overrides)


def data_kind(name):
    builder(name)  # validates the name
    return METHODS[name][3]
