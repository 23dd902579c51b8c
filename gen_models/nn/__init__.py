"""Layers shared by several model families.

``conv``: 2-D ``Conv`` / ``ConvTranspose`` with flax's parameters, computed without input-dilated
convolutions on CPU (space-to-depth / depth-to-space); ``conv_impl`` config key.
``resnet``: pre-activation residual blocks (up / down / plain), the ResNet critic's first block,
mean pooling, nearest-neighbour up-sampling and class-conditional batch norm (the WGAN-GP ResNet
nets); a stride-1 conv ``ResNet`` (RealNVP's s/t nets). ``weight_norm``: a weight-normalised conv
(``w = g·v/‖v‖``). ``mlp``: a dense ReLU net whose last layer may start at zero. ``init``:
kernel initialisers by name (flax's LeCun normal, TensorFlow's Glorot uniform). ``flow``:
invertible layers with their log-determinants (RealNVP's couplings, batch norm, ActNorm, squeezes).
"""

from gen_models.nn.conv import IMPLS, Conv, ConvTranspose, check_impl, resolve_impl
from gen_models.nn.init import INITS, check_init, kernel_init
from gen_models.nn.mlp import MLP
from gen_models.nn.resnet import (
  ConditionalBatchNorm,
  OptimizedBlock,
  ResidualBlock,
  ResNet,
  mean_pool,
  upsample_nearest,
)
from gen_models.nn.weight_norm import WeightNormConv, weight_norm_kernel

__all__ = [
  "IMPLS",
  "INITS",
  "MLP",
  "ConditionalBatchNorm",
  "Conv",
  "ConvTranspose",
  "OptimizedBlock",
  "ResNet",
  "ResidualBlock",
  "check_impl",
  "check_init",
  "kernel_init",
  "mean_pool",
  "resolve_impl",
  "upsample_nearest",
  "weight_norm_kernel",
  "WeightNormConv",
]
