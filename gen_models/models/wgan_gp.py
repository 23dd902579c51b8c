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

from gen_models import devices
from gen_models.config import base_config
from gen_models.divergences import wasserstein1
from gen_models.errors import UserError
from gen_models.models import Family
from gen_models.nn import Conv, ConvTranspose, check_impl
from gen_models.train_state import TrainState, apply_gradients

LOSSES = ("wgan_gp", "minimax", "non_saturating")
ARCHITECTURES = ("mlp", "dcgan")


def default_config() -> ml_collections.ConfigDict:
  """Every key of a GAN run, with the paper's toy-experiment values."""
  c = base_config()
  c.model = "wgan_gp"
  c.gan = ml_collections.ConfigDict()
  c.gan.loss = "wgan_gp"  # One of LOSSES.
  c.gan.gp_weight = 10.0  # λ; applied with any loss when > 0.
  c.gan.n_critic = 5  # Critic updates per generator update.
  c.gan.latent_dim = 2
  c.gan.architecture = "mlp"  # "mlp" (2-D toy data) or "dcgan" (32×32 images).
  c.gan.mlp_width = 512
  c.gan.mlp_depth = 3  # Hidden layers of each MLP.
  c.gan.dcgan_dim = 64  # Channels of the first critic conv; the nets scale it by 1, 2, 4.
  # Unroll the n_critic loop (lax.scan unroll=n_critic): same numbers, longer compile. XLA:CPU
  # runs convolutions inside a loop body far more slowly (jax-ml/jax#12868): the cifar10 step
  # took 12× longer as a rolled scan (experiments/bench_train.py, docs/BENCHMARKS.md).
  c.gan.unroll_critic = True
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.0
  c.optimizer.b2 = 0.9
  c.optimizer.critic_learning_rate = ml_collections.config_dict.placeholder(float)  # None: same.
  return c


# ----------------------------------------------------------------------------------------------
# Networks.


class MLP(nn.Module):
  """``depth`` ReLU layers of ``width`` units, then a linear layer to ``out_dim``.

  Input ``(B, d_in)`` → output ``(B, out_dim)``.
  """

  width: int
  depth: int
  out_dim: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    del train
    for _ in range(self.depth):
      x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(self.out_dim)(x)


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


def gradient_penalty(critic_fn: Callable[[jax.Array], jax.Array], x_hat: jax.Array) -> jax.Array:
  """``E_i[(‖∇_x D(x̂_i)‖₂ − 1)²]`` over the batch ``x_hat (B, ...)`` (λ not included).

  One backward pass of ``Σ_i D(x̂_i)`` gives every per-example gradient at once, because
  ``∂/∂x̂_i Σ_j D(x̂_j) = ∇D(x̂_i)`` when ``D`` treats examples independently.
  """
  grads = jax.grad(lambda x: jnp.sum(critic_fn(x)))(x_hat)
  sq = jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1)
  norms = jnp.sqrt(sq + 1e-12)  # The tiny offset keeps d‖g‖/dg finite at g = 0.
  return jnp.mean(jnp.square(norms - 1.0))


def interpolate(real: jax.Array, fake: jax.Array, key: jax.Array) -> jax.Array:
  """``x̂ = ε x + (1 − ε) x̃`` with one ``ε ~ U[0, 1]`` per example."""
  eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
  return eps * real + (1.0 - eps) * fake


# ----------------------------------------------------------------------------------------------
# Pure train step, sampling and evaluation.


def _generate(generator, params, model_state, z, train: bool):
  """``G(z)`` and the updated mutable collections (unchanged when ``train`` is False)."""
  variables = {"params": params, **model_state}
  if train and model_state:
    out, updates = generator.apply(variables, z, train=True, mutable=list(model_state))
    return out, dict(updates)
  return generator.apply(variables, z, train=train), model_state


def train_step(
  state: TrainState,
  batch: jax.Array,
  *,
  generator: nn.Module,
  critic: nn.Module,
  loss: str,
  gp_weight: float,
  latent_dim: int,
  unroll: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """``n_critic`` critic updates (``lax.scan``), then one generator update.

  Args:
    state: the run's state; ``params``/``opt_state`` have ``generator`` and ``critic``.
    batch: real data ``(n_critic, B, *example_shape)``.
    generator, critic: the flax modules (static).
    loss: one of :data:`LOSSES`; gp_weight: λ; latent_dim: size of ``z``.
    unroll: unroll the critic loop instead of a rolled ``lax.scan`` (same computation).

  Returns:
    The new state and scalar metrics (critic metrics averaged over the ``n_critic`` updates).
  """
  n_critic, batch_size = batch.shape[:2]
  key = state.step_key()
  critic_keys = jax.random.split(jax.random.fold_in(key, 0), n_critic)
  gen_key = jax.random.fold_in(key, 1)

  def critic_update(carry, xs):
    critic_params, critic_opt, gen_state = carry
    real, k = xs
    z_key, eps_key = jax.random.split(k)
    z = jax.random.normal(z_key, (batch_size, latent_dim))
    fake, gen_state = _generate(generator, state.params["generator"], gen_state, z, True)
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(p):
      apply = lambda x: critic.apply({"params": p}, x)[..., 0]
      real_logits, fake_logits = apply(real), apply(fake)
      base = critic_loss(real_logits, fake_logits, loss)
      gp = gradient_penalty(apply, interpolate(real, fake, eps_key)) if gp_weight else 0.0
      total = base + gp_weight * gp
      return total, {
        "critic_loss": total,
        "gradient_penalty": jnp.asarray(gp, jnp.float32),
        "wasserstein": jnp.mean(real_logits) - jnp.mean(fake_logits),
      }

    grads, metrics = jax.grad(loss_fn, has_aux=True)(critic_params)
    critic_params, critic_opt = apply_gradients(
      state.tx["critic"], critic_params, critic_opt, grads
    )
    return (critic_params, critic_opt, gen_state), metrics

  carry = (state.params["critic"], state.opt_state["critic"], state.model_state["generator"])
  (critic_params, critic_opt, gen_state), critic_metrics = jax.lax.scan(
    critic_update, carry, (batch, critic_keys), unroll=n_critic if unroll else 1
  )

  z = jax.random.normal(gen_key, (batch_size, latent_dim))

  def gen_loss_fn(p):
    fake, new_gen_state = _generate(generator, p, gen_state, z, True)
    logits = critic.apply({"params": critic_params}, fake)[..., 0]
    return generator_loss(logits, loss), new_gen_state

  (g_loss, gen_state), g_grads = jax.value_and_grad(gen_loss_fn, has_aux=True)(
    state.params["generator"]
  )
  gen_params, gen_opt = apply_gradients(
    state.tx["generator"], state.params["generator"], state.opt_state["generator"], g_grads
  )
  new_state = state.replace(
    step=state.step + 1,
    params={"generator": gen_params, "critic": critic_params},
    opt_state={"generator": gen_opt, "critic": critic_opt},
    model_state={**state.model_state, "generator": gen_state},
  )
  metrics = {k: jnp.mean(v) for k, v in critic_metrics.items()}
  metrics["generator_loss"] = g_loss
  return new_state, metrics


def sample(
  state: TrainState, rng: jax.Array, num: int, *, generator: nn.Module, latent_dim: int
) -> jax.Array:
  """``num`` samples ``G(z)``, ``z ~ N(0, I)``, in eval mode → ``(num, *example_shape)``."""
  z = jax.random.normal(rng, (num, latent_dim))
  out, _ = _generate(generator, state.params["generator"], state.model_state["generator"], z, False)
  return out


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
) -> TrainState:
  """Step-0 state: both networks initialised from ``rng``; the run key is derived from it."""
  g_key, c_key, run_key = jax.random.split(rng, 3)
  g_vars = generator.init(g_key, jnp.zeros((1, latent_dim)), train=False)
  c_vars = critic.init(c_key, jnp.zeros((1, *example_shape)), train=False)
  g_params = g_vars["params"]
  g_state = {k: v for k, v in g_vars.items() if k != "params"}
  return TrainState.create(
    params={"generator": g_params, "critic": c_vars["params"]},
    tx=tx,
    rng=run_key,
    model_state={"generator": g_state, "critic": {}},
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
  generator, critic = make_networks(gan, example_shape, check_impl(config.conv_impl))
  critic_lr = (
    opt.critic_learning_rate if opt.critic_learning_rate is not None else opt.learning_rate
  )
  tx = {
    "generator": optax.adam(opt.learning_rate, b1=opt.b1, b2=opt.b2),
    "critic": optax.adam(critic_lr, b1=opt.b1, b2=opt.b2),
  }
  sample_fn = functools.partial(sample, generator=generator, latent_dim=gan.latent_dim)
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
    ),
    train_step=functools.partial(
      train_step,
      generator=generator,
      critic=critic,
      loss=gan.loss,
      gp_weight=float(gan.gp_weight),
      latent_dim=gan.latent_dim,
      unroll=gan.unroll_critic,
    ),
    sample=sample_fn,
    evaluate=functools.partial(evaluate, sample_fn=jitted_sample, num_samples=num_eval),
    batches_per_step=gan.n_critic,
    num_reference=2 * num_eval,
    critic_values=functools.partial(critic_values, critic=critic),
  )
