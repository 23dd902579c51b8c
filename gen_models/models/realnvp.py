r"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017): exact log-likelihood with affine couplings.

A flow is an invertible ``f`` from data ``x`` to a latent ``z = f(x)`` with ``p(z) = N(0, I)``;
the change of variables gives the exact log-density of every example::

    log p(x) = log N(f(x); 0, I) + log |det ∂f/∂x|,   log N(z; 0, I) = −½ |z|² − (D/2) log 2π

``f`` is a composition of layers; the log-determinants add. Every loss below is *minimised*.

Layers (``gen_models.nn.flow``; each has an exact inverse and its log-det per example ``(B,)``):

* Affine coupling with a binary mask ``b`` (1: kept, 0: transformed)::

      y = b ⊙ x + (1 − b) ⊙ (x ⊙ exp(s(b ⊙ x)) + t(b ⊙ x)),    log|det| = Σ_i (1 − b_i) s_i
      x = b ⊙ y + (1 − b) ⊙ ((y − t(b ⊙ y)) ⊙ exp(−s(b ⊙ y)))

  computed with ``jnp.where(b, ·, ·)`` (never ``mask · inf``). ``s = scale · tanh(s_raw)`` with a
  learned per-channel ``scale`` (starting at 1); the last layer of the s/t net starts at zero, so
  every coupling starts as the identity. Masks: *vector* (points ``(B, d)``: ``b_i = [i mod 2 =
  parity]``, alternating), *checkerboard* (images: ``b_{hw} = [(h + w) mod 2 = parity]`` for all
  channels; the net also sees ``b`` as one extra input channel) and *channel* (the first or the
  second half of the channels kept).
* Batch normalisation of a coupling's output (paper §3.7), per channel ``c`` over the batch (and
  the pixels), with ``m_c, v_c`` the batch mean and (biased) variance in training, the running
  averages (``m ← μ·m + (1 − μ)·m_B``, momentum ``μ``) in evaluation and in the inverse::

      y = (x − m) / √(v + ε) · exp(log γ) + β,   log|det| = P · Σ_c (log γ_c − ½ log(v_c + ε))

  ``P`` is the number of pixels (1 for points). In training the statistics depend on the batch;
  like the paper we count the log-det with the statistics held fixed (the map of each example
  given them), which is the eval-mode log-det with running statistics equal to the batch's.
* ActNorm (Kingma & Dhariwal 2018), the option without batch statistics: ``y = x · exp(log s) +
  β``, ``log|det| = P · Σ_c log s_c``, with ``log s_c = −log(std_c + 1e-6)``, ``β_c = −mean_c ·
  s_c`` set *once*, from one global batch, before the first step (``data_init``; outside the
  compiled step, so it is the same on any device count).
* Squeeze: ``(H, W, C) → (H/2, W/2, 4C)``, each 2×2 patch into channels (a permutation, log-det 0).

Architecture: *points* — ``num_couplings`` vector couplings with MLP s/t nets, a normalisation
after each. *Images* (§3.6, multi-scale) — per scale: 3 checkerboard couplings, squeeze, 3 channel
couplings, then half the channels are factored out (they go to ``z``); at the last scale 4
checkerboard couplings. ``num_scales`` scales need H and W divisible by ``2^(num_scales − 1)``.
The s/t nets of images are ResNets (``gen_models.nn.ResNet``: ``resnet_blocks`` blocks of
``resnet_features``).

Reference options (:class:`Coupling`; off by default, on in the paper configs; docs/FLOWS.md has
the table): the s/t ResNet with weight norm, batch norm, 1×1 skips and a 1×1 output conv; its
input ``[relu(h), relu(−h), b]``; ``y = (x + t) ⊙ exp(s)``; instead of a normalisation layer,
batch norm of the transformed half inside the coupling (``transformed_batchnorm``: no scale or
offset, statistics of ``y ⊙ (1 − b)``, ``log|det| = −½ Σ_transformed log(v_c + ε)``); widths
doubled per scale and in channel couplings; the reference's squeeze layout and factor-out
(:func:`reorder`); L2 on the scales; gradients clipped to a global norm.

Images: pixels ``x ∈ {0..255}^D`` are dequantised, ``u = (x + ε)/256``, ``ε ~ U[0, 1)^D`` (a seeded
draw in evaluation), then mapped with the logit transform of the authors' code::

    y = α + (1 − 2α) u,   l = logit(y) = log y − log(1 − y),
    log|det ∂l/∂u| = Σ_i [ log(1 − 2α) − log y_i − log(1 − y_i) ]          (α = 0.05)

(the paper's text writes ``α + (1 − α)·x/256``, which is not symmetric around 1/2; we use the
code's). ``l`` goes through the flow, so
``log p(u) = log N(f(l)) + log|det ∂f/∂l| + log|det ∂l/∂u|`` is the density of ``u`` on
``[0, 1)^D``, and the density of the dequantised pixels on ``[0, 256)^D`` is ``p(u) / 256^D``.
The loss of every flow is the reference code's (tensorflow/models ``research/real_nvp``, ``cost +
l2_coeff · l2_reg``): the mean negative log-likelihood in **nats per example** plus the L2 term::

    loss = −E_b log p(x_b) + l2 · Σ w²

For images ``−log p(x_b)`` is the pixels' ``−log p(u) + D ln 256`` (the reference's ``cost``
without the constant ``D ln 256``: the same gradient); ``Σ w²`` runs over the weights (kernels)
of the s/t nets, or over the scales (``flow.l2_params``; the reference's ``magnitude`` and
``rescaling_scale``, ``l2`` 5e-5). In these units ``l2`` and a gradient clipping norm
(``optimizer.clip_global_norm``, the reference's 100) mean what they mean in the reference.
Image flows *report* bits per dimension besides (the paper's unit)::

    bits/dim = (−log p(u) + D ln 256) / (D ln 2)

``flow.objective = "bits_per_dim"`` instead minimises ``bits/dim + l2 · Σ w²``, the objective of
runs before 2026-12-07: it weighs the L2 term ``D ln 2`` times (2,129 for CIFAR-10) more than
the reference and scales the gradient, and so the clipping norm, down by as much.

``sample(z)`` runs the inverse on ``z ~ N(0, T² I)`` (temperature ``T``), in evaluation mode.

bfloat16 (``flow.compute_dtype``, for accelerators): the s/t networks compute in bfloat16
(their convs or dense layers, the batch norms inside them, their activations); their
parameters stay float32 and are cast for the products, and their outputs ``s_raw`` and ``t``
are cast back to float32 before the tanh. Everything that decides the likelihood is float32:
the coupling arithmetic ``y = x ⊙ exp(s) + t`` and its inverse, every log-determinant and their
sums, the normalisation layers, the logit transform, the prior's ``log N(z; 0, I)``, bits/dim,
the batch-norm statistics and running averages (flax computes them in float32 from bfloat16
activations), the weight-norm kernels ``g·v/‖v‖``, the L2 term, gradient clipping and Adam.
Why this split is exact: a coupling's Jacobian is triangular whatever function ``s(b ⊙ x)``
and ``t(b ⊙ x)`` are, so ``log|det| = Σ (1 − b) s`` holds exactly for the bfloat16 nets too (they
change the model, not the correctness of its density); but ``y`` itself in bfloat16 would round
every transformed value to 8 significant bits (the map would no longer be a bijection of the
reals it is evaluated on), and sums of ``D`` log-det terms in bfloat16 would lose nats. The
bits/dim of a bfloat16 run (what the paper reports) is thus the exact likelihood of the model it
trained: evaluation uses the same bfloat16 nets, with float32 around them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from gen_models import devices
from gen_models.config import base_config
from gen_models.data import toy
from gen_models.errors import UserError
from gen_models.models import Family
from gen_models.nn import check_impl
from gen_models.nn.flow import (
  SQUEEZE_LAYOUTS,
  ST_INPUTS,
  ActNorm,
  AffineCoupling,
  BatchNorm,
  Coupling,
  reorder,
  squeeze,
  unsqueeze,
)
from gen_models.train_state import TrainState, apply_gradients

NORMALIZATIONS = ("batchnorm", "actnorm", "none", "transformed_batchnorm")
L2_PARAMS = ("kernels", "scales")
OBJECTIVES = ("nats", "bits_per_dim")
# flow.compute_dtype → the s/t nets' flax ``dtype``. None: the dtype of their inputs and
# parameters, float32 in training (float64 in the float64 tests): exactly the nets without one.
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
LN2, LN256 = math.log(2.0), math.log(256.0)


# Config keys a population may sweep (gen_models.population): values the step reads from
# ``state.hparams`` when they are there, else the config's constants.
SWEEPABLE = ("flow.l2", "optimizer.learning_rate")


def default_config() -> ml_collections.ConfigDict:
  """Every key of a RealNVP run: the paper's CIFAR-10 sizes and optimiser, with the reference
  code's options off (``realnvp_cifar10.py`` sets them)."""
  c = base_config()
  c.model = "realnvp"
  c.batch_size = 64
  c.dataset.name = "cifar10"
  c.flow = ml_collections.ConfigDict()
  c.flow.normalization = "batchnorm"  # One of NORMALIZATIONS, after every coupling.
  c.flow.bn_momentum = 0.9  # Running averages of batch norm (evaluation and inverse).
  c.flow.bn_epsilon = 1e-4
  c.flow.num_scales = 2  # Images: multi-scale levels (CIFAR-10: "downscale only once").
  c.flow.resnet_blocks = 8
  c.flow.resnet_features = 64
  c.flow.num_couplings = 8  # Points: vector couplings.
  c.flow.mlp_width = 128
  c.flow.mlp_depth = 2
  c.flow.alpha = 0.05  # Logit transform (module docstring).
  c.flow.l2 = 5e-5  # Weight decay, on flow.l2_params, in the loss's units (nats per example).
  # One of OBJECTIVES: "nats" (the reference's, module docstring) or "bits_per_dim" (images only;
  # the objective of runs before 2026-12-07, whose L2 weighs D ln 2 times more).
  c.flow.objective = "nats"
  # The reference code's options (module docstring); off here, so that a workdir written before
  # they existed means what it meant. experiments/configs/realnvp_cifar10.py turns them on.
  c.flow.l2_params = "kernels"  # One of L2_PARAMS: the s/t kernels, or the scales (reference).
  c.flow.weight_norm = False  # Weight-normed convs in the s/t ResNets.
  c.flow.st_batch_norm = False  # Batch norm in the s/t ResNets (and of their input).
  c.flow.skip_convs = False  # 1×1 skip convs from every block to the s/t output.
  c.flow.st_out_kernel = 3  # Size of the s/t nets' output conv (reference: 1).
  c.flow.st_input = "masked"  # One of ST_INPUTS; "concat_relu": [relu(x'), relu(−x'), mask].
  c.flow.shift_first = False  # y = (x + t)·exp(s) instead of x·exp(s) + t.
  c.flow.double_features = False  # s/t widths doubled per scale and in channel couplings.
  # One of SQUEEZE_LAYOUTS; "reference": channel-major squeeze, checkerboard factor-out.
  c.flow.squeeze_layout = "position_major"
  c.flow.crop = 0  # Images: pixels cropped from each border before the flow (MNIST: 2).
  c.flow.temperature = 1.0  # Of the sample PNGs.
  c.flow.num_eval_points = 10_000  # Held-out examples of each evaluation.
  # Of the s/t nets: "float32" or "bfloat16"; the likelihood's arithmetic stays float32.
  c.flow.compute_dtype = "float32"
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-3
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.clip_global_norm = 0.0  # > 0: gradients clipped to this global norm (reference 100).
  # > 0: the learning rate decays to 0 over this many steps (cosine); 0: constant. Its own key,
  # not num_train_steps, which a resumed run may change.
  c.optimizer.cosine_decay_steps = 0
  return c


# ----------------------------------------------------------------------------------------------
# The flow.


@dataclasses.dataclass(frozen=True)
class Spec:
  """What the flow is built for: ``shape`` of one flow input (after cropping), ``num_scales``,
  ``num_couplings`` (points), s/t net sizes, the normalisation layer and how image couplings are
  built (``coupling``). ``double_features``: the s/t nets of scale ``k`` have ``features · 2^k``
  channels, those of its channel couplings twice that (the reference code's widths).
  ``squeeze_layout``: :func:`squeeze`'s channel order, and with ``"reference"`` the factor-out of
  the reference code (:func:`reorder`). ``compute_dtype``: of the s/t nets, a key of
  ``COMPUTE_DTYPES`` (module docstring, "bfloat16")."""

  shape: tuple[int, ...]
  normalization: str = "batchnorm"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-4
  num_scales: int = 2
  num_couplings: int = 8
  hidden: tuple[int, ...] = (64, 64)
  features: int = 64
  blocks: int = 8
  impl: str = "auto"
  coupling: Coupling = Coupling()
  double_features: bool = False
  squeeze_layout: str = "position_major"
  compute_dtype: str = "float32"

  @property
  def is_image(self) -> bool:
    return len(self.shape) == 3


def layer_names(spec: Spec) -> list[tuple[str, str, int]]:
  """The layers in data → latent order as ``(name, kind, parity)``; ``kind`` is a coupling mask,
  ``"norm"``, ``"squeeze"`` or ``"factor"`` (factor out half the channels)."""
  out = []

  def coupling(name, kind, parity):
    out.append((name, kind, parity))
    if spec.normalization not in ("none", "transformed_batchnorm"):
      out.append((f"{name}_norm", "norm", 0))

  if not spec.is_image:
    for k in range(spec.num_couplings):
      coupling(f"coupling{k}", "vector", k % 2)
    return out
  for s in range(spec.num_scales):
    last = s == spec.num_scales - 1
    for k in range(4 if last else 3):
      coupling(f"scale{s}/checkerboard{k}", "checkerboard", k % 2)
    if not last:
      out.append((f"scale{s}/squeeze", "squeeze", 0))
      for k in range(3):
        coupling(f"scale{s}/channel{k}", "channel", k % 2)
      out.append((f"scale{s}/factor", "factor", 0))
  return out


class RealNVP(nn.Module):
  """The whole flow: ``(x (B, *shape), inverse=False)`` → ``(z (B, D), log|det| (B,), per-layer
  log-dets {name: (B,)})``; ``inverse=True`` maps ``z (B, D)`` back to ``(B, *shape)`` and
  returns the inverse's log-dets (the negatives)."""

  spec: Spec

  def _layer(self, name: str, kind: str, parity: int) -> nn.Module:
    spec, flat = self.spec, name.replace("/", "_")
    if kind == "norm":
      if spec.normalization == "actnorm":
        return ActNorm(name=flat)
      return BatchNorm(spec.bn_momentum, spec.bn_epsilon, name=flat)
    features = spec.features
    if spec.double_features and kind != "vector":
      features *= 2 ** int(name.split("/")[0].removeprefix("scale")) * (
        2 if kind == "channel" else 1
      )
    options = dataclasses.replace(
      spec.coupling,
      out_norm=spec.normalization == "transformed_batchnorm",
      momentum=spec.bn_momentum,
      epsilon=spec.bn_epsilon,
    )
    return AffineCoupling(
      kind,
      parity,
      spec.hidden,
      features,
      spec.blocks,
      spec.impl,
      options,
      COMPUTE_DTYPES[spec.compute_dtype],
      name=flat,
    )

  def latent_shapes(self) -> list[tuple[int, ...]]:
    """Shapes of the pieces of ``z`` (factored-out halves, then the last scale's output)."""
    shape, out = self.spec.shape, []
    if not self.spec.is_image:
      return [shape]
    h, w, c = shape
    for _ in range(self.spec.num_scales - 1):
      h, w, c = h // 2, w // 2, 4 * c
      out.append((h, w, c // 2))
      c //= 2
    return [*out, (h, w, c)]

  @nn.compact
  def __call__(self, x: jax.Array, inverse: bool = False, train: bool = False):
    layers = layer_names(self.spec)
    layout = self.spec.squeeze_layout
    pieces = self.latent_shapes()
    b = x.shape[0]
    per_layer = {}
    if not inverse:
      zs = []
      for name, kind, parity in layers:
        if kind == "squeeze":
          x = squeeze(x, layout)
        elif kind == "factor" and layout == "reference":
          x, c = reorder(x), x.shape[-1] // 2
          zs.append(x[..., c:].reshape(b, -1))
          x = x[..., :c]
        elif kind == "factor":
          c = x.shape[-1] // 2
          zs.append(x[..., :c].reshape(b, -1))
          x = x[..., c:]
        else:
          x, per_layer[name] = self._layer(name, kind, parity)(x, inverse=False, train=train)
      z = jnp.concatenate([*zs, x.reshape(b, -1)], axis=1)
      return z, sum(per_layer.values()), per_layer
    sizes = np.cumsum([math.prod(p) for p in pieces])[:-1]
    parts = [
      p.reshape(b, *shape) for p, shape in zip(jnp.split(x, sizes, axis=1), pieces, strict=True)
    ]
    h, factored = parts[-1], parts[:-1]
    for name, kind, parity in reversed(layers):
      if kind == "squeeze":
        h = unsqueeze(h, layout)
      elif kind == "factor" and layout == "reference":
        h = reorder(jnp.concatenate([h, factored.pop()], axis=-1), inverse=True)
      elif kind == "factor":
        h = jnp.concatenate([factored.pop(), h], axis=-1)
      else:
        h, per_layer[name] = self._layer(name, kind, parity)(h, inverse=True, train=False)
    return h, sum(per_layer.values()), per_layer


def standard_normal_log_prob(z: jax.Array) -> jax.Array:
  """``log N(z; 0, I) = −½ |z|² − (D/2) log 2π`` per row: ``(B, D)`` → ``(B,)``."""
  return -0.5 * jnp.sum(jnp.square(z), axis=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


# ----------------------------------------------------------------------------------------------
# Data space ↔ flow space.


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How examples reach the flow. ``image``: dataset images in ``[−1, 1]`` (``x/127.5 − 1``) are
  pixels, cropped by ``crop`` on each border, dequantised and logit-transformed with ``alpha``;
  otherwise the examples go in as they are."""

  image: bool = False
  alpha: float = 0.05
  crop: int = 0


def to_pixels(x: jax.Array, crop: int = 0) -> jax.Array:
  """Dataset images in ``[−1, 1]`` → pixel values ``{0..255}`` (float32), cropped."""
  p = jnp.clip(jnp.round((x + 1.0) * 127.5), 0.0, 255.0)
  return p[:, crop : p.shape[1] - crop, crop : p.shape[2] - crop] if crop else p


def logit_transform(u: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
  """``u ∈ [0, 1)`` → ``(logit(α + (1 − 2α) u), log|det| (B,))`` (module docstring)."""
  y = alpha + (1.0 - 2.0 * alpha) * u
  ld = math.log(1.0 - 2.0 * alpha) - jnp.log(y) - jnp.log1p(-y)
  return jnp.log(y) - jnp.log1p(-y), jnp.sum(ld.reshape(u.shape[0], -1), axis=1)


def inverse_logit_transform(logits: jax.Array, alpha: float) -> jax.Array:
  """``l`` → ``u = (σ(l) − α) / (1 − 2α)``: the inverse of :func:`logit_transform`."""
  return (jax.nn.sigmoid(logits) - alpha) / (1.0 - 2.0 * alpha)


def flow_input(x: jax.Array, key: jax.Array, prep: Preprocess) -> tuple[jax.Array, jax.Array]:
  """``(flow input, log|det| (B,) of the preprocessing)``; images are dequantised with ``key``."""
  if not prep.image:
    return x, jnp.zeros((x.shape[0],), x.dtype)
  pixels = to_pixels(x, prep.crop)
  u = (pixels + jax.random.uniform(key, pixels.shape, pixels.dtype)) / 256.0
  return logit_transform(u, prep.alpha)


def log_prob(
  variables: dict,
  x: jax.Array,
  key: jax.Array,
  *,
  flow: RealNVP,
  prep: Preprocess,
  train: bool = False,
):
  """``(log p (B,), new batch_stats, per-layer log-dets)`` of examples ``x (B, *example_shape)``.

  Points: ``log p(x)`` in nats. Images: ``log p(u)``, the density of the dequantised pixels
  ``u ∈ [0, 1)^D`` (module docstring). ``train``: batch statistics (and their running update).
  """
  h, pre_ld = flow_input(x, key, prep)
  mutable = ["batch_stats"] if train else False
  out = flow.apply(variables, h, inverse=False, train=train, mutable=mutable)
  (z, ld, per_layer), new_vars = out if train else (out, {})
  return standard_normal_log_prob(z) + ld + pre_ld, new_vars.get("batch_stats"), per_layer


def pixel_nll(log_p_u, num_dims: int):
  """``−log p(u) + D ln 256``: the negative log-density (nats) of the dequantised pixels on
  ``[0, 256)^D`` for ``log p(u)`` on ``[0, 1)^D`` (any shape; linear, so it maps a mean to the
  mean). The one place of the ``D ln 256`` term: training metrics, ``evaluate`` and
  ``experiments.evaluate_likelihood`` all go through it."""
  return -log_p_u + num_dims * LN256


def to_bits_per_dim(nll, num_dims: int):
  """Nats per example → bits per dimension: ``nll / (D ln 2)``."""
  return nll / (num_dims * LN2)


def bits_per_dim(log_p_u, num_dims: int):
  """``(−log p(u) + D ln 256) / (D ln 2)`` for ``log p(u)`` on ``[0, 1)^D``."""
  return to_bits_per_dim(pixel_nll(log_p_u, num_dims), num_dims)


def decode(h: jax.Array, prep: Preprocess) -> jax.Array:
  """Flow space → dataset space: images as ``[−1, 1]`` pixels (border padded back with −1)."""
  if not prep.image:
    return h
  u = inverse_logit_transform(h, prep.alpha)
  pixels = jnp.clip(jnp.floor(u * 256.0), 0.0, 255.0)
  x = pixels / 127.5 - 1.0
  if prep.crop:
    c = prep.crop
    x = jnp.pad(x, ((0, 0), (c, c), (c, c), (0, 0)), constant_values=-1.0)
  return x


def _variables(state: TrainState) -> dict:
  return {"params": state.params["flow"], **state.model_state["flow"]}


def l2_penalty(params, on: str = "kernels") -> jax.Array:
  """``Σ w²`` over ``params``: ``on="kernels"``, every kernel (weight matrix / conv filter);
  ``"scales"``, the reference code's choice (its L2 on ``magnitude`` and ``rescaling_scale``):
  the weight-norm scales ``g`` and the tanh scales of the checkerboard couplings."""
  flat = traverse_util.flatten_dict(params)

  def chosen(k):
    if on == "kernels":
      return k[-1] == "kernel"
    return k[-1] == "g" or (k[-1] == "scale" and "checkerboard" in k[0])

  return sum(jnp.sum(jnp.square(v)) for k, v in flat.items() if chosen(k))


# ----------------------------------------------------------------------------------------------
# Pure train step, sampling, evaluation.


def clip_by_global_norm(grads, max_norm: float):
  """``(g · c / max(‖g‖, c), ‖g‖)`` with ``‖g‖ = √(Σ_leaves Σ g²)`` the global norm over every
  leaf (TensorFlow's ``clip_by_global_norm``, the reference's clipping at ``c = 100``)."""
  norm = optax.global_norm(grads)
  return jax.tree.map(lambda g: g * (max_norm / jnp.maximum(norm, max_norm)), grads), norm


def train_step(
  state: TrainState,
  batch: jax.Array,
  *,
  flow: RealNVP,
  prep: Preprocess,
  l2: float,
  l2_params: str = "kernels",
  clip_global_norm: float = 0.0,
  learning_rate: float = 1.0,
  objective: str = "nats",
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One Adam update on the mean NLL in nats per example plus ``l2 · Σ w²`` (module docstring).

  Args:
    state: ``params["flow"]``; ``model_state["flow"]`` holds ``batch_stats`` (batch norm).
    batch: ``(1, B, *example_shape)`` float32.
    l2, l2_params: the weight decay and what it falls on (:func:`l2_penalty`).
    objective: images only: ``"nats"`` (the reference's) or ``"bits_per_dim"`` (the NLL term
      divided by ``D ln 2``; runs before 2026-12-07).
    clip_global_norm: > 0: the gradient is clipped to this global norm
      (:func:`clip_by_global_norm`) before Adam.
    learning_rate: Adam's (peak) step size (``state.tx`` has a unit one).
    ``l2`` and ``learning_rate`` are replaced by ``state.hparams``'s ``flow.l2`` and
    ``optimizer.learning_rate`` where it has them (a population's members).

  Returns:
    The new state and scalar metrics ``loss``, ``nll`` (nats per example; for images of the
    pixels on ``[0, 256)^D``), ``log_det`` (batch mean of the flow's log|det|), for images
    ``bits_per_dim`` and ``l2_penalty`` (``Σ w²``, unweighted), and with clipping ``grad_norm``
    (before clipping).
  """
  x = batch[0]
  key = jax.random.fold_in(state.step_key(), 0)
  l2 = state.hparams.get("flow.l2", l2)
  learning_rate = state.hparams.get("optimizer.learning_rate", learning_rate)
  model_state = state.model_state["flow"]
  num_dims = math.prod(flow.spec.shape)

  def loss_fn(params):
    log_p, stats, per_layer = log_prob(
      {"params": params, **model_state}, x, key, flow=flow, prep=prep, train=True
    )
    if not prep.image:  # Points: nats per example (the 2-D flows' step, op for op as before).
      nll = -jnp.mean(log_p)
      loss = nll + l2 * l2_penalty(params, l2_params)
      return loss, (nll, jnp.mean(sum(per_layer.values())), stats, None)
    nll = pixel_nll(jnp.mean(log_p), num_dims)
    term = to_bits_per_dim(nll, num_dims) if objective == "bits_per_dim" else nll
    penalty = l2_penalty(params, l2_params)
    return term + l2 * penalty, (nll, jnp.mean(sum(per_layer.values())), stats, penalty)

  (loss, (nll, log_det, stats, penalty)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params["flow"]
  )
  if clip_global_norm > 0:
    grads, grad_norm = clip_by_global_norm(grads, clip_global_norm)
  params, opt_state = apply_gradients(
    state.tx["flow"], state.params["flow"], state.opt_state["flow"], grads, learning_rate
  )
  new_model_state = {"flow": {"batch_stats": stats}} if stats is not None else state.model_state
  new_state = state.replace(
    step=state.step + 1,
    params={"flow": params},
    opt_state={"flow": opt_state},
    model_state=new_model_state,
  )
  metrics = {"loss": loss, "nll": nll, "log_det": log_det}
  if prep.image:
    metrics["bits_per_dim"] = to_bits_per_dim(nll, num_dims)
    metrics["l2_penalty"] = penalty
  if clip_global_norm > 0:
    metrics["grad_norm"] = grad_norm
  return new_state, metrics


def sample(
  state: TrainState, rng: jax.Array, num: int, *, flow: RealNVP, prep: Preprocess, temperature
) -> jax.Array:
  """``num`` samples ``f⁻¹(z)``, ``z ~ N(0, T² I)``, in dataset space: ``(num, *example_shape)``."""
  z = temperature * jax.random.normal(rng, (num, math.prod(flow.spec.shape)))
  h, _, _ = flow.apply(_variables(state), z, inverse=True)
  return decode(h, prep)


def eval_log_prob(state: TrainState, x: jax.Array, key: jax.Array, *, flow, prep) -> jax.Array:
  """Evaluation-mode ``log p`` of ``x (B, *example_shape)``: ``(B,)`` (see :func:`log_prob`)."""
  return log_prob(_variables(state), x, key, flow=flow, prep=prep)[0]


def layer_log_dets(state: TrainState, x: jax.Array, key: jax.Array, *, flow, prep) -> dict:
  """Evaluation-mode per-layer log-dets ``{name: (B,)}`` of ``x``."""
  return log_prob(_variables(state), x, key, flow=flow, prep=prep)[2]


def check_finite_log_dets(per_layer: dict) -> None:
  """A :class:`UserError` naming the first layer (data → latent) with a non-finite log-det."""
  for name, ld in per_layer.items():
    if not np.all(np.isfinite(np.asarray(ld))):
      raise UserError(f"non-finite log-determinant in flow layer {name!r}")


def evaluate(
  state: TrainState,
  rng: jax.Array,
  reference: np.ndarray | None,
  *,
  log_prob_fn,
  chunk: int,
  num_dims: int,
  image: bool,
  true_log_density=None,
) -> dict[str, float]:
  """Held-out NLL (nats per example) of ``reference``, evaluation mode, seeded dequantisation.

  Images add ``bits_per_dim``; a toy set with a known density adds ``true_nll`` (the exact
  density's NLL on the same points) and ``nll_gap = nll − true_nll``. ``log_prob_fn(state, x,
  key)`` is :func:`eval_log_prob`, jitted.
  """
  if reference is None or len(reference) == 0:
    return {}
  log_p = np.concatenate(
    [
      np.asarray(
        devices.to_host(log_prob_fn(state, reference[i : i + chunk], jax.random.fold_in(rng, i)))
      )
      for i in range(0, len(reference), chunk)
    ]
  ).astype(np.float64)
  out = {}
  if image:
    out["nll"] = float(pixel_nll(np.mean(log_p), num_dims))
    out["bits_per_dim"] = to_bits_per_dim(out["nll"], num_dims)
  else:
    out["nll"] = float(-np.mean(log_p))
  if true_log_density is not None:
    out["true_nll"] = float(-np.mean(true_log_density(reference)))
    out["nll_gap"] = out["nll"] - out["true_nll"]
  return out


def data_init(state: TrainState, batch: jax.Array, *, flow: RealNVP, prep: Preprocess):
  """ActNorm's data-dependent initialisation from one global batch ``(B, *example_shape)``.

  Each ActNorm's ``log s, β`` are set so that its output on this batch has zero mean and unit
  variance per channel (given the layers before it). The optimizer state (Adam's zero moments)
  does not depend on the values, so it is kept.
  """
  key = jax.random.fold_in(state.rng, 7)
  h, _ = flow_input(batch, key, prep)
  _, new = flow.apply(_variables(state), h, mutable=["actnorm_init"])
  flat = traverse_util.flatten_dict(state.params["flow"])
  flat.update(traverse_util.flatten_dict(new.get("actnorm_init", {})))
  return state.replace(params={"flow": traverse_util.unflatten_dict(flat)})


def init(rng: jax.Array, *, flow: RealNVP, tx: optax.GradientTransformation) -> TrainState:
  """Step-0 state (every coupling the identity); the run key is derived from ``rng``."""
  key, run_key = jax.random.split(rng)
  variables = flow.init(key, jnp.zeros((1, *flow.spec.shape)))
  params = {"flow": variables["params"]}
  model_state = {"flow": {k: v for k, v in variables.items() if k != "params"}}
  return TrainState.create(params=params, tx={"flow": tx}, rng=run_key, model_state=model_state)


def flow_shape(example_shape: Sequence[int], crop: int, num_scales: int) -> tuple[int, ...]:
  """The flow's input shape for examples of ``example_shape``; a one-line error when the squeeze
  cannot split it."""
  shape = tuple(example_shape)
  if len(shape) == 1:
    if shape[0] < 2:
      raise UserError(f"RealNVP needs points of dimension >= 2, got {shape[0]}")
    return shape
  if len(shape) != 3:
    raise UserError(f"RealNVP takes points (d,) or images (H, W, C), got examples of {shape}")
  h, w, c = shape[0] - 2 * crop, shape[1] - 2 * crop, shape[2]
  if h < 1 or w < 1:
    raise UserError(f"flow.crop={crop} leaves no pixels of {shape[0]}×{shape[1]} images")
  k = 2 ** (num_scales - 1)
  if h % k or w % k or (num_scales > 1 and h == k) or (num_scales == 1 and (h < 2 or w < 2)):
    raise UserError(
      f"image size {h}×{w} cannot be split by the squeeze of {num_scales} scales "
      f"(H and W must be multiples of {k}, and > {k}); change flow.num_scales or flow.crop"
    )
  return (h, w, c)


@dataclasses.dataclass(frozen=True)
class Bound:
  """A config's flow with its functions bound: ``log_prob(state, x, key) -> (B,)`` and
  ``layer_log_dets(state, x, key) -> {name: (B,)}`` (evaluation mode, see :func:`log_prob`)."""

  flow: RealNVP
  prep: Preprocess

  def log_prob(self, state: TrainState, x: jax.Array, key: jax.Array) -> jax.Array:
    return eval_log_prob(state, x, key, flow=self.flow, prep=self.prep)

  def layer_log_dets(self, state: TrainState, x: jax.Array, key: jax.Array) -> dict:
    return layer_log_dets(state, x, key, flow=self.flow, prep=self.prep)


def bind(config: ml_collections.ConfigDict, example_shape: tuple[int, ...]) -> Bound:
  """The flow and preprocessing of ``config`` for examples of ``example_shape``; bad settings
  (and an image size the squeeze cannot split) are a one-line :class:`UserError`."""
  f = config.flow
  if f.normalization not in NORMALIZATIONS:
    raise UserError(
      f"unknown flow.normalization {f.normalization!r}; known: {', '.join(NORMALIZATIONS)}"
    )
  for key, value, known in (
    ("flow.st_input", f.st_input, ST_INPUTS),
    ("flow.l2_params", f.l2_params, L2_PARAMS),
    ("flow.objective", f.objective, OBJECTIVES),
    ("flow.squeeze_layout", f.squeeze_layout, SQUEEZE_LAYOUTS),
    ("flow.compute_dtype", f.compute_dtype, tuple(COMPUTE_DTYPES)),
  ):
    if value not in known:
      raise UserError(f"unknown {key} {value!r}; known: {', '.join(known)}")
  checks = [
    ("flow.st_out_kernel", f.st_out_kernel, f.st_out_kernel in (1, 3), "1 or 3"),
    (
      "optimizer.clip_global_norm",
      config.optimizer.clip_global_norm,
      config.optimizer.clip_global_norm >= 0,
      ">= 0",
    ),
    ("flow.alpha", f.alpha, 0 <= f.alpha < 0.5, "in [0, 0.5)"),
    ("flow.num_scales", f.num_scales, f.num_scales >= 1, ">= 1"),
    ("flow.num_couplings", f.num_couplings, f.num_couplings >= 1, ">= 1"),
    ("flow.l2", f.l2, f.l2 >= 0, ">= 0"),
    ("flow.crop", f.crop, f.crop >= 0, ">= 0"),
    ("flow.temperature", f.temperature, f.temperature >= 0, ">= 0"),
    ("flow.bn_momentum", f.bn_momentum, 0 <= f.bn_momentum < 1, "in [0, 1)"),
    ("flow.bn_epsilon", f.bn_epsilon, f.bn_epsilon > 0, "> 0"),
    ("flow.num_eval_points", f.num_eval_points, f.num_eval_points >= 0, ">= 0"),
  ]
  for name, value, ok, want in checks:
    if not (ok and math.isfinite(value)):
      raise UserError(f"{name} must be {want}, got {value}")
  image = len(example_shape) == 3
  shape = flow_shape(example_shape, f.crop if image else 0, f.num_scales)
  spec = Spec(
    shape=shape,
    normalization=f.normalization,
    bn_momentum=float(f.bn_momentum),
    bn_epsilon=float(f.bn_epsilon),
    num_scales=int(f.num_scales),
    num_couplings=int(f.num_couplings),
    hidden=(int(f.mlp_width),) * int(f.mlp_depth),
    features=int(f.resnet_features),
    blocks=int(f.resnet_blocks),
    impl=check_impl(config.conv_impl),
    coupling=Coupling(
      weight_norm=bool(f.weight_norm),
      batch_norm=bool(f.st_batch_norm),
      skip=bool(f.skip_convs),
      out_kernel=int(f.st_out_kernel),
      input=f.st_input,
      shift_first=bool(f.shift_first),
    ),
    double_features=bool(f.double_features),
    squeeze_layout=f.squeeze_layout,
    compute_dtype=f.compute_dtype,
  )
  prep = Preprocess(image=image, alpha=float(f.alpha), crop=int(f.crop) if image else 0)
  return Bound(RealNVP(spec), prep)


def make_family(config: ml_collections.ConfigDict, example_shape: tuple[int, ...]) -> Family:
  """Binds the config to the pure functions above; bad settings are a :class:`UserError`."""
  f, opt = config.flow, config.optimizer
  bound = bind(config, example_shape)
  flow, prep = bound.flow, bound.prep
  shape, image = flow.spec.shape, prep.image
  if opt.cosine_decay_steps < 0:
    raise UserError(f"optimizer.cosine_decay_steps must be >= 0, got {opt.cosine_decay_steps}")
  lr = 1.0  # Unit (peak) learning rate: the step multiplies the updates by the run's.
  if opt.cosine_decay_steps:
    lr = optax.cosine_decay_schedule(1.0, int(opt.cosine_decay_steps))
  tx = optax.adam(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  name = config.dataset.name
  true_density = functools.partial(toy.log_density, name) if name in toy.DENSITIES else None
  critic = None
  if not image and shape == (2,):  # The 2-D plot draws the learned log-density as contours.
    critic = functools.partial(eval_log_prob, key=jax.random.key(0), flow=flow, prep=prep)
  return Family(
    init=functools.partial(init, flow=flow, tx=tx),
    train_step=functools.partial(
      train_step,
      flow=flow,
      prep=prep,
      l2=float(f.l2),
      l2_params=f.l2_params,
      clip_global_norm=float(opt.clip_global_norm),
      learning_rate=float(opt.learning_rate),
      objective=f.objective,
    ),
    sample=functools.partial(sample, flow=flow, prep=prep, temperature=float(f.temperature)),
    evaluate=functools.partial(
      evaluate,
      log_prob_fn=jax.jit(bound.log_prob),
      chunk=max(config.batch_size, 1),
      num_dims=math.prod(shape),
      image=image,
      true_log_density=true_density,
    ),
    num_reference=int(f.num_eval_points),
    critic_values=critic,
    data_init=functools.partial(data_init, flow=flow, prep=prep)
    if f.normalization == "actnorm"
    else None,
  )
