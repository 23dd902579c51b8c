r"""WGAN-GP (Gulrajani et al. 2017) and the standard GAN losses (Goodfellow et al. 2014).

Notation: ``D`` is the critic/discriminator output (a real number, a *logit* for the standard
losses), ``G`` the generator, ``x ~ P_r`` real and ``x̃ = G(z), z ~ N(0, I)`` generated data.
Every loss below is *minimised*.

WGAN-GP (Algorithm 1 of the paper)::

    L_D = E[D(x̃)] − E[D(x)] + λ E[(‖∇_x̂ D(x̂)‖₂ − 1)²],   x̂ = ε x + (1 − ε) x̃,  ε ~ U[0, 1]
    L_G = −E[D(x̃)]

with λ = 10, ``n_critic`` = 5 critic updates per generator update and Adam(1e-4, β1=0, β2=0.9).
``−L_D`` without the penalty, ``E[D(x)] − E[D(x̃)]``, is the critic's estimate of W1 (logged as
``wasserstein``). The gradient is per example: the critic must not mix examples (no batch norm).

Standard GAN, with σ the logistic sigmoid and softplus(t) = log(1 + eᵗ), so that
−log σ(t) = softplus(−t) and −log(1 − σ(t)) = softplus(t)::

    L_D = −E[log σ(D(x))] − E[log(1 − σ(D(x̃)))] = E[softplus(−D(x))] + E[softplus(D(x̃))]
    minimax:         L_G =  E[log(1 − σ(D(x̃)))]  = −E[softplus(D(x̃))]
    non_saturating:  L_G = −E[log σ(D(x̃))]       =  E[softplus(−D(x̃))]

For a fixed G the optimal discriminator is D*(x) = p_r(x) / (p_r(x) + p_g(x)), i.e. the logit
log p_r − log p_g, and then L_D = log 4 − 2·JSD(P_r ‖ P_g): the minimax value
V(D*, G) = −L_D = −log 4 + 2·JSD (Goodfellow et al. 2014, Theorem 1). JSD is symmetric.

AC-GAN (Odena et al. 2017), the conditional variant of the WGAN-GP paper's Table 3
(``gan.conditional``): the generator takes a class ``y`` too, ``x̃ = G(z, y)``, and the critic
has an auxiliary classifier head ``C(x)`` (class logits) beside ``D(x)``. With the cross-entropy
``CE(C(x), y) = −log softmax(C(x))_y``::

    L_D^AC = L_D + s_D · E_(x,y)~P_r[CE(C(x), y)]          (real examples only; s_D = 1)
    L_G^AC = L_G + s_G · E_z,y~U[CE(C(G(z, y)), y)]        (s_G = 0.1)

as in ``gan_cifar_resnet.py`` of github.com/igul222/improved_wgan_training (the critic's fakes
use the labels of its real batch; the generator's use uniform random labels). The penalty is
on ``D`` alone.

Optional, as modern GAN codebases do: real images *dequantised* as in that file
(``gan.dequantize``: an image ``k/127.5 − 1``, ``k ∈ {0, …, 255}``, becomes ``(k + u)/128 − 1``,
``u ~ U[0, 1)``), a generator batch larger than the critic's (``gan.generator_batch_size``),
Adam's learning rate decayed linearly to 0 (``optimizer.decay_steps``), an exponential moving
average of the generator's parameters used for samples and evaluation (``gan.ema_decay``), and
bfloat16 computation in the ResNet nets (``gan.compute_dtype``; parameters, optimizer states,
losses and the penalty's norm stay float32). As the reference code ran: the generator's
batch-norm statistics over equal groups of each batch (``gan.bn_groups``; its two GPUs each
generated half), and samples made with batch statistics in groups of ``gan.sample_bn_chunk``
(its generator's batch norm is never in evaluation mode).

One compiled train step runs ``n_critic`` critic updates inside ``lax.scan`` (one real batch
each), then one generator update.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gen_models import data, devices
from gen_models.config import base_config
from gen_models.divergences import wasserstein1
from gen_models.errors import UserError
from gen_models.models import Family
from gen_models.models.wgan_gp_resnet import ResNetCritic, ResNetGenerator
from gen_models.nn import MLP as _MLP
from gen_models.nn import Conv, ConvTranspose, check_impl
from gen_models.train_state import TrainState, apply_gradients, ema_update

LOSSES = ("wgan_gp", "minimax", "non_saturating")
ARCHITECTURES = ("mlp", "dcgan", "resnet")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# Config keys a population may sweep (gen_models.population): values the step reads from
# ``state.hparams`` when they are there, else the config's constants.
SWEEPABLE = ("gan.gp_weight", "optimizer.learning_rate")


def default_config() -> ml_collections.ConfigDict:
  """Every key of a GAN run, with the paper's toy-experiment values."""
  c = base_config()
  c.model = "wgan_gp"
  c.gan = ml_collections.ConfigDict()
  c.gan.loss = "wgan_gp"  # One of LOSSES.
  c.gan.gp_weight = 10.0  # λ; applied with any loss when > 0.
  c.gan.n_critic = 5  # Critic updates per generator update.
  c.gan.latent_dim = 2
  c.gan.architecture = "mlp"  # "mlp" (2-D toy data), "dcgan" or "resnet" (32×32 images).
  c.gan.mlp_width = 512
  c.gan.mlp_depth = 3  # Hidden layers of each MLP.
  c.gan.dcgan_dim = 64  # Channels of the first critic conv; the nets scale it by 1, 2, 4.
  c.gan.resnet_dim = 128  # Channels of every block of both ResNet nets (the paper's 128).
  # AC-GAN (resnet only): class-conditional generator + auxiliary classifier on the critic;
  # needs a dataset with labels (dataset.labels). Scales of the classifier losses s_D, s_G.
  c.gan.conditional = False
  c.gan.num_classes = 10
  c.gan.acgan_scale = 1.0
  c.gan.acgan_scale_g = 0.1
  c.gan.generator_batch_size = 0  # Examples per generator update; 0: batch_size.
  c.gan.dequantize = False  # Real images k/127.5 − 1 → (k + u)/128 − 1, u ~ U[0, 1).
  c.gan.ema_decay = 0.0  # EMA of the generator's parameters for samples and eval; 0: off.
  c.gan.compute_dtype = "float32"  # Of the resnet nets: "float32" or "bfloat16".
  # The generator's batch-norm statistics over this many equal groups of each batch (the
  # reference's two GPUs: 2); a function of the global batch, not of the device count.
  c.gan.bn_groups = 1
  # Samples (PNGs, metrics, experiments.sample): 0, batch norm with running averages; k > 0,
  # with the statistics of groups of k samples, as the reference (100).
  c.gan.sample_bn_chunk = 0
  # Unroll the n_critic loop (lax.scan unroll=n_critic): same numbers, longer compile. XLA:CPU
  # runs convolutions inside a loop body far more slowly (jax-ml/jax#12868): the cifar10 step
  # took 12× longer as a rolled scan (experiments/bench/train.py, docs/BENCHMARKS.md).
  c.gan.unroll_critic = True
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.0
  c.optimizer.b2 = 0.9
  c.optimizer.eps = 1e-8  # Adam's ε (optax's and the reference's TensorFlow default).
  c.optimizer.critic_learning_rate = ml_collections.config_dict.placeholder(float)  # None: same.
  # Learning rates decayed linearly to 0 over this many generator steps (0: constant).
  c.optimizer.decay_steps = 0
  return c


# ----------------------------------------------------------------------------------------------
# Networks.


def MLP(width: int, depth: int, out_dim: int) -> _MLP:
  """The toy nets: ``depth`` ReLU layers of ``width`` units, then a linear layer to ``out_dim``
  (:class:`gen_models.nn.MLP`). Input ``(B, d_in)`` → output ``(B, out_dim)``."""
  return _MLP((width,) * depth, out_dim)


class DCGANGenerator(nn.Module):
  """DCGAN-style generator for 32×32 images (the WGAN-GP paper's CIFAR-10 DCGAN net).

  ``z (B, latent)`` → Dense → ``(B, 4, 4, 4·dim)`` → three 5×5 stride-2 transposed convs
  (8×8×2·dim, 16×16×dim, 32×32×channels), batch norm + ReLU between, ``tanh`` at the end →
  ``(B, 32, 32, channels)`` in ``[-1, 1]``.
  """

  dim: int
  channels: int
  conv_impl: str = "auto"  # gen_models.nn.conv: how the convs are computed (same function).

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    bn = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    up = functools.partial(
      ConvTranspose, kernel_size=(5, 5), strides=(2, 2), padding="SAME", impl=self.conv_impl
    )
    x = nn.Dense(4 * 4 * 4 * self.dim)(z)
    x = nn.relu(bn()(x)).reshape(z.shape[0], 4, 4, 4 * self.dim)
    for features in (2 * self.dim, self.dim):
      x = nn.relu(bn()(up(features)(x)))
    return jnp.tanh(up(self.channels)(x))


class DCGANCritic(nn.Module):
  """DCGAN-style critic without normalisation (the gradient penalty needs per-example outputs).

  ``(B, 32, 32, C)`` → three 5×5 stride-2 convs (dim, 2·dim, 4·dim channels) with
  LeakyReLU(0.2) → flatten → Dense → ``(B, 1)``.
  """

  dim: int
  conv_impl: str = "auto"  # gen_models.nn.conv: how the convs are computed (same function).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    del train
    for features in (self.dim, 2 * self.dim, 4 * self.dim):
      conv = Conv(features, (5, 5), strides=(2, 2), padding="SAME", impl=self.conv_impl)
      x = nn.leaky_relu(conv(x), 0.2)
    return nn.Dense(1)(x.reshape(x.shape[0], -1))


def make_networks(
  gan: ml_collections.ConfigDict, shape: Sequence[int], conv_impl: str = "auto"
) -> tuple[nn.Module, nn.Module]:
  """``(generator, critic)`` for examples of ``shape``; ``conv_impl`` as ``gen_models.nn.conv``."""
  if gan.compute_dtype not in COMPUTE_DTYPES:
    raise UserError(
      f"unknown gan.compute_dtype {gan.compute_dtype!r}; known: {', '.join(COMPUTE_DTYPES)}"
    )
  if gan.architecture != "resnet" and (gan.conditional or gan.compute_dtype != "float32"):
    raise UserError(
      "gan.conditional and gan.compute_dtype='bfloat16' need gan.architecture='resnet', "
      f"got {gan.architecture!r}"
    )
  if gan.architecture == "resnet":
    if tuple(shape[:2]) != (32, 32) or len(shape) != 3:
      raise UserError(f"gan.architecture='resnet' needs 32×32×C images, got examples {shape}")
    if gan.conditional and gan.num_classes < 2:
      raise UserError(f"gan.num_classes must be >= 2, got {gan.num_classes}")
    classes = gan.num_classes if gan.conditional else 0
    dtype = COMPUTE_DTYPES[gan.compute_dtype]
    return (
      ResNetGenerator(gan.resnet_dim, shape[2], classes, conv_impl, dtype),
      ResNetCritic(gan.resnet_dim, classes, conv_impl, dtype),
    )
  if gan.architecture == "mlp":
    if len(shape) != 1:
      raise UserError(f"gan.architecture='mlp' needs vector data, got examples of shape {shape}")
    return (
      MLP(gan.mlp_width, gan.mlp_depth, shape[0]),
      MLP(gan.mlp_width, gan.mlp_depth, 1),
    )
  if gan.architecture == "dcgan":
    if tuple(shape[:2]) != (32, 32) or len(shape) != 3:
      raise UserError(f"gan.architecture='dcgan' needs 32×32×C images, got examples {shape}")
    return (
      DCGANGenerator(gan.dcgan_dim, shape[2], conv_impl),
      DCGANCritic(gan.dcgan_dim, conv_impl),
    )
  raise UserError(f"unknown gan.architecture {gan.architecture!r}; known: {ARCHITECTURES}")


# ----------------------------------------------------------------------------------------------
# Losses (the formulas are in the module docstring).


def critic_loss(real_logits: jax.Array, fake_logits: jax.Array, loss: str) -> jax.Array:
  """``L_D`` without the penalty; logits ``(B,)`` or ``(B, 1)`` → scalar."""
  if loss == "wgan_gp":
    return jnp.mean(fake_logits) - jnp.mean(real_logits)
  if loss in ("minimax", "non_saturating"):
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
  raise ValueError(f"unknown loss {loss!r}")


def generator_loss(fake_logits: jax.Array, loss: str) -> jax.Array:
  """``L_G``; logits ``(B,)`` or ``(B, 1)`` → scalar."""
  if loss == "wgan_gp":
    return -jnp.mean(fake_logits)
  if loss == "minimax":
    return -jnp.mean(jax.nn.softplus(fake_logits))
  if loss == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake_logits))
  raise ValueError(f"unknown loss {loss!r}")


def classifier_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """AC-GAN's ``E[CE(C(x), y)] = E[−log softmax(C(x))_y]``; logits ``(B, K)``, labels ``(B,)``."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of ``argmax(logits) == labels``; logits ``(B, K)``, labels ``(B,)``."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def gradient_penalty(critic_fn: Callable[[jax.Array], jax.Array], x_hat: jax.Array) -> jax.Array:
  """``E_i[(‖∇_x D(x̂_i)‖₂ − 1)²]`` over the batch ``x_hat (B, ...)`` (λ not included).

  One backward pass of ``Σ_i D(x̂_i)`` gives every per-example gradient at once, because
  ``∂/∂x̂_i Σ_j D(x̂_j) = ∇D(x̂_i)`` when ``D`` treats examples independently. The norm is
  computed in float32 whatever dtype the critic computes in.
  """
  grads = jax.grad(lambda x: jnp.sum(critic_fn(x)))(x_hat).astype(jnp.float32)
  sq = jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1)
  norms = jnp.sqrt(sq + 1e-12)  # The tiny offset keeps d‖g‖/dg finite at g = 0.
  return jnp.mean(jnp.square(norms - 1.0))


def dequantize(x: jax.Array, key: jax.Array) -> jax.Array:
  """Images ``x = k/127.5 − 1`` (``k ∈ {0, …, 255}``) → ``(k + u)/128 − 1``, ``u ~ U[0, 1)``
  per value: uniform noise over each 8-bit bin, in [-1, 1) (``gan_cifar_resnet.py``'s)."""
  k = jnp.round((x + 1.0) * 127.5)
  return (k + jax.random.uniform(key, x.shape, x.dtype)) / 128.0 - 1.0


def linear_decay(
  learning_rate: float, steps: int, updates_per_step: int = 1, offset: int = 0
) -> optax.Schedule:
  """``count ↦ lr · max(0, 1 − (⌊count / updates_per_step⌋ + offset) / steps)``.

  The reference's linear decay to 0 over ``steps`` generator iterations: its iteration ``i``
  (from 0) runs ``n_critic`` critic updates at ``lr · (1 − i/steps)`` (``updates_per_step =
  n_critic``) and, for ``i ≥ 1``, first one generator update at the same rate — the generator's
  update number ``count`` is at iteration ``count + 1`` (``offset = 1``).
  """

  def schedule(count):
    t = count // updates_per_step + offset
    return learning_rate * jnp.maximum(0.0, 1.0 - t / steps)

  return schedule


def interpolate(real: jax.Array, fake: jax.Array, key: jax.Array) -> jax.Array:
  """``x̂ = ε x + (1 − ε) x̃`` with one ``ε ~ U[0, 1]`` per example."""
  eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
  return eps * real + (1.0 - eps) * fake


# ----------------------------------------------------------------------------------------------
# Pure train step, sampling and evaluation.


def _generate(generator, params, model_state, z, train: bool, labels=None, groups: int = 1):
  """``G(z)`` (``G(z, labels)`` for a conditional generator) and the updated mutable collections
  (unchanged when ``train`` is False).

  ``groups`` > 1 (with ``train``): the batch is split into that many equal consecutive groups,
  each generated with the batch-norm statistics of its own group (the reference ran each half of
  a batch on its own GPU), by ``vmap`` over the groups; the running averages move towards the
  mean of the groups' statistics (the mean of the groups' updates). A function of the global
  batch, so the same on any device count."""
  variables = {"params": params, **model_state}
  args = (z,) if labels is None else (z, labels)
  if train and model_state:
    if groups > 1:
      grouped = [a.reshape(groups, a.shape[0] // groups, *a.shape[1:]) for a in args]
      apply = lambda *a: generator.apply(variables, *a, train=True, mutable=list(model_state))
      out, updates = jax.vmap(apply)(*grouped)
      updates = jax.tree.map(lambda u: jnp.mean(u, axis=0), dict(updates))
      return out.reshape(-1, *out.shape[2:]), updates
    out, updates = generator.apply(variables, *args, train=True, mutable=list(model_state))
    return out, dict(updates)
  return generator.apply(variables, *args, train=train), model_state


def split_batch(batch: jax.Array | dict[str, jax.Array]) -> tuple[jax.Array, jax.Array | None]:
  """``(images, labels)`` of a batch: an array (no labels) or ``{"image": ..., "label": ...}``."""
  if isinstance(batch, dict):
    return batch["image"], batch.get("label")
  return batch, None


def train_step(
  state: TrainState,
  batch: jax.Array | dict[str, jax.Array],
  *,
  generator: nn.Module,
  critic: nn.Module,
  loss: str,
  gp_weight: float,
  latent_dim: int,
  unroll: bool = False,
  num_classes: int = 0,
  acgan_scale: float = 1.0,
  acgan_scale_g: float = 0.1,
  generator_batch_size: int = 0,
  dequantize_real: bool = False,
  ema_decay: float = 0.0,
  learning_rate: float = 1.0,
  critic_learning_rate: float | None = None,
  bn_groups: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """``n_critic`` critic updates (``lax.scan``), then one generator update.

  Args:
    state: the run's state; ``params``/``opt_state`` have ``generator`` and ``critic``, and
      ``ema_params`` has ``generator`` when ``ema_decay`` > 0.
    batch: real data ``(n_critic, B, *example_shape)``, or ``{"image": that, "label": (n_critic,
      B) int32}`` (labels are needed when ``num_classes`` > 0, ignored otherwise).
    generator, critic: the flax modules (static).
    loss: one of :data:`LOSSES`; gp_weight: λ; latent_dim: size of ``z``.
    unroll: unroll the critic loop instead of a rolled ``lax.scan`` (same computation).
    num_classes: > 0 for AC-GAN (conditional generator, critic output ``(B, 1 + K)``);
      acgan_scale, acgan_scale_g: ``s_D``, ``s_G`` of the module docstring.
    generator_batch_size: examples of the generator update (0: ``B``).
    dequantize_real: dequantise the real images (:func:`dequantize`) before the critic sees them.
    ema_decay: > 0: ``ema_params["generator"] ← d · ema + (1 − d) · params`` after the update.
    learning_rate, critic_learning_rate: Adam's (peak) step sizes of the generator and the
      critic (None: the generator's); ``state.tx`` has unit ones (schedules of peak 1).
    ``gp_weight`` and ``learning_rate`` are replaced by ``state.hparams``'s ``gan.gp_weight`` and
    ``optimizer.learning_rate`` where it has them (a population's members); a swept
    learning rate sets the critic's too unless ``critic_learning_rate`` is given.
    bn_groups: the generator's batch-norm statistics over this many equal groups of each batch
      it generates (:func:`_generate`; the reference's 2: 32 of the critic's 64 fakes, 64 of
      the generator update's 128).

  Returns:
    The new state and scalar metrics (critic metrics averaged over the ``n_critic`` updates).
  """
  images, labels = split_batch(batch)
  conditional = num_classes > 0
  if not conditional:
    labels = None
  elif labels is None:
    raise ValueError("a conditional (AC-GAN) step needs batches with labels")
  n_critic, batch_size = images.shape[:2]
  hp = state.hparams
  use_gp = bool(gp_weight) or "gan.gp_weight" in hp  # Traced λ: computed, maybe weighted by 0.
  gp_weight = hp.get("gan.gp_weight", gp_weight)
  g_lr = hp.get("optimizer.learning_rate", learning_rate)
  c_lr = g_lr if critic_learning_rate is None else critic_learning_rate
  key = state.step_key()
  critic_keys = jax.random.split(jax.random.fold_in(key, 0), n_critic)
  gen_key = jax.random.fold_in(key, 1)

  def critic_update(carry, xs):
    critic_params, critic_opt, gen_state = carry
    real, y, k = xs
    z_key, eps_key = jax.random.split(k)
    if dequantize_real:
      real = dequantize(real, jax.random.fold_in(k, 2))
    z = jax.random.normal(z_key, (batch_size, latent_dim))
    fake, gen_state = _generate(
      generator, state.params["generator"], gen_state, z, True, y, bn_groups
    )
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(p):
      out = lambda x: critic.apply({"params": p}, x)
      real_out, fake_out = out(real), out(fake)
      real_logits, fake_logits = real_out[..., 0], fake_out[..., 0]
      base = critic_loss(real_logits, fake_logits, loss)
      d = lambda x: out(x)[..., 0]
      gp = gradient_penalty(d, interpolate(real, fake, eps_key)) if use_gp else 0.0
      total = base + gp_weight * gp
      metrics = {
        "gradient_penalty": jnp.asarray(gp, jnp.float32),
        "wasserstein": jnp.mean(real_logits) - jnp.mean(fake_logits),
      }
      if conditional:
        ce = classifier_loss(real_out[..., 1:], y)
        total = total + acgan_scale * ce
        metrics["classifier_loss"] = ce
        metrics["classifier_accuracy_real"] = accuracy(real_out[..., 1:], y)
        metrics["classifier_accuracy_fake"] = accuracy(fake_out[..., 1:], y)
      return total, {"critic_loss": total, **metrics}

    grads, metrics = jax.grad(loss_fn, has_aux=True)(critic_params)
    critic_params, critic_opt = apply_gradients(
      state.tx["critic"], critic_params, critic_opt, grads, c_lr
    )
    return (critic_params, critic_opt, gen_state), metrics

  carry = (state.params["critic"], state.opt_state["critic"], state.model_state["generator"])
  (critic_params, critic_opt, gen_state), critic_metrics = jax.lax.scan(
    critic_update, carry, (images, labels, critic_keys), unroll=n_critic if unroll else 1
  )

  gen_batch = generator_batch_size or batch_size
  z = devices.shard_like_batch(jax.random.normal(gen_key, (gen_batch, latent_dim)))
  gen_labels = None
  if conditional:
    gen_labels = jax.random.randint(jax.random.fold_in(gen_key, 1), (gen_batch,), 0, num_classes)

  def gen_loss_fn(p):
    fake, new_gen_state = _generate(generator, p, gen_state, z, True, gen_labels, bn_groups)
    out = critic.apply({"params": critic_params}, fake)
    g_loss = generator_loss(out[..., 0], loss)
    aux = {}
    if conditional:
      aux["generator_classifier_loss"] = classifier_loss(out[..., 1:], gen_labels)
      g_loss = g_loss + acgan_scale_g * aux["generator_classifier_loss"]
    return g_loss, (new_gen_state, aux)

  (g_loss, (gen_state, g_aux)), g_grads = jax.value_and_grad(gen_loss_fn, has_aux=True)(
    state.params["generator"]
  )
  gen_params, gen_opt = apply_gradients(
    state.tx["generator"], state.params["generator"], state.opt_state["generator"], g_grads, g_lr
  )
  ema_params = state.ema_params
  if ema_decay > 0:
    ema_params = {"generator": ema_update(ema_params["generator"], gen_params, ema_decay)}
  new_state = state.replace(
    step=state.step + 1,
    params={"generator": gen_params, "critic": critic_params},
    opt_state={"generator": gen_opt, "critic": critic_opt},
    model_state={**state.model_state, "generator": gen_state},
    ema_params=ema_params,
  )
  metrics = {k: jnp.mean(v) for k, v in critic_metrics.items()}
  metrics["generator_loss"] = g_loss
  metrics.update(g_aux)
  return new_state, metrics


def sample(
  state: TrainState,
  rng: jax.Array,
  num: int,
  *,
  generator: nn.Module,
  latent_dim: int,
  num_classes: int = 0,
  use_ema: bool = False,
  bn_chunk: int = 0,
) -> jax.Array:
  """``num`` samples ``G(z)``, ``z ~ N(0, I)`` → ``(num, *example_shape)``.

  ``bn_chunk`` = 0: in eval mode (batch norm with its running averages). ``bn_chunk`` = k > 0:
  with batch statistics, as the reference (its generator's batch norm is always in training
  mode; its Inception-score samples come in batches of 100): ``⌈num/k⌉·k`` latents are drawn,
  each group of ``k`` generated with its own statistics, and the first ``num`` returned — every
  sample is made in a group of exactly ``k``, whatever ``num`` the caller asks for.

  A conditional generator gets uniform random classes (as the reference's Inception-score
  samples); ``use_ema``: the moving average of the generator's parameters (with the batch-norm
  running statistics of the trained generator when ``bn_chunk`` = 0).
  """
  total = -(-num // bn_chunk) * bn_chunk if bn_chunk else num
  z = jax.random.normal(rng, (total, latent_dim))
  labels = None
  if num_classes:
    labels = jax.random.randint(jax.random.fold_in(rng, 1), (total,), 0, num_classes)
  params = state.ema_params["generator"] if use_ema else state.params["generator"]
  model_state = state.model_state["generator"]
  if bn_chunk and model_state:
    out, _ = _generate(generator, params, model_state, z, True, labels, total // bn_chunk)
    return out[:num]
  out, _ = _generate(generator, params, model_state, z, False, labels)
  return out[:num]


def critic_values(state: TrainState, points: jax.Array, *, critic: nn.Module) -> jax.Array:
  """``D(x)`` at ``points (N, *example_shape)`` → ``(N,)``: the WGAN critic's value, or the
  discriminator's logit for the standard GAN losses."""
  return critic.apply({"params": state.params["critic"]}, points)[..., 0]


def init(
  rng: jax.Array,
  *,
  generator: nn.Module,
  critic: nn.Module,
  example_shape: tuple[int, ...],
  latent_dim: int,
  tx: dict[str, optax.GradientTransformation],
  num_classes: int = 0,
  ema: bool = False,
) -> TrainState:
  """Step-0 state: both networks initialised from ``rng``; the run key is derived from it.
  ``ema``: ``ema_params["generator"]`` starts at the generator's initial parameters."""
  g_key, c_key, run_key = jax.random.split(rng, 3)
  g_args = (jnp.zeros((1, latent_dim)),) + ((jnp.zeros((1,), jnp.int32),) if num_classes else ())
  g_vars = generator.init(g_key, *g_args, train=False)
  c_vars = critic.init(c_key, jnp.zeros((1, *example_shape)), train=False)
  g_params = g_vars["params"]
  g_state = {k: v for k, v in g_vars.items() if k != "params"}
  return TrainState.create(
    params={"generator": g_params, "critic": c_vars["params"]},
    tx=tx,
    rng=run_key,
    model_state={"generator": g_state, "critic": {}},
    ema=("generator",) if ema else (),
  )


def evaluate(
  state: TrainState,
  rng: jax.Array,
  reference: np.ndarray | None,
  *,
  sample_fn: Callable[[TrainState, jax.Array, int], jax.Array],
  num_samples: int,
) -> dict[str, float]:
  """For 2-D data: exact W1 between ``num_samples`` generated and real points, and the noise floor.

  ``reference`` holds ``2·num_samples`` held-out real points; the noise floor is the W1 between
  its two halves, the value a perfect generator would reach on average with this ``n``.
  Image metrics (FID, ...) are not computed here.
  """
  if reference is None or reference.ndim != 2:
    return {}
  n = num_samples
  fake = np.asarray(devices.to_host(sample_fn(state, rng, n)), np.float64)
  w1 = wasserstein1(fake, reference[:n])
  floor = wasserstein1(reference[n : 2 * n], reference[:n])
  return {"w1": w1, "w1_noise_floor": floor, "w1_ratio": w1 / floor}


def make_family(config: ml_collections.ConfigDict, example_shape: tuple[int, ...]) -> Family:
  """Binds the config to the pure functions above."""
  gan, opt = config.gan, config.optimizer
  if gan.loss not in LOSSES:
    raise UserError(f"unknown gan.loss {gan.loss!r}; known: {', '.join(LOSSES)}")
  if gan.n_critic < 1:
    raise UserError(f"gan.n_critic must be >= 1, got {gan.n_critic}")
  if gan.generator_batch_size < 0 or opt.decay_steps < 0 or not 0 <= gan.ema_decay < 1:
    raise UserError(
      "need gan.generator_batch_size >= 0, optimizer.decay_steps >= 0 and 0 <= gan.ema_decay "
      f"< 1; got {gan.generator_batch_size}, {opt.decay_steps} and {gan.ema_decay}"
    )
  if gan.bn_groups < 1 or gan.sample_bn_chunk < 0:
    raise UserError(
      f"need gan.bn_groups >= 1 and gan.sample_bn_chunk >= 0; got {gan.bn_groups} and "
      f"{gan.sample_bn_chunk}"
    )
  gen_batch = gan.generator_batch_size or config.batch_size
  if config.batch_size % gan.bn_groups or gen_batch % gan.bn_groups:
    raise UserError(
      f"gan.bn_groups={gan.bn_groups} must divide the batch sizes (critic {config.batch_size}, "
      f"generator {gen_batch})"
    )
  if gan.conditional:
    classes = data.num_classes(config)  # None without labels; raises for an unlabelled set.
    if classes is None:
      raise UserError("gan.conditional needs a dataset with labels: set dataset.labels=True")
    if classes != gan.num_classes:
      raise UserError(
        f"gan.num_classes is {gan.num_classes} but dataset {config.dataset.name!r} has "
        f"{classes} classes"
      )
  generator, critic = make_networks(gan, example_shape, check_impl(config.conv_impl))
  num_classes = gan.num_classes if gan.conditional else 0
  # Unit (peak) learning rates: the step multiplies the updates by the run's (a traced value in
  # a population; gen_models.train_state.apply_gradients).
  g_lr, c_lr = 1.0, 1.0
  if opt.decay_steps:
    g_lr = linear_decay(1.0, opt.decay_steps, 1, offset=1)
    c_lr = linear_decay(1.0, opt.decay_steps, gan.n_critic)
  tx = {
    "generator": optax.adam(g_lr, b1=opt.b1, b2=opt.b2, eps=opt.eps),
    "critic": optax.adam(c_lr, b1=opt.b1, b2=opt.b2, eps=opt.eps),
  }
  ema = gan.ema_decay > 0
  sample_fn = functools.partial(
    sample,
    generator=generator,
    latent_dim=gan.latent_dim,
    num_classes=num_classes,
    use_ema=ema,
    bn_chunk=int(gan.sample_bn_chunk),
  )
  jitted_sample = jax.jit(sample_fn, static_argnums=2)
  num_eval = config.eval.num_samples if len(example_shape) == 1 else 0
  return Family(
    init=functools.partial(
      init,
      generator=generator,
      critic=critic,
      example_shape=tuple(example_shape),
      latent_dim=gan.latent_dim,
      tx=tx,
      num_classes=num_classes,
      ema=ema,
    ),
    train_step=functools.partial(
      train_step,
      generator=generator,
      critic=critic,
      loss=gan.loss,
      gp_weight=float(gan.gp_weight),
      latent_dim=gan.latent_dim,
      unroll=gan.unroll_critic,
      num_classes=num_classes,
      acgan_scale=float(gan.acgan_scale),
      acgan_scale_g=float(gan.acgan_scale_g),
      generator_batch_size=gan.generator_batch_size,
      dequantize_real=gan.dequantize,
      ema_decay=float(gan.ema_decay),
      learning_rate=float(opt.learning_rate),
      critic_learning_rate=None
      if opt.critic_learning_rate is None
      else float(opt.critic_learning_rate),
      bn_groups=int(gan.bn_groups),
    ),
    sample=sample_fn,
    evaluate=functools.partial(evaluate, sample_fn=jitted_sample, num_samples=num_eval),
    batches_per_step=gan.n_critic,
    num_reference=2 * num_eval,
    critic_values=functools.partial(critic_values, critic=critic),
  )
