"""MIG, the Mutual Information Gap (Chen et al. 2018): disentanglement_lib's ``discrete_mig``
(``evaluation/metrics/mig.py``), its discretiser and plug-in information measures."""

from __future__ import annotations

import functools

import numpy as np

from gen_models.errors import UserError
from gen_models.metrics.disentanglement.common import Draws, Scoring, check_pair, draw_factors


def discretize(codes: np.ndarray, num_bins: int) -> np.ndarray:
  """Each column of ``codes (N, d)`` in ``num_bins`` equal-width bins between its min and max →
  ``(N, d)`` int64 in ``[1, num_bins]`` (disentanglement_lib's histogram discretizer:
  ``np.digitize`` on the first ``num_bins`` edges of ``np.histogram``; the max falls in the last
  bin, a constant column in one bin)."""
  out = np.empty(codes.shape, np.int64)
  for i in range(codes.shape[1]):
    edges = np.histogram_bin_edges(codes[:, i], bins=num_bins)
    out[:, i] = np.digitize(codes[:, i], edges[:-1])
  return out


def _labels(x: np.ndarray) -> tuple[np.ndarray, int]:
  values, inverse = np.unique(x, return_inverse=True)
  return inverse.ravel(), len(values)


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
  """Plug-in mutual information ``Σ p(a,b) log(p(a,b) / (p(a) p(b)))`` in nats of two discrete
  samples ``(N,)`` (what ``sklearn.metrics.mutual_info_score`` computes)."""
  (ia, na), (ib, nb) = _labels(a), _labels(b)
  joint = np.bincount(ia * nb + ib, minlength=na * nb).reshape(na, nb) / len(a)
  pa, pb = joint.sum(axis=1), joint.sum(axis=0)
  i, j = np.nonzero(joint)
  p = joint[i, j]
  return float(max(0.0, np.sum(p * (np.log(p) - np.log(pa[i]) - np.log(pb[j])))))


def entropy(a: np.ndarray) -> float:
  """Plug-in entropy ``−Σ p log p`` in nats of a discrete sample ``(N,)``."""
  p = np.bincount(_labels(a)[0]) / len(a)
  return float(-np.sum(p * np.log(p)))


def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> float:
  """Mutual Information Gap (Chen et al. 2018), disentanglement_lib's ``discrete_mig``.

  Each code dimension is discretised into ``num_bins`` equal-width bins between its min and max
  (:func:`discretize`; disentanglement_lib's default 20 bins); ``I[j, k]`` is the plug-in mutual
  information in nats of discretised code ``j`` and factor ``k``; the score is the mean over
  factors of ``(I_(1)k − I_(2)k) / H(factor k)``, the gap between the two most informative codes
  over the factor's entropy. disentanglement_lib uses 10,000 points (:func:`draw_mig`).

  Args:
    codes: ``(N, d)`` codes, ``d ≥ 2``.
    factors: ``(N, K)`` integer factor classes.
    num_bins: bins per code dimension.

  Returns:
    MIG in ``[0, 1]``.

  Raises:
    UserError: bad shapes, non-finite codes, ``d < 2``, or a factor with a single value.
  """
  codes, factors = check_pair(codes, factors, "mig")
  if codes.shape[1] < 2:
    raise UserError(f"mig needs at least 2 code dimensions for a gap, got {codes.shape[1]}")
  if num_bins < 1:
    raise UserError(f"num_bins must be >= 1, got {num_bins}")
  binned = discretize(codes, num_bins)
  gaps = []
  for k in range(factors.shape[1]):
    mi = np.sort([mutual_information(binned[:, j], factors[:, k]) for j in range(codes.shape[1])])
    gaps.append((mi[-1] - mi[-2]) / entropy(factors[:, k]))
  return float(np.mean(gaps))


def draw_mig(data, rng: np.random.Generator, num_train: int = 10_000) -> Draws:
  """MIG's draws: ``num_train`` independent random factor vectors."""
  if num_train < 1:
    raise UserError(f"num_points must be >= 1, got {num_train}")
  return Draws("mig", {"train": draw_factors(data, num_train, rng)}, {})


def score_mig(draws: Draws, codes: dict[str, np.ndarray], num_bins: int = 20) -> Scoring:
  """``{"mig": ...}`` of the codes of :func:`draw_mig`'s draws (one job)."""
  x, y = codes["train"], draws.factors["train"]
  return Scoring([functools.partial(mig, x, y, num_bins)], functools.partial(_named, "mig"))


def _named(name: str, results: list) -> dict[str, float]:
  """``{name: the one job's result}``."""
  return {name: results[0]}
