"""The mathematics of ``gen_models.models.wgan_gp`` against independent references.

Every check compares with a value computed another way (a per-example ``vmap`` gradient, the
naive loss formula in float64, a closed form, a count by hand) to a tight tolerance.
"""

from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gen_models.models import wgan_gp
from gen_models.models.wgan_gp import (
  MLP,
  DCGANCritic,
  DCGANGenerator,
  critic_loss,
  generator_loss,
  gradient_penalty,
  interpolate,
)

B = 8  # Batch size of the property tests (one shape, so nothing is traced twice).


@jax.jit
def _all_losses(real, fake):
  """{loss: (critic loss with (B,) logits, with (B, 1) logits, generator loss)}."""
  return {
    k: (
      critic_loss(real, fake, k),
      critic_loss(real[:, None], fake[:, None], k),
      generator_loss(fake, k),
    )
    for k in wgan_gp.LOSSES
  }


def _logits(lo: float, hi: float) -> st.SearchStrategy[np.ndarray]:
  return hnp.arrays(np.float32, (B,), elements=st.floats(lo, hi, width=32))


def _num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------------------------
# Gradient penalty.


def _random_params(module, example_shape, seed: int = 0):
  """Random variables of ``module`` (LeCun-normal kernels, N(0, 0.1²) biases).

  Drawn with numpy from the shapes ``init`` would give: compiling flax's own initialisers
  (truncated normals) costs seconds on CPU, and any random parameters serve here.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, *example_shape))))

  def draw(s):
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0
    scale = 1.0 / np.sqrt(fan_in) if fan_in else 0.1
    return (scale * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree.map(draw, shapes)


def _penalties(critic, x: np.ndarray):
  """(library penalty with (B,) logits, with (B, 1) logits, per-example vmap gradients)."""
  params = _random_params(critic, x.shape[1:])

  @jax.jit
  def run(params, x):
    apply = lambda v: critic.apply(params, v)
    per_example = jax.vmap(jax.grad(lambda xi: apply(xi[None])[0, 0]))(x)
    return gradient_penalty(lambda v: apply(v)[..., 0], x), gradient_penalty(apply, x), per_example

  pen_vec, pen_col, grads = run(params, x)
  norms = np.linalg.norm(np.asarray(grads, np.float64).reshape(len(x), -1), axis=1)
  return pen_vec, pen_col, np.mean((norms - 1.0) ** 2)


def test_gradient_penalty_matches_per_example_reference_mlp():
  x = 3.0 * np.random.default_rng(1).standard_normal((7, 2)).astype(np.float32)
  pen_vec, pen_col, want = _penalties(MLP(width=16, depth=2, out_dim=1), x)
  # The library's calling convention (train_step): logits (B,); also accept (B, 1).
  np.testing.assert_allclose(pen_vec, want, rtol=1e-5)
  np.testing.assert_allclose(pen_col, want, rtol=1e-5)
  assert want > 1e-3  # Not a vacuous comparison of two zeros.


def test_gradient_penalty_matches_per_example_reference_dcgan_critic():
  x = np.random.default_rng(2).standard_normal((3, 32, 32, 3)).astype(np.float32)
  pen_vec, pen_col, want = _penalties(DCGANCritic(dim=4), x)
  np.testing.assert_allclose(pen_vec, want, rtol=1e-5)
  np.testing.assert_allclose(pen_col, want, rtol=1e-5)
  assert want > 1e-3


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0, 2.5])
def test_gradient_penalty_linear_critic_closed_form(scale):
  """D(x) = w·x + b: ∇D = w at every point, so the penalty is (‖w‖ − 1)².

  Exactly (√(‖w‖² + 1e-12) − 1)² with the documented offset, which matters only at w = 0.
  """
  rng = np.random.default_rng(3)
  w = rng.standard_normal(5)
  w = (scale * w / np.linalg.norm(w)).astype(np.float32)
  x = rng.standard_normal((6, 5)).astype(np.float32)
  dense = nn.Dense(1)
  variables = {"params": {"kernel": w[:, None], "bias": np.array([4.0], np.float32)}}

  @jax.jit
  def run(w, variables, x):
    plain = gradient_penalty(lambda v: v @ w + 0.7, x)
    # The same through a flax Dense(1): the kernel is w, the bias does not matter.
    flax_dense = gradient_penalty(lambda v: dense.apply(variables, v)[..., 0], x)
    return plain, flax_dense

  want = (math.sqrt(scale**2 + 1e-12) - 1.0) ** 2
  for got in run(w, variables, x):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-10)


def test_gradient_penalty_zero_gradient_has_finite_derivative():
  """‖∇D‖ = 0 everywhere: penalty (1e-6 − 1)² ≈ 1, and its derivative is finite there.

  Both through the 1e-12 offset under the square root: ‖g‖ = √(0 + 1e-12) = 1e-6.
  """
  x = np.random.default_rng(4).standard_normal((4, 3)).astype(np.float32)
  pen = lambda w: gradient_penalty(lambda v: v @ w, x)
  value, grad = jax.jit(jax.value_and_grad(pen))(jnp.zeros(3))
  np.testing.assert_allclose(value, (1e-6 - 1.0) ** 2, rtol=1e-7)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_gradient_penalty_quadratic_critic_closed_form():
  """D(x) = ½‖x‖²: ∇D(x) = x, so the penalty is mean_i (‖x_i‖ − 1)²."""
  x = 2.0 * np.random.default_rng(5).standard_normal((9, 4)).astype(np.float32)
  got = jax.jit(lambda x: gradient_penalty(lambda v: 0.5 * jnp.sum(v * v, axis=1), x))(x)
  norms = np.linalg.norm(x.astype(np.float64), axis=1)
  np.testing.assert_allclose(got, np.mean((norms - 1.0) ** 2), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Losses against the naive formulas.


def _log_sigmoid_naive(t: np.ndarray) -> np.ndarray:
  return np.log(1.0 / (1.0 + np.exp(-t)))


def _log_one_minus_sigmoid_naive(t: np.ndarray) -> np.ndarray:
  return np.log(1.0 - 1.0 / (1.0 + np.exp(-t)))


# Float64 evaluates 1 − σ(t) to a relative error of about 1e-16 · eᵗ, i.e. 5e-8 at t = 20 but
# 1e-3 at t = 30, so the naive reference is used on |t| ≤ 20 where it is itself accurate.
NAIVE_RANGE = 20.0


@settings(max_examples=60, deadline=None)
@given(real=_logits(-NAIVE_RANGE, NAIVE_RANGE), fake=_logits(-NAIVE_RANGE, NAIVE_RANGE))
def test_standard_losses_equal_naive_formulas(real, fake):
  r, f = real.astype(np.float64), fake.astype(np.float64)
  want_d = -np.mean(_log_sigmoid_naive(r)) - np.mean(_log_one_minus_sigmoid_naive(f))
  want_minimax = np.mean(_log_one_minus_sigmoid_naive(f))
  want_ns = -np.mean(_log_sigmoid_naive(f))
  got = _all_losses(real, fake)
  tol = dict(rtol=1e-5, atol=1e-6)
  for loss in ("minimax", "non_saturating"):
    np.testing.assert_allclose(got[loss][0], want_d, **tol)
    np.testing.assert_allclose(got[loss][1], want_d, **tol)  # (B, 1) logits: the same.
  np.testing.assert_allclose(got["minimax"][2], want_minimax, **tol)
  np.testing.assert_allclose(got["non_saturating"][2], want_ns, **tol)


_HUGE = st.one_of(st.floats(100.0, 1e4, width=32), st.floats(-1e4, -100.0, width=32))


@settings(max_examples=40, deadline=None)
@given(
  real=hnp.arrays(np.float32, (B,), elements=_HUGE),
  fake=hnp.arrays(np.float32, (B,), elements=_HUGE),
)
def test_standard_losses_finite_and_exact_for_huge_logits(real, fake):
  """For |t| ≥ 100, softplus(t) = max(t, 0) to far below float32 resolution."""
  r, f = real.astype(np.float64), fake.astype(np.float64)
  want_d = np.mean(np.maximum(-r, 0)) + np.mean(np.maximum(f, 0))
  got = _all_losses(real, fake)
  got_d, got_mm, got_ns = got["minimax"][0], got["minimax"][2], got["non_saturating"][2]
  np.testing.assert_array_equal(got["non_saturating"][0], got_d)
  assert np.isfinite(got_d) and np.isfinite(got_mm) and np.isfinite(got_ns)
  np.testing.assert_allclose(got_d, want_d, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got_mm, -np.mean(np.maximum(f, 0)), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got_ns, np.mean(np.maximum(-f, 0)), rtol=1e-6, atol=1e-6)


def test_naive_formula_overflows_where_library_does_not():
  with np.errstate(all="ignore"):
    naive = -np.mean(_log_sigmoid_naive(np.array([-1e4]))) - np.mean(
      _log_one_minus_sigmoid_naive(np.array([1e4]))
    )
  assert not np.isfinite(naive)
  got = _all_losses(np.float32([-1e4] * B), np.float32([1e4] * B))["minimax"][0]
  assert float(got) == 2e4  # softplus(1e4) = 1e4 exactly in float32, for each of the two terms.


@settings(max_examples=60, deadline=None)
@given(real=_logits(-100.0, 100.0), fake=_logits(-100.0, 100.0))
def test_wgan_losses(real, fake):
  r, f = real.astype(np.float64), fake.astype(np.float64)
  got_d, got_d_col, got_g = _all_losses(real, fake)["wgan_gp"]
  np.testing.assert_allclose(got_d, np.mean(f) - np.mean(r), rtol=1e-6, atol=2e-5)
  np.testing.assert_allclose(got_d_col, np.mean(f) - np.mean(r), rtol=1e-6, atol=2e-5)
  np.testing.assert_allclose(got_g, -np.mean(f), rtol=1e-6, atol=1e-5)


def test_unknown_loss_raises():
  x = jnp.zeros(3)
  with pytest.raises(ValueError, match="unknown loss"):
    critic_loss(x, x, "hinge")
  with pytest.raises(ValueError, match="unknown loss"):
    generator_loss(x, "hinge")


# ----------------------------------------------------------------------------------------------
# The optimal discriminator (Goodfellow et al. 2014, Prop. 1 and Thm. 1).


def _kl(a: np.ndarray, b: np.ndarray) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  m = a > 0
  return float(np.sum(a[m] * np.log(a[m] / b[m])))


def _jsd(p, q) -> float:
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  m = 0.5 * (p + q)
  return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


def _indices(counts) -> np.ndarray:
  """Support indices of a batch that realises E_p exactly: point k repeated counts[k] times."""
  return np.repeat(np.arange(len(counts)), counts)


@jax.jit
def _study(real_idx, fake_idx, d_star, deltas):
  """The minimax critic loss of a discriminator given as one logit per support point.

  Returns its value at ``d_star``, its gradient there, its values at ``d_star + deltas[j]``,
  and the value with the roles of the two batches swapped and the logits negated.
  """
  loss_fn = lambda d: critic_loss(d[real_idx], d[fake_idx], "minimax")
  swapped = critic_loss(-d_star[fake_idx], -d_star[real_idx], "minimax")
  return loss_fn(d_star), jax.grad(loss_fn)(d_star), jax.vmap(loss_fn)(d_star + deltas), swapped


def _optimal_logits(p, q) -> np.ndarray:
  """D*(x) = p(x) / (p(x) + q(x)), as a logit: log p(x) − log q(x)."""
  return (np.log(p) - np.log(q)).astype(np.float32)


CASES = [
  ([2, 1, 1], [1, 1, 2]),  # p = [.5, .25, .25], q = [.25, .25, .5] with N = 4.
  ([4, 2, 1, 1], [1, 1, 2, 4]),
  ([3, 3, 1, 1], [1, 3, 3, 1]),
  ([1, 1, 1, 1], [1, 1, 1, 1]),  # p = q: JSD = 0, loss = log 4.
  ([5, 1, 1, 1], [2, 2, 2, 2]),
  ([6, 1, 1], [1, 1, 2]),  # Batches of different sizes (8 real, 4 fake).
]


@pytest.mark.parametrize("p_counts,q_counts", CASES)
def test_optimal_discriminator_gives_log4_minus_2jsd(p_counts, q_counts):
  p = np.asarray(p_counts, np.float64) / sum(p_counts)
  q = np.asarray(q_counts, np.float64) / sum(q_counts)
  d_star = _optimal_logits(p, q)
  deltas = np.random.default_rng(6).standard_normal((60, len(p)))
  deltas *= np.repeat([0.05, 0.5, 3.0], 20)[:, None]
  best, grad, perturbed, swapped = _study(
    _indices(p_counts), _indices(q_counts), d_star, deltas.astype(np.float32)
  )
  jsd = _jsd(p, q)
  np.testing.assert_allclose(best, math.log(4.0) - 2.0 * jsd, rtol=0, atol=1e-6)
  np.testing.assert_allclose(_jsd(q, p), jsd, rtol=1e-14, atol=1e-15)
  assert 0.0 <= jsd <= math.log(2.0)
  # Swapping the roles of the distributions (D ↦ −D) gives the same value.
  np.testing.assert_allclose(swapped, best, rtol=0, atol=1e-6)
  # D* is a stationary point of the loss, which is strictly convex in the per-point logits ...
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)
  # ... hence its minimum: every other discriminator does worse.
  assert np.all(np.asarray(perturbed) > float(best))


def test_jsd_reference_known_values():
  """The numpy JSD reference itself: 0 for p = q, log 2 for disjoint supports, scipy's value."""
  assert _jsd([0.5, 0.5], [0.5, 0.5]) == 0.0
  np.testing.assert_allclose(_jsd([1.0, 0.0], [0.0, 1.0]), math.log(2.0), rtol=1e-15)
  p, q = [0.5, 0.25, 0.25], [0.25, 0.25, 0.5]
  js_distance = scipy.spatial.distance.jensenshannon(p, q)  # sqrt(JSD), natural log.
  np.testing.assert_allclose(_jsd(p, q), js_distance**2, rtol=1e-12)


N_SUPPORT_BATCH = 12


@st.composite
def _counts(draw) -> list[int]:
  """Positive counts of 3 support points summing to N_SUPPORT_BATCH (p = counts / N)."""
  a = draw(st.integers(1, N_SUPPORT_BATCH - 2))
  b = draw(st.integers(1, N_SUPPORT_BATCH - 1 - a))
  return [a, b, N_SUPPORT_BATCH - a - b]


@settings(max_examples=40, deadline=None)
@given(p_counts=_counts(), q_counts=_counts())
def test_optimal_discriminator_property(p_counts, q_counts):
  p = np.asarray(p_counts, np.float64) / N_SUPPORT_BATCH
  q = np.asarray(q_counts, np.float64) / N_SUPPORT_BATCH
  deltas = np.zeros((1, 3), np.float32)
  best, grad, _, _ = _study(_indices(p_counts), _indices(q_counts), _optimal_logits(p, q), deltas)
  np.testing.assert_allclose(best, math.log(4.0) - 2.0 * _jsd(p, q), rtol=0, atol=2e-6)
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Saturation of the generator losses.


def test_non_saturating_gradient_does_not_vanish():
  """At D(G(z)) = −20 (the critic is sure the sample is fake):

  d/dt_i of −mean log σ(t) is −σ(−t_i)/B ≈ −1/B, while d/dt_i of mean log(1 − σ(t)) is
  −σ(t_i)/B = −2.06e-9/B: the minimax generator gets no signal (Goodfellow et al. 2014, Sec. 3).
  """
  batch = 4
  t = np.full((batch,), -20.0, np.float32)
  grads = jax.jit(
    lambda t: [jax.grad(lambda v, k=k: generator_loss(v, k))(t) for k in wgan_gp.LOSSES]
  )(t)
  g_w, g_mm, g_ns = (np.asarray(g) for g in grads)
  assert wgan_gp.LOSSES == ("wgan_gp", "minimax", "non_saturating")
  np.testing.assert_allclose(g_ns, -scipy.special.expit(20.0) / batch, rtol=1e-6)
  np.testing.assert_allclose(g_ns, -1.0 / batch, rtol=1e-6)
  np.testing.assert_allclose(g_mm, -scipy.special.expit(-20.0) / batch, rtol=1e-4)
  assert np.all(np.abs(g_mm) < 1e-9)
  np.testing.assert_allclose(g_w, -1.0 / batch, rtol=1e-7)
  # Both point the same way: raise t, i.e. make the critic call the sample real.
  assert np.all(g_mm < 0) and np.all(g_ns < 0)


# ----------------------------------------------------------------------------------------------
# Interpolation.


@pytest.mark.parametrize("shape", [(64, 2), (16, 4, 4, 3)])
def test_interpolate_lies_on_segment_with_one_eps_per_example(shape):
  rng = np.random.default_rng(7)
  real = rng.standard_normal(shape).astype(np.float32)
  # |real − fake| ≥ 0.5 in every coordinate, so the ratio below is well conditioned.
  offset = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
  fake = (real + offset).astype(np.float32)
  x_hat = jax.jit(interpolate)(real, fake, jax.random.key(8))
  assert x_hat.shape == real.shape and x_hat.dtype == real.dtype
  ratio = (np.asarray(x_hat, np.float64) - fake) / (real.astype(np.float64) - fake)
  ratio = ratio.reshape(shape[0], -1)
  eps = ratio[:, :1]
  np.testing.assert_allclose(ratio, np.broadcast_to(eps, ratio.shape), rtol=0, atol=2e-5)
  assert np.all(eps >= -1e-6) and np.all(eps <= 1 + 1e-6)
  assert len(np.unique(np.round(eps, 4))) > shape[0] // 2  # Different ε per example.


def test_interpolate_eps_is_uniform():
  n = 4000
  real, fake = np.ones((n, 3), np.float32), np.zeros((n, 3), np.float32)
  eps = np.asarray(jax.jit(interpolate)(real, fake, jax.random.key(9)))
  np.testing.assert_array_equal(eps, np.repeat(eps[:, :1], 3, axis=1))
  assert scipy.stats.kstest(eps[:, 0], "uniform").pvalue > 1e-3


# ----------------------------------------------------------------------------------------------
# Parameter counts, by hand from the layer shapes.


def _dense(n_in: int, n_out: int) -> int:
  return n_in * n_out + n_out


def _conv(k: int, c_in: int, c_out: int) -> int:
  return k * k * c_in * c_out + c_out


def _init_shapes(module, x):
  return jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))


def test_mlp_parameter_counts():
  gan = wgan_gp.default_config().gan
  generator, critic = wgan_gp.make_networks(gan, (2,))
  assert (gan.mlp_width, gan.mlp_depth, gan.latent_dim) == (512, 3, 2)
  want_g = _dense(2, 512) + 2 * _dense(512, 512) + _dense(512, 2)
  want_c = _dense(2, 512) + 2 * _dense(512, 512) + _dense(512, 1)
  assert want_g == 2 * 512 + 512 + 2 * (512 * 512 + 512) + 512 * 2 + 2 == 527_874
  assert want_c == 527_361
  g_vars = _init_shapes(generator, jnp.zeros((1, gan.latent_dim)))
  c_vars = _init_shapes(critic, jnp.zeros((1, 2)))
  assert set(g_vars) == {"params"} and set(c_vars) == {"params"}
  assert _num_params(g_vars["params"]) == want_g
  assert _num_params(c_vars["params"]) == want_c


def test_dcgan_parameter_counts():
  dim, latent, ch = 64, 128, 3
  # Generator: Dense → 4·4·4dim, BN; ConvT 4dim→2dim, BN; ConvT 2dim→dim, BN; ConvT dim→ch.
  want_g = (
    _dense(latent, 4 * 4 * 4 * dim)
    + 2 * (4 * 4 * 4 * dim)
    + _conv(5, 4 * dim, 2 * dim)
    + 2 * (2 * dim)
    + _conv(5, 2 * dim, dim)
    + 2 * dim
    + _conv(5, dim, ch)
  )
  want_stats = 2 * (4 * 4 * 4 * dim + 2 * dim + dim)  # BatchNorm mean and var.
  # Critic: Conv ch→dim, dim→2dim, 2dim→4dim (32 → 16 → 8 → 4), Dense 4·4·4dim → 1.
  want_c = _conv(5, ch, dim) + _conv(5, dim, 2 * dim) + _conv(5, 2 * dim, 4 * dim)
  want_c += _dense(4 * 4 * 4 * dim, 1)
  assert (want_g, want_stats, want_c) == (1_565_955, 8_576, 1_033_345)

  g_vars = _init_shapes(DCGANGenerator(dim, ch), jnp.zeros((1, latent)))
  assert _num_params(g_vars["params"]) == want_g
  assert _num_params(g_vars["batch_stats"]) == want_stats
  c_vars = _init_shapes(DCGANCritic(dim), jnp.zeros((1, 32, 32, ch)))
  assert _num_params(c_vars["params"]) == want_c
  kernels = sorted(
    tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(c_vars) if "kernel" in str(p)
  )
  assert kernels == sorted([(5, 5, 3, 64), (5, 5, 64, 128), (5, 5, 128, 256), (4096, 1)])

  gan = wgan_gp.default_config().gan
  generator, critic = wgan_gp.make_networks(_dcgan_config(gan, dim), (32, 32, ch))
  assert _num_params(_init_shapes(critic, jnp.zeros((1, 32, 32, ch)))["params"]) == want_c
  g_params = _init_shapes(generator, jnp.zeros((1, latent)))["params"]
  assert _num_params(g_params) == want_g


def _dcgan_config(gan, dim):
  gan = gan.copy_and_resolve_references()
  gan.architecture = "dcgan"
  gan.dcgan_dim = dim
  return gan


# ----------------------------------------------------------------------------------------------
# The fast convolutions (gen_models.nn.conv) inside the DCGAN nets.


@jax.jit
def _penalty_and_grads(params_by_impl, x):
  out = {}
  for impl, params in params_by_impl.items():
    critic = DCGANCritic(dim=4, conv_impl=impl)

    def penalty(p, critic=critic):
      return gradient_penalty(lambda v: critic.apply(p, v)[..., 0], x)

    out[impl] = jax.value_and_grad(penalty)(params)
  return out


def test_gradient_penalty_is_the_same_with_every_conv_impl():
  """The penalty and its parameter-gradient (a double backward through every conv)."""
  x = np.random.default_rng(3).standard_normal((3, 32, 32, 3)).astype(np.float32)
  params = _random_params(DCGANCritic(dim=4), x.shape[1:])
  impls = ("xla", "space_to_depth", "subpixel", "phases", "gemm", "auto")
  results = _penalty_and_grads({impl: params for impl in impls}, x)
  want_value, want_grads = results["xla"]
  assert want_value > 1e-3
  for impl in impls[1:]:
    value, grads = results[impl]
    np.testing.assert_allclose(value, want_value, rtol=1e-5, err_msg=impl)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, want_grads
    )


def _lowered_train_step(conv_impl: str) -> str:
  from experiments.configs import wgan_gp_cifar10
  from gen_models import config as config_lib
  from gen_models import models

  config = wgan_gp_cifar10.get_config("smoke")
  config.conv_impl = conv_impl
  family = models.make_family(config_lib.validate(config), (32, 32, 3))
  state = jax.eval_shape(family.init, jax.random.key(0))
  batch = jax.ShapeDtypeStruct((config.gan.n_critic, config.batch_size, 32, 32, 3), jnp.float32)
  return jax.jit(family.train_step).lower(state, batch).as_text()


def _input_dilated_convolutions(text: str) -> list[str]:
  """The lines of the convolutions with input dilation."""
  lines = []
  for line in text.splitlines():
    found = re.search(r"lhs_dilate = \[([^\]]*)\]", line)
    if found and {v.strip() for v in found.group(1).split(",")} != {"1"}:
      lines.append(line)
  return lines


def test_dcgan_train_step_on_cpu_has_no_input_dilated_convolution():
  assert _input_dilated_convolutions(_lowered_train_step("phases")) == []
  text = _lowered_train_step("auto")  # The default; the tests run on CPU.
  assert text.count("stablehlo.convolution") > 20
  # auto leaves the generator's last transposed conv (C_out = 3, kernel 5×5×8×3 at the smoke
  # width) to XLA's own kernel on CPU, measured faster: its forward and filter gradient are the
  # only input-dilated convs; the critic's gradient penalty has none.
  dilated = _input_dilated_convolutions(text)
  assert dilated and all("tensor<5x5x8x3xf32>" in line for line in dilated)
  # The check can fail: XLA's own formulation has them (transposed convs, input-gradients).
  assert len(_input_dilated_convolutions(_lowered_train_step("xla"))) > len(dilated)
