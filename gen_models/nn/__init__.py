"""Layers shared by several model families.

``conv``: 2-D ``Conv`` / ``ConvTranspose`` with flax's parameters, computed without input-dilated
convolutions on CPU (space-to-depth / depth-to-space); ``conv_impl`` config key.
"""

from gen_models.nn.conv import IMPLS, Conv, ConvTranspose, check_impl, resolve_impl

__all__ = ["IMPLS", "Conv", "ConvTranspose", "check_impl", "resolve_impl"]
