"""The FactorVAE metric (Kim & Mnih 2018): disentanglement_lib's ``factor_vae_score``
(``evaluation/metrics/factor_vae.py``)."""

from __future__ import annotations

import functools

import numpy as np

from gen_models.errors import UserError
from gen_models.metrics.disentanglement.common import Draws, Scoring, draw_factors, first_result


def draw_factor_vae(
  data,
  rng: np.random.Generator,
  batch_size: int = 64,
  num_train: int = 10_000,
  num_eval: int = 5_000,
  num_variance_estimate: int = 10_000,
) -> Draws:
  """The FactorVAE metric's draws: ``factors["variance"] (num_variance_estimate, K)`` for the
  global variances; for the training and the evaluation points each point's factor ``k``
  (uniform, ``extra["<split>_labels"] (n,)``) fixed to one class over its batch of
  ``batch_size``: ``factors["<split>"] (n·b, K)``, the batch of point ``p`` at rows ``p·b …``."""
  if num_variance_estimate < 2 or batch_size < 2:
    raise UserError("factor_vae needs num_variance_estimate >= 2 and batch_size >= 2")
  factors = {"variance": draw_factors(data, num_variance_estimate, rng)}
  extra = {"batch_size": batch_size}
  for split, n in (("train", num_train), ("eval", num_eval)):
    k = rng.integers(0, data.num_factors, size=n)
    batch = draw_factors(data, n * batch_size, rng).reshape(n, batch_size, -1)
    batch[np.arange(n), :, k] = batch[np.arange(n), :1, k]
    factors[split] = batch.reshape(n * batch_size, -1)
    extra[f"{split}_labels"] = k
  extra["num_factors"] = data.num_factors
  return Draws("factor_vae", factors, extra)


def _votes(codes, labels, batch_size, num_factors, scale, active) -> np.ndarray:
  """Votes ``(K, d)``: per point (``codes (n·b, d)``, ``labels (n,)``), the active code dimension
  with the least variance over its batch (ddof = 1) divided by its global variance ``scale``."""
  local = np.var(codes.reshape(len(labels), batch_size, -1), axis=1, ddof=1)
  dims = np.flatnonzero(active)
  argmin = dims[np.argmin(local[:, dims] / scale[dims], axis=1)]
  votes = np.zeros((num_factors, codes.shape[1]), np.int64)
  np.add.at(votes, (labels, argmin), 1)
  return votes


def factor_vae(
  variance_codes: np.ndarray,
  train_codes: np.ndarray,
  eval_codes: np.ndarray,
  train_labels: np.ndarray,
  eval_labels: np.ndarray,
  batch_size: int,
  num_factors: int,
  prune_threshold: float = 0.05,
) -> dict[str, float]:
  """The FactorVAE metric (Kim & Mnih 2018), disentanglement_lib's ``factor_vae_score``, from the
  codes of :func:`draw_factor_vae`'s draws.

  Global variances (ddof = 1) of each code dimension over ``variance_codes``
  (disentanglement_lib: 10,000 random observations); dimensions with standard deviation below
  ``prune_threshold`` (0.05) are pruned (collapsed to the prior). One point: a factor ``k`` drawn
  uniformly and fixed to one random class for a batch of ``batch_size`` (64) observations; vote =
  the active dimension with the smallest variance over the batch divided by its global variance.
  The majority-vote
  classifier maps each dimension to the factor that voted for it most (ties: the lower factor
  index); accuracy = votes it gets right / all votes, on the training points (10,000) and the
  evaluation points (5,000 new ones).

  Args:
    variance_codes: ``(v, d)`` codes of independent random observations.
    train_codes, eval_codes: ``(n·b, d)`` and ``(m·b, d)``, point ``p``'s batch at rows ``p·b …``.
    train_labels, eval_labels: ``(n,)`` and ``(m,)`` each point's fixed factor.
    batch_size: ``b``.
    num_factors: ``K``.

  Returns:
    ``{"train_accuracy", "eval_accuracy", "num_active_dims"}``; all 0 when every dimension is
    pruned; chance is ``1 / num_factors``.
  """
  variance = np.var(variance_codes, axis=0, ddof=1)
  active = np.sqrt(variance) >= prune_threshold
  if not active.any():
    return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
  common = (batch_size, num_factors, variance, active)
  train = _votes(train_codes, train_labels, *common)
  classifier = np.argmax(train, axis=0)  # (d,): the factor each dimension stands for.
  cols = np.arange(train.shape[1])
  evaluation = _votes(eval_codes, eval_labels, *common)
  return {
    "train_accuracy": float(train[classifier, cols].sum() / train.sum()),
    "eval_accuracy": float(evaluation[classifier, cols].sum() / evaluation.sum()),
    "num_active_dims": int(active.sum()),
  }


def score_factor_vae(
  draws: Draws, codes: dict[str, np.ndarray], prune_threshold: float = 0.05
) -> Scoring:
  """``{"train_accuracy", "eval_accuracy", "num_active_dims"}`` from the codes of
  :func:`draw_factor_vae`'s draws (one job)."""
  e = draws.extra
  job = functools.partial(
    factor_vae,
    codes["variance"],
    codes["train"],
    codes["eval"],
    e["train_labels"],
    e["eval_labels"],
    e["batch_size"],
    e["num_factors"],
    prune_threshold,
  )
  return Scoring([job], first_result)
