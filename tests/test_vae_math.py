"""The mathematics of ``gen_models.models.vae`` against independent references.

Parameter counts by hand, log-likelihoods against the naive float64 formulas and scipy, the KL
against its closed form and a Monte-Carlo estimate, the capacity schedule at exact points, and a
whole train step against a float64 recomputation from the same noise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gen_models import UserError, models
from gen_models import config as config_lib
from gen_models.divergences import kl_diag_gaussians
from gen_models.models import vae


def _num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _config(**overrides):
  c = vae.default_config()
  for key, value in overrides.items():
    config_lib.set_path(c, key, value)
  return config_lib.validate(c)


def _shapes(module, x_shape):
  """Parameter shapes of ``module`` on an input of ``x_shape`` (no initialiser is compiled)."""
  return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(x_shape)))["params"]


def _random_state(family, seed: int = 0):
  """A step-0 state of ``family`` with random parameters (N(0, 1/fan_in) kernels, N(0, 0.1²)
  biases) drawn by numpy, Adam's zero moments and the key ``key(seed)``.

  Any parameters serve these tests, and compiling flax's truncated-normal initialisers (or
  running them eagerly) costs seconds on CPU.
  """
  abstract = jax.eval_shape(family.init, jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def draw(s):
    if not s.shape:
      return np.float32(0.0)
    scale = 1.0 / math.sqrt(math.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
    return (scale * rng.standard_normal(s.shape)).astype(np.float32)

  zeros = lambda s: np.zeros(s.shape, s.dtype)
  return abstract.replace(
    step=jnp.zeros((), jnp.int32),
    params=jax.tree.map(draw, abstract.params),
    opt_state=jax.tree.map(zeros, abstract.opt_state),
    rng=jax.random.key(seed),
  )


def _dense(n_in: int, n_out: int) -> int:
  return n_in * n_out + n_out


def _conv(k: int, c_in: int, c_out: int) -> int:
  return k * k * c_in * c_out + c_out


# ----------------------------------------------------------------------------------------------
# Parameter counts, by hand.


@pytest.mark.parametrize("channels", [1, 3])
def test_conv_pair_parameter_counts(channels):
  """disentanglement_lib conv_encoder / deconv_decoder on 64×64×C, latent 10."""
  want_enc = (
    _conv(4, channels, 32)  # 32 k4 s2: 64 → 32
    + _conv(4, 32, 32)  # 32 k4 s2: 32 → 16
    + _conv(2, 32, 64)  # 64 k2 s2: 16 → 8
    + _conv(2, 64, 64)  # 64 k2 s2: 8 → 4
    + _dense(4 * 4 * 64, 256)
    + 2 * _dense(256, 10)  # means, log-variances
  )
  want_dec = (
    _dense(10, 256)
    + _dense(256, 1024)  # = 4·4·64
    + _conv(4, 64, 64)
    + _conv(4, 64, 32)
    + _conv(4, 32, 32)
    + _conv(4, 32, channels)
  )
  assert (want_enc, want_dec) == ((309_204, 381_313) if channels == 1 else (310_228, 382_339))
  encoder, decoder = vae.make_networks(_config().vae, (64, 64, channels))
  assert _num_params(_shapes(encoder, (1, 64, 64, channels))) == want_enc
  assert _num_params(_shapes(decoder, (1, 10))) == want_dec


def test_burgess_pair_parameter_counts():
  """Burgess et al. 2018: 4 convs of 32 k4 s2, FC 256, FC 256; the decoder its transpose."""
  want_enc = (
    _conv(4, 1, 32)
    + 3 * _conv(4, 32, 32)
    + _dense(4 * 4 * 32, 256)
    + _dense(256, 256)
    + 2 * _dense(256, 10)
  )
  want_dec = (
    _dense(10, 256) + _dense(256, 256) + _dense(256, 512) + 3 * _conv(4, 32, 32) + _conv(4, 32, 1)
  )
  assert (want_enc, want_dec) == (252_052, 249_953)
  encoder, decoder = vae.make_networks(_config(**{"vae.architecture": "burgess"}).vae, (64, 64, 1))
  assert _num_params(_shapes(encoder, (1, 64, 64, 1))) == want_enc
  assert _num_params(_shapes(decoder, (1, 10))) == want_dec


@pytest.mark.parametrize("shape", [(2,), (8, 8, 1)])
def test_mlp_pair_parameter_counts(shape):
  c = _config(**{"vae.architecture": "mlp", "vae.mlp_width": 32, "vae.mlp_depth": 2})
  d_in = math.prod(shape)
  want_enc = _dense(d_in, 32) + _dense(32, 32) + 2 * _dense(32, 10)
  want_dec = _dense(10, 32) + _dense(32, 32) + _dense(32, d_in)
  encoder, decoder = vae.make_networks(c.vae, shape)
  assert _num_params(_shapes(encoder, (1, *shape))) == want_enc
  assert _num_params(_shapes(decoder, (1, 10))) == want_dec
  out = jax.eval_shape(decoder.apply, {"params": _shapes(decoder, (1, 10))}, jnp.zeros((3, 10)))
  assert out.shape == (3, *shape)


@pytest.mark.parametrize("architecture", ["conv", "burgess"])
def test_conv_pairs_map_images_to_latents_and_back(architecture):
  c = _config(**{"vae.architecture": architecture, "vae.latent_dim": 6})
  for shape in [(64, 64, 1), (32, 32, 3), (64, 48, 2)]:
    encoder, decoder = vae.make_networks(c.vae, shape)
    enc_params, dec_params = _shapes(encoder, (1, *shape)), _shapes(decoder, (1, 6))
    mu, log_var = jax.eval_shape(encoder.apply, {"params": enc_params}, jnp.zeros((5, *shape)))
    assert mu.shape == log_var.shape == (5, 6)
    out = jax.eval_shape(decoder.apply, {"params": dec_params}, jnp.zeros((5, 6)))
    assert out.shape == (5, *shape)


@pytest.mark.parametrize("shape", [(28, 28, 1), (64, 64), (2,), (48, 40, 1)])
def test_conv_nets_refuse_image_sizes_they_cannot_take(shape):
  with pytest.raises(UserError, match="multiples of 16"):
    models.make_family(_config(), shape)


# ----------------------------------------------------------------------------------------------
# Log-likelihoods.

B, P = 4, 6  # Batch and values per example of the property tests.
# Per value any float32 logit works; the bound keeps the per-example *sum* within float32.
BIG = float(np.float32(np.finfo(np.float32).max / (2 * P)))


def _naive_bernoulli(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
  """``Σ x log p + (1 − x) log(1 − p)``, ``p = 1 / (1 + e^−ℓ)`` in float64.

  Accurate to ~1e-9 for |ℓ| ≤ 15; beyond, ``1 − p`` loses digits (at ℓ = 30 the sum of six
  ``log(1 − p)`` is off by 6e-3), which is why the library uses log-sigmoid.
  """
  p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  return np.sum(x * np.log(p) + (1.0 - x) * np.log(1.0 - p), axis=1)


_bernoulli = jax.jit(vae.bernoulli_log_likelihood)


@settings(max_examples=60, deadline=None)
@given(
  hnp.arrays(np.float32, (B, P), elements=st.floats(0, 1, width=32)),
  hnp.arrays(np.float32, (B, P), elements=st.floats(-15, 15, width=32)),
)
def test_bernoulli_equals_naive_float64_formula(x, logits):
  got = np.asarray(_bernoulli(x, logits))
  np.testing.assert_allclose(got, _naive_bernoulli(x, logits), rtol=2e-5, atol=2e-5)


@settings(max_examples=60, deadline=None)
@given(
  hnp.arrays(np.float32, (B, P), elements=st.sampled_from([0.0, 1.0])),
  hnp.arrays(np.float32, (B, P), elements=st.floats(-BIG, BIG, width=32)),
)
def test_bernoulli_finite_and_exact_for_any_logit(x, logits):
  """For binary x: log p(x|ℓ) = −Σ log(1 + e^{−(2x−1)ℓ}), in float64 via logaddexp."""
  got = np.asarray(_bernoulli(x, logits))
  assert np.all(np.isfinite(got))
  sign = 2.0 * x.astype(np.float64) - 1.0
  want = -np.sum(np.logaddexp(0.0, -sign * logits.astype(np.float64)), axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_bernoulli_naive_float32_overflows_where_library_does_not():
  x = np.array([[1.0, 0.0]], np.float32)
  logits = np.array([[-200.0, 200.0]], np.float32)
  p = jax.nn.sigmoid(jnp.asarray(logits))
  naive = jnp.sum(x * jnp.log(p) + (1 - x) * jnp.log(1 - p))
  assert not np.isfinite(float(naive))
  assert float(_bernoulli(x, logits)[0]) == pytest.approx(-400.0, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(
  hnp.arrays(np.float32, (B, P), elements=st.floats(-3, 3, width=32)),
  hnp.arrays(np.float32, (B, P), elements=st.floats(-3, 3, width=32)),
  st.floats(-2, 2),
)
def test_gaussian_equals_scipy(x, mean, log_scale):
  got = np.asarray(jax.jit(vae.gaussian_log_likelihood)(x, mean, jnp.float32(log_scale)))
  want = np.sum(scipy.stats.norm.logpdf(x, mean, math.exp(np.float32(log_scale))), axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# KL.


def _kl_closed_form_1d(mu: float, log_var: float) -> float:
  """KL(N(μ, σ²) ‖ N(0, 1)) = log(1/σ) + (σ² + μ²)/2 − 1/2, in float64."""
  return -0.5 * log_var + 0.5 * (math.exp(log_var) + mu * mu) - 0.5


def test_vae_kl_is_the_shared_divergence(monkeypatch):
  """The VAE's KL term calls ``gen_models.divergences.kl_diag_gaussians`` (spied on here)."""
  calls = []

  def spy(*args, **kwargs):
    calls.append(kwargs)
    return kl_diag_gaussians(*args, **kwargs)

  monkeypatch.setattr(vae, "kl_diag_gaussians", spy)
  c = _config(**{"vae.architecture": "mlp", "vae.mlp_width": 8, "vae.mlp_depth": 1})
  encoder, decoder = vae.make_networks(c.vae, (3,))
  params = {
    "encoder": _shapes(encoder, (1, 3)),
    "decoder": _shapes(decoder, (1, 10)),
    "likelihood": {"log_scale": jnp.float32(0.0)},
  }
  terms = lambda p: vae.terms(
    p, jnp.ones((2, 3)), jax.random.key(2), encoder=encoder, decoder=decoder, likelihood="gaussian"
  )
  r, kl_j = jax.eval_shape(terms, params)  # Traced (the spy runs), not compiled.
  assert r.shape == () and kl_j.shape == (10,)
  assert calls == [{"axis": None}]


def test_kl_per_dim_equals_closed_form():
  rng = np.random.default_rng(0)
  mu = rng.normal(0, 2, (5, 7)).astype(np.float32)
  log_var = rng.normal(0, 1.5, (5, 7)).astype(np.float32)
  got = np.asarray(kl_diag_gaussians(mu, log_var, axis=None))
  want = np.vectorize(_kl_closed_form_1d)(mu.astype(np.float64), log_var.astype(np.float64))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(kl_diag_gaussians(mu, log_var)), want.sum(1), rtol=1e-5)


@pytest.mark.parametrize(("mu", "log_var"), [(0.0, 0.0), (1.5, -1.0), (-0.7, 0.8), (3.0, -3.0)])
def test_kl_equals_monte_carlo_estimate(mu, log_var):
  """E_q[log q(z) − log p(z)] from 400k draws of q, within 5 standard errors."""
  n = 400_000
  sigma = math.exp(0.5 * log_var)
  z = mu + sigma * np.random.default_rng(1).standard_normal(n)
  log_ratio = scipy.stats.norm.logpdf(z, mu, sigma) - scipy.stats.norm.logpdf(z)
  estimate, se = log_ratio.mean(), log_ratio.std(ddof=1) / math.sqrt(n)
  got = float(kl_diag_gaussians(jnp.float32([mu]), jnp.float32([log_var])))
  assert abs(got - estimate) <= 5 * se + 1e-9, (got, estimate, se)
  assert got == pytest.approx(_kl_closed_form_1d(mu, log_var), rel=1e-5, abs=1e-7)


def test_reparameterized_samples_have_the_posterior_moments():
  mu = jnp.float32([[0.5, -2.0, 3.0]])
  log_var = jnp.float32([[0.0, -2.0, 1.0]])
  z = vae.reparameterize(
    jax.random.key(0), jnp.repeat(mu, 200_000, 0), jnp.repeat(log_var, 200_000, 0)
  )
  sigma = np.exp(0.5 * np.asarray(log_var[0]))
  np.testing.assert_allclose(np.mean(z, 0), mu[0], atol=5 * sigma.max() / math.sqrt(200_000))
  np.testing.assert_allclose(np.std(z, 0), sigma, rtol=0.01)


# ----------------------------------------------------------------------------------------------
# Objectives and the capacity schedule.


def test_capacity_schedule_exact_points():
  c_max, steps = 25.0, 100_000
  ts = np.array([0, 1, 4000, 50_000, 99_999, 100_000, 100_001, 300_000])
  got = np.asarray(jax.vmap(lambda t: vae.capacity(t, c_max, steps))(jnp.asarray(ts)))
  want = np.minimum(c_max, c_max * ts / steps)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got[0] == 0.0 and got[3] == 12.5 and got[5] == 25.0 and got[-1] == 25.0


def test_objectives():
  r, kl = jnp.float32(100.0), jnp.float32(7.0)
  assert float(vae.objective(r, kl, kind="beta", beta=4.0)) == 128.0
  assert float(vae.objective(r, kl, kind="beta", beta=0.0)) == 100.0
  cap = lambda c: float(vae.objective(r, kl, kind="capacity", gamma=1000.0, capacity_now=c))
  assert cap(5.0) == 2100.0 and cap(9.0) == 2100.0 and cap(7.0) == 100.0
  # Below the capacity the KL is pushed up, above it down: the gradient's sign flips.
  grad = lambda c: float(
    jax.grad(lambda k: vae.objective(r, k, kind="capacity", gamma=1000.0, capacity_now=c))(kl)
  )
  assert grad(10.0) == -1000.0 and grad(5.0) == 1000.0


STEP_OVERRIDES = {
  "vae.architecture": "mlp",
  "vae.mlp_width": 16,
  "vae.mlp_depth": 1,
  "vae.latent_dim": 3,
  "vae.beta": 4.0,
  "vae.gamma": 10.0,
  "vae.c_max": 25.0,
  "vae.capacity_steps": 4,
  "optimizer.learning_rate": 1e-3,
  "optimizer.eps": 1e-12,
}
STEP_SHAPE = (5, 2)


@pytest.fixture(scope="module")
def steps():
  """``{objective: (config, family, jitted train step)}`` shared by the train-step tests."""
  out = {}
  for objective in vae.OBJECTIVES:
    c = _config(**STEP_OVERRIDES, **{"vae.objective": objective})
    family = models.make_family(c, STEP_SHAPE)
    out[objective] = (c, family, jax.jit(family.train_step))
  return out


def _batch(seed: int = 0) -> np.ndarray:
  return (np.random.default_rng(seed).random((6, *STEP_SHAPE)) > 0.5).astype(np.float32)


def _float64_reference(family_config, state, x):
  """``(R, KL_j)`` of the step at ``state``, recomputed in float64 from the same noise."""
  encoder, decoder = vae.make_networks(family_config.vae, x.shape[1:])
  mu, log_var = encoder.apply({"params": state.params["encoder"]}, x)
  key = jax.random.fold_in(state.step_key(), 0)
  eps = np.asarray(jax.random.normal(key, mu.shape), np.float64)
  z = np.asarray(mu, np.float64) + np.exp(0.5 * np.asarray(log_var, np.float64)) * eps
  logits = np.asarray(
    decoder.apply({"params": state.params["decoder"]}, jnp.float32(z)), np.float64
  )
  flat_x, flat_l = x.reshape(len(x), -1).astype(np.float64), logits.reshape(len(x), -1)
  log_p = -(flat_x * np.logaddexp(0, -flat_l) + (1 - flat_x) * np.logaddexp(0, flat_l)).sum(1)
  m, lv = np.asarray(mu, np.float64), np.asarray(log_var, np.float64)
  kl_j = (0.5 * (np.exp(lv) + m**2 - 1 - lv)).mean(0)
  return -log_p.mean(), kl_j


@pytest.mark.parametrize("objective", vae.OBJECTIVES)
def test_train_step_metrics_equal_a_float64_recomputation(steps, objective):
  c, family, step = steps[objective]
  x = _batch()
  state = _random_state(family)
  for t in range(3):
    r, kl_j = _float64_reference(c, state, x)
    state, m = step(state, x[None])
    kl = kl_j.sum()
    assert float(m["reconstruction"]) == pytest.approx(r, rel=1e-5)
    assert float(m["kl"]) == pytest.approx(kl, rel=1e-5, abs=1e-6)
    per_dim = [float(m[f"kl_per_dim/{j}"]) for j in range(3)]
    np.testing.assert_allclose(per_dim, kl_j, rtol=1e-5, atol=1e-6)
    assert float(m["elbo"]) == pytest.approx(-(r + kl), rel=1e-5)
    if objective == "beta":
      want = r + 4.0 * kl
    else:
      assert float(m["capacity"]) == 25.0 * t / 4
      want = r + 10.0 * abs(kl - 25.0 * t / 4)
    assert float(m["loss"]) == pytest.approx(want, rel=1e-5)
    assert int(state.step) == t + 1


def test_train_step_gradient_equals_autodiff_of_the_stated_loss(steps):
  """The update is Adam on ∇(R + β·KL): its first step is −lr·sign(g) (Adam's bias correction)."""
  c, family, step = steps["beta"]
  encoder, decoder = vae.make_networks(c.vae, STEP_SHAPE)
  x = _batch(1)
  state = _random_state(family, 3)
  key = jax.random.fold_in(state.step_key(), 0)

  def loss(p):
    r, kl_j = vae.terms(p, x, key, encoder=encoder, decoder=decoder, likelihood="bernoulli")
    return r + 4.0 * jnp.sum(kl_j)

  g = jax.grad(loss)(state.params)
  new, _ = step(state, x[None])
  delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new.params, state.params)
  want = jax.tree.map(lambda gi: -1e-3 * np.sign(np.asarray(gi)), g)
  jax.tree.map(lambda d, w: np.testing.assert_allclose(d, w, atol=2e-7), delta, want)


def test_learned_gaussian_scale_is_a_trained_parameter():
  overrides = {**STEP_OVERRIDES, "vae.likelihood": "gaussian", "vae.gaussian_scale": 0.5}
  family = models.make_family(_config(**overrides, **{"vae.learn_gaussian_scale": True}), (3,))
  abstract = jax.eval_shape(family.init, jax.random.key(0))
  assert abstract.params["likelihood"]["log_scale"].shape == ()
  adam_mu = abstract.opt_state["vae"][0].mu  # The optimizer updates it with the networks.
  assert set(adam_mu) == {"encoder", "decoder", "likelihood"}
  init_value = jax.jit(lambda k: family.init(k).params["likelihood"]["log_scale"])
  assert float(init_value(jax.random.key(0))) == pytest.approx(math.log(0.5))
  fixed = models.make_family(_config(**overrides), (3,))
  assert set(jax.eval_shape(fixed.init, jax.random.key(0)).params) == {"encoder", "decoder"}


# ----------------------------------------------------------------------------------------------
# Traversals and pictures.


def test_traversal_latents():
  mu = jnp.float32([0.5, -1.0, 2.0])
  z = np.asarray(vae.traversal_latents(mu, 2.0, 5))
  assert z.shape == (3, 5, 3)
  t = np.linspace(-2, 2, 5)
  for j in range(3):
    np.testing.assert_allclose(z[j, :, j], mu[j] + t, rtol=1e-6)
    others = [k for k in range(3) if k != j]
    np.testing.assert_array_equal(z[j][:, others], np.broadcast_to(np.asarray(mu)[others], (5, 2)))


def test_image_grids_layout():
  c = _config(**{"vae.architecture": "mlp", "vae.mlp_width": 8, "vae.latent_dim": 3})
  family = models.make_family(c, (4, 4, 1))
  state = _random_state(family)
  x = np.random.default_rng(0).random((19, 4, 4, 1)).astype(np.float32)
  grids = family.image_grids(state, x)
  assert grids["reconstructions"].shape == (4, 8, 4, 4, 1)
  assert grids["traversals"].shape == (3, c.vae.traversal_steps, 4, 4, 1)
  np.testing.assert_array_equal(grids["reconstructions"][0], x[:8])
  np.testing.assert_array_equal(grids["reconstructions"][2], x[8:16])
  mu = family.encode(state, x[:16])
  recon = jax.nn.sigmoid(
    vae.make_networks(c.vae, (4, 4, 1))[1].apply({"params": state.params["decoder"]}, mu)
  )
  np.testing.assert_allclose(grids["reconstructions"][3], recon[8:16], rtol=1e-5, atol=1e-6)
  # The middle traversal column is the example's own reconstruction (t = 0).
  middle = c.vae.traversal_steps // 2
  for j in range(3):
    np.testing.assert_allclose(grids["traversals"][j, middle], recon[0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Bad settings.


@pytest.mark.parametrize(
  ("overrides", "fragment"),
  [
    ({"vae.beta": -1.0}, "vae.beta must be >= 0, got -1.0"),
    ({"vae.gamma": -1.0}, "vae.gamma must be >= 0"),
    ({"vae.c_max": float("nan")}, "vae.c_max must be >= 0"),
    ({"vae.capacity_steps": 0}, "vae.capacity_steps must be >= 1"),
    ({"vae.latent_dim": 0}, "vae.latent_dim must be >= 1"),
    ({"vae.objective": "tc"}, "unknown vae.objective 'tc'"),
    ({"vae.likelihood": "laplace"}, "unknown vae.likelihood 'laplace'"),
    ({"vae.architecture": "resnet"}, "unknown vae.architecture 'resnet'"),
  ],
)
def test_bad_settings_are_user_errors(overrides, fragment):
  with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
    models.make_family(_config(**overrides), (64, 64, 1))
