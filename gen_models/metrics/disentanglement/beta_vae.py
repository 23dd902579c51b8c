"""The β-VAE metric (Higgins et al. 2017): disentanglement_lib's ``beta_vae_sklearn``
(``evaluation/metrics/beta_vae.py``)."""

from __future__ import annotations

import functools

import numpy as np

from gen_models.errors import UserError
from gen_models.metrics.disentanglement.common import (
  Draws,
  Scoring,
  accuracy,
  draw_factors,
  first_result,
)


def _logistic_regression(seed: int):
  """disentanglement_lib's ``LogisticRegression(random_state=...)`` under scikit-learn < 0.22:
  liblinear, one-vs-rest, L2 penalty with C = 1, tol 1e-4, 100 iterations, intercept."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.multiclass import OneVsRestClassifier

  return OneVsRestClassifier(
    LogisticRegression(
      solver="liblinear",
      C=1.0,
      l1_ratio=0.0,
      tol=1e-4,
      max_iter=100,
      fit_intercept=True,
      intercept_scaling=1.0,
      class_weight=None,
      random_state=seed,
    )
  )


def draw_beta_vae(
  data,
  rng: np.random.Generator,
  batch_size: int = 64,
  num_train: int = 10_000,
  num_eval: int = 5_000,
) -> Draws:
  """The β-VAE metric's draws: the classifier's seed, then for the training and the evaluation
  points each point's factor ``k`` (uniform) and its ``batch_size`` pairs of factor vectors
  sharing factor ``k``: ``factors["<split>_first"]``, ``["<split>_second"]``, ``(n·b, K)``, pair
  ``i`` of point ``p`` at row ``p·b + i``; the labels ``extra["<split>_labels"] (n,)``."""
  factors, extra = {}, {"batch_size": batch_size, "model_seed": int(rng.integers(2**31 - 1))}
  for split, n in (("train", num_train), ("eval", num_eval)):
    k = rng.integers(0, data.num_factors, size=n)
    first = draw_factors(data, n * batch_size, rng).reshape(n, batch_size, -1)
    second = draw_factors(data, n * batch_size, rng).reshape(n, batch_size, -1)
    second[np.arange(n), :, k] = first[np.arange(n), :, k]
    factors[f"{split}_first"] = first.reshape(n * batch_size, -1)
    factors[f"{split}_second"] = second.reshape(n * batch_size, -1)
    extra[f"{split}_labels"] = k
    if split == "train" and len(np.unique(k)) < 2:
      raise UserError(f"num_train={num_train} points drew a single factor; use more points")
  return Draws("beta_vae", factors, extra)


def _pair_features(first: np.ndarray, second: np.ndarray, batch_size: int) -> np.ndarray:
  """Features ``(n, d)``: per point, the mean over its pairs of ``|z₁ − z₂|`` (codes
  ``(n·b, d)``)."""
  return np.mean(np.abs(first - second).reshape(-1, batch_size, first.shape[1]), axis=1)


def beta_vae(
  features_train: np.ndarray,
  labels_train: np.ndarray,
  features_eval: np.ndarray,
  labels_eval: np.ndarray,
  seed: int = 0,
) -> dict[str, float]:
  """The β-VAE metric (Higgins et al. 2017), disentanglement_lib's ``beta_vae_sklearn``, from its
  features.

  One point (:func:`draw_beta_vae`): a factor ``k`` drawn uniformly; ``batch_size`` (64) pairs of
  observations, each pair sharing the class of factor ``k`` (all other factors independent);
  feature = mean over the pairs of ``|z₁ − z₂|`` (per code dimension); label ``k``. A logistic
  regression (:func:`_logistic_regression`: liblinear one-vs-rest, C = 1) is fitted on the
  training points (disentanglement_lib: 10,000) and scored on the evaluation points (5,000 new
  ones).

  Args:
    features_train, features_eval: ``(n, d)`` and ``(m, d)`` features.
    labels_train, labels_eval: ``(n,)`` and ``(m,)`` the fixed factors.
    seed: the logistic regression's ``random_state``.

  Returns:
    ``{"train_accuracy", "eval_accuracy"}``; chance is ``1 / num_factors``.
  """
  model = _logistic_regression(seed).fit(features_train, labels_train)
  return {
    "train_accuracy": accuracy(model, features_train, labels_train),
    "eval_accuracy": accuracy(model, features_eval, labels_eval),
  }


def score_beta_vae(draws: Draws, codes: dict[str, np.ndarray]) -> Scoring:
  """:func:`beta_vae` of the codes of :func:`draw_beta_vae`'s draws (one job: the logistic
  regression)."""
  b, seed = draws.extra["batch_size"], draws.extra["model_seed"]
  x_train = _pair_features(codes["train_first"], codes["train_second"], b)
  x_eval = _pair_features(codes["eval_first"], codes["eval_second"], b)
  y_train, y_eval = draws.extra["train_labels"], draws.extra["eval_labels"]
  return Scoring(
    [functools.partial(beta_vae, x_train, y_train, x_eval, y_eval, seed)], first_result
  )
