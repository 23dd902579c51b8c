r"""Residual nets: the WGAN-GP paper's ResNet GAN blocks (and their layers), RealNVP's ResNet.

The blocks follow ``gan_cifar_resnet.py`` of Gulrajani et al. (2017), github.com/igul222/
improved_wgan_training (pre-activation residual blocks, He et al. 2016). Every convolution is
:class:`gen_models.nn.conv.Conv` (stride 1, ``SAME``), with a bias. Images are ``(B, H, W, C)``.

* :func:`mean_pool` — 2×2 average pooling, ``(B, H, W, C) → (B, H/2, W/2, C)``;
  :func:`upsample_nearest` — nearest-neighbour 2× up-sampling, ``→ (B, 2H, 2W, C)``.
* :class:`ConditionalBatchNorm` — batch norm with a scale and an offset per class
  (Dumoulin et al. 2017): ``y = γ[c] · (x − μ) / √(σ² + ε) + β[c]``, μ and σ² over the batch.
* :class:`ResidualBlock` — ``x + F(x)`` with ``F = norm → ReLU → conv 3×3 → norm → ReLU →
  conv 3×3``; ``resample="up"`` up-samples before the first conv and the shortcut is up-sample
  + 1×1 conv; ``"down"`` mean-pools after the second conv and the shortcut is 1×1 conv +
  mean-pool; without resampling the shortcut is the identity (or a 1×1 conv if the width
  changes).
* :class:`OptimizedBlock` — the critic's first block, without the leading activation:
  ``conv 3×3 → ReLU → conv 3×3 → mean-pool``, shortcut ``mean-pool → 1×1 conv``.
* :class:`ResNet` — a stride-1 conv ResNet, the s/t net of RealNVP's image couplings:
  ``(B, H, W, C_in)`` → 3×3 conv to ``features`` → ``blocks`` residual blocks
  ``h ← h + conv(relu(conv(relu(h))))`` (3×3, ``features``) → ReLU → 3×3 conv to ``out``:
  ``(B, H, W, out)``; parameters ``(9·C_in + 1)·F + blocks·2·(9·F + 1)·F + (9·F + 1)·out``;
  flax's default initialisers (LeCun normal), the last conv optionally zero. Options (weight
  norm, batch norm, 1×1 skip convs, a 1×1 output conv) give RealNVP's reference net instead.

The GAN blocks' initialisation is the reference's: kernels uniform with variance
``4 / (fan_in + fan_out)`` ("He") for the 3×3 convs of the residual branches,
``2 / (fan_in + fan_out)`` (Glorot) for the 1×1 shortcuts; biases zero; norm scales one, offsets
zero.

``dtype`` is the compute dtype (``bfloat16`` for accelerators); parameters stay float32 and
the batch-norm statistics are computed in float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_models.nn.conv import Conv
from gen_models.nn.weight_norm import WeightNormConv

HE_UNIFORM = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")
GLOROT_UNIFORM = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
RESAMPLE = (None, "up", "down")


def mean_pool(x: jax.Array) -> jax.Array:
  """2×2 mean pooling: ``(B, H, W, C) → (B, H/2, W/2, C)`` (H and W even)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_nearest(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2× up-sampling: ``(B, H, W, C) → (B, 2H, 2W, C)``,
  ``y[2i + a, 2j + b] = x[i, j]``."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ConditionalBatchNorm(nn.Module):
  """Per-class affine batch norm: ``x (B, H, W, C)``, labels ``(B,)`` int → ``(B, H, W, C)``.

  Params ``scale (num_classes, C)`` (ones) and ``bias (num_classes, C)`` (zeros); the running
  ``mean``/``var`` ``(C,)`` in ``batch_stats`` as ``flax.linen.BatchNorm`` keeps them
  (``r ← momentum · r + (1 − momentum) · batch value``, biased variance), used when ``train``
  is False. With one class this is ``flax.linen.BatchNorm``.
  """

  num_classes: int
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = True) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (self.num_classes, c), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes, c), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    x32 = x.astype(jnp.float32)
    if train:
      mean = jnp.mean(x32, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = y * scale[labels][:, None, None, :] + bias[labels][:, None, None, :]
    return y.astype(self.dtype or x.dtype)


class _Norm(nn.Module):
  """Nothing (``normalize`` False), batch norm, or conditional batch norm (``num_classes`` > 0)."""

  normalize: bool
  num_classes: int = 0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None, train: bool) -> jax.Array:
    if not self.normalize:
      return x
    if self.num_classes:
      return ConditionalBatchNorm(self.num_classes, dtype=self.dtype, name="bn")(x, labels, train)
    bn = nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name="bn"
    )
    return bn(x)


def _conv(features: int, size: int, init, conv_impl: str, dtype, name: str) -> Conv:
  return Conv(
    features, (size, size), padding="SAME", kernel_init=init, impl=conv_impl, dtype=dtype, name=name
  )


class ResidualBlock(nn.Module):
  """Pre-activation residual block (module docstring): ``(B, H, W, C_in) → (B, H', W', features)``
  with ``H' = 2H`` (``"up"``), ``H/2`` (``"down"``) or ``H``.

  Submodules: ``shortcut`` (1×1 conv; absent for the identity), ``norm1``/``norm2``,
  ``conv1`` (``C_in → features``, except ``"down"``: ``C_in → C_in``), ``conv2``.
  """

  features: int
  resample: str | None = None
  normalize: bool = False
  num_classes: int = 0
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(
    self, x: jax.Array, labels: jax.Array | None = None, train: bool = True
  ) -> jax.Array:
    if self.resample not in RESAMPLE:
      raise ValueError(f"resample must be one of {RESAMPLE}, got {self.resample!r}")
    conv = functools.partial(_conv, conv_impl=self.conv_impl, dtype=self.dtype)
    norm = functools.partial(_Norm, self.normalize, self.num_classes, self.dtype)
    c_in = x.shape[-1]
    if self.resample == "up":
      shortcut = conv(self.features, 1, GLOROT_UNIFORM, name="shortcut")(upsample_nearest(x))
    elif self.resample == "down":
      shortcut = mean_pool(conv(self.features, 1, GLOROT_UNIFORM, name="shortcut")(x))
    elif c_in != self.features:
      shortcut = conv(self.features, 1, GLOROT_UNIFORM, name="shortcut")(x)
    else:
      shortcut = x
    h = nn.relu(norm(name="norm1")(x, labels, train))
    if self.resample == "up":
      h = upsample_nearest(h)
    mid = c_in if self.resample == "down" else self.features
    h = conv(mid, 3, HE_UNIFORM, name="conv1")(h)
    h = nn.relu(norm(name="norm2")(h, labels, train))
    h = conv(self.features, 3, HE_UNIFORM, name="conv2")(h)
    if self.resample == "down":
      h = mean_pool(h)
    return shortcut + h


class OptimizedBlock(nn.Module):
  """The critic's first block: ``(B, H, W, C) → (B, H/2, W/2, features)``; submodules
  ``shortcut`` (1×1, after mean-pooling), ``conv1`` (``C → features``), ``conv2``."""

  features: int
  conv_impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(_conv, conv_impl=self.conv_impl, dtype=self.dtype)
    shortcut = conv(self.features, 1, GLOROT_UNIFORM, name="shortcut")(mean_pool(x))
    h = nn.relu(conv(self.features, 3, HE_UNIFORM, name="conv1")(x))
    h = mean_pool(conv(self.features, 3, HE_UNIFORM, name="conv2")(h))
    return shortcut + h


class ResNet(nn.Module):
  """The stride-1 ResNet of the module docstring (SAME padding: the spatial size is kept).
  ``zero_last``: the output conv starts at zero (output 0 at init); ``impl``: how the convs are
  computed (``gen_models.nn.conv``, the same function).

  The options of RealNVP's reference code (tensorflow/models ``research/real_nvp``, ``resnet``),
  each off by default (then the net is exactly the plain one above, same parameter names):

  * ``weight_norm``: every conv is a :class:`gen_models.nn.weight_norm.WeightNormConv`; the
    first conv and each block's first conv without the scale ``g`` (the reference's), the others
    with it (``zero_last``: the output conv's ``g`` starts at 0).
  * ``batch_norm``: batch norm without scale (offset only; ε = 1e-4, momentum 0.9, batch
    statistics when ``train``, running averages otherwise) before each block's two ReLUs and
    before the output ReLU; each block's first conv then has no bias. A block is then
    ``h ← h + conv(relu(bn(conv(relu(bn(h))))))``.
  * ``skip``: 1×1 convs (with bias) from the first conv's output and from every block's output,
    summed; the sum, not the last block's output, goes to the output layer.
  * ``out_kernel``: the output conv's size (the reference's 1; 3 by default).

  ``dtype``: the compute dtype of every conv and norm (``None``: float32); parameters,
  weight-norm kernels and batch-norm statistics are float32. The output is in ``dtype``.

  ``(B, H, W, C_in)`` → ``(B, H, W, out)``.
  """

  features: int
  blocks: int
  out: int
  zero_last: bool = False
  impl: str = "auto"
  weight_norm: bool = False
  batch_norm: bool = False
  skip: bool = False
  out_kernel: int = 3
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    f, dtype = self.features, self.dtype

    def conv(features, size=3, scale=True, bias=True, zero=False):
      if self.weight_norm:
        return WeightNormConv(
          features, (size, size), scale, bias, zero, impl=self.impl, dtype=dtype
        )
      init = nn.initializers.zeros_init() if zero else nn.initializers.lecun_normal()
      return Conv(
        features,
        (size, size),
        padding="SAME",
        use_bias=bias,
        kernel_init=init,
        impl=self.impl,
        dtype=dtype,
      )

    def norm(h):
      if not self.batch_norm:
        return h
      bn = nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-4, use_scale=False, dtype=dtype
      )
      return bn(h)

    h = conv(f, scale=False)(x)
    skips = conv(f, 1)(h) if self.skip else None
    for _ in range(self.blocks):
      r = conv(f, scale=False, bias=not self.batch_norm)(nn.relu(norm(h)))
      h = h + conv(f)(nn.relu(norm(r)))
      if self.skip:
        skips = skips + conv(f, 1)(h)
    if self.skip:
      h = skips
    return conv(self.out, self.out_kernel, zero=self.zero_last)(nn.relu(norm(h)))
