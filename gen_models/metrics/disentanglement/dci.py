"""DCI, disentanglement, completeness and informativeness (Eastwood & Williams 2018):
disentanglement_lib's ``dci`` (``evaluation/metrics/dci.py``) with gradient-boosted trees."""

from __future__ import annotations

import functools

import numpy as np

from gen_models.errors import UserError
from gen_models.metrics import boosting
from gen_models.metrics.disentanglement.common import (
  Draws,
  Scoring,
  accuracy,
  check_train_test,
  draw_train_test,
)

# The trees' implementation: this project's port of scikit-learn's (the default, 4× faster) or
# scikit-learn's own; the scores agree (tests/test_disentanglement.py).
TREES = ("numpy", "sklearn")


def _one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
  """``1 − H(p[:, i] / Σ p[:, i])`` in base ``base`` per column, with disentanglement_lib's
  ``+1e-11`` on every entry (a zero column counts as uniform)."""
  p = p + 1e-11
  p = p / p.sum(axis=0, keepdims=True)
  return 1.0 + np.sum(p * np.log(p), axis=0) / np.log(base)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
  """``(disentanglement, completeness)`` of an importance matrix ``R (d codes, K factors)``.

  Disentanglement ``Σ_j ρ_j (1 − H_K(P_j·))`` with ``P_jk = R_jk / Σ_k R_jk`` and code weights
  ``ρ_j = Σ_k R_jk / Σ R``; completeness ``Σ_k ρ_k (1 − H_d(P̃_·k))`` with ``P̃_jk = R_jk / Σ_j R_jk``
  and ``ρ_k = Σ_j R_jk / Σ R`` (Eastwood & Williams 2018). An all-zero ``R`` scores 0.
  """
  r = np.abs(np.asarray(importance, np.float64))
  d, k = r.shape
  weights = r if r.sum() > 0 else np.ones_like(r)
  code_weight = weights.sum(axis=1) / weights.sum()
  factor_weight = weights.sum(axis=0) / weights.sum()
  disentanglement = np.sum(code_weight * _one_minus_entropy(r.T, k))
  completeness = np.sum(factor_weight * _one_minus_entropy(r, d))
  return float(disentanglement), float(completeness)


def _fit(trees: str, seed: int, x, y, x_test, y_test) -> tuple[np.ndarray, float, float]:
  """One factor's trees (:data:`TREES`): its importance column ``(d,)``, train and test
  accuracy."""
  if trees == "sklearn":
    model = boosting.sklearn_classifier(seed).fit(x, y)
    importance = model.feature_importances_
  else:
    model = boosting.fit_gradient_boosting(x, y, seed=seed)
    importance = model.feature_importances
  return np.abs(importance), accuracy(model, x, y), accuracy(model, x_test, y_test)


def _combine(results: list) -> dict[str, float]:
  importance = np.stack([r[0] for r in results], axis=1)  # (d, K)
  disentanglement, completeness = dci_from_importance(importance)
  return {
    "disentanglement": disentanglement,
    "completeness": completeness,
    "informativeness_train": float(np.mean([r[1] for r in results])),
    "informativeness_test": float(np.mean([r[2] for r in results])),
  }


def _scoring(
  codes_train, factors_train, codes_test, factors_test, seed: int, trees: str
) -> Scoring:
  """DCI's checks, one job per factor (its classifier: importance column, train and test
  accuracy) and the combine (see :func:`dci`)."""
  if trees not in TREES:
    raise UserError(f"dci trees must be one of {', '.join(TREES)}, got {trees!r}")
  x, y, x_test, y_test = check_train_test(
    "dci", codes_train, factors_train, codes_test, factors_test
  )
  if y.shape[1] < 2 or x.shape[1] < 2:
    raise UserError(
      f"dci needs at least 2 factors and 2 code dimensions, got {y.shape[1]}, {x.shape[1]}"
    )

  jobs = [
    functools.partial(_fit, trees, seed, x, y[:, k], x_test, y_test[:, k])
    for k in range(y.shape[1])
  ]
  # A factor of K classes fits K trees a stage (one for 2 classes).
  costs = tuple(float(len(np.unique(y[:, k]))) * len(x) for k in range(y.shape[1]))
  return Scoring(jobs, _combine, costs)


def dci(
  codes_train: np.ndarray,
  factors_train: np.ndarray,
  codes_test: np.ndarray,
  factors_test: np.ndarray,
  seed: int = 0,
  trees: str = "numpy",
) -> dict[str, float]:
  """DCI (Eastwood & Williams 2018) with gradient-boosted trees, disentanglement_lib's ``dci``.

  One classifier per factor predicts its class from all codes: disentanglement_lib's
  ``GradientBoostingClassifier()`` (log-loss, 100 stages, learning rate 0.1, depth 3, all samples
  and features per tree), fitted by :func:`gen_models.metrics.boosting.fit_gradient_boosting`,
  which equals scikit-learn's (1.9) bit for bit (up to ``np.exp``'s last bit on AVX-512 CPUs:
  see :mod:`gen_models.metrics.boosting`) and is 4× faster, or with ``trees="sklearn"`` by
  scikit-learn's own ``GradientBoostingClassifier``; its feature importances form
  column ``k`` of the importance matrix ``R (d, K)``, from which
  :func:`dci_from_importance` gives disentanglement and completeness. Informativeness is the
  classifiers' mean accuracy (not an error, despite disentanglement_lib's ``*_err`` names) on the
  training and the test points. disentanglement_lib uses 10,000 training and 5,000 test points.

  Args:
    codes_train, factors_train: ``(N, d)`` codes and ``(N, K)`` integer factor classes.
    codes_test, factors_test: ``(M, d)`` and ``(M, K)``.
    seed: the trees' ``random_state`` (it only breaks ties between equally good splits).
    trees: ``"numpy"`` (:mod:`gen_models.metrics.boosting`, the default) or ``"sklearn"``.

  Returns:
    ``{"disentanglement", "completeness", "informativeness_train", "informativeness_test"}``.
  """
  return _scoring(codes_train, factors_train, codes_test, factors_test, seed, trees).run()


def draw_dci(data, rng: np.random.Generator, num_train: int = 10_000, num_test: int = 5_000):
  """DCI's draws: ``factors["train"]``, ``["test"]``, then the trees' seed."""
  return draw_train_test("dci", data, rng, num_train, num_test)


def score_dci(draws: Draws, codes: dict[str, np.ndarray], trees: str = "numpy") -> Scoring:
  """:func:`dci` of the codes of :func:`draw_dci`'s draws (one job per factor)."""
  f, seed = draws.factors, draws.extra["model_seed"]
  return _scoring(codes["train"], f["train"], codes["test"], f["test"], seed, trees)
