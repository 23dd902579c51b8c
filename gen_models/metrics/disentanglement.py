r"""Disentanglement metrics of an encoder on data with ground-truth factors.

Protocols and defaults follow disentanglement_lib (Locatello et al. 2019,
github.com/google-research/disentanglement_lib, ``evaluation/metrics/*.py`` and the
``unsupervised_study_v1`` metric configs); each function's docstring states them. The random
draws differ (one ``numpy.random.Generator`` here, drawn in blocks), not their distribution.

Inputs:

* ``encode``: observations ``(B, *example_shape)`` → codes ``(B, d)`` (for a VAE the posterior
  means). Called on blocks of at most ``max_batch`` observations.
* ``data``: the ground-truth interface of :mod:`gen_models.data.dsprites` — ``num_factors``,
  ``factor_sizes``, ``factor_names``, ``sample_factors(n, rng) -> (n, K) int`` (independent
  uniform factors) and ``observations(factors) -> (n, *example_shape)``.
* ``seed``: an int or a ``numpy.random.Generator``.

Codes are handled in float64; factors are integer classes. The classifiers are scikit-learn's with
every parameter that matters set explicitly: the values are the defaults of scikit-learn before
0.22 (disentanglement_lib's time, 2018–2019, where its code relies on defaults), which have changed
since (logistic regression: liblinear one-vs-rest then, lbfgs multinomial now).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gen_models.data import GROUND_TRUTH_ATTRIBUTES
from gen_models.errors import UserError
from gen_models.metrics import boosting

Encode = Callable[[np.ndarray], np.ndarray]


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
  return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def check_ground_truth(data) -> None:
  """Raises a one-line :class:`UserError` unless ``data`` has usable ground-truth factors."""
  missing = [a for a in GROUND_TRUTH_ATTRIBUTES if not hasattr(data, a)]
  if missing:
    name = getattr(data, "name", type(data).__name__)
    raise UserError(
      f"dataset {name!r} has no ground-truth factors ({', '.join(missing)} missing); the "
      f"disentanglement metrics need a dataset such as dsprites or dsprites_procedural"
    )
  for name, size in zip(data.factor_names, data.factor_sizes, strict=True):
    if size < 2:
      raise UserError(f"factor {name!r} has {size} value; every factor needs at least 2")
  if data.num_factors < 2:
    raise UserError(f"the metrics need at least 2 factors, the data has {data.num_factors}")


def encode_observations(encode: Encode, data, factors: np.ndarray, max_batch: int) -> np.ndarray:
  """Codes ``(n, d)`` float64 of the observations of ``factors (n, K)``, ``max_batch`` at a time.

  Raises:
    UserError: the encoder returned something other than finite ``(B, d)`` codes.
  """
  chunks = []
  for start in range(0, len(factors), max_batch):
    block = factors[start : start + max_batch]
    codes = np.asarray(encode(data.observations(block)), np.float64)
    if codes.ndim != 2 or len(codes) != len(block) or codes.shape[1] < 1:
      raise UserError(f"encode must return codes (B={len(block)}, d), got {codes.shape}")
    if not np.all(np.isfinite(codes)):
      raise UserError("encode returned NaN or infinite codes")
    chunks.append(codes)
  return np.concatenate(chunks)


def sample_codes(
  encode: Encode, data, num_points: int, seed, max_batch: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
  """``(codes (n, d) float64, factors (n, K) int64)`` of ``n`` independent random observations
  (disentanglement_lib's ``generate_batch_factor_code``)."""
  check_ground_truth(data)
  if num_points < 1:
    raise UserError(f"num_points must be >= 1, got {num_points}")
  factors = _factors(data, num_points, _rng(seed))
  return encode_observations(encode, data, factors, max_batch), factors


def _factors(data, n: int, rng: np.random.Generator) -> np.ndarray:
  """``n`` random factor vectors ``(n, K)`` int64 (``data.sample_factors``)."""
  return np.asarray(data.sample_factors(n, rng), np.int64)


# ---------------------------------------------------------------------------------------------
# Every metric in two parts: its random draws (the factor classes whose observations are encoded,
# and the rest), then its scores from the codes of those observations. The draws come first and
# never depend on the codes, so all the observations of all the metrics can be encoded together
# (each distinct one once, for many encoders: gen_models.metrics.disentanglement_runner); the
# scoring is a list of independent jobs (the classifier fits) and a ``combine``.


@dataclasses.dataclass(frozen=True)
class Draws:
  """A metric's random draws.

  Attributes:
    metric: its name in :data:`METRICS`.
    factors: name → factor classes ``(n, K)`` int64 whose observations are encoded.
    extra: what else it drew or needs (labels, a classifier's seed, sizes).
  """

  metric: str
  factors: dict[str, np.ndarray]
  extra: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Scoring:
  """A metric's scores from codes: ``jobs``, independent callables without arguments (the
  classifier fits; ``functools.partial`` of module functions, so that they can run in other
  processes), and ``combine(their results, in order) -> scores``."""

  jobs: list[Callable[[], Any]]
  combine: Callable[[list], dict[str, float]]
  costs: tuple[float, ...] | None = None  # Relative cost of each job, where known (for ordering).

  def run(self) -> dict[str, float]:
    """The scores, computing the jobs one after another."""
    return self.combine([job() for job in self.jobs])


def encode_draws(encode: Encode, data, draws: Draws, max_batch: int) -> dict[str, np.ndarray]:
  """Codes ``(n, d)`` float64 of each of ``draws.factors``, by :func:`encode_observations`."""
  return {k: encode_observations(encode, data, f, max_batch) for k, f in draws.factors.items()}


# ---------------------------------------------------------------------------------------------
# Checks of codes and factors given as arrays.


def _check_pair(codes, factors, what: str) -> tuple[np.ndarray, np.ndarray]:
  codes, factors = np.asarray(codes), np.asarray(factors)
  if codes.ndim != 2 or codes.shape[1] < 1 or not np.issubdtype(codes.dtype, np.number):
    raise UserError(f"{what} codes must be numeric (N, d), got {codes.dtype} {codes.shape}")
  if factors.ndim != 2 or factors.shape[1] < 1 or not np.issubdtype(factors.dtype, np.integer):
    raise UserError(
      f"{what} factors must be integer classes (N, K), got {factors.dtype} {factors.shape}"
    )
  if len(codes) != len(factors):
    raise UserError(f"{what}: {len(codes)} codes but {len(factors)} factor rows")
  if not np.all(np.isfinite(codes)):
    raise UserError(f"{what} codes hold NaN or infinite values")
  for k in range(factors.shape[1]):
    if np.all(factors[:, k] == factors[0, k]):
      raise UserError(
        f"factor {k} has a single value in the {len(factors)} {what} points; its entropy is 0 "
        f"and the metric is undefined for it"
      )
  return codes.astype(np.float64), factors.astype(np.int64)


def _test_pair(codes, factors, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Test codes and factors: finite numbers and integers (a factor may have one value here)."""
  codes, factors = np.asarray(codes), np.asarray(factors)
  if not np.issubdtype(codes.dtype, np.number) or not np.all(np.isfinite(codes)):
    raise UserError(f"{what} test codes must be finite numbers")
  if not np.issubdtype(factors.dtype, np.integer):
    raise UserError(f"{what} test factors must be integer classes, got {factors.dtype}")
  return codes.astype(np.float64), factors.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# MIG.


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
  over the factor's entropy. disentanglement_lib uses 10,000 points (:func:`mig_score`).

  Args:
    codes: ``(N, d)`` codes, ``d ≥ 2``.
    factors: ``(N, K)`` integer factor classes.
    num_bins: bins per code dimension.

  Returns:
    MIG in ``[0, 1]``.

  Raises:
    UserError: bad shapes, non-finite codes, ``d < 2``, or a factor with a single value.
  """
  codes, factors = _check_pair(codes, factors, "mig")
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
  return Draws("mig", {"train": _factors(data, num_train, rng)}, {})


def score_mig(draws: Draws, codes: dict[str, np.ndarray], num_bins: int = 20) -> Scoring:
  """``{"mig": ...}`` of the codes of :func:`draw_mig`'s draws (one job)."""
  x, y = codes["train"], draws.factors["train"]
  return Scoring([functools.partial(mig, x, y, num_bins)], functools.partial(_named, "mig"))


def _named(name: str, results: list) -> dict[str, float]:
  """``{name: the one job's result}``."""
  return {name: results[0]}


def _first(results: list):
  return results[0]


def mig_score(
  encode: Encode, data, seed, num_train: int = 10_000, num_bins: int = 20, max_batch: int = 1024
) -> dict[str, float]:
  """``{"mig": ...}``: :func:`mig` of the codes of ``num_train`` random observations (the
  disentanglement_lib protocol: 10,000 points, 20 bins)."""
  check_ground_truth(data)
  draws = draw_mig(data, _rng(seed), num_train)
  return score_mig(draws, encode_draws(encode, data, draws, max_batch), num_bins).run()


# ---------------------------------------------------------------------------------------------
# β-VAE metric.


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


def _accuracy(model, x, y) -> float:
  return float(np.mean(model.predict(x) == y))


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
    first = _factors(data, n * batch_size, rng).reshape(n, batch_size, -1)
    second = _factors(data, n * batch_size, rng).reshape(n, batch_size, -1)
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


def score_beta_vae(draws: Draws, codes: dict[str, np.ndarray]) -> Scoring:
  """``{"train_accuracy", "eval_accuracy"}`` from the codes of :func:`draw_beta_vae`'s draws
  (one job: the logistic regression)."""
  b, seed = draws.extra["batch_size"], draws.extra["model_seed"]
  x_train = _pair_features(codes["train_first"], codes["train_second"], b)
  x_eval = _pair_features(codes["eval_first"], codes["eval_second"], b)
  y_train, y_eval = draws.extra["train_labels"], draws.extra["eval_labels"]

  job = functools.partial(_beta_vae_fit, seed, x_train, y_train, x_eval, y_eval)
  return Scoring([job], _train_eval)


def _beta_vae_fit(seed: int, x_train, y_train, x_eval, y_eval) -> tuple[float, float]:
  """The β-VAE metric's logistic regression: its training and evaluation accuracies."""
  model = _logistic_regression(seed).fit(x_train, y_train)
  return _accuracy(model, x_train, y_train), _accuracy(model, x_eval, y_eval)


def _train_eval(results: list) -> dict[str, float]:
  return {"train_accuracy": results[0][0], "eval_accuracy": results[0][1]}


def beta_vae_score(
  encode: Encode,
  data,
  seed,
  batch_size: int = 64,
  num_train: int = 10_000,
  num_eval: int = 5_000,
  max_batch: int = 1024,
) -> dict[str, float]:
  """The β-VAE metric (Higgins et al. 2017), disentanglement_lib's ``beta_vae_sklearn``.

  One point: a factor ``k`` drawn uniformly; ``batch_size`` (64) pairs of observations, each pair
  sharing the class of factor ``k`` (all other factors independent); feature = mean over the
  pairs of ``|z₁ − z₂|`` (per code dimension); label ``k``. A logistic regression
  (:func:`_logistic_regression`: liblinear one-vs-rest, C = 1) is fitted on ``num_train``
  (10,000) points and scored on ``num_eval`` (5,000) new ones.

  Returns:
    ``{"train_accuracy", "eval_accuracy"}``; chance is ``1 / num_factors``.
  """
  check_ground_truth(data)
  draws = draw_beta_vae(data, _rng(seed), batch_size, num_train, num_eval)
  return score_beta_vae(draws, encode_draws(encode, data, draws, max_batch)).run()


# ---------------------------------------------------------------------------------------------
# FactorVAE metric.


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
    raise UserError("factor_vae_score needs num_variance_estimate >= 2 and batch_size >= 2")
  factors = {"variance": _factors(data, num_variance_estimate, rng)}
  extra = {"batch_size": batch_size}
  for split, n in (("train", num_train), ("eval", num_eval)):
    k = rng.integers(0, data.num_factors, size=n)
    batch = _factors(data, n * batch_size, rng).reshape(n, batch_size, -1)
    batch[np.arange(n), :, k] = batch[np.arange(n), :1, k]
    factors[split] = batch.reshape(n * batch_size, -1)
    extra[f"{split}_labels"] = k
  extra["num_factors"] = data.num_factors
  return Draws("factor_vae", factors, extra)


def _factor_vae_votes(codes, labels, batch_size, num_factors, scale, active) -> np.ndarray:
  """Votes ``(K, d)``: per point (``codes (n·b, d)``, ``labels (n,)``), the active code dimension
  with the least variance over its batch (ddof = 1) divided by its global variance ``scale``."""
  local = np.var(codes.reshape(len(labels), batch_size, -1), axis=1, ddof=1)
  dims = np.flatnonzero(active)
  argmin = dims[np.argmin(local[:, dims] / scale[dims], axis=1)]
  votes = np.zeros((num_factors, codes.shape[1]), np.int64)
  np.add.at(votes, (labels, argmin), 1)
  return votes


def score_factor_vae(
  draws: Draws, codes: dict[str, np.ndarray], prune_threshold: float = 0.05
) -> Scoring:
  """``{"train_accuracy", "eval_accuracy", "num_active_dims"}`` from the codes of
  :func:`draw_factor_vae`'s draws (one job)."""
  e = draws.extra
  job = functools.partial(
    _factor_vae_accuracy,
    codes["variance"],
    codes["train"],
    codes["eval"],
    e["train_labels"],
    e["eval_labels"],
    e["batch_size"],
    e["num_factors"],
    prune_threshold,
  )
  return Scoring([job], _first)


def _factor_vae_accuracy(
  variance_codes,
  train_codes,
  eval_codes,
  train_labels,
  eval_labels,
  batch_size,
  num_factors,
  prune_threshold,
) -> dict[str, float]:
  """The FactorVAE metric's votes and accuracies (:func:`factor_vae_score`)."""
  variance = np.var(variance_codes, axis=0, ddof=1)
  active = np.sqrt(variance) >= prune_threshold
  if not active.any():
    return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
  common = (batch_size, num_factors, variance, active)
  train = _factor_vae_votes(train_codes, train_labels, *common)
  classifier = np.argmax(train, axis=0)  # (d,): the factor each dimension stands for.
  cols = np.arange(train.shape[1])
  evaluation = _factor_vae_votes(eval_codes, eval_labels, *common)
  return {
    "train_accuracy": float(train[classifier, cols].sum() / train.sum()),
    "eval_accuracy": float(evaluation[classifier, cols].sum() / evaluation.sum()),
    "num_active_dims": int(active.sum()),
  }


def factor_vae_score(
  encode: Encode,
  data,
  seed,
  batch_size: int = 64,
  num_train: int = 10_000,
  num_eval: int = 5_000,
  num_variance_estimate: int = 10_000,
  prune_threshold: float = 0.05,
  max_batch: int = 1024,
) -> dict[str, float]:
  """The FactorVAE metric (Kim & Mnih 2018), disentanglement_lib's ``factor_vae_score``.

  Global variances (ddof = 1) of each code dimension over ``num_variance_estimate`` (10,000)
  random observations; dimensions with standard deviation below ``prune_threshold`` (0.05) are
  pruned (collapsed to the prior). One point: a factor ``k`` drawn uniformly and fixed to one
  random class for a batch of ``batch_size`` (64) observations; vote = the active dimension with
  the smallest variance over the batch divided by its global variance. The majority-vote
  classifier maps each dimension to the factor that voted for it most (ties: the lower factor
  index); accuracy = votes it gets right / all votes, on ``num_train`` (10,000) training points
  and ``num_eval`` (5,000) new ones.

  Returns:
    ``{"train_accuracy", "eval_accuracy", "num_active_dims"}``; all 0 when every dimension is
    pruned; chance is ``1 / num_factors``.
  """
  check_ground_truth(data)
  draws = draw_factor_vae(data, _rng(seed), batch_size, num_train, num_eval, num_variance_estimate)
  codes = encode_draws(encode, data, draws, max_batch)
  return score_factor_vae(draws, codes, prune_threshold).run()


# ---------------------------------------------------------------------------------------------
# DCI.


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


def _dci_scoring(codes_train, factors_train, codes_test, factors_test, seed: int) -> Scoring:
  """DCI's checks, one job per factor (its classifier: importance column, train and test
  accuracy) and the combine (see :func:`dci`)."""
  x, y = _check_pair(codes_train, factors_train, "dci train")
  x_test, y_test = _test_pair(codes_test, factors_test, "dci")
  if x_test.ndim != 2 or x_test.shape[1] != x.shape[1] or y_test.shape != (len(x_test), y.shape[1]):
    raise UserError(
      f"dci test codes/factors must be (M, {x.shape[1]}) and (M, {y.shape[1]}), got "
      f"{x_test.shape} and {y_test.shape}"
    )
  if y.shape[1] < 2 or x.shape[1] < 2:
    raise UserError(
      f"dci needs at least 2 factors and 2 code dimensions, got {y.shape[1]}, {x.shape[1]}"
    )

  jobs = [
    functools.partial(_dci_fit, seed, x, y[:, k], x_test, y_test[:, k]) for k in range(y.shape[1])
  ]
  # A factor of K classes fits K trees a stage (one for 2 classes).
  costs = tuple(float(len(np.unique(y[:, k]))) * len(x) for k in range(y.shape[1]))
  return Scoring(jobs, _dci_combine, costs)


def _dci_fit(seed: int, x, y, x_test, y_test) -> tuple[np.ndarray, float, float]:
  """One factor's trees: its importance column ``(d,)``, train and test accuracy."""
  model = boosting.fit_gradient_boosting(x, y, seed=seed)
  return np.abs(model.feature_importances), _accuracy(model, x, y), _accuracy(model, x_test, y_test)


def _dci_combine(results: list) -> dict[str, float]:
  importance = np.stack([r[0] for r in results], axis=1)  # (d, K)
  disentanglement, completeness = dci_from_importance(importance)
  return {
    "disentanglement": disentanglement,
    "completeness": completeness,
    "informativeness_train": float(np.mean([r[1] for r in results])),
    "informativeness_test": float(np.mean([r[2] for r in results])),
  }


def dci(
  codes_train: np.ndarray,
  factors_train: np.ndarray,
  codes_test: np.ndarray,
  factors_test: np.ndarray,
  seed: int = 0,
) -> dict[str, float]:
  """DCI (Eastwood & Williams 2018) with gradient-boosted trees, disentanglement_lib's ``dci``.

  One classifier per factor predicts its class from all codes: disentanglement_lib's
  ``GradientBoostingClassifier()`` (log-loss, 100 stages, learning rate 0.1, depth 3, all samples
  and features per tree), fitted by :func:`gen_models.metrics.boosting.fit_gradient_boosting`,
  which equals scikit-learn's (1.9) bit for bit and is 4× faster; its feature importances form
  column ``k`` of the importance matrix ``R (d, K)``, from which
  :func:`dci_from_importance` gives disentanglement and completeness. Informativeness is the
  classifiers' mean accuracy (not an error, despite disentanglement_lib's ``*_err`` names) on the
  training and the test points. disentanglement_lib uses 10,000 training and 5,000 test points.

  Args:
    codes_train, factors_train: ``(N, d)`` codes and ``(N, K)`` integer factor classes.
    codes_test, factors_test: ``(M, d)`` and ``(M, K)``.
    seed: the trees' ``random_state`` (it only breaks ties between equally good splits).

  Returns:
    ``{"disentanglement", "completeness", "informativeness_train", "informativeness_test"}``.
  """
  return _dci_scoring(codes_train, factors_train, codes_test, factors_test, seed).run()


def _draw_train_test(metric: str, data, rng, num_train: int, num_test: int) -> Draws:
  """``num_train`` and ``num_test`` random factor vectors, then a classifier seed."""
  if num_train < 1 or num_test < 1:
    raise UserError(f"num_points must be >= 1, got {min(num_train, num_test)}")
  factors = {"train": _factors(data, num_train, rng), "test": _factors(data, num_test, rng)}
  return Draws(metric, factors, {"model_seed": int(rng.integers(2**31 - 1))})


def draw_dci(data, rng: np.random.Generator, num_train: int = 10_000, num_test: int = 5_000):
  """DCI's draws: ``factors["train"]``, ``["test"]``, then the trees' seed."""
  return _draw_train_test("dci", data, rng, num_train, num_test)


def score_dci(draws: Draws, codes: dict[str, np.ndarray]) -> Scoring:
  """:func:`dci` of the codes of :func:`draw_dci`'s draws (one job per factor)."""
  f, seed = draws.factors, draws.extra["model_seed"]
  return _dci_scoring(codes["train"], f["train"], codes["test"], f["test"], seed)


def dci_score(
  encode: Encode,
  data,
  seed,
  num_train: int = 10_000,
  num_test: int = 5_000,
  max_batch: int = 1024,
) -> dict[str, float]:
  """:func:`dci` of the codes of ``num_train`` (10,000) and ``num_test`` (5,000) random
  observations."""
  check_ground_truth(data)
  draws = draw_dci(data, _rng(seed), num_train, num_test)
  return score_dci(draws, encode_draws(encode, data, draws, max_batch)).run()


# ---------------------------------------------------------------------------------------------
# SAP.


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


def _sap_checked(codes_train, factors_train, codes_test, factors_test):
  """SAP's (discrete factors) checked ``(x (N, d), y (N, K), x_test (M, d), y_test (M, K))``."""
  x, y = _check_pair(codes_train, factors_train, "sap train")
  d, k = x.shape[1], y.shape[1]
  if codes_test is None or factors_test is None:
    raise UserError("sap with discrete factors needs test codes and factors")
  x_test, y_test = _test_pair(codes_test, factors_test, "sap")
  if x_test.ndim != 2 or x_test.shape[1] != d or y_test.shape != (len(x_test), k):
    raise UserError(
      f"sap test codes/factors must be (M, {d}) and (M, {k}), got {x_test.shape} and {y_test.shape}"
    )
  return x, y, x_test, y_test


def _sap_jobs(x, y, x_test, y_test, seed: int) -> list[Callable[[], np.ndarray]]:
  """One job per factor ``f``: column ``S[:, f] (d,)``, the test accuracies of the linear SVMs
  predicting factor ``f`` from each code alone."""

  return [
    functools.partial(_sap_column, seed, x, y[:, f], x_test, y_test[:, f])
    for f in range(y.shape[1])
  ]


def _sap_column(seed: int, x, y, x_test, y_test) -> np.ndarray:
  """``(d,)``: the test accuracy of a linear SVM predicting ``y`` from each code alone."""
  out = np.zeros(x.shape[1])
  for j in range(x.shape[1]):
    model = _linear_svm(seed).fit(x[:, j : j + 1], y)
    out[j] = _accuracy(model, x_test[:, j : j + 1], y_test)
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
    x, y = _check_pair(codes_train, factors_train, "sap train")
    scores = np.zeros((x.shape[1], y.shape[1]))
    for j in range(x.shape[1]):
      for f in range(y.shape[1]):
        cov = np.cov(x[:, j], y[:, f], ddof=1)
        scores[j, f] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
    return scores
  checked = _sap_checked(codes_train, factors_train, codes_test, factors_test)
  return np.stack([job() for job in _sap_jobs(*checked, seed)], axis=1)


def _sap_gap(scores: np.ndarray) -> float:
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
  return _sap_gap(
    sap_matrix(codes_train, factors_train, codes_test, factors_test, continuous_factors, seed)
  )


def draw_sap(data, rng: np.random.Generator, num_train: int = 10_000, num_test: int = 5_000):
  """SAP's draws: ``factors["train"]``, ``["test"]``, then the SVMs' seed."""
  return _draw_train_test("sap", data, rng, num_train, num_test)


def score_sap(draws: Draws, codes: dict[str, np.ndarray]) -> Scoring:
  """``{"sap": ...}`` (discrete factors) of the codes of :func:`draw_sap`'s draws (one job per
  factor)."""
  f = draws.factors
  checked = _sap_checked(codes["train"], f["train"], codes["test"], f["test"])
  if checked[0].shape[1] < 2:
    raise UserError(f"sap needs at least 2 code dimensions for a gap, got {checked[0].shape[1]}")
  jobs = _sap_jobs(*checked, draws.extra["model_seed"])
  return Scoring(jobs, _sap_combine)


def _sap_combine(results: list) -> dict[str, float]:
  return {"sap": _sap_gap(np.stack(results, axis=1))}


def sap_score(
  encode: Encode,
  data,
  seed,
  num_train: int = 10_000,
  num_test: int = 5_000,
  continuous_factors: bool = False,
  max_batch: int = 1024,
) -> dict[str, float]:
  """``{"sap": ...}``: :func:`sap` of the codes of ``num_train`` (10,000) and ``num_test``
  (5,000) random observations, discrete factors (disentanglement_lib's dSprites setting)."""
  check_ground_truth(data)
  draws = draw_sap(data, _rng(seed), num_train, num_test)
  codes = encode_draws(encode, data, draws, max_batch)
  if not continuous_factors:
    return score_sap(draws, codes).run()
  f = draws.factors
  return {"sap": sap(codes["train"], f["train"], codes["test"], f["test"], True)}


METRICS = ("beta_vae", "factor_vae", "mig", "dci", "sap")


DRAW = {
  "beta_vae": draw_beta_vae,
  "factor_vae": draw_factor_vae,
  "mig": draw_mig,
  "dci": draw_dci,
  "sap": draw_sap,
}
SCORE = {
  "beta_vae": score_beta_vae,
  "factor_vae": score_factor_vae,
  "mig": score_mig,
  "dci": score_dci,
  "sap": score_sap,
}


def check_metrics(metrics) -> tuple[str, ...]:
  """``metrics`` as a tuple of known names; a one-line error for an unknown or empty list."""
  metrics = tuple(metrics)
  unknown = [m for m in metrics if m not in METRICS]
  if unknown or not metrics:
    raise UserError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
  return metrics


def draw(
  data, metrics=METRICS, seed: int = 0, num_train: int | None = None, num_eval: int | None = None
) -> list[Draws]:
  """Every named metric's draws with the disentanglement_lib sizes (or ``num_train`` /
  ``num_eval`` for every metric's training / evaluation points, and ``num_train`` for FactorVAE's
  variance estimate), each from its own stream ``SeedSequence([seed, index in METRICS])``, so a
  metric's value does not depend on which others are computed."""
  check_ground_truth(data)
  out = []
  for name in check_metrics(metrics):
    rng = np.random.default_rng(np.random.SeedSequence([seed, METRICS.index(name)]))
    sizes = {}
    if num_train is not None:
      sizes["num_train"] = num_train
      if name == "factor_vae":
        sizes["num_variance_estimate"] = num_train
    if num_eval is not None:
      sizes["num_test" if name in ("dci", "sap") else "num_eval"] = num_eval
    if name == "mig":
      sizes.pop("num_eval", None)
    out.append(DRAW[name](data, rng, **sizes))
  return out


def evaluate(
  encode: Encode,
  data,
  metrics: tuple[str, ...] = METRICS,
  seed: int = 0,
  num_train: int | None = None,
  num_eval: int | None = None,
  max_batch: int = 1024,
  on_metric: Callable[[str, dict[str, float], float], None] | None = None,
) -> dict[str, float]:
  """The named metrics of one encoder, one after another (:func:`draw`'s draws and sizes; every
  observation encoded where it is drawn). ``on_metric(name, scores, seconds)`` is called after
  each. ``gen_models.metrics.disentanglement_runner.evaluate_members`` computes the same numbers
  for many encoders at once, faster.

  Returns:
    ``{"<metric>/<score>": value}``, e.g. ``beta_vae/eval_accuracy``, ``mig/mig``,
    ``dci/disentanglement``, ``sap/sap``.
  """
  results = {}
  for draws in draw(data, metrics, seed, num_train, num_eval):
    start = time.perf_counter()
    out = SCORE[draws.metric](draws, encode_draws(encode, data, draws, max_batch)).run()
    results.update({f"{draws.metric}/{k}": v for k, v in out.items()})
    if on_metric is not None:
      on_metric(draws.metric, out, time.perf_counter() - start)
  return results


def batched_encoder(encode_fn, state, batch_size: int) -> Encode:
  """A numpy ``encode`` from a family's ``encode(state, x) -> (B, d)``: ``jax.jit``-compiled
  once, always called on ``batch_size`` rows (the last block zero-padded, its padding dropped).

  Returns:
    ``x (n, *example_shape) -> (n, d)`` float32 numpy codes.
  """
  import jax

  jitted = jax.jit(encode_fn)

  def encode(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    out = []
    for start in range(0, len(x), batch_size):
      block = x[start : start + batch_size]
      n = len(block)
      if n < batch_size:
        block = np.concatenate([block, np.zeros((batch_size - n, *x.shape[1:]), np.float32)])
      out.append(np.asarray(jax.device_get(jitted(state, block)))[:n])
    return np.concatenate(out)

  return encode
