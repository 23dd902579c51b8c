r"""A weight-normalised 2-D convolution (Salimans & Kingma 2016), as RealNVP's reference code uses.

The kernel of output channel ``o`` is its direction ``v_o`` scaled to length ``g_o``::

    w[..., o] = g_o · v[..., o] / ‖v[..., o]‖,   ‖v[..., o]‖² = Σ_{h, w, i} v[h, w, i, o]²

so ``‖w[..., o]‖ = |g_o|`` whatever ``v`` is. ``use_scale=False`` drops ``g`` (unit-length kernels;
the reference does this where a batch norm follows, which would undo any ``g``). The layer is
``y = conv(x, w) + b`` (``b`` only with ``use_bias``), stride 1, ``SAME`` padding, computed by
:func:`gen_models.nn.conv.conv2d` (``impl``).

Initialisation, the reference's (``conv_layer`` in tensorflow/models ``research/real_nvp/
real_nvp_utils.py``): ``v ~ U(−a, a)`` with ``a = √(2 / C_in)``, ``g_o = a · √(C_in · k_h · k_w
/ 12)``, ``b = 0``. ``zero_scale``: ``g = 0`` instead, so that the layer starts at ``y = b = 0``
(the identity start of a flow's coupling; ``v`` may not be zero, its norm divides).

Parameters: ``v (k_h, k_w, C_in, features)``, ``g (features,)``, ``bias (features,)``, float32.
``dtype`` is the compute dtype of the convolution and the bias add (``None``: float32, from the
input and parameters); the kernel ``g · v / ‖v‖`` is always computed in float32 (the norm and the
scale ``g``), then cast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_models.nn.conv import conv2d


def weight_norm_kernel(v: jax.Array, g: jax.Array | None) -> jax.Array:
  """``g · v / ‖v‖`` with the norm over all axes but the last (output channels); ``g`` None:
  ``v / ‖v‖``. ``v (k_h, k_w, C_in, C_out)``, ``g (C_out,)``."""
  norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))))
  direction = v / norm
  return direction if g is None else direction * g


class WeightNormConv(nn.Module):
  """``(B, H, W, C_in)`` → ``(B, H, W, features)`` (module docstring)."""

  features: int
  kernel_size: Sequence[int] = (3, 3)
  use_scale: bool = True
  use_bias: bool = True
  zero_scale: bool = False
  impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    c_in = x.shape[-1]
    a = math.sqrt(2.0 / c_in)
    v = self.param(
      "v",
      lambda k, s: jax.random.uniform(k, s, jnp.float32, -a, a),
      (kh, kw, c_in, self.features),
    )
    g = None
    if self.use_scale:
      g0 = 0.0 if self.zero_scale else a * math.sqrt(c_in * kh * kw / 12.0)
      g = self.param("g", nn.initializers.constant(g0), (self.features,))
    x, kernel = nn.dtypes.promote_dtype(x, weight_norm_kernel(v, g), dtype=self.dtype)
    y = conv2d(x, kernel, (1, 1), "SAME", self.impl)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(y.dtype)
    return y
