r"""The WGAN-GP paper's ResNet nets for 32×32 images (``gan.architecture = "resnet"``).

Gulrajani et al. (2017), Sec. 6 and Appendix; layer list of ``gan_cifar_resnet.py`` in
github.com/igul222/improved_wgan_training. Part of the ``wgan_gp`` family (its losses and
step are in ``wgan_gp.py``); the blocks are ``gen_models.nn.resnet``. ``dim`` is 128 there.

Generator, ``z (B, latent)`` [+ labels ``(B,)``] → ``(B, 32, 32, C)`` in [-1, 1]::

    Dense → (B, 4, 4, dim) → 3 × ResidualBlock("up", dim, batch norm)    # 8², 16², 32²
      → batch norm → ReLU → conv 3×3 to C → tanh

With ``num_classes`` > 0 the six norms inside the blocks are class-conditional batch norms
(the final one stays unconditional, as in the reference).

Critic, no normalisation (the gradient penalty is per example), ``(B, 32, 32, C)`` →
``(B, 1 + num_classes)`` float32: column 0 is ``D(x)``, columns 1… the AC-GAN class logits::

    OptimizedBlock(dim) → 16² → ResidualBlock("down", dim) → 8² → 2 × ResidualBlock(dim)
      → ReLU → mean over H, W → Dense(1) [and Dense(num_classes)]

Dense layers are Glorot-uniform initialised, as the reference's ``Linear``; so is the
generator's last conv. ``dtype`` is the compute dtype; outputs are float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_models.nn.conv import Conv
from gen_models.nn.resnet import GLOROT_UNIFORM, OptimizedBlock, ResidualBlock


class ResNetGenerator(nn.Module):
  """The ResNet generator (module docstring); submodules ``input``, ``block1``–``block3``,
  ``norm``, ``output``."""

  dim: int
  channels: int
  num_classes: int = 0
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, z: jax.Array, labels: jax.Array | None = None, train: bool = True
  ) -> jax.Array:
    if self.num_classes and labels is None:
      raise ValueError("a conditional generator needs labels")
    x = nn.Dense(4 * 4 * self.dim, dtype=self.dtype, kernel_init=GLOROT_UNIFORM, name="input")(z)
    x = x.reshape(z.shape[0], 4, 4, self.dim)
    for i in range(3):
      block = ResidualBlock(
        self.dim,
        "up",
        normalize=True,
        num_classes=self.num_classes,
        conv_impl=self.conv_impl,
        dtype=self.dtype,
        name=f"block{i + 1}",
      )
      x = block(x, labels, train)
    bn = nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name="norm"
    )
    x = nn.relu(bn(x))
    x = Conv(
      self.channels,
      (3, 3),
      kernel_init=GLOROT_UNIFORM,
      impl=self.conv_impl,
      dtype=self.dtype,
      name="output",
    )(x)
    return jnp.tanh(x).astype(jnp.float32)


class ResNetCritic(nn.Module):
  """The ResNet critic (module docstring); submodules ``block1``–``block4``, ``output`` and,
  with ``num_classes`` > 0, ``classifier``."""

  dim: int
  num_classes: int = 0
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    del train
    kw = {"conv_impl": self.conv_impl, "dtype": self.dtype}
    x = x.astype(self.dtype)
    x = OptimizedBlock(self.dim, name="block1", **kw)(x)
    x = ResidualBlock(self.dim, "down", name="block2", **kw)(x)
    x = ResidualBlock(self.dim, name="block3", **kw)(x)
    x = ResidualBlock(self.dim, name="block4", **kw)(x)
    h = jnp.mean(nn.relu(x), axis=(1, 2))
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, kernel_init=GLOROT_UNIFORM, name=name)
    out = dense(1, "output")(h)
    if self.num_classes:
      out = jnp.concatenate([out, dense(self.num_classes, "classifier")(h)], axis=-1)
    return out.astype(jnp.float32)
