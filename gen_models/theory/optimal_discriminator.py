r"""A trained discriminator against the optimal one (Goodfellow et al. 2014, Prop. 1 and Thm. 1).

For densities p ("real") and q ("generated") the discriminator D: ℝ → (0, 1) maximises

    V(D) = E_p[log D(x)] + E_q[log(1 − D(x))],

pointwise at D*(x) = p(x) / (p(x) + q(x)), where V(D*) = −log 4 + 2·JSD(p ‖ q). Writing D = σ(l)
with a logit l, V(D) = −E_p[softplus(−l)] − E_q[softplus(l)] = −L_D (the discriminator loss of
``wgan_gp.critic_loss(..., "minimax")``) and D*'s logit is log p − log q.

Here p and q are 1-D Gaussian mixtures. The discriminator (``wgan_gp.MLP``) is trained by Adam on
fresh samples of both; V is then computed on a grid by the midpoint rule (no sampling error), for
the trained D and for D*, beside −log 4 + 2·``jsd_grid``. Every D has V(D) ≤ V(D*).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.special import logsumexp

from gen_models import divergences
from gen_models.models import wgan_gp


@dataclasses.dataclass(frozen=True)
class Mixture1D:
  """A 1-D Gaussian mixture: ``weights`` (sum 1), ``means`` and ``stds`` per component."""

  weights: tuple[float, ...]
  means: tuple[float, ...]
  stds: tuple[float, ...]

  def log_pdf(self, x: np.ndarray) -> np.ndarray:
    """Log-density at ``x (...)`` → ``(...)`` float64, per unit length."""
    x = np.asarray(x, np.float64)[..., None]
    w, m, s = (np.asarray(a, np.float64) for a in (self.weights, self.means, self.stds))
    comp = -0.5 * ((x - m) / s) ** 2 - np.log(s) - 0.5 * math.log(2 * math.pi)
    return logsumexp(comp + np.log(w), axis=-1)

  def sample(self, key: jax.Array, n: int) -> jax.Array:
    """``(n, 1)`` float32 samples (JAX, traceable)."""
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.categorical(k_comp, jnp.log(jnp.asarray(self.weights)), shape=(n,))
    noise = jax.random.normal(k_noise, (n,))
    x = jnp.asarray(self.means)[comp] + jnp.asarray(self.stds)[comp] * noise
    return x[:, None]


REAL = Mixture1D(weights=(0.5, 0.5), means=(-2.0, 1.5), stds=(0.6, 0.5))
GENERATED = Mixture1D(weights=(1.0,), means=(0.0,), stds=(1.5,))


def objective_on_grid(logits: np.ndarray, log_p: np.ndarray, log_q: np.ndarray, dx: float) -> float:
  """V(σ(l)) = −∫ p softplus(−l) + q softplus(l) dx by the midpoint rule, in nats.

  Args:
    logits, log_p, log_q: ``(K,)`` the discriminator's logit and the log-densities at the cell
      centres of a regular grid of spacing ``dx``.
  """
  p, q = np.exp(log_p), np.exp(log_q)
  softplus = lambda t: np.logaddexp(0.0, t)
  return float(-np.sum(p * softplus(-logits) + q * softplus(logits)) * dx)


def train_discriminator(
  key: jax.Array,
  real: Mixture1D,
  generated: Mixture1D,
  *,
  steps: int,
  batch_size: int,
  width: int,
  depth: int,
  learning_rate: float,
):
  """Adam (cosine-decayed step size) on ``L_D`` with fresh samples every step.

  Returns:
    ``(logit_fn, curve)``: ``logit_fn(x (K,)) → (K,)`` numpy logits of the trained net, and the
    ``(steps,)`` per-step Monte-Carlo estimate of V (= −L_D on that step's batches).
  """
  net = wgan_gp.MLP(width, depth, 1)
  init_key, train_key = jax.random.split(key)
  params = net.init(init_key, jnp.zeros((1, 1)))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  opt_state = tx.init(params)

  def loss_fn(params, k):
    k_real, k_fake = jax.random.split(k)
    real_logits = net.apply({"params": params}, real.sample(k_real, batch_size))
    fake_logits = net.apply({"params": params}, generated.sample(k_fake, batch_size))
    return wgan_gp.critic_loss(real_logits, fake_logits, "minimax")

  def step(carry, k):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, k)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), -loss

  @jax.jit
  def train(params, opt_state):
    return jax.lax.scan(step, (params, opt_state), jax.random.split(train_key, steps))

  (params, _), curve = train(params, opt_state)
  apply = jax.jit(lambda x: net.apply({"params": params}, x[:, None])[:, 0])
  return (lambda x: np.asarray(apply(jnp.asarray(x, jnp.float32)), np.float64)), np.asarray(curve)


def run(
  *,
  seed: int = 0,
  steps: int = 4000,
  batch_size: int = 1024,
  width: int = 64,
  depth: int = 2,
  learning_rate: float = 3e-3,
  grid_points: int = 4001,
  grid_half_width: float = 9.0,
  real: Mixture1D = REAL,
  generated: Mixture1D = GENERATED,
) -> dict:
  """Trains the discriminator and compares it with D* on the grid.

  Returns:
    A JSON-ready dict: the scalars ``jsd`` (nats), ``v_closed_form`` (−log 4 + 2·JSD),
    ``v_optimal`` (V(D*) on the grid), ``v_trained`` (V of the trained D on the grid),
    ``gap`` (= v_optimal − v_trained ≥ 0), ``max_abs_d_error`` (max |D − D*| where
    p + q > 1e-3), the settings, and under ``arrays`` (NumPy; the commands save them as
    ``.npz``) the grid ``x``, ``log_p``, ``log_q``, ``d_star``, ``d_trained`` and ``curve``
    (the per-step V estimates).
  """
  x = np.linspace(-grid_half_width, grid_half_width, grid_points)
  dx = float(x[1] - x[0])
  log_p, log_q = real.log_pdf(x), generated.log_pdf(x)
  logit_fn, curve = train_discriminator(
    jax.random.key(seed),
    real,
    generated,
    steps=steps,
    batch_size=batch_size,
    width=width,
    depth=depth,
    learning_rate=learning_rate,
  )
  trained = logit_fn(x)
  optimal = log_p - log_q
  jsd = divergences.jsd_grid(log_p, log_q, dx)
  sigmoid = lambda t: 0.5 * (1.0 + np.tanh(0.5 * t))
  mask = np.exp(log_p) + np.exp(log_q) > 1e-3
  v_optimal = objective_on_grid(optimal, log_p, log_q, dx)
  v_trained = objective_on_grid(trained, log_p, log_q, dx)
  return {
    "jsd": jsd,
    "v_closed_form": -math.log(4.0) + 2.0 * jsd,
    "v_optimal": v_optimal,
    "v_trained": v_trained,
    "gap": v_optimal - v_trained,
    "max_abs_d_error": float(np.max(np.abs(sigmoid(trained) - sigmoid(optimal))[mask])),
    "settings": {
      "seed": seed,
      "steps": steps,
      "batch_size": batch_size,
      "width": width,
      "depth": depth,
      "learning_rate": learning_rate,
      "real": dataclasses.asdict(real),
      "generated": dataclasses.asdict(generated),
    },
    "arrays": {
      "x": x,
      "log_p": log_p,
      "log_q": log_q,
      "d_star": sigmoid(optimal),
      "d_trained": sigmoid(trained),
      "curve": curve,
    },
  }


def plot(results: dict, path: str) -> str:
  """Left: p, q, D* and the trained D on the grid; right: V during training vs its maximum."""
  from gen_models.theory import plotting

  arrays = results["arrays"]
  x = arrays["x"]
  fig = plotting.new_figure(11.0, 4.2)
  left, right = fig.subplots(1, 2)
  left.plot(x, np.exp(arrays["log_p"]), color="tab:orange", label="p (real) density")
  left.plot(x, np.exp(arrays["log_q"]), color="tab:blue", label="q (generated) density")
  left.plot(x, arrays["d_star"], "k-", lw=2.5, label="D* = p / (p + q)")
  left.plot(x, arrays["d_trained"], "--", color="tab:red", lw=1.5, label="trained D")
  left.set(xlim=(-6, 6), xlabel="x", ylabel="density / D(x)")
  left.set_title(f"trained discriminator vs D* (max |D − D*| = {results['max_abs_d_error']:.3f})")
  left.legend(fontsize="small")
  curve = arrays["curve"]
  window = max(1, len(curve) // 50)
  smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
  right.plot(np.arange(len(curve)) + 1, curve, color="0.8", lw=0.5, label="V per batch")
  right.plot(np.arange(len(smooth)) + window, smooth, color="tab:red", label="V, moving mean")
  right.axhline(results["v_closed_form"], color="k", ls="--", label="−log 4 + 2·JSD(p‖q)")
  right.axhline(-math.log(4.0), color="0.5", ls=":", label="−log 4 (p = q)")
  right.set(xlabel="discriminator step", ylabel="V(D) (nats)")
  lo = min(results["v_closed_form"], -math.log(4.0)) - 0.15
  right.set_ylim(lo, max(results["v_closed_form"], float(smooth.max())) + 0.1)
  right.set_title(
    f"V(trained D) = {results['v_trained']:.4f}, max V(D*) = {results['v_closed_form']:.4f}"
  )
  right.legend(fontsize="small", loc="lower right")
  return plotting.save(fig, path)
