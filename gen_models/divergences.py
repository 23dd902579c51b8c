r"""Divergences between distributions, in nats (natural logarithms).

``kl_diag_gaussians``: for diagonal Gaussians q = N(μ_q, diag σ_q²), p = N(μ_p, diag σ_p²), per
dimension (a factorised KL is the sum of these)::

    KL(q ‖ p) = ½ [ log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²) / σ_p² − 1 ]

and for p = N(0, I) this is ½ (σ² + μ² − 1 − log σ²) per dimension.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
