"""``minissl.functional``: the same names, argument order, defaults and results as
``torch.nn.functional`` (see docs/api.md). Each op's module documents its forward and adjoint."""
from .ops.activation import dropout, gelu, log_softmax, relu, sigmoid, softmax, tanh
from .ops.attention import scaled_dot_product_attention
from .ops.audio import mu_law_decoding, mu_law_encoding
from .ops.conv import conv2d, conv_transpose2d
from .ops.conv1d import conv1d
from .ops.embedding import embedding
from .ops.gated import gated_tanh, glu
from .ops.linalg import linear
from .ops.loss import binary_cross_entropy_with_logits, cross_entropy, mse_loss
from .ops.norm import batch_norm, cosine_similarity, layer_norm, normalize
from .ops.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .ops.shape import pad

__all__ = ["linear", "conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d",
           "adaptive_avg_pool2d", "batch_norm", "layer_norm", "embedding", "dropout", "relu",
           "gelu", "sigmoid", "tanh", "softmax", "log_softmax", "normalize", "cosine_similarity",
           "cross_entropy", "mse_loss", "binary_cross_entropy_with_logits",
           "scaled_dot_product_attention", "pad", "glu", "gated_tanh",
           "mu_law_encoding", "mu_law_decoding"]
