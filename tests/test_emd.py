"""``gen_models.divergences.wasserstein1`` against brute force, scipy and closed forms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gen_models.divergences import wasserstein1


def _brute_force(x: np.ndarray, y: np.ndarray) -> float:
  """min over all n! permutations σ of (1/n) Σ_i ‖x_i − y_σ(i)‖₂."""
  n = len(x)
  cost = np.linalg.norm(x[:, None, :] - y[None, :, :], axis=-1)
  rows = np.arange(n)
  return min(cost[rows, list(perm)].mean() for perm in itertools.permutations(range(n)))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_equals_brute_force_over_permutations(n, d):
  rng = np.random.default_rng(100 * n + d)
  for _ in range(3):
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 0.5
    np.testing.assert_allclose(wasserstein1(x, y), _brute_force(x, y), rtol=1e-12, atol=1e-15)


def test_equals_scipy_in_one_dimension():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(200)
  y = 0.5 + 2.0 * rng.standard_exponential(200)
  want = scipy.stats.wasserstein_distance(x, y)
  np.testing.assert_allclose(wasserstein1(x[:, None], y[:, None]), want, rtol=1e-12)
  np.testing.assert_allclose(wasserstein1(x, y), want, rtol=1e-12)  # (n,) is read as (n, 1).
  # In 1-D the optimal plan matches sorted order.
  np.testing.assert_allclose(want, np.mean(np.abs(np.sort(x) - np.sort(y))), rtol=1e-12)


def test_returns_python_float():
  x = np.zeros((3, 2), np.float32)
  assert type(wasserstein1(x, x + 1)) is float


def test_zero_for_a_permutation_of_itself():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((50, 2))
  x[10] = x[20]  # Repeated points too.
  assert wasserstein1(x, x) == 0.0
  assert wasserstein1(x, x[rng.permutation(50)]) == 0.0
  assert wasserstein1(x.astype(np.float32), x[::-1].astype(np.float32)) == 0.0


def test_known_small_value():
  """Two points each: {(0,0), (1,0)} vs {(0,1), (1,1)} → match vertically, cost 1."""
  x = np.array([[0.0, 0.0], [1.0, 0.0]])
  y = np.array([[1.0, 1.0], [0.0, 1.0]])
  assert wasserstein1(x, y) == 1.0
  # 3-4-5 triangle: a single pair.
  assert wasserstein1(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])) == 5.0


_POINTS = st.integers(1, 7).flatmap(
  lambda n: st.tuples(*[hnp.arrays(np.float64, (n, 2), elements=st.floats(-10, 10))] * 3)
)


@settings(max_examples=60, deadline=None)
@given(sets=_POINTS)
def test_symmetric_and_triangle_inequality(sets):
  x, y, z = sets
  xy, yz, xz = wasserstein1(x, y), wasserstein1(y, z), wasserstein1(x, z)
  np.testing.assert_allclose(wasserstein1(y, x), xy, rtol=1e-12, atol=1e-12)
  assert xz <= xy + yz + 1e-9 * (1.0 + xy + yz)
  assert xy >= 0.0


@settings(max_examples=60, deadline=None)
@given(
  x=st.integers(1, 30).flatmap(lambda n: hnp.arrays(np.float64, (n, 3), elements=st.floats(-5, 5))),
  t=hnp.arrays(np.float64, (3,), elements=st.floats(-5, 5)),
  seed=st.integers(0, 2**32 - 1),
)
def test_translation_moves_by_its_length(x, t, seed):
  """W1(X, X + t) = ‖t‖.

  Lower bound, for any permutation σ (and, by Birkhoff–von Neumann, any coupling):
  (1/n) Σ_i ‖x_i − x_σ(i) − t‖ ≥ ‖(1/n) Σ_i (x_i − x_σ(i) − t)‖ = ‖−t‖ = ‖t‖ (triangle
  inequality; Σ_i x_σ(i) = Σ_i x_i). The identity σ attains it, so the optimum is ‖t‖.
  """
  y = x + t
  norm_t = float(np.linalg.norm(t))
  # x + t − x differs from t by rounding of size ~1e-16 · max|x|.
  np.testing.assert_allclose(wasserstein1(x, y), norm_t, rtol=1e-12, atol=1e-13)
  # The order of the points does not matter.
  perm = np.random.default_rng(seed).permutation(len(x))
  np.testing.assert_allclose(wasserstein1(x, y[perm]), norm_t, rtol=1e-12, atol=1e-13)
  # The lower bound of the docstring, for that σ: no plan beats the identity.
  cost = np.linalg.norm(x - y[perm], axis=1).mean()
  assert cost >= norm_t - 1e-12 * (1.0 + norm_t)


def test_scaling_is_homogeneous():
  rng = np.random.default_rng(2)
  x, y = rng.standard_normal((40, 2)), rng.standard_normal((40, 2))
  np.testing.assert_allclose(wasserstein1(3.0 * x, 3.0 * y), 3.0 * wasserstein1(x, y), rtol=1e-12)


@pytest.mark.parametrize(
  "shape_x,shape_y", [((3, 2), (4, 2)), ((3, 2), (3, 3)), ((5,), (4,)), ((2, 2), (3, 2))]
)
def test_unequal_shapes_raise(shape_x, shape_y):
  with pytest.raises(ValueError, match="equal shapes"):
    wasserstein1(np.zeros(shape_x), np.zeros(shape_y))
