"""Convolutions with the parameters of ``flax.linen.Conv`` / ``ConvTranspose`` (work in progress).

Drop-in replacements: same constructor arguments, same parameter names and shapes
(``kernel (kh, kw, C_in, C_out)``, ``bias (C_out,)``), same auto-names (``Conv_0``, ...).
"""

from __future__ import annotations

import flax.linen as nn

Conv = nn.Conv
ConvTranspose = nn.ConvTranspose
