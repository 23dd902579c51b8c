r"""Vanishing generator gradients as the discriminator improves (Arjovsky & Bottou 2017, Fig. 2).

A generator G_θ is trained on a 2-D toy set with this repository's WGAN-GP step and frozen at a
few points of the run (its initialisation, early, late). For each frozen G a discriminator is
trained from scratch and, as it improves, the norm ‖∇_θ L_G‖₂ (over all generator parameters,
on a fixed batch of z) is measured for three generator losses, with D(x) the discriminator's
logit::

    minimax           L_G =  E_z[log(1 − σ(D(G(z))))]    ∂L_G/∂D = −σ(D)       → 0 as σ(D) → 0
    non-saturating    L_G = −E_z[log σ(D(G(z)))]         ∂L_G/∂D = −(1 − σ(D)) → −1
    WGAN-GP           L_G = −E_z[C(G(z))]                 ∂L_G/∂C = −1

The first two use the same discriminator, trained with the standard loss
E[softplus(−D(x))] + E[softplus(D(G(z)))] (no penalty); the third a critic C trained with the
WGAN-GP loss (penalty weight λ). By the chain rule ∇_θ L_G = E_z[∂L_G/∂D · J_G(z)ᵀ ∇_x D(G(z))]:
as a discriminator gets confident on generated points (σ(D(G(z))) → 0), the minimax factor σ(D)
goes to zero and takes the gradient with it, while the non-saturating factor tends to 1. The
critic's input gradient is held near norm 1 by the penalty, so its generator gradient stays
informative however long it trains. A discriminator gets that confident on all of G's samples
only when the supports are (nearly) disjoint, as for the untrained generator here (99 % of its
samples within radius 1 of the origin, the data on a circle of radius 1.41); once G overlaps
the data, the minimax gradient is damped but does not vanish.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gen_models import data as data_lib
from gen_models.data import toy
from gen_models.models import wgan_gp

GENERATOR_LOSSES = ("minimax", "non_saturating", "wgan_gp")


def train_generator(
  config: ml_collections.ConfigDict, snapshots: tuple[int, ...]
) -> dict[int, tuple[dict, dict[str, float]]]:
  """Trains ``config``'s GAN (a toy config) and freezes its generator at ``snapshots``.

  Returns:
    ``{step: (generator params, {"w1": .., "w1_noise_floor": .., "w1_ratio": ..})}``, the W1
    numbers from the family's evaluation (exact W1 against held-out real points).
  """
  dataset = data_lib.create(config, config.batch_size)
  family = wgan_gp.make_family(config, dataset.shape)
  key = jax.random.key(config.seed)
  state = jax.jit(family.init)(key)
  step_fn = jax.jit(family.train_step, donate_argnums=0)
  batches = data_lib.StepIterator(dataset, family.batches_per_step)
  reference = dataset.reference(family.num_reference)
  out = {}
  for step in range(max(snapshots) + 1):
    if step in snapshots:
      quality = family.evaluate(state, jax.random.fold_in(key, 7), reference)
      out[step] = (jax.tree.map(np.asarray, state.params["generator"]), quality)
    if step < max(snapshots):
      state, _ = step_fn(state, next(batches))
  return out


def _norm(tree) -> jax.Array:
  return optax.global_norm(tree)


def discriminator_curves(
  generator,
  critic,
  gen_params,
  real: jax.Array,
  key: jax.Array,
  *,
  kind: str,
  every: int,
  latent_dim: int,
  learning_rate: float,
  gp_weight: float,
  num_z: int,
) -> dict[str, jax.Array]:
  """Trains a discriminator from scratch against the frozen ``G`` and measures as it goes.

  Args:
    generator, critic: the flax modules; ``gen_params`` the frozen generator's parameters.
    real: ``(M·every, B, 2)`` real batches, one per discriminator step.
    key: the discriminator's initialisation, noise and penalty key.
    kind: ``"standard"`` (the GAN discriminator loss; measures the minimax and non-saturating
      gradients) or ``"wgan_gp"`` (critic loss with penalty ``gp_weight``; measures L_G = −E C).
    every: discriminator steps between measurements.

  Returns:
    ``{name: (M + 1,)}`` at steps 0, every, …, M·every: the generator-gradient norms (``minimax``
    and ``non_saturating``, or ``wgan_gp``) and ``mean_d_fake`` (mean σ(D(G(z))), or mean C).
  """
  num_steps, batch_size = real.shape[:2]
  init_key, z_key, train_key = jax.random.split(key, 3)
  params = critic.init(init_key, jnp.zeros((1, 2)))["params"]
  tx = optax.adam(learning_rate, b1=0.5, b2=0.9)
  z_eval = jax.random.normal(z_key, (num_z, latent_dim))
  gen = lambda p, z: generator.apply({"params": p}, z)
  apply = lambda p, x: critic.apply({"params": p}, x)[..., 0]

  def measure(d_params):
    def loss(gp, name):
      return wgan_gp.generator_loss(apply(d_params, gen(gp, z_eval)), name)

    names = ("minimax", "non_saturating") if kind == "standard" else ("wgan_gp",)
    out = {name: _norm(jax.grad(loss)(gen_params, name)) for name in names}
    logits = apply(d_params, gen(gen_params, z_eval))
    out["mean_d_fake"] = jnp.mean(jax.nn.sigmoid(logits) if kind == "standard" else logits)
    return out

  def d_loss(d_params, real_batch, k):
    z_k, eps_k = jax.random.split(k)
    fake = gen(gen_params, jax.random.normal(z_k, (batch_size, latent_dim)))
    f = lambda x: apply(d_params, x)
    if kind == "standard":
      return wgan_gp.critic_loss(f(real_batch), f(fake), "minimax")
    penalty = wgan_gp.gradient_penalty(f, wgan_gp.interpolate(real_batch, fake, eps_k))
    return wgan_gp.critic_loss(f(real_batch), f(fake), "wgan_gp") + gp_weight * penalty

  def d_step(carry, xs):
    d_params, opt_state = carry
    grads = jax.grad(d_loss)(d_params, *xs)
    updates, opt_state = tx.update(grads, opt_state, d_params)
    return (optax.apply_updates(d_params, updates), opt_state), None

  def chunk(carry, xs):
    carry, _ = jax.lax.scan(d_step, carry, xs)
    return carry, measure(carry[0])

  m = num_steps // every
  keys = jax.random.split(train_key, m * every).reshape(m, every)
  _, curves = jax.lax.scan(
    chunk, (params, tx.init(params)), (real.reshape(m, every, *real.shape[1:]), keys)
  )
  first = measure(params)
  return {k: jnp.concatenate([first[k][None], v]) for k, v in curves.items()}


def run(
  config: ml_collections.ConfigDict,
  *,
  snapshots: tuple[int, ...] = (0, 100, 1000),
  seeds: int = 3,
  discriminator_steps: int = 3000,
  every: int = 100,
  learning_rate: float = 1e-3,
  gp_weight: float = 10.0,
  num_z: int = 1024,
) -> dict:
  """The experiment: a generator frozen at ``snapshots``, ``seeds`` discriminators per loss.

  Args:
    config: a toy WGAN-GP config (``experiments/configs/wgan_gp_toy.py``); its networks are
      used for both the generator run and the discriminators.
    snapshots: generator steps at which G is frozen (0: the initialisation, whose outputs lie
      near the origin, nearly disjoint from the data; then early and late in the run).
    seeds: discriminators trained from scratch per frozen G and loss (different
      initialisations and data).
    discriminator_steps, every: discriminator steps and the measurement interval.
    learning_rate: Adam(learning_rate, β₁ = 0.5, β₂ = 0.9) of the discriminators.
    gp_weight: λ of the WGAN-GP critic.
    num_z: the fixed batch of z on which the gradients are measured.

  Returns:
    A JSON-ready dict: ``iterations`` (M + 1,), and per snapshot ``generator_step``, the W1
    quality of that G, and ``curves[loss]`` (seeds, M + 1) of gradient norms, ``mean_d_fake``;
    ``summary`` has the median norm at the first and last measurement per loss and snapshot.
  """
  if discriminator_steps % every:
    raise ValueError(f"discriminator_steps {discriminator_steps} is not a multiple of {every}")
  generator, critic = wgan_gp.make_networks(config.gan, (2,))
  frozen = train_generator(config, tuple(snapshots))
  batch = config.batch_size
  real = np.stack(
    [
      toy.sample(config.dataset.name, discriminator_steps * batch, config.seed + 1, 2, s)
      for s in range(seeds)
    ]
  ).reshape(seeds, discriminator_steps, batch, 2)
  keys = jax.random.split(jax.random.key(config.seed + 2), seeds)
  common = dict(
    every=every,
    latent_dim=config.gan.latent_dim,
    learning_rate=learning_rate,
    gp_weight=gp_weight,
    num_z=num_z,
  )
  runs = {
    kind: jax.jit(
      jax.vmap(
        functools.partial(discriminator_curves, generator, critic, kind=kind, **common),
        in_axes=(None, 0, 0),
      )
    )
    for kind in ("standard", "wgan_gp")
  }
  out = {"iterations": list(range(0, discriminator_steps + 1, every)), "snapshots": []}
  summary = {}
  for step in snapshots:
    gen_params, quality = frozen[step]
    curves = {}
    for kind, fn in runs.items():
      result = jax.device_get(fn(gen_params, real, keys))
      d_fake = result.pop("mean_d_fake")
      curves.update({k: np.asarray(v, np.float64) for k, v in result.items()})
      curves["mean_d_fake" if kind == "standard" else "mean_critic_fake"] = np.asarray(d_fake)
    for loss in GENERATOR_LOSSES:
      med = np.median(curves[loss], axis=0)
      summary[f"step{step}_{loss}_grad_norm_first_last"] = [float(med[0]), float(med[-1])]
    summary[f"step{step}_mean_D_of_fake_last"] = float(np.median(curves["mean_d_fake"][:, -1]))
    out["snapshots"].append(
      {
        "generator_step": step,
        **{k: float(v) for k, v in quality.items()},
        "curves": {k: v.tolist() for k, v in curves.items()},
      }
    )
  out["summary"] = summary
  out["settings"] = {
    "dataset": config.dataset.name,
    "mlp_width": config.gan.mlp_width,
    "mlp_depth": config.gan.mlp_depth,
    "snapshots": list(snapshots),
    "seeds": seeds,
    "discriminator_steps": discriminator_steps,
    "learning_rate": learning_rate,
    "gp_weight": gp_weight,
    "num_z": num_z,
  }
  return out


def plot(results: dict, path: str) -> str:
  """One panel per frozen generator: the three gradient norms (median, min–max band), log y."""
  from gen_models.theory import plotting

  it = np.asarray(results["iterations"])
  snaps = results["snapshots"]
  fig = plotting.new_figure(5.4 * len(snaps), 4.4)
  axes = np.atleast_1d(fig.subplots(1, len(snaps), sharey=True))
  styles = {
    "minimax": ("tab:red", "minimax  E log(1 − D(G(z)))"),
    "non_saturating": ("tab:blue", "non-saturating  −E log D(G(z))"),
    "wgan_gp": ("tab:green", "WGAN-GP critic  −E C(G(z))"),
  }
  for ax, snap in zip(axes, snaps, strict=True):
    for loss, (color, label) in styles.items():
      c = np.asarray(snap["curves"][loss])
      ax.fill_between(it, c.min(0), c.max(0), color=color, alpha=0.2, lw=0)
      ax.plot(it, np.median(c, 0), color=color, label=label)
    ax.set_yscale("log")
    ax.set(xlabel="discriminator iterations (trained from scratch)")
    ax.set_title(
      f"G frozen at step {snap['generator_step']} (W1 / noise floor {snap['w1_ratio']:.1f})"
    )
    ax.grid(True, which="major", alpha=0.3)
  axes[0].set_ylabel("‖∇_θ L_G‖₂ (median, min–max over seeds)")
  axes[0].legend(fontsize="small", loc="lower left")
  return plotting.save(fig, path)
