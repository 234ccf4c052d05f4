"""Neural-network modules with PyTorch's names, parameter layouts and initialisation.

``Module`` and ``Parameter`` (module.py), the standard layers (layers.py) and the blocks the
self-supervised methods are built from (blocks.py). A PyTorch ``state_dict`` converted to
NumPy loads into the same architecture built from these layers and gives the same outputs.

>>> import minissl.nn as nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> [(k, v.shape) for k, v in net.state_dict().items()]
[('0.weight', (8, 4)), ('0.bias', (8,)), ('2.weight', (2, 8)), ('2.bias', (2,))]
"""
from ..random import default_generator, manual_seed
from .blocks import (MLP, BasicBlock, ConvEncoder, MLPEncoder, MultiheadSelfAttention,
                     PatchEmbed, PositionalEmbedding, TransformerBlock)
from .layers import (GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv1d,
                     Conv2d, ConvTranspose2d, Dropout, Embedding, Flatten, Identity, LayerNorm,
                     Linear, MaxPool2d, ModuleList, ReLU, Sequential, Sigmoid, Tanh)
from .fuse import fuse
from .masked_conv import MaskedConv2d
from .module import IncompatibleKeys, Module, Parameter
from .split_batchnorm import SplitBatchNorm1d, SplitBatchNorm2d, convert_split_batchnorm

__all__ = ["Module", "Parameter", "IncompatibleKeys", "Linear", "Conv1d", "Conv2d",
           "ConvTranspose2d",
           "BatchNorm1d", "BatchNorm2d", "LayerNorm", "Embedding", "Dropout", "ReLU", "GELU",
           "Sigmoid", "Tanh", "Flatten", "Identity", "Sequential", "ModuleList", "MaxPool2d",
           "AvgPool2d", "AdaptiveAvgPool2d", "MultiheadSelfAttention", "TransformerBlock", "fuse",
           "PositionalEmbedding", "PatchEmbed", "BasicBlock", "ConvEncoder", "MLP",
           "MLPEncoder", "manual_seed", "default_generator", "SplitBatchNorm1d",
           "SplitBatchNorm2d", "convert_split_batchnorm", "MaskedConv2d"]
