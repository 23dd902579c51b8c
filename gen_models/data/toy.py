"""Two-dimensional toy distributions of Gulrajani et al. 2017 (WGAN-GP), Sec. 5.1 / App. C.

* ``8gaussians``: 8 modes at radius 2 on the unit-circle directions k·π/4, std 0.02, the whole
  set scaled by 1/1.414 (radius ≈ 1.414, std ≈ 0.0141).
* ``25gaussians``: modes on the 5×5 grid {-4,-2,0,2,4}², std 0.05, scaled by 1/2.828.
* ``swissroll``: t = 1.5π(1 + 2u), u ~ U[0, 1); the point (t cos t, t sin t) plus N(0, 0.25²)
  noise per coordinate, scaled by 1/7.5.

Density-estimation sets of the flow literature, each with its exact log-density
(:func:`log_density`, :data:`DENSITIES`):

* ``8gaussians_wide`` (FFJORD's ``8gaussians``): equal-weight mixture of N(c_k, σ² I₂) with
  c_k = 4·(cos kπ/4, sin kπ/4)/1.414, σ = 0.5/1.414, k = 0..7.
* ``checkerboard`` (FFJORD's): uniform on the 8 squares [2i, 2i+2) × [2j, 2j+2) of [−4, 4)² with
  i + j even (i, j ∈ {−2..1}); density 1/32 there, 0 elsewhere (log-density −inf).
* ``two_moons``: the two half circles of ``sklearn.datasets.make_moons``, m₀(t) = (cos t, sin t),
  m₁(t) = (1 − cos t, ½ − sin t), t ~ U[0, π], each with probability ½, centred by (½, ¼) and
  scaled by 2, plus N(0, 0.2² I₂) noise: c_m(t) = 2·(m_m(t) − (½, ¼)). Its density
  p(x) = ½ Σ_m (1/π) ∫₀^π N(x; c_m(t), 0.2² I₂) dt is computed by Gauss–Legendre quadrature on
  32 panels of 8 nodes per half circle (nodes ≤ 0.05 apart against σ = 0.2; 16× finer
  quadrature (4,096 nodes) agrees to 1e-12 in the log-density: tests/test_toy_data.py).

Batches are pure functions of (seed, stream, batch index): ``numpy.random.Generator`` seeded by
``SeedSequence([seed, stream, index])``. Stream 0 is training data, stream 1 held-out data.
"""

from __future__ import annotations

import math

import numpy as np

from gen_models import devices

TRAIN_STREAM, REFERENCE_STREAM = 0, 1


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
  angles = rng.integers(0, 8, size=n) * (math.pi / 4)
  centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  return (centers + 0.02 * rng.standard_normal((n, 2))) / 1.414


def _twenty_five_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
  centers = 2.0 * (rng.integers(0, 5, size=(n, 2)) - 2)
  return (centers + 0.05 * rng.standard_normal((n, 2))) / 2.828


def _swiss_roll(rng: np.random.Generator, n: int) -> np.ndarray:
  t = 1.5 * math.pi * (1.0 + 2.0 * rng.random(n))
  x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
  return (x + 0.25 * rng.standard_normal((n, 2))) / 7.5


WIDE_SCALE, WIDE_STD = 4.0 / 1.414, 0.5 / 1.414
MOONS_STD = 0.2


def _wide_centers() -> np.ndarray:
  k = np.arange(8) * (math.pi / 4)
  return WIDE_SCALE * np.stack([np.cos(k), np.sin(k)], axis=1)


def _eight_gaussians_wide(rng: np.random.Generator, n: int) -> np.ndarray:
  centers = _wide_centers()[rng.integers(0, 8, size=n)]
  return centers + WIDE_STD * rng.standard_normal((n, 2))


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
  x1 = rng.random(n) * 4 - 2
  x2 = rng.random(n) - 2 * rng.integers(0, 2, size=n) + np.floor(x1) % 2
  return 2 * np.stack([x1, x2], axis=1)


def _moon_curve(t: np.ndarray, moon: np.ndarray) -> np.ndarray:
  """c_m(t) for each ``t`` and ``moon`` ∈ {0, 1}: ``(..., 2)``."""
  upper = np.stack([np.cos(t), np.sin(t)], axis=-1)
  lower = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], axis=-1)
  return 2 * (np.where(moon[..., None] == 0, upper, lower) - np.array([0.5, 0.25]))


def _two_moons(rng: np.random.Generator, n: int) -> np.ndarray:
  t = rng.random(n) * math.pi
  moon = rng.integers(0, 2, size=n)
  return _moon_curve(t, moon) + MOONS_STD * rng.standard_normal((n, 2))


def _gaussian_mixture_log_density(x: np.ndarray, centers: np.ndarray, weights, std: float):
  """``log Σ_k w_k N(x; c_k, std² I₂)`` for ``x (n, 2)``, ``centers (K, 2)`` → ``(n,)``."""
  sq = np.sum(np.square(x[:, None, :] - centers[None]), axis=-1)
  logs = np.log(weights)[None] - sq / (2 * std**2) - math.log(2 * math.pi * std**2)
  top = np.max(logs, axis=1, keepdims=True)
  return top[:, 0] + np.log(np.sum(np.exp(logs - top), axis=1))


def _log_density_wide(x: np.ndarray) -> np.ndarray:
  return _gaussian_mixture_log_density(x, _wide_centers(), np.full(8, 1 / 8), WIDE_STD)


def _log_density_checkerboard(x: np.ndarray) -> np.ndarray:
  i, j = np.floor(x[:, 0] / 2), np.floor(x[:, 1] / 2)
  inside = np.all((x >= -4) & (x < 4), axis=1) & ((i + j) % 2 == 0)  # The half-open [−4, 4)².
  return np.where(inside, -math.log(32.0), -np.inf)


def _moons_nodes(panels: int = 32, order: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Gauss–Legendre nodes and weights of ∫₀^π dt on ``panels`` equal panels."""
  g, w = np.polynomial.legendre.leggauss(order)
  width = math.pi / panels
  starts = np.arange(panels) * width
  t = (starts[:, None] + (g[None] + 1) * width / 2).ravel()
  return t, np.tile(w * width / 2, panels)


def _log_density_moons(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
  t, w = _moons_nodes()
  centers = np.concatenate(
    [_moon_curve(t, np.zeros_like(t, int)), _moon_curve(t, np.ones_like(t, int))]
  )
  weights = np.concatenate([w, w]) / (2 * math.pi)  # ½ per moon, 1/π the density of t.
  return np.concatenate(
    [
      _gaussian_mixture_log_density(x[i : i + chunk], centers, weights, MOONS_STD)
      for i in range(0, len(x), chunk)
    ]
  )


DISTRIBUTIONS = {
  "8gaussians": _eight_gaussians,
  "25gaussians": _twenty_five_gaussians,
  "swissroll": _swiss_roll,
  "8gaussians_wide": _eight_gaussians_wide,
  "checkerboard": _checkerboard,
  "two_moons": _two_moons,
}

DENSITIES = {
  "8gaussians_wide": _log_density_wide,
  "checkerboard": _log_density_checkerboard,
  "two_moons": _log_density_moons,
}


def log_density(name: str, x: np.ndarray) -> np.ndarray:
  """The exact log-density (nats) of set ``name`` at ``x (n, 2)``: ``(n,)`` float64."""
  return DENSITIES[name](np.asarray(x, np.float64).reshape(-1, 2))


def sample(name: str, n: int, seed: int, stream: int, index: int) -> np.ndarray:
  """``n`` points ``(n, 2)`` float32, a pure function of ``(name, n, seed, stream, index)``."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, stream, index]))
  return DISTRIBUTIONS[name](rng, n).astype(np.float32)


class ToyDataset:
  """An endless stream of toy batches; see the module docstring."""

  kind = "points"
  shape = (2,)
  value_range = None  # Points have no pixel range (see ``gen_models.data.Dataset``).

  def __init__(self, name: str, global_batch_size: int, seed: int):
    self.name = name
    self.global_batch_size = global_batch_size
    self.seed = seed

  def batch(self, index: int) -> np.ndarray:
    full = sample(self.name, self.global_batch_size, self.seed, TRAIN_STREAM, index)
    return full[devices.process_rows(self.global_batch_size)]

  def reference(self, n: int) -> np.ndarray:
    return sample(self.name, n, self.seed, REFERENCE_STREAM, 0)
