"""The 2-D toy distributions of ``gen_models.data.toy`` (WGAN-GP paper, Sec. 5.1)."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest

from gen_models.data import toy

N = 20_000
NAMES = sorted(toy.DISTRIBUTIONS)


def _nearest(points: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(index of the nearest center, residual point − center) per point, in float64."""
  points = points.astype(np.float64)
  d2 = np.sum((points[:, None, :] - centers[None, :, :]) ** 2, axis=-1)
  k = np.argmin(d2, axis=1)
  return k, points - centers[k]


def _check_mixture(points: np.ndarray, centers: np.ndarray, std: float) -> None:
  """An equal-weight mixture of isotropic N(center, std²) in 2-D."""
  n, m = len(points), len(centers)
  k, res = _nearest(points, centers)
  # The modes are far apart compared with std, so the nearest center is the true one.
  spacing = min(np.linalg.norm(a - b) for a, b in itertools.combinations(centers, 2))
  assert spacing > 30 * std  # Half-way between modes is ≥ 15 std.
  # Every point within 6 std of its center (P(‖z‖ > 6) = e⁻¹⁸ for a 2-D standard normal).
  assert np.max(np.linalg.norm(res, axis=1)) < 6 * std
  # Per-coordinate std within 3% (its standard error is std/√(2n) ≈ 0.5% here) and mean zero.
  np.testing.assert_allclose(res.std(axis=0), std, rtol=0.03)
  np.testing.assert_allclose(res.mean(axis=0), 0.0, atol=4 * std / math.sqrt(n))
  # Coordinates independent: the correlation is 0 within 4 standard errors (1/√n).
  assert abs(np.corrcoef(res.T)[0, 1]) < 4 / math.sqrt(n)
  # Mode frequencies 1/m within 4 binomial standard errors.
  freq = np.bincount(k, minlength=m) / n
  se = math.sqrt((1 / m) * (1 - 1 / m) / n)
  np.testing.assert_allclose(freq, 1 / m, rtol=0, atol=4 * se)


def test_eight_gaussians():
  angles = np.arange(8) * math.pi / 4
  centers = (2 / 1.414) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  _check_mixture(toy.sample("8gaussians", N, seed=0, stream=0, index=0), centers, 0.02 / 1.414)


def test_twenty_five_gaussians():
  grid = 2.0 * np.arange(-2, 3) / 2.828
  centers = np.array([(a, b) for a in grid for b in grid])
  assert len(centers) == 25
  _check_mixture(toy.sample("25gaussians", N, seed=0, stream=0, index=0), centers, 0.05 / 2.828)


def test_swiss_roll():
  """t ~ U[1.5π, 4.5π), (t cos t, t sin t) + N(0, 0.25²) per coordinate, all over 7.5."""
  x = toy.sample("swissroll", N, seed=0, stream=0, index=0).astype(np.float64)
  p = 7.5 * x
  r = np.linalg.norm(p, axis=1)
  # ‖p‖ ≤ t + ‖noise‖ < 4.5π + 6·0.25 (P(‖noise‖ > 6·0.25) = e⁻¹⁸ per point); so is max |x|.
  bound = (4.5 * math.pi + 6 * 0.25) / 7.5
  assert np.max(np.abs(x)) <= bound
  assert np.max(r) / 7.5 <= bound
  assert np.min(r) >= 1.5 * math.pi - 6 * 0.25
  # Recover t: its angle is t mod 2π, and t ≈ ‖p‖ (the noise is small against the 2π spacing
  # of the turns), so t̂ = the value ≡ angle (mod 2π) nearest to ‖p‖.
  angle = np.arctan2(p[:, 1], p[:, 0])
  t_hat = angle + 2 * math.pi * np.round((r - angle) / (2 * math.pi))
  # ‖p‖ − t̂ ≈ n_radial − n_tangential / t, of std 0.25·√(1 + E[1/t²]) ≈ 0.2509.
  resid = r - t_hat
  std_want = 0.25 * math.sqrt(1 + 1 / (1.5 * math.pi * 4.5 * math.pi))
  np.testing.assert_allclose(resid.std(), std_want, rtol=0.03)
  np.testing.assert_allclose(resid.mean(), 0.0, atol=0.02)  # Bias ≈ E[n_t²/2t] ≈ 0.005.
  # t̂ is uniform on [1.5π, 4.5π): mean 3π, std π·√3 ... up to the noise (std ≈ 0.25).
  width = 3 * math.pi
  np.testing.assert_allclose(t_hat.mean(), 3 * math.pi, atol=4 * width / math.sqrt(12 * N))
  np.testing.assert_allclose(t_hat.std(), width / math.sqrt(12), rtol=0.02)
  counts = np.histogram(t_hat, bins=6, range=(1.5 * math.pi + 0.5, 4.5 * math.pi - 0.5))[0]
  expected = N * (width - 1.0) / 6 / width
  np.testing.assert_allclose(counts, expected, atol=4 * math.sqrt(expected))


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_a_pure_function_of_seed_stream_index(name):
  base = toy.sample(name, 64, seed=3, stream=0, index=5)
  assert base.shape == (64, 2) and base.dtype == np.float32
  np.testing.assert_array_equal(toy.sample(name, 64, seed=3, stream=0, index=5), base)
  for seed, stream, index in [(4, 0, 5), (3, 1, 5), (3, 0, 6), (3, 0, 0), (0, 3, 5), (5, 0, 3)]:
    other = toy.sample(name, 64, seed=seed, stream=stream, index=index)
    assert not np.any(np.all(other == base, axis=1)), (seed, stream, index)


def test_names_give_different_distributions():
  samples = [toy.sample(name, 64, 0, 0, 0) for name in NAMES]
  for a, b in itertools.combinations(samples, 2):
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_dataset_batch_is_the_whole_global_batch_in_one_process(name):
  ds = toy.ToyDataset(name, global_batch_size=32, seed=7)
  assert ds.kind == "points" and ds.shape == (2,)
  for index in (0, 1, 1000):
    batch = ds.batch(index)
    assert batch.shape == (32, 2) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, toy.sample(name, 32, 7, toy.TRAIN_STREAM, index))
  assert not np.array_equal(ds.batch(0), ds.batch(1))
  ref = ds.reference(100)
  assert ref.shape == (100, 2) and ref.dtype == np.float32
  np.testing.assert_array_equal(ref, toy.sample(name, 100, 7, toy.REFERENCE_STREAM, 0))
  # Held-out data is not the training stream.
  assert not np.array_equal(ref[:32], ds.batch(0))


def test_labels_on_an_unlabelled_dataset_is_a_one_line_error():
  from gen_models import UserError, config, data

  c = config.base_config()
  c.dataset.labels = True
  for name in ("8gaussians", "dsprites_procedural"):
    c.dataset.name = name
    with pytest.raises(UserError, match=f"dataset {name!r} has no labels") as e:
      data.create(c, 8)
    assert "\n" not in str(e.value)
  c.dataset.labels = False
  assert data.num_classes(c) is None and not hasattr(data.create(c, 8), "num_classes")


# ----------------------------------------------------------------------------------------------
# The density-estimation sets (flow literature) and their exact log-densities.

DENSITIES = sorted(toy.DENSITIES)
WIDE_CENTERS = (4 / 1.414) * np.stack(
  [np.cos(np.arange(8) * math.pi / 4), np.sin(np.arange(8) * math.pi / 4)], axis=1
)


def test_eight_gaussians_wide():
  """FFJORD's 8 Gaussians: centres 4·(cos kπ/4, sin kπ/4)/1.414, std 0.5/1.414."""
  x = toy.sample("8gaussians_wide", N, seed=0, stream=0, index=0).astype(np.float64)
  std, r = 0.5 / 1.414, 4 / 1.414
  # Modes only 6 std apart: check the moments. Mean 0; covariance (r²/2 + σ²) I (E cos² = ½).
  var = r**2 / 2 + std**2
  np.testing.assert_allclose(x.mean(0), 0.0, atol=4 * math.sqrt(var / N))
  cov = np.cov(x.T)
  # Var of x₁² is E x⁴ − var²; E x⁴ = r⁴·E cos⁴ + 6 r² E cos² σ² + 3σ⁴, E cos⁴ = 3/8.
  se = math.sqrt((r**4 * 3 / 8 + 3 * r**2 * std**2 + 3 * std**4 - var**2) / N)
  np.testing.assert_allclose(np.diag(cov), var, atol=4 * se)
  assert abs(cov[0, 1]) < 4 * se
  # Radius minus the nearest centre's: |x − c_k| has the Rayleigh mean σ√(π/2) (modes ≥ 6σ apart,
  # the nearest centre is the drawing one except for ~1e-3 of points).
  _, res = _nearest(x, WIDE_CENTERS)
  np.testing.assert_allclose(
    np.linalg.norm(res, axis=1).mean(), std * math.sqrt(math.pi / 2), rtol=0.02
  )


def test_eight_gaussians_wide_log_density_is_the_mixture_formula():
  """Against the Gaussian pdfs summed directly (no log-sum-exp), at points where nothing
  underflows; and far away, where only the log-sum-exp form stays finite."""
  std = 0.5 / 1.414
  x = np.array([[0.0, 0.0], [2.0, 0.3], [-1.1, 2.5], [3.0, 3.0], *WIDE_CENTERS[:2]])
  pdf = sum(
    np.exp(-np.sum((x - c) ** 2, axis=1) / (2 * std**2)) / (2 * math.pi * std**2)
    for c in WIDE_CENTERS
  )
  pdf /= 8
  np.testing.assert_allclose(toy.log_density("8gaussians_wide", x), np.log(pdf), rtol=1e-12)
  far = toy.log_density("8gaussians_wide", np.array([[30.0, -20.0]]))
  sq = np.min(np.sum((np.array([30.0, -20.0]) - WIDE_CENTERS) ** 2, axis=1))
  assert np.isfinite(far[0]) and far[0] <= -sq / (2 * std**2) - math.log(2 * math.pi * std**2)


def test_checkerboard_support_and_density():
  """Uniform on the 8 squares [2i, 2i+2)×[2j, 2j+2), i + j even: every sample inside, each square
  with 1/8 of the points, and log-density −log 32 inside, −inf outside."""
  x = toy.sample("checkerboard", N, seed=0, stream=0, index=0).astype(np.float64)
  i, j = np.floor(x[:, 0] / 2).astype(int), np.floor(x[:, 1] / 2).astype(int)
  assert np.all((i + j) % 2 == 0) and np.all(np.abs(x) <= 4)
  counts = np.bincount((i + 2) * 4 + (j + 2), minlength=16)
  occupied = [(a + 2) * 4 + (b + 2) for a in range(-2, 2) for b in range(-2, 2) if (a + b) % 2 == 0]
  se = math.sqrt(N * (1 / 8) * (7 / 8))
  np.testing.assert_allclose(counts[occupied], N / 8, atol=4 * se)
  np.testing.assert_array_equal(toy.log_density("checkerboard", x), -math.log(32))
  outside = np.array([[1.0, 3.0], [-3.0, -1.0], [4.5, 0.5], [0.5, -4.5]])
  assert np.all(toy.log_density("checkerboard", outside) == -np.inf)
  # The squares are half-open: the corner (−4, −4) is inside, the edge x = 4 is not.
  edges = toy.log_density("checkerboard", np.array([[-4.0, -4.0], [4.0, 0.5], [0.5, 4.0]]))
  np.testing.assert_array_equal(edges, [-np.log(32.0), -np.inf, -np.inf])


def test_two_moons_log_density_quadrature_is_converged():
  """The moons' density by 16× finer Gauss–Legendre quadrature agrees to 1e-12 (log scale)."""
  x = toy.sample("two_moons", 200, seed=0, stream=1, index=0).astype(np.float64)
  coarse = toy.log_density("two_moons", x)
  t, w = toy._moons_nodes(panels=256, order=16)
  centers = np.concatenate(
    [toy._moon_curve(t, np.zeros(t.shape, int)), toy._moon_curve(t, np.ones(t.shape, int))]
  )
  fine = toy._gaussian_mixture_log_density(x, centers, np.concatenate([w, w]) / (2 * math.pi), 0.2)
  np.testing.assert_allclose(coarse, fine, rtol=0, atol=1e-12)


@functools.cache
def _grid_mass(name: str, h: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """Midpoints of a ``h`` grid over [−6, 6]² and the mass ``p·h²`` of each cell."""
  g = np.arange(-6 + h / 2, 6, h)
  xx, yy = np.meshgrid(g, g, indexing="ij")
  grid = np.stack([xx.ravel(), yy.ravel()], 1)
  return grid, np.exp(toy.log_density(name, grid)) * h * h


@pytest.mark.parametrize("name", DENSITIES)
def test_log_density_integrates_to_one(name):
  """Midpoint rule on a 0.05 grid over [−6, 6]² (all the mass but ≤ e⁻⁵⁰ of it): Σ p·h² = 1
  within 1e-3 (the checkerboard's square edges fall on grid-cell edges: exact; for the smooth
  densities the midpoint rule's error is ~exp(−2π²σ²/h²) < 1e-6)."""
  grid, mass = _grid_mass(name)
  total = np.sum(mass)
  np.testing.assert_allclose(total, 1.0, atol=1e-3)


@pytest.mark.parametrize("name", DENSITIES)
def test_samples_follow_the_log_density(name):
  """Mass of the 4 quadrants and of the disc of radius 2: sample frequency vs the density's
  integral (midpoint rule) within 4 binomial standard errors."""
  x = toy.sample(name, N, seed=1, stream=0, index=0).astype(np.float64)
  grid, p = _grid_mass(name)
  regions = [
    lambda a: (a[:, 0] > 0) & (a[:, 1] > 0),
    lambda a: (a[:, 0] < 0) & (a[:, 1] > 0),
    lambda a: (a[:, 0] > 0.7) & (a[:, 1] < 0.3),
    lambda a: np.hypot(a[:, 0], a[:, 1]) < 2,
  ]
  for region in regions:
    want = np.sum(p[region(grid)])
    got = np.mean(region(x))
    se = math.sqrt(max(want * (1 - want), 1e-4) / N)
    assert abs(got - want) < 4 * se + 2e-3, (got, want)
