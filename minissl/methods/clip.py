"""CLIP: Contrastive Language-Image Pre-training, here on images paired with captions made
from their labels.

Radford, Kim, Hallacy, Ramesh, Goh et al., "Learning Transferable Visual Models From Natural
Language Supervision", ICML 2021 (arXiv:2103.00020); official code openai/CLIP (model.py:
learnable ``logit_scale`` initialised to log(1/0.07), text features taken at the
end-of-text token of a causal transformer, both embeddings L2-normalised; the training code
clamps the scale at 100).

An image encoder and a text encoder are trained so that the embedding of an image and of its
caption have the largest cosine among all the pairs of the batch (``losses.clip_loss``). Our
captions come from templates filled with the class name ("a handwritten seven", ...); since
many images of a batch share a class, some "negatives" are really positives: the same
imperfection as web data, on a small scale. Zero-shot classification embeds one prompt per
class and picks the class whose text is most similar to the image.
"""
import math
from dataclasses import dataclass

import numpy as np

from .. import distributed as dist, losses, nn
from .. import functional as F
from ..autograd import no_grad
from .base import SSLMethod, default_augmentation, default_encoder, encoder_args

TEMPLATES = ("a photo of a {}", "a handwritten {}", "the number {}", "an image of {}",
             "a small {}", "{}")
PROMPT = "a photo of a {}"
CHARS = " abcdefghijklmnopqrstuvwxyz0123456789-"
PAD, EOT = 0, 1   # token ids; characters start at 2


def tokenize(texts, length):
    """Character token ids (N, length): the characters, an end-of-text token, padding."""
    ids = np.full((len(texts), length), PAD, dtype=np.int64)
    for i, t in enumerate(texts):
        t = t.lower()[:length - 1]
        ids[i, :len(t)] = [2 + CHARS.index(ch) if ch in CHARS else 2 for ch in t]
        ids[i, len(t)] = EOT
    return ids


@dataclass
class CLIPConfig:
    embed_dim: int = 64          # joint embedding width (paper: 512+)
    text_width: int = 64         # text transformer width (paper: 512)
    text_layers: int = 2         # text transformer depth (paper: 12)
    text_heads: int = 4          # attention heads (paper: 8)
    context_length: int = 32     # caption length in characters incl. end-of-text (paper: 77 BPE)
    init_temperature: float = 0.07   # logit_scale starts at log(1 / 0.07), as the paper
    max_logit_scale: float = 100.0   # exp(logit_scale) is clamped here, as the paper


class TextEncoder(nn.Module):
    """Causal character transformer; the caption's feature is the hidden state at its
    end-of-text token (CLIP's choice), projected to the joint space."""

    def __init__(self, c):
        super().__init__()
        self.token_embedding = nn.Embedding(2 + len(CHARS), c.text_width)
        self.positional = nn.PositionalEmbedding(c.context_length, c.text_width)
        self.blocks = nn.Sequential(*[nn.TransformerBlock(c.text_width, c.text_heads,
                                                          causal=True)
                                      for _ in range(c.text_layers)])
        self.ln_final = nn.LayerNorm(c.text_width)
        self.proj = nn.Linear(c.text_width, c.embed_dim, bias=False)

    def forward(self, ids):                                  # ids (B, T) int64 array
        h = self.positional(self.token_embedding(ids))       # (B, T, W)
        h = self.ln_final(self.blocks(h))                    # (B, T, W)
        eot = (np.asarray(ids) == EOT).argmax(1)             # (B,) end-of-text position
        return self.proj(h[np.arange(len(ids)), eot])        # (B, embed_dim)


class CLIP(SSLMethod):
    name = "clip"

    def __init__(self, image_shape, class_names, config=None, encoder=None, feature_dim=None,
                 transform=None):
        super().__init__()
        c = self.config = config or CLIPConfig()
        if encoder is None:
            encoder, feature_dim = default_encoder(image_shape)
        self.encoder = encoder                                         # image features
        self.image_proj = nn.Linear(feature_dim, c.embed_dim, bias=False)
        self.text = TextEncoder(c)
        self.logit_scale = nn.Parameter(np.array(math.log(1 / c.init_temperature),
                                                 dtype=np.float32))
        self.class_names = list(class_names)
        # Every caption of every class, tokenised once: (num_classes, len(TEMPLATES), T).
        self.captions = np.stack([tokenize([t.format(n) for t in TEMPLATES], c.context_length)
                                  for n in self.class_names])
        self.transform = transform or default_augmentation(image_shape)

    def training_data(self, data):
        return data.train_x, data.train_y     # image-caption pairs: captions from the labels

    def encode_image(self, x):
        return self.image_proj(self.encoder(self.as_input(x)))         # (B, embed_dim)

    def encode_text(self, ids):
        return self.text(ids)                                           # (B, embed_dim)

    def training_step(self, batch, rng):
        x, y = batch
        y = np.asarray(y.get() if hasattr(y, "get") else y)
        x = self.transform(x, rng)                                      # light augmentation
        pick = rng.integers(0, len(TEMPLATES), len(y))
        ids = self.captions[y, pick]                                    # (B, T)
        x, ids = dist.shard(x, ids)                         # data-parallel: this rank's rows
        # The loss over the global batch: every rank's pairs are negatives of every other.
        img = dist.all_gather(self.encode_image(x))
        txt = dist.all_gather(self.encode_text(ids))
        loss = losses.clip_loss(img, txt, self.logit_scale)
        return loss, {"logit_scale": float(np.exp(self.logit_scale.item()))}

    def on_step_end(self, step, total_steps):
        limit = math.log(self.config.max_logit_scale)
        if self.logit_scale.item() > limit:
            self.logit_scale.data[...] = limit

    @no_grad()
    def class_embeddings(self, prompt=PROMPT):
        """Normalised text embedding of one prompt per class: (num_classes, embed_dim)."""
        was = self.training
        self.eval()
        ids = tokenize([prompt.format(n) for n in self.class_names], self.config.context_length)
        t = F.normalize(self.encode_text(ids), dim=1)
        self.train(was)
        return t

    @no_grad()
    def zero_shot_predict(self, x, prompt=PROMPT, batch_size=1024):
        """Class indices predicted from text prompts alone (no classifier trained)."""
        was = self.training
        self.eval()
        t = self.class_embeddings(prompt)
        preds = []
        for i in range(0, len(x), batch_size):
            im = F.normalize(self.encode_image(x[i:i + batch_size]), dim=1)
            preds.append((im @ t.T).numpy().argmax(1))
        self.train(was)
        return np.concatenate(preds)

    def zero_shot_accuracy(self, x, y, prompt=PROMPT):
        return float((self.zero_shot_predict(x, prompt) == np.asarray(y)).mean())


def build(data, encoder=None, feature_dim=None, **overrides):
    return CLIP(data.image_shape, data.class_names, CLIPConfig(**overrides),
                **encoder_args(encoder, feature_dim))
