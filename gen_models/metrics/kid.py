"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs").

KID is the squared maximum mean discrepancy with the cubic polynomial kernel

    k(x, y) = (xᵀy / d + 1)³,

estimated without bias (a U-statistic) on ``num_subsets`` random pairs of subsets of ``m`` real
and ``m`` fake features, as in the paper:

    MMD²ᵤ = 1/(m(m−1)) Σ_{i≠j} k(xᵢ, xⱼ) + 1/(m(m−1)) Σ_{i≠j} k(yᵢ, yⱼ) − 2/m² Σ_{i,j} k(xᵢ, yⱼ).

Reported as the mean and the population std (``ddof = 0``) over the subsets. Unbiased means its
expectation is the population MMD², so it can be (slightly) negative and is ≈ 0 for identical
distributions; for zero-mean Gaussians the population value has the closed form
``3 ||Σ₁ − Σ₂||²_F / d²`` (the odd moments vanish), which ``tests/test_metrics.py`` checks.
Subsets are drawn without replacement by ``numpy.random.default_rng(seed)``; computed in float64.
"""

from __future__ import annotations

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (xᵀy / d + 1)³ for rows of ``x`` (n, d) and ``y`` (m, d) → (n, m)."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """The unbiased MMD² of the cubic kernel between two equal-size sets ``(m, d)``."""
  m = x.shape[0]
  k_xx = polynomial_kernel(x, x)
  k_yy = polynomial_kernel(y, y)
  k_xy = polynomial_kernel(x, y)
  off_diag = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(off_diag - 2.0 * k_xy.mean())


def kid(
  real: np.ndarray,
  fake: np.ndarray,
  num_subsets: int = 100,
  subset_size: int = 1000,
  seed: int = 0,
) -> tuple[float, float]:
  """Mean and std of the unbiased MMD² over random subsets; ``real`` (N, d), ``fake`` (M, d).

  ``subset_size`` is capped at ``min(N, M)`` (at least 2 are needed). When that is all of both
  sets, the estimate is computed once and its std is 0 (there is no subset variation).
  """
  real = np.asarray(real, np.float64)
  fake = np.asarray(fake, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"KID needs (N, d) and (M, d) features, got {real.shape} and {fake.shape}")
  m = min(subset_size, len(real), len(fake))
  if m < 2:
    raise ValueError(f"KID needs at least 2 real and 2 fake features, got {len(real)}, {len(fake)}")
  if m == len(real) == len(fake):
    # Every "subset" is all of both sets: the U-statistic does not depend on the order, so the
    # subsets would all give this one value (std 0). Computed once, not num_subsets times.
    return mmd2_unbiased(real, fake), 0.0
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = real[rng.choice(len(real), m, replace=False)]
    y = fake[rng.choice(len(fake), m, replace=False)]
    values.append(mmd2_unbiased(x, y))
  return float(np.mean(values)), float(np.std(values))
