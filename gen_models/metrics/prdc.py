"""Improved precision and recall, density and coverage — argument order ``(real, fake)``.

Let ``B(x, r)`` be the ball around ``x`` of radius ``r``, ``NND_k(x)`` the distance from a point to
its k-th nearest neighbour within its own set, X the N real and Y the M fake features.

Fidelity (are the fakes realistic?):
- **precision** (Kynkäänniemi et al. 2019, default k = 3): the fraction of fakes inside the real
  manifold, ``1/M Σⱼ 1[∃ i: Yⱼ ∈ B(Xᵢ, NND_k(Xᵢ))]``.
- **density** (Naeem et al. 2020, default k = 5): ``1/(kM) Σⱼ Σᵢ 1[Yⱼ ∈ B(Xᵢ, NND_k(Xᵢ))]``, how
  many real balls hold each fake, normalised so that E[density] = 1 when fakes and reals come
  from one distribution; it can exceed 1.

Diversity (do the fakes cover the reals?):
- **recall** (Kynkäänniemi et al. 2019, default k = 3): the fraction of reals inside the fake
  manifold, ``1/N Σᵢ 1[∃ j: Xᵢ ∈ B(Yⱼ, NND_k(Yⱼ))]``.
- **coverage** (Naeem et al. 2020, default k = 5): the fraction of real balls that hold at least
  one fake, ``1/N Σᵢ 1[∃ j: Yⱼ ∈ B(Xᵢ, NND_k(Xᵢ))]``. For identical distributions its
  expectation is ``1 − C(N−1, k) / C(N+M−1, k)``, → 1 − 2⁻ᵏ for M = N → ∞.

Swapping the arguments swaps precision with recall — the flipped tables some libraries produce —
so every function here takes ``(real, fake)`` and says so.

**Ties.** Whether a point at exactly distance ``NND_k`` is inside the ball: ``ties="<="`` (closed
balls, the papers' definition of the manifold, and the default) or ``ties="<"`` (open balls, as in
the density/coverage reference code, the ``prdc`` package, which uses ``<`` for all four). They
differ only on exact ties: duplicated or quantised features. With ``"<="``, identical sets give
precision = recall = coverage = 1; with ``"<"``, a set whose points all have at least k exact
copies (radius 0) gives 0. (Exact duplicates rely on bitwise-equal float32 results for equal
row pairs, which holds on CPU; see :mod:`gen_models.metrics.knn`.)

The neighbour searches are the blocked engine in :mod:`gen_models.metrics.knn`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gen_models.metrics import knn

PRECISION_RECALL_K = 3
DENSITY_COVERAGE_K = 5


def _check(real: np.ndarray, fake: np.ndarray) -> None:
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"need (N, D) real and (M, D) fake features, got {real.shape}, {fake.shape}")


def work_units(n_real: int, n_fake: int, block: int = knn.DEFAULT_BLOCK) -> int:
  """Tiles :func:`prdc` computes (the ``total`` for its ``progress`` callback)."""
  block = min(block, max(n_real, n_fake))
  return (
    knn.self_tile_count(n_real, block)
    + knn.self_tile_count(n_fake, block)
    + knn.cross_tile_count(n_real, n_fake, block)
  )


def prdc(
  real: np.ndarray,
  fake: np.ndarray,
  k_precision_recall: int = PRECISION_RECALL_K,
  k_density_coverage: int = DENSITY_COVERAGE_K,
  ties: str = "<=",
  block: int = knn.DEFAULT_BLOCK,
  center: bool = True,
  progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
  """All four metrics from one set of neighbour searches.

  Args:
    real: real features (N, D). fake: generated features (M, D).
    k_precision_recall: k of the manifolds behind precision and recall.
    k_density_coverage: k of the balls behind density and coverage (both radius sets come from
      one pass over the real × real distances, the fakes' from one over fake × fake).
    ties: ``"<="`` or ``"<"``, see the module docstring.
    block: tile side; memory is O(block²), 1024 is fastest on a 2-core CPU (bench).
    center: shift both sets by the real mean before the float32 distance arithmetic (no effect on
      exact distances, less round-off). Turn off only to keep integer-valued features exact.
    progress: called with the number of tiles just finished.

  Returns:
    ``precision``, ``recall``, ``density``, ``coverage`` (floats).
  """
  real = np.asarray(real)
  fake = np.asarray(fake)
  _check(real, fake)
  if ties not in knn.TIES:
    raise ValueError(f"ties must be one of {knn.TIES}, got {ties!r}")
  shift = real.mean(axis=0, dtype=np.float64) if center else None
  k_pr, k_dc = k_precision_recall, k_density_coverage
  # Memory: the inputs plus one prepared (shifted float32) copy of one set at a time. The same
  # k's for both sets, so one compiled tile function serves both self passes.
  block = min(block, max(len(real), len(fake)))
  fake_r = knn.kth_neighbour_sq_distances(
    knn.prepare(fake, block, shift), {k_pr, k_dc}, progress=progress
  )
  real_p = knn.prepare(real, block, shift)
  real_r = knn.kth_neighbour_sq_distances(real_p, {k_pr, k_dc}, progress=progress)
  counts, real_in_fake, nearest_fake = knn.cross_counts(
    real_p, fake, [real_r[k_pr], real_r[k_dc]], fake_r[k_pr], ties, shift, progress
  )
  del real_p
  inside = nearest_fake <= real_r[k_dc] if ties == "<=" else nearest_fake < real_r[k_dc]
  return {
    "precision": float(np.mean(counts[0] > 0)),
    "recall": float(np.mean(real_in_fake)),
    "density": float(counts[1].sum() / (k_dc * len(fake))),
    "coverage": float(np.mean(inside)),
  }


def precision_recall(real, fake, nearest_k: int = PRECISION_RECALL_K, **kwargs) -> tuple:
  """``(precision, recall)`` of Kynkäänniemi et al. 2019; ``(real, fake)`` order."""
  r = prdc(real, fake, nearest_k, nearest_k, **kwargs)
  return r["precision"], r["recall"]


def density_coverage(real, fake, nearest_k: int = DENSITY_COVERAGE_K, **kwargs) -> tuple:
  """``(density, coverage)`` of Naeem et al. 2020; ``(real, fake)`` order."""
  r = prdc(real, fake, nearest_k, nearest_k, **kwargs)
  return r["density"], r["coverage"]
