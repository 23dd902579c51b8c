"""Layers shared by several model families (the fast convolutions, ...)."""

from gen_models.nn.conv import Conv, ConvTranspose

__all__ = ["Conv", "ConvTranspose"]
