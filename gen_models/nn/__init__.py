"""Layers shared by several model families.

``conv``: 2-D ``Conv`` / ``ConvTranspose`` with flax's parameters, computed without input-dilated
convolutions on CPU (space-to-depth / depth-to-space); ``conv_impl`` config key.
``mlp``: a dense ReLU net whose last layer may start at zero. ``resnet``: a stride-1 conv ResNet.
"""

from gen_models.nn.conv import IMPLS, Conv, ConvTranspose, check_impl, resolve_impl
from gen_models.nn.mlp import MLP
from gen_models.nn.resnet import ResNet

__all__ = ["IMPLS", "MLP", "Conv", "ConvTranspose", "ResNet", "check_impl", "resolve_impl"]
