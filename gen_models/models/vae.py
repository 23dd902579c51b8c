r"""β-VAE (Higgins et al. 2017) and its capacity-annealed variant (Burgess et al. 2018).

Notation: ``x`` an example, ``q(z|x) = N(μ(x), diag σ²(x))`` the encoder's posterior with
``log σ²`` predicted directly, ``p(z) = N(0, I)`` the prior, ``p(x|z)`` the decoder's likelihood,
``d`` the latent dimension, ``D`` the number of values in one example (pixels × channels). Every
loss below is *minimised*; all quantities are in nats.

Reconstruction term, per example summed over all ``D`` values, then averaged over the batch::

    R = −E_b[ log p(x_b | z_b) ],  z_b = μ(x_b) + σ(x_b) ⊙ ε_b,  ε_b ~ N(0, I)   (one sample)

* Bernoulli on logits ``ℓ`` (binary data such as dSprites, values in [0, 1]), with
  ``log σ(ℓ) = −softplus(−ℓ)`` and ``log(1 − σ(ℓ)) = log σ(−ℓ) = −softplus(ℓ)``, finite for
  every finite logit::

      log p(x | ℓ) = Σ_i [ x_i log σ(ℓ_i) + (1 − x_i) log σ(−ℓ_i) ]

* Gaussian with mean ``m`` and one scale ``s`` (fixed, or learned as ``log s``)::

      log p(x | m) = Σ_i [ −½ (x_i − m_i)² / s² − log s − ½ log 2π ]

KL term, analytic (``gen_models.divergences.kl_diag_gaussians``), per latent dimension ``j``::

    KL_j(x) = ½ (σ_j² + μ_j² − 1 − log σ_j²),   KL = E_b[ Σ_j KL_j(x_b) ]

Objectives (``vae.objective``)::

    "beta":      L = R + β · KL                                  (β = 1: the plain VAE)
    "capacity":  L = R + γ · |KL − C(t)|,  C(t) = min(C_max, C_max · t / T)

``t`` is the number of completed steps before the update (0 at the first one), as
disentanglement_lib's ``AnnealedVAE`` (γ = 1000, T = 100k there); like it, the absolute value is
taken of the *batch-mean* KL. The evidence lower bound is ``ELBO = −(R + KL)`` (nats per
example), logged together with ``R``, ``KL`` and the batch mean of every ``KL_j``
(``kl_per_dim/j``, ``j`` zero-padded to the digits of ``d − 1``; a collapsed unit has
``KL_j ≈ 0``).

Networks (``vae.architecture``), each an encoder ``x (B, *shape) → (μ, log σ²)``, two ``(B, d)``,
and a decoder ``z (B, d) → (B, *shape)`` (logits for Bernoulli, means for Gaussian):

* ``"conv"``: disentanglement_lib ``conv_encoder``/``deconv_decoder`` (their 64×64 net, after
  Higgins et al. 2017 Table 1): convs 32 k4 s2, 32 k4 s2, 64 k2 s2, 64 k2 s2 (SAME, ReLU) →
  dense 256 (ReLU) → dense d (means) and dense d (log-variances); decoder dense 256 → dense 1024
  (ReLU) → 4×4×64 → transposed convs 64, 32, 32 (k4 s2, SAME, ReLU) and C (k4 s2, no activation).
* ``"burgess"``: Burgess et al. 2018 (Sec. A.1): 4 convs of 32 channels k4 s2 (ReLU) → dense 256
  → dense 256 (ReLU) → means and log-variances; the decoder is its transpose (dense 256, 256,
  4·4·32, then 3 transposed convs of 32 and one of C, k4 s2). The paper's head predicts
  log σ; we predict log σ² as disentanglement_lib does (the same family, a factor 2).
* ``"mlp"``: for vector data (or flattened images): ``mlp_depth`` dense ReLU layers of
  ``mlp_width`` each way.
* ``"fc"``: Higgins et al. 2017's fully connected dSprites model as disentanglement_lib writes
  it (``fc_encoder``/``fc_decoder``, after row 1 of the paper's Table 1): the example flattened
  (64·64·1 = 4096 values) → dense 1200 → dense 1200 (ReLU after each) → dense d (means) and
  dense d (log-variances), both from the second hidden layer; decoder dense 1200 → 1200 → 1200
  (tanh after each) → dense ``prod(shape)``, no output activation (logits), reshaped to the
  example's shape. Any example shape.

Kernels start from ``vae.init`` (``gen_models.nn.init``): flax's LeCun normal (default) or
TensorFlow's Glorot uniform, which disentanglement_lib's layers had; biases from zero.

The conv nets take H×W×C images with H and W multiples of 16 (four stride-2 halvings); the
decoder starts from an (H/16)×(W/16) grid, i.e. the papers' 4×4 for 64×64 images.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gen_models import devices
from gen_models.config import base_config
from gen_models.divergences import kl_diag_gaussians
from gen_models.errors import UserError
from gen_models.models import Family
from gen_models.nn import INITS, Conv, ConvTranspose, check_impl, check_init, kernel_init
from gen_models.train_state import TrainState, apply_gradients

ARCHITECTURES = ("conv", "burgess", "mlp", "fc")
ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}
OPTIMIZERS = ("adam", "adagrad")
OBJECTIVES = ("beta", "capacity")
# Config keys a population may sweep (gen_models.population): values the step reads from
# ``state.hparams`` when they are there, else the config's constants.
SWEEPABLE = ("vae.beta", "vae.gamma", "vae.c_max", "optimizer.learning_rate")
LIKELIHOODS = ("bernoulli", "gaussian")


def default_config() -> ml_collections.ConfigDict:
  """Every key of a VAE run; the defaults are disentanglement_lib's β-VAE on dSprites."""
  c = base_config()
  c.model = "vae"
  c.batch_size = 64
  c.vae = ml_collections.ConfigDict()
  c.vae.architecture = "conv"  # One of ARCHITECTURES.
  # Kernel initialiser, one of gen_models.nn.INITS: flax's "lecun_normal", or "glorot_uniform"
  # (TensorFlow's layers' default, disentanglement_lib's). Biases start at zero either way.
  c.vae.init = "lecun_normal"
  c.vae.latent_dim = 10
  c.vae.likelihood = "bernoulli"  # One of LIKELIHOODS; Bernoulli needs data in [0, 1].
  c.vae.gaussian_scale = 1.0  # s of the Gaussian likelihood (its initial value if learned).
  c.vae.learn_gaussian_scale = False
  c.vae.objective = "beta"  # One of OBJECTIVES.
  c.vae.beta = 1.0  # β of the "beta" objective; 1 is the plain VAE.
  c.vae.gamma = 1000.0  # γ of the "capacity" objective.
  c.vae.c_max = 25.0  # C_max (nats) of the "capacity" objective.
  c.vae.capacity_steps = 100_000  # T: steps over which C grows linearly to C_max.
  c.vae.mlp_width = 256
  c.vae.mlp_depth = 2
  c.vae.traversal_range = 2.0  # Latent traversals sweep μ_j ± this many prior std deviations.
  c.vae.traversal_steps = 9
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # One of OPTIMIZERS.
  c.optimizer.learning_rate = 1e-4
  c.optimizer.b1 = 0.9  # Adam's.
  c.optimizer.b2 = 0.999  # Adam's.
  c.optimizer.eps = 1e-8  # Adam's ε; Adagrad's ε (added to the accumulator under the root).
  c.optimizer.initial_accumulator_value = 0.1  # Adagrad's (optax's and TensorFlow's default).
  return c


# ----------------------------------------------------------------------------------------------
# Networks.


class GaussianHead(nn.Module):
  """Two dense layers from the same features: ``(μ, log σ²)``, each ``(B, latent_dim)``."""

  latent_dim: int
  weight_init: str = "lecun_normal"  # gen_models.nn.init: the kernels' initialiser.

  @nn.compact
  def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    dense = functools.partial(nn.Dense, self.latent_dim, kernel_init=kernel_init(self.weight_init))
    return dense(name="means")(h), dense(name="log_var")(h)


class ConvEncoder(nn.Module):
  """Stride-2 convs (``(features, kernel)`` per layer, SAME, ReLU) → dense ReLU layers → head.

  ``(B, H, W, C)`` → ``(μ, log σ²)``, each ``(B, latent_dim)``.
  """

  convs: Sequence[tuple[int, int]]
  dense: Sequence[int]
  latent_dim: int
  conv_impl: str = "auto"  # gen_models.nn.conv: how the convs are computed (same function).
  weight_init: str = "lecun_normal"  # gen_models.nn.init: the kernels' initialiser.

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    init = kernel_init(self.weight_init)
    for features, k in self.convs:
      conv = Conv(
        features, (k, k), strides=(2, 2), padding="SAME", kernel_init=init, impl=self.conv_impl
      )
      x = nn.relu(conv(x))
    h = x.reshape(x.shape[0], -1)
    for width in self.dense:
      h = nn.relu(nn.Dense(width, kernel_init=init)(h))
    return GaussianHead(self.latent_dim, self.weight_init)(h)


class ConvDecoder(nn.Module):
  """Dense ReLU layers → ``(B, *start)`` → k4 s2 transposed convs (ReLU between) → ``out_shape``.

  ``z (B, d)`` → ``(B, H, W, C)`` (no output activation).
  """

  dense: Sequence[int]
  start: tuple[int, int, int]
  deconvs: Sequence[int]
  out_shape: tuple[int, int, int]
  conv_impl: str = "auto"  # gen_models.nn.conv: how the convs are computed (same function).
  weight_init: str = "lecun_normal"  # gen_models.nn.init (transposed convs: TensorFlow's fans).

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h = z
    for width in (*self.dense, math.prod(self.start)):
      h = nn.relu(nn.Dense(width, kernel_init=kernel_init(self.weight_init))(h))
    x = h.reshape(z.shape[0], *self.start)
    deconv = functools.partial(
      ConvTranspose,
      kernel_size=(4, 4),
      strides=(2, 2),
      padding="SAME",
      kernel_init=kernel_init(self.weight_init, transpose=True),
      impl=self.conv_impl,
    )
    for features in self.deconvs:
      x = nn.relu(deconv(features)(x))
    return deconv(self.out_shape[-1])(x)


class DenseEncoder(nn.Module):
  """Dense layers of ``widths`` (``activation`` after each) on the flattened example → head.

  ``x (B, *shape)`` → ``(μ, log σ²)``, each ``(B, latent_dim)``.
  """

  widths: Sequence[int]
  latent_dim: int
  activation: str = "relu"  # A key of ACTIVATIONS.
  weight_init: str = "lecun_normal"  # gen_models.nn.init: the kernels' initialiser.

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    init = kernel_init(self.weight_init)
    h = x.reshape(x.shape[0], -1)
    for width in self.widths:
      h = ACTIVATIONS[self.activation](nn.Dense(width, kernel_init=init)(h))
    return GaussianHead(self.latent_dim, self.weight_init)(h)


class DenseDecoder(nn.Module):
  """Dense layers of ``widths`` (``activation`` after each) → dense ``prod(out_shape)``.

  ``z (B, d)`` → ``(B, *out_shape)`` (no output activation).
  """

  widths: Sequence[int]
  out_shape: tuple[int, ...]
  activation: str = "relu"  # A key of ACTIVATIONS.
  weight_init: str = "lecun_normal"  # gen_models.nn.init: the kernels' initialiser.

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    init = kernel_init(self.weight_init)
    h = z
    for width in self.widths:
      h = ACTIVATIONS[self.activation](nn.Dense(width, kernel_init=init)(h))
    out = nn.Dense(math.prod(self.out_shape), kernel_init=init)(h)
    return out.reshape(z.shape[0], *self.out_shape)


def make_networks(
  vae: ml_collections.ConfigDict, shape: Sequence[int], conv_impl: str = "auto"
) -> tuple[nn.Module, ...]:
  """``(encoder, decoder)`` for examples of ``shape``; ``conv_impl`` as ``gen_models.nn.conv``,
  kernels initialised as ``vae.init`` names (``gen_models.nn.init``)."""
  shape, d = tuple(shape), vae.latent_dim
  w_init = check_init(vae.get("init", "lecun_normal"))
  if vae.architecture == "mlp":
    widths = (vae.mlp_width,) * vae.mlp_depth
    return DenseEncoder(widths, d, "relu", w_init), DenseDecoder(widths, shape, "relu", w_init)
  if vae.architecture == "fc":
    return (
      DenseEncoder((1200, 1200), d, "relu", w_init),
      DenseDecoder((1200, 1200, 1200), shape, "tanh", w_init),
    )
  if vae.architecture not in ARCHITECTURES:
    raise UserError(f"unknown vae.architecture {vae.architecture!r}; known: {ARCHITECTURES}")
  if len(shape) != 3 or shape[0] % 16 or shape[1] % 16 or min(shape) < 1:
    raise UserError(
      f"vae.architecture={vae.architecture!r} needs H×W×C images with H and W multiples of 16 "
      f"(the papers' 64×64×C), got examples of shape {shape}; use vae.architecture='mlp' or 'fc'"
    )
  grid = (shape[0] // 16, shape[1] // 16)
  if vae.architecture == "conv":
    encoder = ConvEncoder(((32, 4), (32, 4), (64, 2), (64, 2)), (256,), d, conv_impl, w_init)
    decoder = ConvDecoder((256,), (*grid, 64), (64, 32, 32), shape, conv_impl, w_init)
  else:
    encoder = ConvEncoder(((32, 4),) * 4, (256, 256), d, conv_impl, w_init)
    decoder = ConvDecoder((256, 256), (*grid, 32), (32, 32, 32), shape, conv_impl, w_init)
  return encoder, decoder


# ----------------------------------------------------------------------------------------------
# Losses (the formulas are in the module docstring).


def _sum_per_example(x: jax.Array) -> jax.Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def bernoulli_log_likelihood(x: jax.Array, logits: jax.Array) -> jax.Array:
  """``Σ_i x_i log σ(ℓ_i) + (1 − x_i) log σ(−ℓ_i)``: ``(B, ...)`` each → ``(B,)``.

  Through ``log_sigmoid``: finite for every finite logit, for any ``x`` in [0, 1].
  """
  return _sum_per_example(x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits))


def gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """``Σ_i −½ (x_i − m_i)² / s² − log s − ½ log 2π`` with one scalar ``log s``: → ``(B,)``."""
  z = (x - mean) * jnp.exp(-log_scale)
  return _sum_per_example(-0.5 * jnp.square(z) - log_scale - 0.5 * math.log(2 * math.pi))


def log_likelihood(
  x: jax.Array, decoded: jax.Array, likelihood: str, log_scale: jax.Array | None
) -> jax.Array:
  """``log p(x | z)`` per example ``(B,)`` from the decoder output ``(B, ...)``."""
  if likelihood == "bernoulli":
    return bernoulli_log_likelihood(x, decoded)
  if likelihood == "gaussian":
    return gaussian_log_likelihood(x, decoded, log_scale)
  raise ValueError(f"unknown likelihood {likelihood!r}")


def mean_of(decoded: jax.Array, likelihood: str) -> jax.Array:
  """The mean of ``p(x|z)`` in data space: ``σ(ℓ)`` for Bernoulli, the output for Gaussian."""
  return jax.nn.sigmoid(decoded) if likelihood == "bernoulli" else decoded


def capacity(step: jax.Array, c_max: float, capacity_steps: int) -> jax.Array:
  """``C(t) = min(C_max, C_max · t / T)`` (float32 scalar)."""
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(c_max, c_max * t / capacity_steps)


def objective(
  reconstruction: jax.Array,
  kl: jax.Array,
  *,
  kind: str,
  beta: float = 1.0,
  gamma: float = 1000.0,
  capacity_now: jax.Array | float = 0.0,
) -> jax.Array:
  """``R + β·KL`` (``kind="beta"``) or ``R + γ·|KL − C|`` (``"capacity"``); scalars → scalar."""
  if kind == "beta":
    return reconstruction + beta * kl
  if kind == "capacity":
    return reconstruction + gamma * jnp.abs(kl - capacity_now)
  raise ValueError(f"unknown objective {kind!r}")


def reparameterize(key: jax.Array, mu: jax.Array, log_var: jax.Array) -> jax.Array:
  """``z = μ + exp(½ log σ²) ⊙ ε``, ``ε ~ N(0, I)``: ``(B, d)``."""
  return mu + jnp.exp(0.5 * log_var) * jax.random.normal(key, mu.shape, mu.dtype)


def terms(
  params: dict,
  x: jax.Array,
  key: jax.Array,
  *,
  encoder: nn.Module,
  decoder: nn.Module,
  likelihood: str,
) -> tuple[jax.Array, jax.Array]:
  """``(R, KL_j)``: the batch-mean reconstruction term (scalar) and per-dimension KLs ``(d,)``."""
  mu, log_var = encoder.apply({"params": params["encoder"]}, x)
  z = reparameterize(key, mu, log_var)
  decoded = decoder.apply({"params": params["decoder"]}, z)
  log_scale = params["likelihood"]["log_scale"] if "likelihood" in params else None
  reconstruction = -jnp.mean(log_likelihood(x, decoded, likelihood, log_scale))
  kl_per_dim = jnp.mean(kl_diag_gaussians(mu, log_var, axis=None), axis=0)
  return reconstruction, kl_per_dim


def _params_with_scale(params: dict, log_scale: float | None) -> dict:
  """Adds the fixed Gaussian ``log s`` (a constant, not trained) where it is not learned."""
  if log_scale is None or "likelihood" in params:
    return params
  return {**params, "likelihood": {"log_scale": jnp.asarray(log_scale, jnp.float32)}}


# ----------------------------------------------------------------------------------------------
# Pure train step, sampling, encoding, pictures and evaluation.


def train_step(
  state: TrainState,
  batch: jax.Array,
  *,
  encoder: nn.Module,
  decoder: nn.Module,
  likelihood: str,
  fixed_log_scale: float | None,
  kind: str,
  beta: float,
  gamma: float,
  c_max: float,
  capacity_steps: int,
  learning_rate: float,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update of encoder and decoder (and a learned Gaussian scale) on ``L``.

  Args:
    state: ``params`` has ``encoder``, ``decoder`` (and ``likelihood`` when its scale is
      learned); one optimizer ``vae`` updates all of them.
    batch: ``(1, B, *example_shape)`` float32.
    encoder, decoder: the flax modules (static).
    likelihood: ``"bernoulli"`` or ``"gaussian"``; fixed_log_scale: ``log s`` if not learned.
    kind, beta, gamma, c_max, capacity_steps: the objective (module docstring).
    learning_rate: the optimizer's step size (``state.tx["vae"]`` has a unit one).
    ``beta``, ``gamma``, ``c_max`` and ``learning_rate`` are replaced by ``state.hparams``'s
    values of ``vae.beta``, ``vae.gamma``, ``vae.c_max`` and ``optimizer.learning_rate`` where
    it has them (a population's members).

  Returns:
    The new state and scalar metrics: ``loss``, ``elbo``, ``reconstruction``, ``kl``,
    ``kl_per_dim/j`` (and ``capacity`` for the capacity objective).
  """
  x = batch[0]
  key = jax.random.fold_in(state.step_key(), 0)
  hp = state.hparams
  beta, gamma, c_max = (
    hp.get("vae.beta", beta),
    hp.get("vae.gamma", gamma),
    hp.get("vae.c_max", c_max),
  )
  learning_rate = hp.get("optimizer.learning_rate", learning_rate)
  c_now = capacity(state.step, c_max, capacity_steps)

  def loss_fn(params):
    reconstruction, kl_per_dim = terms(
      _params_with_scale(params, fixed_log_scale),
      x,
      key,
      encoder=encoder,
      decoder=decoder,
      likelihood=likelihood,
    )
    kl = jnp.sum(kl_per_dim)
    loss = objective(reconstruction, kl, kind=kind, beta=beta, gamma=gamma, capacity_now=c_now)
    return loss, (reconstruction, kl_per_dim)

  (loss, (reconstruction, kl_per_dim)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params
  )
  params, opt_state = apply_gradients(
    state.tx["vae"], state.params, state.opt_state["vae"], grads, learning_rate
  )
  new_state = state.replace(step=state.step + 1, params=params, opt_state={"vae": opt_state})
  kl = jnp.sum(kl_per_dim)
  metrics = {"loss": loss, "elbo": -(reconstruction + kl), "reconstruction": reconstruction}
  metrics["kl"] = kl
  width = len(str(kl_per_dim.shape[0] - 1))
  metrics.update({f"kl_per_dim/{j:0{width}d}": kl_per_dim[j] for j in range(kl_per_dim.shape[0])})
  if kind == "capacity":
    metrics["capacity"] = c_now
  return new_state, metrics


def encode(state: TrainState, x: jax.Array, *, encoder: nn.Module) -> jax.Array:
  """Posterior means ``μ(x)``: ``x (B, *example_shape)`` → ``(B, d)``."""
  return encoder.apply({"params": state.params["encoder"]}, x)[0]


def decode_mean(state: TrainState, z: jax.Array, *, decoder: nn.Module, likelihood: str):
  """The mean of ``p(x|z)`` in data space: ``z (B, d)`` → ``(B, *example_shape)``."""
  return mean_of(decoder.apply({"params": state.params["decoder"]}, z), likelihood)


def sample(
  state: TrainState,
  rng: jax.Array,
  num: int,
  *,
  decoder: nn.Module,
  likelihood: str,
  latent_dim: int,
) -> jax.Array:
  """``num`` decoded means ``E[x | z]``, ``z ~ N(0, I)`` → ``(num, *example_shape)``.

  For Bernoulli these are pixel probabilities in [0, 1] (the usual picture of a binary VAE),
  not binary draws.
  """
  z = jax.random.normal(rng, (num, latent_dim))
  return decode_mean(state, z, decoder=decoder, likelihood=likelihood)


def traversal_latents(mu: jax.Array, radius: float, steps: int) -> jax.Array:
  """``Z[j, k]`` is ``μ`` with ``μ_j + t_k``, ``t = linspace(−radius, radius, steps)``.

  Returns ``(d, steps, d)``. ``mu`` is one posterior mean ``(d,)``; the prior's standard
  deviation is 1, so ``radius`` is in prior standard deviations.
  """
  d = mu.shape[0]
  t = jnp.linspace(-radius, radius, steps, dtype=mu.dtype)
  offsets = jnp.eye(d, dtype=mu.dtype)[:, None, :] * t[None, :, None]
  return mu[None, None, :] + offsets


def image_grids(
  state: TrainState,
  examples: jax.Array,
  *,
  encoder: nn.Module,
  decoder: nn.Module,
  likelihood: str,
  radius: float,
  steps: int,
) -> dict[str, jax.Array]:
  """Pictures of a run, in data space, as ``{name: (rows, columns, *example_shape)}``.

  ``reconstructions``: rows of ``c = min(8, n)`` examples alternating with rows of their
  reconstructions ``E[x | z = μ(x)]``; ``examples (n, *example_shape)``, the last ``n mod c``
  unused: ``(2·⌊n/c⌋, c, *example_shape)``.
  ``traversals``: row ``j`` decodes the posterior mean of ``examples[0]`` with latent ``j`` swept
  over ``μ_j ± radius`` in ``steps`` steps: ``(d, steps, *example_shape)``.
  """
  mu = encode(state, examples, encoder=encoder)
  recon = decode_mean(state, mu, decoder=decoder, likelihood=likelihood)
  shape, c = examples.shape[1:], min(8, examples.shape[0])
  rows = examples.shape[0] // c
  pairs = jnp.stack(
    [examples[: rows * c].reshape(rows, c, *shape), recon[: rows * c].reshape(rows, c, *shape)], 1
  )
  z = traversal_latents(mu[0], radius, steps)
  d = z.shape[0]
  traversed = decode_mean(state, z.reshape(d * steps, d), decoder=decoder, likelihood=likelihood)
  return {
    "reconstructions": pairs.reshape(2 * rows, c, *shape),
    "traversals": traversed.reshape(d, steps, *shape),
  }


def evaluate(
  state: TrainState,
  rng: jax.Array,
  reference: np.ndarray | None,
  *,
  terms_fn,
  chunk: int,
) -> dict[str, float]:
  """ELBO, reconstruction and KL on the dataset's ``reference`` examples (one z per example).

  The reference examples are held out where the dataset has a test split (not dSprites, whose
  reference images are grid images the training batches also draw).

  ``terms_fn(params, x, key) -> (R, KL_j)`` as :func:`terms` (jitted); chunks of ``chunk``
  examples, weighted by their sizes. Empty when the dataset gives no reference examples.
  """
  if reference is None or len(reference) == 0:
    return {}
  total_r, total_kl, n = 0.0, 0.0, len(reference)
  for i, start in enumerate(range(0, n, chunk)):
    x = reference[start : start + chunk]
    r, kl_j = devices.to_host(terms_fn(state.params, x, jax.random.fold_in(rng, i)))
    total_r += float(r) * len(x)
    total_kl += float(np.sum(kl_j)) * len(x)
  r, kl = total_r / n, total_kl / n
  return {"elbo": -(r + kl), "reconstruction": r, "kl": kl}


def init(
  rng: jax.Array,
  *,
  encoder: nn.Module,
  decoder: nn.Module,
  example_shape: tuple[int, ...],
  latent_dim: int,
  learned_log_scale: float | None,
  tx: optax.GradientTransformation,
) -> TrainState:
  """Step-0 state: both networks initialised from ``rng``; the run key is derived from it."""
  e_key, d_key, run_key = jax.random.split(rng, 3)
  params = {
    "encoder": encoder.init(e_key, jnp.zeros((1, *example_shape)))["params"],
    "decoder": decoder.init(d_key, jnp.zeros((1, latent_dim)))["params"],
  }
  if learned_log_scale is not None:
    params["likelihood"] = {"log_scale": jnp.asarray(learned_log_scale, jnp.float32)}
  return TrainState.create(params=params, tx={"vae": tx}, rng=run_key, opt_params={"vae": params})


def make_optimizer(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """``opt.name``'s optax optimizer with a unit learning rate (the step multiplies its updates
  by ``optimizer.learning_rate``: ``gen_models.train_state.apply_gradients``).

  ``"adam"``: ``optax.adam(1, b1, b2, eps)``. ``"adagrad"`` (Duchi et al. 2011), per parameter,
  from ``a_0 = initial_accumulator_value``::

      a_t = a_{t−1} + g_t²,   θ_t = θ_{t−1} − lr · g_t / sqrt(a_t + eps)

  ``optax.adagrad(1, initial_accumulator_value, eps)``. TensorFlow 1's
  ``tf.train.AdagradOptimizer`` is the same rule with ``eps = 0`` (and ``a_0 = 0.1`` by default).
  """
  if opt.name == "adagrad":
    return optax.adagrad(1.0, initial_accumulator_value=opt.initial_accumulator_value, eps=opt.eps)
  return optax.adam(1.0, b1=opt.b1, b2=opt.b2, eps=opt.eps)


def make_family(config: ml_collections.ConfigDict, example_shape: tuple[int, ...]) -> Family:
  """Binds the config to the pure functions above; bad settings are a :class:`UserError`."""
  vae, opt = config.vae, config.optimizer
  if vae.objective not in OBJECTIVES:
    raise UserError(f"unknown vae.objective {vae.objective!r}; known: {', '.join(OBJECTIVES)}")
  if vae.likelihood not in LIKELIHOODS:
    raise UserError(f"unknown vae.likelihood {vae.likelihood!r}; known: {', '.join(LIKELIHOODS)}")
  if vae.init not in INITS:
    raise UserError(f"unknown vae.init {vae.init!r}; known: {', '.join(INITS)}")
  if opt.name not in OPTIMIZERS:
    raise UserError(f"unknown optimizer.name {opt.name!r}; known: {', '.join(OPTIMIZERS)}")
  checks = [
    ("vae.beta", vae.beta, vae.beta >= 0, ">= 0"),
    ("vae.gamma", vae.gamma, vae.gamma >= 0, ">= 0"),
    ("vae.c_max", vae.c_max, vae.c_max >= 0, ">= 0"),
    ("vae.capacity_steps", vae.capacity_steps, vae.capacity_steps >= 1, ">= 1"),
    ("vae.latent_dim", vae.latent_dim, vae.latent_dim >= 1, ">= 1"),
    ("vae.gaussian_scale", vae.gaussian_scale, vae.gaussian_scale > 0, "> 0"),
    ("vae.traversal_steps", vae.traversal_steps, vae.traversal_steps >= 2, ">= 2"),
    ("optimizer.eps", opt.eps, opt.eps >= 0, ">= 0"),
    (
      "optimizer.initial_accumulator_value",
      opt.initial_accumulator_value,
      opt.initial_accumulator_value >= 0,
      ">= 0",
    ),
  ]
  for name, value, ok, want in checks:
    if not (ok and math.isfinite(value)):
      raise UserError(f"{name} must be {want}, got {value}")
  if vae.architecture == "mlp" and (vae.mlp_width < 1 or vae.mlp_depth < 0):
    raise UserError(
      f"vae.mlp_width must be >= 1 and vae.mlp_depth >= 0, got {vae.mlp_width}, {vae.mlp_depth}"
    )
  encoder, decoder = make_networks(vae, example_shape, check_impl(config.conv_impl))
  log_scale = math.log(vae.gaussian_scale) if vae.likelihood == "gaussian" else None
  learned = log_scale if vae.learn_gaussian_scale else None
  fixed = None if vae.learn_gaussian_scale else log_scale
  tx = make_optimizer(opt)
  nets = {"encoder": encoder, "decoder": decoder}
  terms_fn = jax.jit(
    lambda params, x, key: terms(
      _params_with_scale(params, fixed), x, key, likelihood=vae.likelihood, **nets
    )
  )
  is_image = len(example_shape) == 3
  return Family(
    init=functools.partial(
      init,
      **nets,
      example_shape=tuple(example_shape),
      latent_dim=vae.latent_dim,
      learned_log_scale=learned,
      tx=tx,
    ),
    train_step=functools.partial(
      train_step,
      **nets,
      likelihood=vae.likelihood,
      fixed_log_scale=fixed,
      kind=vae.objective,
      beta=float(vae.beta),
      gamma=float(vae.gamma),
      c_max=float(vae.c_max),
      capacity_steps=int(vae.capacity_steps),
      learning_rate=float(opt.learning_rate),
    ),
    sample=functools.partial(
      sample, decoder=decoder, likelihood=vae.likelihood, latent_dim=vae.latent_dim
    ),
    evaluate=functools.partial(evaluate, terms_fn=terms_fn, chunk=config.batch_size),
    num_reference=config.eval.num_samples,
    encode=functools.partial(encode, encoder=encoder),
    image_grids=jax.jit(
      functools.partial(
        image_grids,
        **nets,
        likelihood=vae.likelihood,
        radius=float(vae.traversal_range),
        steps=int(vae.traversal_steps),
      )
    )
    if is_image
    else None,
  )
