r"""Invertible layers of a normalising flow, each with its exact inverse and log-determinant.

RealNVP's layers (Dinh, Sohl-Dickstein & Bengio 2017; :mod:`gen_models.models.realnvp` builds the
flow from them and states its math). Each maps ``(x, inverse, train) -> (y, log|det| (B,))``:

* :class:`AffineCoupling` — an affine coupling with a vector, checkerboard or channel mask, its s/t
  net an :class:`gen_models.nn.MLP` (points) or :class:`gen_models.nn.ResNet` (images), built as
  :class:`Coupling` says (the reference code's options).
* :class:`BatchNorm` — batch normalisation with its log-det; :class:`ActNorm` — the per-channel
  affine with a data-dependent initialisation.

and the permutations (log-det 0) of the multi-scale architecture: :func:`squeeze`,
:func:`unsqueeze` and the reference's factor-out order :func:`reorder`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_models.nn.mlp import MLP
from gen_models.nn.resnet import ResNet


def _pixels(x: jax.Array) -> int:
  """Positions that share one channel's statistics: ``H·W`` for images, 1 for points."""
  return math.prod(x.shape[1:-1])


def _batch_moments(module: nn.Module, x: jax.Array, batch: bool, momentum: float):
  """``(mean, var)``, each ``(C,)``, of ``x (..., C)`` for ``module``'s batch norm: with ``batch``
  the batch's (over every axis but the last; biased variance), and the running averages in
  ``batch_stats`` (``mean``, ``var``) move towards them by ``1 − momentum`` (not at init);
  otherwise the running averages themselves."""
  c = x.shape[-1]
  ra_mean = module.variable("batch_stats", "mean", jnp.zeros, (c,))
  ra_var = module.variable("batch_stats", "var", jnp.ones, (c,))
  if not batch:
    return ra_mean.value, ra_var.value
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.mean(jnp.square(x - mean), axes)
  if not module.is_initializing():
    ra_mean.value = momentum * ra_mean.value + (1 - momentum) * jax.lax.stop_gradient(mean)
    ra_var.value = momentum * ra_var.value + (1 - momentum) * jax.lax.stop_gradient(var)
  return mean, var


class BatchNorm(nn.Module):
  """Batch normalisation with its log-det (``realnvp``'s docstring); ``batch_stats``: mean, var."""

  momentum: float = 0.9
  epsilon: float = 1e-4

  @nn.compact
  def __call__(self, x: jax.Array, inverse: bool = False, train: bool = False):
    c = x.shape[-1]
    log_gamma = self.param("log_gamma", nn.initializers.zeros_init(), (c,))
    beta = self.param("beta", nn.initializers.zeros_init(), (c,))
    mean, var = _batch_moments(self, x, train and not inverse, self.momentum)
    log_scale = log_gamma - 0.5 * jnp.log(var + self.epsilon)
    logdet = jnp.full((x.shape[0],), _pixels(x) * jnp.sum(log_scale))
    if inverse:
      return (x - beta) * jnp.exp(-log_scale) + mean, -logdet
    return (x - mean) * jnp.exp(log_scale) + beta, logdet


class ActNorm(nn.Module):
  """Per-channel affine ``y = x · exp(log s) + β`` (``realnvp``'s docstring).

  Applied with the collection ``actnorm_init`` mutable (and not inverse), it sets ``log s`` and
  ``β`` from the batch it sees, writes them there and uses them: :func:`data_init`.
  """

  @nn.compact
  def __call__(self, x: jax.Array, inverse: bool = False, train: bool = False):
    del train
    c = x.shape[-1]
    log_scale = self.param("log_scale", nn.initializers.zeros_init(), (c,))
    bias = self.param("bias", nn.initializers.zeros_init(), (c,))
    if self.is_mutable_collection("actnorm_init") and not inverse:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axes))
      log_scale = -jnp.log(std + 1e-6)
      bias = -mean * jnp.exp(log_scale)
      self.put_variable("actnorm_init", "log_scale", log_scale)
      self.put_variable("actnorm_init", "bias", bias)
    logdet = jnp.full((x.shape[0],), _pixels(x) * jnp.sum(log_scale))
    if inverse:
      return (x - bias) * jnp.exp(-log_scale), -logdet
    return x * jnp.exp(log_scale) + bias, logdet


ST_INPUTS = ("masked", "concat_relu")


@dataclasses.dataclass(frozen=True)
class Coupling:
  """How the image couplings are built; the defaults are ours, each field an option of the
  reference code (tensorflow/models ``research/real_nvp``; ``realnvp``'s docstring, "Reference
  options").

  ``weight_norm``, ``batch_norm``, ``skip``, ``out_kernel``: of the s/t ResNet
  (:class:`gen_models.nn.ResNet`). ``input``: ``"masked"`` (the net sees ``[b ⊙ x, b]``) or
  ``"concat_relu"`` (``[relu(h), relu(−h), b]`` with ``h = 2·bn(b ⊙ x)``, ``bn`` an offset-only
  batch norm, when ``batch_norm``, else ``h = b ⊙ x``; channel couplings: ``h = bn(x_kept)``, no
  ``b``). ``shift_first``: ``y = (x + t) ⊙ exp(s)`` instead of ``x ⊙ exp(s) + t``. ``out_norm``:
  batch norm of the transformed half inside the coupling (statistics ``momentum``,
  ``epsilon``)."""

  weight_norm: bool = False
  batch_norm: bool = False
  skip: bool = False
  out_kernel: int = 3
  input: str = "masked"
  shift_first: bool = False
  out_norm: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-4


class AffineCoupling(nn.Module):
  """An affine coupling (``realnvp``'s docstring), mask ``kind`` ∈ {vector, checkerboard, channel}.

  The s/t net is an MLP (``hidden``) for vectors, a ResNet (``features``, ``blocks``,
  ``options``) for images; its zero-initialised last layer makes the coupling start as the
  identity (with ``options.out_norm``: the identity followed by the batch norm).

  ``dtype``: the compute dtype of the s/t net (``realnvp.COMPUTE_DTYPES``; None: its input's);
  the net's input (with its input batch norm) and its outputs ``s_raw, t``, cast back, are in the
  dtype of ``x``, and so is everything else of the coupling (``realnvp``'s docstring, "bfloat16").
  """

  kind: str
  parity: int
  hidden: Sequence[int] = (64,)
  features: int = 64
  blocks: int = 8
  impl: str = "auto"
  options: Coupling = Coupling()
  dtype: Any = None

  def _net(self, out: int) -> nn.Module:
    if self.kind == "vector":
      return MLP(tuple(self.hidden), out, zero_last=True, dtype=self.dtype, name="net")
    o = self.options
    return ResNet(
      self.features,
      self.blocks,
      out,
      zero_last=True,
      impl=self.impl,
      weight_norm=o.weight_norm,
      batch_norm=o.batch_norm,
      skip=o.skip,
      out_kernel=o.out_kernel,
      dtype=self.dtype,
      name="net",
    )

  def _s_t(self, cond: jax.Array, out: int, train: bool) -> tuple[jax.Array, jax.Array]:
    """``(s, t)`` in the dtype of ``cond`` (the coupling's), whatever the net computes in."""
    h = self._net(2 * out)(cond, train).astype(cond.dtype)
    scale = self.param("scale", nn.initializers.ones_init(), (out,))
    return scale * jnp.tanh(h[..., :out]), h[..., out:]

  def _cond(self, kept: jax.Array, b: jax.Array | None, train: bool) -> jax.Array:
    """The s/t net's input from the kept values (zeros elsewhere) and the mask channel ``b``."""
    o = self.options
    if self.kind == "vector" or o.input == "masked":
      return kept if b is None else jnp.concatenate([kept, b], axis=-1)
    h = kept
    if o.batch_norm:
      bn = nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-4,
        use_scale=False,
        name="input_norm",
      )
      h = bn(h) * (1.0 if b is None else 2.0)
    return jnp.concatenate([nn.relu(h), nn.relu(-h)] + ([] if b is None else [b]), axis=-1)

  def _out_norm(self, y: jax.Array, mask, inverse: bool, train: bool):
    """Batch norm of the transformed positions (``mask`` False; None: all) without scale or
    offset: ``y ← (y − m_c)/√(v_c + ε)``, ``log|det| = −½ Σ_transformed log(v_c + ε)``. In training
    ``m, v`` are the mean and biased variance over the batch and pixels of ``y`` with the kept
    positions set to 0 (the reference's statistics of ``y ⊙ (1 − b)``); else, and always in the
    inverse, the running averages in ``batch_stats`` (``mean``, ``var``)."""
    o = self.options
    yt = y if mask is None else jnp.where(mask, 0.0, y)
    mean, var = _batch_moments(self, yt, train and not inverse, o.momentum)
    log_sd = 0.5 * jnp.log(var + o.epsilon)
    ld = jnp.broadcast_to(-log_sd, y.shape)
    out = y * jnp.exp(log_sd) + mean if inverse else (y - mean) * jnp.exp(-log_sd)
    if mask is not None:
      ld, out = jnp.where(mask, 0.0, ld), jnp.where(mask, y, out)
    ld = jnp.sum(ld.reshape(y.shape[0], -1), axis=1)
    return out, -ld if inverse else ld

  def _affine(self, x: jax.Array, s: jax.Array, t: jax.Array, inverse: bool) -> jax.Array:
    if self.options.shift_first:
      return x * jnp.exp(-s) - t if inverse else (x + t) * jnp.exp(s)
    return (x - t) * jnp.exp(-s) if inverse else x * jnp.exp(s) + t

  @nn.compact
  def __call__(self, x: jax.Array, inverse: bool = False, train: bool = False):
    out_norm = self.options.out_norm and self.kind != "vector"
    if self.kind == "channel":
      c = x.shape[-1] // 2
      kept, moved = (x[..., :c], x[..., c:]) if self.parity == 0 else (x[..., c:], x[..., :c])
      s, t = self._s_t(self._cond(kept, None, train), moved.shape[-1], train)
      norm_ld = 0.0
      if out_norm and inverse:
        moved, norm_ld = self._out_norm(moved, None, True, False)
      moved = self._affine(moved, s, t, inverse)
      if out_norm and not inverse:
        moved, norm_ld = self._out_norm(moved, None, False, train)
      logdet = jnp.sum(s.reshape(s.shape[0], -1), axis=1)
      y = jnp.concatenate([kept, moved] if self.parity == 0 else [moved, kept], axis=-1)
      return y, (-logdet if inverse else logdet) + norm_ld
    mask = self.mask(x.shape[1:], self.kind, self.parity)
    b = None
    if self.kind == "checkerboard":
      b = jnp.broadcast_to(mask[..., :1].astype(x.dtype), (*x.shape[:-1], 1))
    s, t = self._s_t(self._cond(jnp.where(mask, x, 0.0), b, train), x.shape[-1], train)
    s = jnp.where(mask, 0.0, s)
    h, norm_ld = x, 0.0
    if out_norm and inverse:
      h, norm_ld = self._out_norm(x, mask, True, False)
    y = jnp.where(mask, x, self._affine(h, s, t, inverse))
    if out_norm and not inverse:
      y, norm_ld = self._out_norm(y, mask, False, train)
    logdet = jnp.sum(s.reshape(s.shape[0], -1), axis=1)
    return y, (-logdet if inverse else logdet) + norm_ld

  @staticmethod
  def mask(shape: tuple[int, ...], kind: str, parity: int) -> jax.Array:
    """The kept positions ``b`` (bool), broadcastable to one example of ``shape``."""
    if kind == "vector":
      return jnp.arange(shape[-1]) % 2 == parity
    h, w = jnp.arange(shape[0])[:, None], jnp.arange(shape[1])[None, :]
    return ((h + w) % 2 == parity)[:, :, None] & jnp.ones((1, 1, shape[2]), bool)


SQUEEZE_LAYOUTS = ("position_major", "reference")
# The reference's ordered squeeze: its channel blocks k = 0..3 hold the patch positions
# p = 2i + j in this order, (0,0), (1,1), (0,1), (1,0); _ORDER_INV[p] is the block of p.
_ORDER, _ORDER_INV = (0, 3, 1, 2), (0, 2, 3, 1)


def squeeze(x: jax.Array, layout: str = "position_major") -> jax.Array:
  """``(B, H, W, C)`` → ``(B, H/2, W/2, 4C)``; channel ``(2i + j)·C + c`` is pixel ``(i, j)`` of
  each 2×2 patch (``"position_major"``), or ``c·4 + 2i + j`` (``"reference"``: the reference
  code's ``squeeze_2x2``, channel-major)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  x = x.transpose(0, 1, 3, 5, 2, 4) if layout == "reference" else x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(x: jax.Array, layout: str = "position_major") -> jax.Array:
  """The inverse of :func:`squeeze`: ``(B, H, W, 4C)`` → ``(B, 2H, 2W, C)``."""
  b, h, w, c4 = x.shape
  c = c4 // 4
  if layout == "reference":
    x = x.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  else:
    x = x.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * h, 2 * w, c)


def reorder(x: jax.Array, inverse: bool = False) -> jax.Array:
  """The reference's layout change before a factor-out (a permutation of channels): from the
  channel-major squeeze's ``c·4 + p`` to its ordered squeeze's ``k·C + c``, where block ``k`` holds
  the patch position ``p = (0, 3, 1, 2)[k]`` (what its ``unsqueeze_2x2`` then
  ``squeeze_2x2_ordered`` compute); ``inverse`` goes back. The first half, positions (0,0) and
  (1,1) of every patch, goes on to the next scale; the second, (0,1) and (1,0), is factored out."""
  *lead, c4 = x.shape
  c = c4 // 4
  if inverse:
    x = jnp.swapaxes(x.reshape(*lead, 4, c), -1, -2)[..., jnp.array(_ORDER_INV)]
    return x.reshape(*lead, c4)
  x = x.reshape(*lead, c, 4)[..., jnp.array(_ORDER)]
  return jnp.swapaxes(x, -1, -2).reshape(*lead, c4)
