"""A stride-1 convolutional ResNet (He et al. 2016 blocks), the s/t net of image couplings.

``ResNet(features, blocks, out)``: ``(B, H, W, C_in)`` → 3×3 conv to ``features`` → ``blocks``
residual blocks ``h ← h + conv(relu(conv(relu(h))))`` (3×3, ``features``) → ReLU → 3×3 conv to
``out``: ``(B, H, W, out)``. SAME padding everywhere, so the spatial size is kept. Parameters:
``(9·C_in + 1)·F + blocks·2·(9·F + 1)·F + (9·F + 1)·out``.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from gen_models.nn.conv import Conv


class ResNet(nn.Module):
  """See the module docstring. ``zero_last``: the output conv starts at zero (output 0 at init);
  ``impl``: how the convs are computed (``gen_models.nn.conv``, the same function)."""

  features: int
  blocks: int
  out: int
  zero_last: bool = False
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, **kw: Conv(f, (3, 3), padding="SAME", impl=self.impl, **kw)
    h = conv(self.features)(x)
    for _ in range(self.blocks):
      r = conv(self.features)(nn.relu(h))
      h = h + conv(self.features)(nn.relu(r))
    init = nn.initializers.zeros_init() if self.zero_last else nn.initializers.lecun_normal()
    return conv(self.out, kernel_init=init)(nn.relu(h))
