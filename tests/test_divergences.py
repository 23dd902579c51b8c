"""``gen_models.divergences`` against independent references: closed forms, scipy, quadrature,
Monte Carlo, and the properties every divergence must have (hypothesis).

``tests/test_emd.py`` checks ``wasserstein1`` against brute force over permutations.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import scipy.integrate
import scipy.spatial.distance
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import linear_sum_assignment

from gen_models import divergences as dv

LOG2 = math.log(2.0)


_KL_GAUSS = jax.jit(dv.kl_diag_gaussians, static_argnames="axis")  # One compile per shape.


def _kl_gauss_x64(*args, **kwargs) -> np.ndarray:
  with jax.enable_x64(True):
    return np.asarray(_KL_GAUSS(*(np.float64(a) for a in args), **kwargs))


# ----------------------------------------------------------------------------------------------
# Diagonal Gaussians.

_VEC = st.integers(1, 6).flatmap(
  lambda d: st.tuples(*[hnp.arrays(np.float64, (d,), elements=st.floats(-3, 3))] * 4)
)


@settings(max_examples=60, deadline=None)
@given(params=_VEC)
def test_kl_gauss_to_standard_normal_closed_form(params):
  """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (σ² + μ² − 1 − log σ²), written out independently."""
  mu, logvar, _, _ = params
  var = np.exp(logvar)
  want = 0.5 * np.sum(var + mu**2 - 1.0 - np.log(var))
  np.testing.assert_allclose(_kl_gauss_x64(mu, logvar), want, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(params=_VEC)
def test_kl_gauss_nonnegative_zero_iff_equal_and_sums_over_dimensions(params):
  mu_q, lv_q, mu_p, lv_p = params
  per_dim = _kl_gauss_x64(mu_q, lv_q, mu_p, lv_p, axis=None)
  total = _kl_gauss_x64(mu_q, lv_q, mu_p, lv_p)
  assert per_dim.shape == mu_q.shape
  assert np.all(per_dim >= -1e-12)
  # A factorised Gaussian: the KL is the sum of the one-dimensional KLs, each computed alone.
  alone = [
    _kl_gauss_x64(mu_q[i : i + 1], lv_q[i : i + 1], mu_p[i], lv_p[i]) for i in range(len(mu_q))
  ]
  np.testing.assert_allclose(total, np.sum(alone), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(per_dim, np.ravel(alone), rtol=1e-12, atol=1e-12)
  assert abs(float(_kl_gauss_x64(mu_q, lv_q, mu_q, lv_q))) <= 1e-12
  # Distinct parameters (by a margin): strictly positive. KL ≥ the KL of the first dimension
  # that differs, and a 1-D KL with |Δμ| ≥ 0.01 or |Δ log σ²| ≥ 0.01 is at least ~1e-6.
  if np.max(np.abs(mu_q - mu_p)) >= 0.01 or np.max(np.abs(lv_q - lv_p)) >= 0.01:
    assert total > 1e-7


def test_kl_gauss_matches_monte_carlo_and_scipy_densities():
  """E_q[log q(x) − log p(x)] from 400,000 samples, log densities from scipy.stats.norm."""
  rng = np.random.default_rng(0)
  mu_q, lv_q = np.array([0.3, -1.0, 2.0]), np.array([0.5, -1.2, 0.0])
  mu_p, lv_p = np.array([0.0, 0.5, 1.0]), np.array([0.2, 0.0, 1.5])
  sq, sp = np.exp(lv_q / 2), np.exp(lv_p / 2)
  x = mu_q + sq * rng.standard_normal((400_000, 3))
  log_ratio = np.sum(
    scipy.stats.norm.logpdf(x, mu_q, sq) - scipy.stats.norm.logpdf(x, mu_p, sp), axis=1
  )
  estimate, stderr = log_ratio.mean(), log_ratio.std() / math.sqrt(len(x))
  got = float(_kl_gauss_x64(mu_q, lv_q, mu_p, lv_p))
  assert abs(got - estimate) < 5 * stderr, (got, estimate, stderr)
  assert stderr < 0.01 * got  # The check is tight: a 1 % error in the formula would fail it.


def test_kl_gauss_batched_float32_and_jit():
  mu = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
  lv = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
  got = jax.jit(dv.kl_diag_gaussians)(mu, lv)
  assert got.shape == (4,) and got.dtype == np.float32
  want = 0.5 * np.sum(np.exp(lv) + mu**2 - 1 - lv, axis=-1, dtype=np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Discrete KL and JSD.


def _distribution(k: int, zeros: bool = True):
  weights = st.floats(0.0 if zeros else 1e-3, 1.0)
  arr = hnp.arrays(np.float64, (k,), elements=weights).filter(lambda w: w.sum() > 1e-6)
  return arr.map(lambda w: w / w.sum())


_PAIR = st.integers(1, 12).flatmap(lambda k: st.tuples(_distribution(k), _distribution(k)))


@settings(max_examples=80, deadline=None)
@given(pq=_PAIR)
def test_kl_discrete_matches_scipy_and_is_nonnegative(pq):
  p, q = pq
  got = dv.kl_discrete(p, q)
  want = scipy.stats.entropy(p, q)  # Natural log; inf where p > 0 = q.
  if math.isinf(want):
    assert got == math.inf
  else:
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert got >= 0.0
  assert dv.kl_discrete(p, p) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(
  pq=st.integers(2, 12).flatmap(lambda k: st.tuples(_distribution(k, False), _distribution(k)))
)
def test_kl_discrete_is_zero_only_for_equal_distributions(pq):
  p, q = pq
  gap = float(np.abs(p - q).sum())
  assume(gap > 1e-3)
  # Pinsker: KL ≥ ½ ‖p − q‖₁².
  assert dv.kl_discrete(q, p) >= 0.5 * gap**2 * (1 - 1e-9)


@settings(max_examples=80, deadline=None)
@given(pq=_PAIR)
def test_jsd_matches_scipy_symmetric_and_bounded(pq):
  p, q = pq
  got = dv.jsd_discrete(p, q)
  # Its square is the JSD, in nats. For p = q scipy takes the square root of a round-off
  # negative and returns NaN; the JSD there is 0.
  want = np.nan_to_num(scipy.spatial.distance.jensenshannon(p, q) ** 2, nan=0.0)
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  assert got == dv.jsd_discrete(q, p)  # Exactly symmetric.
  assert 0.0 <= got <= LOG2
  # Definition: ½ KL(p ‖ m) + ½ KL(q ‖ m), with the library's own KL.
  m = 0.5 * (p + q)
  np.testing.assert_allclose(
    got, 0.5 * dv.kl_discrete(p, m) + 0.5 * dv.kl_discrete(q, m), rtol=1e-9, atol=1e-12
  )


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 8), split=st.integers(1, 8), data=st.data())
def test_jsd_is_log2_for_disjoint_supports(k, split, data):
  p = np.concatenate([data.draw(_distribution(k, False)), np.zeros(split)])
  q = np.concatenate([np.zeros(k), data.draw(_distribution(split, False))])
  assert dv.jsd_discrete(p, q) == pytest.approx(LOG2, rel=1e-12)
  assert dv.kl_discrete(p, q) == math.inf
  assert dv.jsd_discrete(p, p) == pytest.approx(0.0, abs=1e-12)


def test_discrete_batched_along_last_axis():
  rng = np.random.default_rng(3)
  p, q = rng.dirichlet(np.ones(5), size=(3, 4)), rng.dirichlet(np.ones(5), size=(3, 4))
  for fn in (dv.kl_discrete, dv.jsd_discrete):
    got = fn(p, q)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got[1, 2], fn(p[1, 2], q[1, 2]), rtol=1e-14)
  assert isinstance(dv.jsd_discrete(p[0, 0], q[0, 0]), float)


@pytest.mark.parametrize(
  "p,q,match",
  [
    ([0.5, 0.5], [0.2, 0.3, 0.5], "equal shapes"),
    ([], [], "at least one outcome"),
    (0.5, 0.5, "at least one outcome"),
    ([1.2, -0.2], [0.5, 0.5], "negative"),
    ([0.5, 0.6], [0.5, 0.5], "does not sum to 1"),
    ([0.5, 0.5], [0.3, 0.3], "does not sum to 1"),
    ([np.nan, 1.0], [0.5, 0.5], "non-finite"),
  ],
)
def test_discrete_bad_input_raises(p, q, match):
  for fn in (dv.kl_discrete, dv.jsd_discrete):
    with pytest.raises(ValueError, match=match):
      fn(p, q)


def test_discrete_tolerance_accepts_rounding():
  p = np.array([0.5 + 1e-9, 0.5, -1e-10])  # Off by 1e-9: within the default tolerance.
  assert dv.jsd_discrete(p, [0.5, 0.5, 0.0]) == pytest.approx(0.0, abs=1e-9)
  with pytest.raises(ValueError, match="negative"):
    dv.jsd_discrete(p, [0.5, 0.5, 0.0], atol=1e-12)
  with pytest.raises(ValueError, match="does not sum"):
    dv.jsd_discrete(p.clip(0), [0.5, 0.5, 0.0], atol=1e-12)


# ----------------------------------------------------------------------------------------------
# JSD of tabulated densities.


def _log_normal(x, mu, sigma):
  return scipy.stats.norm.logpdf(x, mu, sigma)


def test_jsd_grid_matches_quadrature_in_1d():
  """Two Gaussians: the grid JSD against scipy's adaptive quadrature of the JSD integrand."""
  x = np.linspace(-12, 12, 4001)
  mu_p, s_p, mu_q, s_q = -0.5, 1.0, 1.5, 0.7
  got = dv.jsd_grid(_log_normal(x, mu_p, s_p), _log_normal(x, mu_q, s_q), x[1] - x[0])

  def integrand(t):
    p, q = scipy.stats.norm.pdf(t, mu_p, s_p), scipy.stats.norm.pdf(t, mu_q, s_q)
    m = 0.5 * (p + q)
    return 0.5 * (p * math.log(p / m) if p > 0 else 0.0) + 0.5 * (
      q * math.log(q / m) if q > 0 else 0.0
    )

  want, _ = scipy.integrate.quad(integrand, -12, 12, points=[mu_p, mu_q], limit=200)
  np.testing.assert_allclose(got, want, rtol=1e-7)


def test_jsd_grid_2d_with_a_shared_factor_equals_1d():
  """JSD(p₁ ⊗ r, q₁ ⊗ r) = JSD(p₁, q₁): a factor both densities share cancels."""
  x = np.linspace(-10, 10, 801)
  y = np.linspace(-6, 6, 301)
  lp, lq = _log_normal(x, 0.0, 1.0), _log_normal(x, 1.0, 2.0)
  lr = _log_normal(y, 0.3, 0.8)
  one_d = dv.jsd_grid(lp, lq, x[1] - x[0])
  two_d = dv.jsd_grid(
    lp[:, None] + lr[None, :], lq[:, None] + lr[None, :], (x[1] - x[0]) * (y[1] - y[0])
  )
  np.testing.assert_allclose(two_d, one_d, rtol=1e-9)
  assert dv.jsd_grid(lp, lp, x[1] - x[0]) == pytest.approx(0.0, abs=1e-15)


def test_jsd_grid_disjoint_uniforms_is_log2_and_bad_grids_raise():
  x = (np.arange(100) + 0.5) / 50  # Cells of width 0.02 on [0, 2].
  lp = np.where(x < 1, 0.0, -np.inf)  # U[0, 1]: density 1.
  lq = np.where(x >= 1, 0.0, -np.inf)  # U[1, 2].
  assert dv.jsd_grid(lp, lq, 0.02) == pytest.approx(LOG2, rel=1e-12)
  with pytest.raises(ValueError, match="integrates to 0.5"):
    dv.jsd_grid(lp, lq, 0.01)
  with pytest.raises(ValueError, match="equal shapes"):
    dv.jsd_grid(lp, lq[:-1], 0.02)
  with pytest.raises(ValueError, match="1-D or 2-D"):
    dv.jsd_grid(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), 0.125)
  with pytest.raises(ValueError, match="NaN"):
    dv.jsd_grid(np.where(x < 1, np.nan, 0.0), lq, 0.02)
  with pytest.raises(ValueError, match="cell_volume"):
    dv.jsd_grid(lp, lq, -0.02)


# ----------------------------------------------------------------------------------------------
# Wasserstein-1 and its sliced version.


def test_w1_known_values():
  assert dv.wasserstein1([1, 2, 3, 4], [2, 3, 4, 5]) == 1.0
  assert dv.wasserstein1([[1.0, 2.0]], [[4.0, 6.0]]) == 5.0  # W1(δ_a, δ_b) = ‖a − b‖.
  assert dv.wasserstein1([3.0, 1.0], [0.0, 4.0]) == 1.0  # Sorted: |1 − 0| and |3 − 4|.


@settings(max_examples=100, deadline=None)
@given(a=st.floats(-1e3, 1e3), b=st.floats(-1e3, 1e3), d=st.integers(1, 3))
def test_w1_between_two_diracs(a, b, d):
  x, y = np.full((1, d), a), np.full((1, d), b)
  # |a − b| below ~1e-154 squares to a subnormal or to 0 in float64: hence the tiny atol.
  want = abs(a - b) * math.sqrt(d)
  np.testing.assert_allclose(dv.wasserstein1(x, y), want, rtol=1e-12, atol=1e-150)
  np.testing.assert_allclose(
    dv.wasserstein1(x.repeat(5, 0), y.repeat(5, 0)), want, rtol=1e-12, atol=1e-150
  )


_SAMPLES_1D = st.integers(1, 40).flatmap(
  lambda n: st.tuples(*[hnp.arrays(np.float64, (n,), elements=st.floats(-10, 10))] * 2)
)


@settings(max_examples=100, deadline=None)
@given(xy=_SAMPLES_1D, c=st.floats(-10, 10))
def test_w1_1d_shift_and_sorted_closed_form_equals_assignment(xy, c):
  x, y = xy
  np.testing.assert_allclose(dv.wasserstein1(x, x + c), abs(c), rtol=1e-9, atol=1e-12)
  cost = np.abs(x[:, None] - y[None, :])
  rows, cols = linear_sum_assignment(cost)
  np.testing.assert_allclose(dv.wasserstein1(x, y), cost[rows, cols].mean(), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(dv.wasserstein1(x, y), dv.wasserstein1(y, x), rtol=0, atol=0)


_SAMPLES_2D = st.integers(1, 12).flatmap(
  lambda n: st.tuples(*[hnp.arrays(np.float64, (n, 2), elements=st.floats(-10, 10))] * 2)
)


@settings(max_examples=60, deadline=None)
@given(xy=_SAMPLES_2D, seed=st.integers(0, 2**31), projections=st.integers(1, 50))
def test_sliced_w1_is_at_most_w1_in_2d(xy, seed, projections):
  x, y = xy
  sw = dv.sliced_wasserstein(x, y, projections, seed)
  assert 0.0 <= sw <= dv.wasserstein1(x, y) * (1 + 1e-12) + 1e-12
  assert sw == dv.sliced_wasserstein(x, y, projections, seed)  # Deterministic in the seed.


@settings(max_examples=60, deadline=None)
@given(xy=_SAMPLES_1D, seed=st.integers(0, 2**31))
def test_sliced_w1_equals_w1_for_1d_data(xy, seed):
  x, y = xy  # Directions are ±1: every projection has the same W1.
  np.testing.assert_allclose(
    dv.sliced_wasserstein(x, y, 7, seed), dv.wasserstein1(x, y), rtol=1e-12, atol=1e-12
  )


def test_sliced_w1_of_a_translation_is_two_over_pi_times_its_length():
  """In 2-D each direction θ gives |θᵀt|, and E|θᵀt| = ‖t‖ · E|cos φ| = ‖t‖ · 2/π."""
  x = np.random.default_rng(4).standard_normal((50, 2))
  t = np.array([3.0, -4.0])
  n = 20_000
  got = dv.sliced_wasserstein(x, x + t, n, seed=5, chunk_size=1000)
  stderr = 5.0 * math.sqrt(0.5 - (2 / math.pi) ** 2) / math.sqrt(n)  # ‖t‖ · std|cos φ| / √n.
  assert abs(got - 5.0 * 2 / math.pi) < 5 * stderr


@pytest.mark.parametrize("fn", [dv.wasserstein1, dv.sliced_wasserstein])
def test_w1_bad_input_raises(fn):
  with pytest.raises(ValueError, match="equal shapes"):
    fn(np.zeros((3, 2)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="empty"):
    fn(np.zeros((0, 2)), np.zeros((0, 2)))
  with pytest.raises(ValueError, match="non-finite"):
    fn(np.array([0.0, np.inf]), np.zeros(2))
  with pytest.raises(ValueError, match=r"\(n,\) or \(n, d\)"):
    fn(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
  with pytest.raises(ValueError, match="num_projections"):
    dv.sliced_wasserstein(np.zeros(3), np.ones(3), 0)
