"""A multi-layer perceptron whose last layer can start at zero (a coupling's identity start).

``MLP(hidden, out)``: ``(B, d_in)`` → ``len(hidden)`` dense ReLU layers of widths ``hidden`` →
dense ``out``: ``(B, out)``. Parameters: ``Σ_k (w_{k−1} + 1)·w_k`` with ``w_0 = d_in`` and the
last width ``out``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax


class MLP(nn.Module):
  """Dense ReLU layers of widths ``hidden``, then a dense ``out`` layer (no activation).

  ``zero_last``: the last layer's kernel and bias start at zero, so the output is 0 at init.
  ``train`` is accepted and unused (no batch statistics), so that it takes the call of every
  family's nets (the WGAN-GP toy nets, RealNVP's vector couplings). ``dtype``: the compute
  dtype of the layers (``None``: float32; parameters are float32 either way), also the output's.
  """

  hidden: Sequence[int]
  out: int
  zero_last: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    init = nn.initializers.zeros_init() if self.zero_last else nn.initializers.lecun_normal()
    return nn.Dense(self.out, kernel_init=init, dtype=self.dtype)(x)
