r"""Divergences and distances between distributions, in nats (natural logarithms).

``kl_diag_gaussians`` is a JAX function (traceable, used inside the VAE's loss). The others
evaluate data on the host in float64 NumPy and check their inputs: a shape mismatch, an empty
input, a negative or unnormalised probability vector (beyond ``atol``) is a ``ValueError``.

Diagonal Gaussians, q = N(μ_q, diag σ_q²), p = N(μ_p, diag σ_p²), per dimension (a factorised
KL is the sum of these)::

    KL(q ‖ p) = ½ [ log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²) / σ_p² − 1 ]

and for p = N(0, I) this is ½ (σ² + μ² − 1 − log σ²) per dimension.

Discrete distributions p, q on K outcomes (0 log 0 = 0; KL is +∞ when some p_k > 0 = q_k)::

    KL(p ‖ q) = Σ_k p_k log(p_k / q_k)
    JSD(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m),   m = ½ (p + q)
              = ½ Σ_k p_k [log 2 + log p_k − log(p_k + q_k)] + (the same with p ↔ q)

JSD is symmetric and 0 ≤ JSD ≤ log 2, with log 2 exactly when the supports are disjoint (each
bracket is log 2 − log(1 + q_k/p_k) ≤ log 2; the code computes it so, and clips the sum to
[0, log 2] against the last ulp of rounding). ``jsd_grid`` applies it to densities tabulated
on a grid, with masses ``p(x_k) · cell_volume``.

Wasserstein-1 between two empirical measures of n points each (mass 1/n per point): the optimal
transport plan can be taken to be a permutation (Birkhoff–von Neumann: the transport polytope of
uniform marginals is the set of doubly-stochastic matrices, whose vertices are permutations)::

    W1(X, Y) = min_σ (1/n) Σ_i ‖x_i − y_σ(i)‖₂

an assignment problem solved exactly by ``scipy.optimize.linear_sum_assignment`` (O(n³); n = 2,000
takes about a second). In 1-D the sorted order is optimal: W1 = (1/n) Σ_i |x_(i) − y_(i)|
(O(n log n)). The sliced distance averages the 1-D distance of projections on random directions
θ, uniform on the unit sphere::

    SW1(X, Y) = E_θ W1(θᵀX, θᵀY) ≤ W1(X, Y)

(each projection is 1-Lipschitz, so every term is ≤ W1; in 1-D, θ = ±1 and SW1 = W1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

LOG2 = float(np.log(2.0))


def kl_diag_gaussians(
  mu_q: jax.Array,
  logvar_q: jax.Array,
  mu_p: jax.Array | float = 0.0,
  logvar_p: jax.Array | float = 0.0,
  axis: int | None = -1,
) -> jax.Array:
  """KL(N(mu_q, e^logvar_q) ‖ N(mu_p, e^logvar_p)) of diagonal Gaussians, in nats.

  Args:
    mu_q, logvar_q: ``(..., d)`` mean and log-variance of q.
    mu_p, logvar_p: the same of p, broadcastable to ``mu_q`` (default N(0, I)).
    axis: the dimension axis summed over (default the last); None returns the per-dimension
      KLs ``(..., d)`` without summing.

  Returns:
    ``(...)`` (or ``(..., d)`` with ``axis=None``), each ``>= 0``.
  """
  per_dim = 0.5 * (
    logvar_p - logvar_q + (jnp.exp(logvar_q) + jnp.square(mu_q - mu_p)) * jnp.exp(-logvar_p) - 1.0
  )
  return per_dim if axis is None else jnp.sum(per_dim, axis=axis)


# ----------------------------------------------------------------------------------------------
# Discrete distributions and tabulated densities.


def _probabilities(name: str, p, atol: float) -> np.ndarray:
  """``p (..., K)`` as float64, checked and renormalised along the last axis."""
  p = np.asarray(p, np.float64)
  if p.ndim == 0 or p.shape[-1] == 0 or p.size == 0:
    raise ValueError(f"{name} must have at least one outcome on its last axis, got {p.shape}")
  if not np.all(np.isfinite(p)):
    raise ValueError(f"{name} has non-finite probabilities")
  if np.any(p < -atol):
    raise ValueError(f"{name} has negative probabilities (min {p.min():.3g}; tolerance {atol})")
  total = p.sum(axis=-1, keepdims=True)
  worst = float(np.max(np.abs(total - 1.0)))
  if worst > atol:
    raise ValueError(
      f"{name} does not sum to 1 along its last axis (off by {worst:.3g}; tolerance {atol})"
    )
  p = np.maximum(p, 0.0)
  return p / p.sum(axis=-1, keepdims=True)


def _check_pair(p, q, atol: float) -> tuple[np.ndarray, np.ndarray]:
  p, q = _probabilities("p", p, atol), _probabilities("q", q, atol)
  if p.shape != q.shape:
    raise ValueError(f"p and q need equal shapes, got {p.shape} and {q.shape}")
  return p, q


def kl_discrete(p, q, atol: float = 1e-6) -> np.ndarray | float:
  """KL(p ‖ q) of discrete distributions along the last axis, in nats.

  Args:
    p, q: ``(..., K)`` probabilities, each non-negative and summing to 1 within ``atol`` (then
      renormalised exactly).
    atol: tolerance on negative entries and on the sums.

  Returns:
    ``(...)`` float64 (a Python float for 1-D inputs), ``>= 0``; ``inf`` where p puts mass on an
    outcome that q gives probability 0.
  """
  p, q = _check_pair(p, q, atol)
  with np.errstate(divide="ignore", invalid="ignore"):  # log 0; 0 · ∞ where p_k = 0 (masked).
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
  out = np.maximum(terms.sum(axis=-1), 0.0)  # Gibbs: ≥ 0; rounding can give −1e-17.
  return float(out) if out.ndim == 0 else out


def _half_jsd_terms(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
  """``p_k (log 2 + log p_k − log(p_k + q_k))`` summed over k; 0 where p_k = 0."""
  p = np.exp(log_p)
  bracket = LOG2 - (np.logaddexp(log_p, log_q) - log_p)  # log 2 − log(1 + q/p) ≤ log 2.
  return np.sum(np.where(p > 0, p * bracket, 0.0), axis=-1)


def _jsd_logs(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray | float:
  with np.errstate(invalid="ignore"):  # −inf − (−inf) where p_k = 0; masked out.
    out = 0.5 * (_half_jsd_terms(log_p, log_q) + _half_jsd_terms(log_q, log_p))
  out = np.clip(out, 0.0, LOG2)  # Σ_k p_k may round to 1 ± 1e-16.
  return float(out) if out.ndim == 0 else out


def jsd_discrete(p, q, atol: float = 1e-6) -> np.ndarray | float:
  """Jensen–Shannon divergence of discrete distributions along the last axis, in nats.

  Args:
    p, q: ``(..., K)`` probabilities, each non-negative and summing to 1 within ``atol``.
    atol: tolerance on negative entries and on the sums.

  Returns:
    ``(...)`` float64 (a Python float for 1-D inputs) in ``[0, log 2]``; symmetric in p, q.
  """
  p, q = _check_pair(p, q, atol)
  with np.errstate(divide="ignore"):
    return _jsd_logs(np.log(p), np.log(q))


def jsd_grid(log_p, log_q, cell_volume: float, atol: float = 1e-3) -> float:
  """JSD of two densities tabulated on the same regular 1-D or 2-D grid, in nats.

  The masses ``p(x_k) · cell_volume`` (a midpoint rule) must sum to 1 within ``atol`` (the
  grid must cover the mass); they are then renormalised and passed to the discrete JSD.

  Args:
    log_p, log_q: ``(K,)`` or ``(K1, K2)`` log-densities at the cell centres (``-inf`` where the
      density is 0), per unit length or area.
    cell_volume: the length (1-D) or area (2-D) of one cell, ``> 0``.
    atol: tolerance on the total mass.

  Returns:
    JSD in ``[0, log 2]``.
  """
  log_p, log_q = np.asarray(log_p, np.float64), np.asarray(log_q, np.float64)
  if log_p.shape != log_q.shape:
    raise ValueError(f"log_p and log_q need equal shapes, got {log_p.shape} and {log_q.shape}")
  if log_p.ndim not in (1, 2) or log_p.size == 0:
    raise ValueError(f"jsd_grid needs a non-empty 1-D or 2-D grid, got shape {log_p.shape}")
  if not (np.isfinite(cell_volume) and cell_volume > 0):
    raise ValueError(f"cell_volume must be positive, got {cell_volume}")
  logs = []
  for name, lp in (("log_p", log_p), ("log_q", log_q)):
    if np.any(np.isnan(lp) | (lp == np.inf)):
      raise ValueError(f"{name} has NaN or +inf entries")
    log_mass = lp.ravel() + np.log(cell_volume)
    total = float(np.exp(np.logaddexp.reduce(log_mass)))
    if abs(total - 1.0) > atol:
      raise ValueError(
        f"{name} integrates to {total:.6g} on the grid, not 1 (tolerance {atol}): widen or "
        "refine the grid, or normalise the density"
      )
    logs.append(log_mass - np.log(total))
  return _jsd_logs(*logs)


# ----------------------------------------------------------------------------------------------
# Wasserstein-1 between point sets.


def _point_sets(x, y) -> tuple[np.ndarray, np.ndarray]:
  """``(n, d)`` float64 copies; ``(n,)`` is read as ``(n, 1)``."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape:
    raise ValueError(f"wasserstein1 needs equal shapes, got {x.shape} and {y.shape}")
  if x.ndim not in (1, 2):
    raise ValueError(f"point sets must be (n,) or (n, d), got shape {x.shape}")
  if x.size == 0:
    raise ValueError(f"point sets must not be empty, got shape {x.shape}")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError("point sets have non-finite coordinates")
  return x.reshape(len(x), -1), y.reshape(len(y), -1)


def wasserstein1(x, y) -> float:
  """Exact W1 between the empirical measures of two equal-size point sets.

  Args:
    x, y: ``(n, d)`` points (``(n,)`` is read as ``(n, 1)``), in any length unit.

  Returns:
    W1 in the same unit, a Python float: the sorted-order closed form for d = 1, optimal
    assignment (scipy) otherwise.
  """
  x, y = _point_sets(x, y)
  if x.shape[1] == 1:
    return float(np.mean(np.abs(np.sort(x[:, 0]) - np.sort(y[:, 0]))))
  cost = cdist(x, y)
  rows, cols = linear_sum_assignment(cost)
  return float(cost[rows, cols].mean())


def sliced_wasserstein(
  x, y, num_projections: int = 128, seed: int = 0, chunk_size: int = 16
) -> float:
  """Monte-Carlo sliced W1: the mean over random unit directions of the 1-D W1 of projections.

  Args:
    x, y: ``(n, d)`` equal-size point sets (``(n,)`` is read as ``(n, 1)``).
    num_projections: directions θ ~ uniform on the unit sphere S^{d−1} (normalised Gaussians
      from ``numpy.random.default_rng(seed)``), ``>= 1``.
    seed: the directions' seed; the result is a deterministic function of the inputs and it.
    chunk_size: directions projected at once (memory ``2 · n · chunk_size`` float64).

  Returns:
    SW1 in the unit of the points, ``<= wasserstein1(x, y)``; O(P · n log n) time.
  """
  x, y = _point_sets(x, y)
  if num_projections < 1:
    raise ValueError(f"num_projections must be >= 1, got {num_projections}")
  theta = np.random.default_rng(seed).standard_normal((num_projections, x.shape[1]))
  theta /= np.linalg.norm(theta, axis=1, keepdims=True)
  total = 0.0
  for start in range(0, num_projections, chunk_size):
    t = theta[start : start + chunk_size].T  # (d, c)
    px, py = np.sort(x @ t, axis=0), np.sort(y @ t, axis=0)
    total += float(np.abs(px - py).mean(axis=0).sum())
  return total / num_projections
