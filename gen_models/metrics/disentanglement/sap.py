"""SAP, the Separated Attribute Predictability score (Kumar et al. 2018): disentanglement_lib's
``sap_score`` (``evaluation/metrics/sap_score.py``)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from gen_models.errors import UserError
from gen_models.metrics.disentanglement.common import (
  Draws,
  Scoring,
  accuracy,
  check_pair,
  check_train_test,
  draw_train_test,
)


def _linear_svm(seed: int):
  """disentanglement_lib's ``LinearSVC(C=0.01, class_weight="balanced")`` with the scikit-learn
  < 0.22 defaults written out: squared hinge, L2, dual coordinate descent, one-vs-rest, tol 1e-4,
  1000 iterations, intercept."""
  from sklearn.svm import LinearSVC

  return LinearSVC(
    C=0.01,
    class_weight="balanced",
    penalty="l2",
    loss="squared_hinge",
    dual=True,
    tol=1e-4,
    max_iter=1000,
    fit_intercept=True,
    intercept_scaling=1.0,
    random_state=seed,
  )


def _jobs(x, y, x_test, y_test, seed: int) -> list[Callable[[], np.ndarray]]:
  """One job per factor ``f``: column ``S[:, f] (d,)``, the test accuracies of the linear SVMs
  predicting factor ``f`` from each code alone."""

  return [
    functools.partial(_column, seed, x, y[:, f], x_test, y_test[:, f]) for f in range(y.shape[1])
  ]


def _column(seed: int, x, y, x_test, y_test) -> np.ndarray:
  """``(d,)``: the test accuracy of a linear SVM predicting ``y`` from each code alone."""
  out = np.zeros(x.shape[1])
  for j in range(x.shape[1]):
    model = _linear_svm(seed).fit(x[:, j : j + 1], y)
    out[j] = accuracy(model, x_test[:, j : j + 1], y_test)
  return out


def sap_matrix(
  codes_train: np.ndarray,
  factors_train: np.ndarray,
  codes_test: np.ndarray | None = None,
  factors_test: np.ndarray | None = None,
  continuous_factors: bool = False,
  seed: int = 0,
) -> np.ndarray:
  """SAP's score matrix ``S (d, K)`` (Kumar et al. 2018, Sec. 3).

  ``continuous_factors=False`` (disentanglement_lib's setting for dSprites): ``S[j, k]`` is the
  test accuracy of a linear SVM (:func:`_linear_svm`: C = 0.01, balanced class weights) fitted
  to predict factor ``k`` from code ``j`` alone. ``True``: ``S[j, k]`` is the squared correlation
  ``Cov(z_j, y_k)² / (Var z_j · Var y_k)`` (ddof = 1) on the training points, 0 where
  ``Var z_j ≤ 1e-12``.
  """
  if continuous_factors:
    x, y = check_pair(codes_train, factors_train, "sap train")
    scores = np.zeros((x.shape[1], y.shape[1]))
    for j in range(x.shape[1]):
      for f in range(y.shape[1]):
        cov = np.cov(x[:, j], y[:, f], ddof=1)
        scores[j, f] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
    return scores
  checked = check_train_test("sap", codes_train, factors_train, codes_test, factors_test)
  return np.stack([job() for job in _jobs(*checked, seed)], axis=1)


def _gap(scores: np.ndarray) -> float:
  """The mean over factors of the gap between the two highest entries of ``scores (d, K)``."""
  if scores.shape[0] < 2:
    raise UserError(f"sap needs at least 2 code dimensions for a gap, got {scores.shape[0]}")
  top = np.sort(scores, axis=0)
  return float(np.mean(top[-1] - top[-2]))


def sap(
  codes_train: np.ndarray,
  factors_train: np.ndarray,
  codes_test: np.ndarray | None = None,
  factors_test: np.ndarray | None = None,
  continuous_factors: bool = False,
  seed: int = 0,
) -> float:
  """SAP score (Kumar et al. 2018), disentanglement_lib's ``sap_score``: the mean over factors of
  the gap between the two highest entries of the factor's column of :func:`sap_matrix`.

  With ``continuous_factors=False`` (the dSprites setting; 10,000 training and 5,000 test points)
  a code that is a factor exactly scores below 1 when the factor has more than 2 classes: a
  one-dimensional linear SVM cannot single out the middle classes of an ordered factor. Use
  ``continuous_factors=True`` for an upper bound of 1.

  Raises:
    UserError: bad shapes, non-finite codes, ``d < 2``, or a factor with a single value.
  """
  return _gap(
    sap_matrix(codes_train, factors_train, codes_test, factors_test, continuous_factors, seed)
  )


def draw_sap(data, rng: np.random.Generator, num_train: int = 10_000, num_test: int = 5_000):
  """SAP's draws: ``factors["train"]``, ``["test"]``, then the SVMs' seed."""
  return draw_train_test("sap", data, rng, num_train, num_test)


def score_sap(draws: Draws, codes: dict[str, np.ndarray]) -> Scoring:
  """``{"sap": ...}`` (discrete factors) of the codes of :func:`draw_sap`'s draws (one job per
  factor)."""
  f = draws.factors
  checked = check_train_test("sap", codes["train"], f["train"], codes["test"], f["test"])
  if checked[0].shape[1] < 2:
    raise UserError(f"sap needs at least 2 code dimensions for a gap, got {checked[0].shape[1]}")
  jobs = _jobs(*checked, draws.extra["model_seed"])
  return Scoring(jobs, _combine)


def _combine(results: list) -> dict[str, float]:
  return {"sap": _gap(np.stack(results, axis=1))}
