r"""What every disentanglement metric shares: the encoder and data interfaces, the draws and
scorings, and the checks of codes and factors.

* ``encode``: observations ``(B, *example_shape)`` → codes ``(B, d)`` (for a VAE the posterior
  means). Called on blocks of at most ``max_batch`` observations.
* ``data``: the ground-truth interface of :mod:`gen_models.data.dsprites` — ``num_factors``,
  ``factor_sizes``, ``factor_names``, ``sample_factors(n, rng) -> (n, K) int`` (independent
  uniform factors) and ``observations(factors) -> (n, *example_shape)``.
* ``seed``: an int or a ``numpy.random.Generator``.

Every metric comes in two parts: its random draws (the factor classes whose observations are
encoded, and the rest), then its scores from the codes of those observations. The draws come
first and never depend on the codes, so all the observations of all the metrics can be encoded
together (each distinct one once, for many encoders: gen_models.metrics.disentanglement_runner);
the scoring is a list of independent jobs (the classifier fits) and a ``combine``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from gen_models.data import GROUND_TRUTH_ATTRIBUTES
from gen_models.errors import UserError

Encode = Callable[[np.ndarray], np.ndarray]


def as_rng(seed: int | np.random.Generator) -> np.random.Generator:
  """``seed`` itself if it is a Generator, else ``np.random.default_rng(seed)``."""
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
  factors = draw_factors(data, num_points, as_rng(seed))
  return encode_observations(encode, data, factors, max_batch), factors


def draw_factors(data, n: int, rng: np.random.Generator) -> np.ndarray:
  """``n`` random factor vectors ``(n, K)`` int64 (``data.sample_factors``)."""
  return np.asarray(data.sample_factors(n, rng), np.int64)


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


def check_pair(codes, factors, what: str) -> tuple[np.ndarray, np.ndarray]:
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


def _check_test_pair(codes, factors, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Test codes and factors: finite numbers and integers (a factor may have one value here)."""
  codes, factors = np.asarray(codes), np.asarray(factors)
  if not np.issubdtype(codes.dtype, np.number) or not np.all(np.isfinite(codes)):
    raise UserError(f"{what} test codes must be finite numbers")
  if not np.issubdtype(factors.dtype, np.integer):
    raise UserError(f"{what} test factors must be integer classes, got {factors.dtype}")
  return codes.astype(np.float64), factors.astype(np.int64)


def check_train_test(
  what: str, codes_train, factors_train, codes_test, factors_test
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The training and test points of a metric with a classifier per factor (DCI, SAP), checked:
  ``(x (N, d), y (N, K), x_test (M, d), y_test (M, K))`` as float64 and int64
  (:func:`check_pair` for the training points; the test ones finite, integer, the same ``d`` and
  ``K``)."""
  x, y = check_pair(codes_train, factors_train, f"{what} train")
  d, k = x.shape[1], y.shape[1]
  if codes_test is None or factors_test is None:
    raise UserError(f"{what} needs test codes and factors")
  x_test, y_test = _check_test_pair(codes_test, factors_test, what)
  if x_test.ndim != 2 or x_test.shape[1] != d or y_test.shape != (len(x_test), k):
    raise UserError(
      f"{what} test codes/factors must be (M, {d}) and (M, {k}), got {x_test.shape} and "
      f"{y_test.shape}"
    )
  return x, y, x_test, y_test


def accuracy(model, x, y) -> float:
  return float(np.mean(model.predict(x) == y))


def first_result(results: list):
  return results[0]


def draw_train_test(metric: str, data, rng, num_train: int, num_test: int) -> Draws:
  """``num_train`` and ``num_test`` random factor vectors, then a classifier seed."""
  if num_train < 1 or num_test < 1:
    raise UserError(f"num_points must be >= 1, got {min(num_train, num_test)}")
  factors = {"train": draw_factors(data, num_train, rng), "test": draw_factors(data, num_test, rng)}
  return Draws(metric, factors, {"model_seed": int(rng.integers(2**31 - 1))})


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
