"""Fréchet Inception Distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule
converge to a local Nash equilibrium").

FID is the Fréchet (2-Wasserstein) distance between two Gaussians fitted to feature sets:

    FID = ||μ₁ − μ₂||² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½.

The last term equals the usual ``tr sqrtm(Σ₁ Σ₂)``: Σ₁Σ₂ = Σ₁^½ (Σ₁^½ Σ₂ Σ₁^½) Σ₁^-½ is
similar to the symmetric positive semi-definite M = Σ₁^½ Σ₂ Σ₁^½ (when Σ₁ is singular the
eigenvalues of Σ₁Σ₂ and M still agree, as those of AB and BA do), so the eigenvalues of Σ₁Σ₂ are
the eigenvalues λᵢ ≥ 0 of M and tr sqrtm(Σ₁Σ₂) = Σᵢ √λᵢ. Computing it from ``eigh(Σ₁)`` and
``eigvalsh(M)`` is real arithmetic throughout — no complex parts to discard, no failed square
roots to patch with an ε offset, as the ``scipy.linalg.sqrtm`` reference has to — and about six
times faster for D = 2048 (``experiments/bench/metrics.py``). Round-off can make tiny eigenvalues
negative; they are clipped to 0.

Statistics are accumulated in float64 batch by batch with the pairwise update of Chan, Golub and
LeVeque (1979), so any number of batches gives the same mean and covariance as one pass over all
features (the covariance is the unbiased one, ``np.cov``'s ``ddof=1``, as in the reference).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from gen_models.errors import UserError


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """Gaussian fitted to ``n`` features: ``mean`` (D,) and unbiased ``cov`` (D, D), float64."""

  n: int
  mean: np.ndarray
  cov: np.ndarray


class StatsAccumulator:
  """Streaming mean and covariance of feature batches ``(B, D)``, in float64.

  Merging a batch of ``m`` rows with mean ``μ_b`` and scatter ``S_b = Σ (x − μ_b)(x − μ_b)ᵀ``
  into ``n`` rows with ``μ_a``, ``S_a`` gives ``μ = μ_a + δ m / (n + m)`` and
  ``S = S_a + S_b + δδᵀ n m / (n + m)`` with ``δ = μ_b − μ_a``: exact, and with no
  catastrophic cancellation of ``Σ xxᵀ − n μμᵀ``.
  """

  def __init__(self) -> None:
    self.n = 0
    self._mean: np.ndarray | None = None
    self._scatter: np.ndarray | None = None

  def update(self, features: np.ndarray) -> None:
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f"features must be (batch, dim), got shape {x.shape}")
    m = x.shape[0]
    if m == 0:
      return
    mean_b = x.mean(axis=0)
    centered = x - mean_b
    scatter_b = centered.T @ centered
    if self._mean is None:
      self.n, self._mean, self._scatter = m, mean_b, scatter_b
      return
    if x.shape[1] != self._mean.shape[0]:
      raise ValueError(f"feature dim changed from {self._mean.shape[0]} to {x.shape[1]}")
    total = self.n + m
    delta = mean_b - self._mean
    self._mean = self._mean + delta * (m / total)
    self._scatter = self._scatter + scatter_b + np.outer(delta, delta) * (self.n * m / total)
    self.n = total

  def result(self) -> FeatureStats:
    if self.n < 2:
      raise ValueError(f"a covariance needs at least 2 features, got {self.n}")
    return FeatureStats(self.n, self._mean.copy(), self._scatter / (self.n - 1))


def feature_stats(features: np.ndarray, batch_size: int = 10_000) -> FeatureStats:
  """Mean and covariance of ``features`` ``(N, D)`` (accumulated in batches of rows)."""
  acc = StatsAccumulator()
  for start in range(0, len(features), batch_size):
    acc.update(features[start : start + batch_size])
  return acc.result()


def _trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
  """tr sqrtm(Σ₁ Σ₂) = Σ √eig(Σ₁^½ Σ₂ Σ₁^½), for symmetric PSD ``cov1``, ``cov2`` (D, D)."""
  w, v = np.linalg.eigh(cov1)
  root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
  m = root1 @ cov2 @ root1
  eig = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(stats1: FeatureStats, stats2: FeatureStats) -> float:
  """FID between two fitted Gaussians (order does not matter: the distance is symmetric)."""
  if stats1.mean.shape != stats2.mean.shape:
    raise UserError(
      f"FID needs features of one dimension, got {stats1.mean.shape[0]} and {stats2.mean.shape[0]}"
    )
  diff = stats1.mean - stats2.mean
  trace_term = np.trace(stats1.cov) + np.trace(stats2.cov)
  return float(diff @ diff + trace_term - 2.0 * _trace_sqrt_product(stats1.cov, stats2.cov))


def fid(real: np.ndarray | FeatureStats, fake: np.ndarray | FeatureStats) -> float:
  """FID from features ``(N, D)`` or precomputed :class:`FeatureStats` (either argument)."""
  s1 = real if isinstance(real, FeatureStats) else feature_stats(real)
  s2 = fake if isinstance(fake, FeatureStats) else feature_stats(fake)
  return frechet_distance(s1, s2)


def save_stats(path: str, stats: FeatureStats) -> None:
  """Writes ``mu``, ``sigma`` (the keys the common FID tools use) and ``n`` to an ``.npz``."""
  tmp = f"{path}.tmp.npz"
  np.savez(tmp, mu=stats.mean, sigma=stats.cov, n=np.int64(stats.n))
  os.replace(tmp, path)


def load_stats(path: str) -> FeatureStats:
  """Reads statistics written by :func:`save_stats` (``n`` optional, for files of other tools)."""
  try:
    with np.load(path, allow_pickle=False) as f:
      mean = np.asarray(f["mu"], np.float64)
      cov = np.asarray(f["sigma"], np.float64)
      n = int(np.asarray(f["n"]).reshape(())) if "n" in f.files else 0
  except Exception as e:  # Missing keys, truncated zips, a malformed n: all one line.
    raise UserError(f"cannot read feature statistics from {path}: {type(e).__name__}: {e}") from e
  if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
    raise UserError(f"{path}: mu must be (D,) and sigma (D, D), got {mean.shape} and {cov.shape}")
  return FeatureStats(n, mean, cov)
