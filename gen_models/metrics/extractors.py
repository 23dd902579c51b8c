"""Feature extractors: what turns samples into the vectors the metrics compare.

An extractor is any callable ``samples (N, ...) -> (features (N, D) float32, logits (N, C) or
None)``. Three are built in:

- ``"inception"``: the FID Inception-v3 (:mod:`gen_models.metrics.inception`) on uint8 images
  ``(N, H, W, 1 or 3)``: 2048-d pool3 features and 1008 logits (for the Inception Score).
- ``"identity"``: the samples themselves, flattened — for 2-D toy data and for features that
  were computed elsewhere.
- any user function, wrapped by :func:`from_function` (it may return features alone or
  ``(features, logits)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from gen_models.errors import UserError

Extractor = Callable[..., tuple[np.ndarray, np.ndarray | None]]
NAMES = ("auto", "inception", "identity")
BATCH_SIZE = 100  # Images a batch of the Inception extractor, by default.


def identity(samples: np.ndarray, progress=None) -> tuple[np.ndarray, None]:
  """``(N, ...)`` → ``(N, prod(...))`` float32 features, no logits."""
  samples = np.asarray(samples)
  return samples.reshape(len(samples), -1).astype(np.float32), None


def from_function(fn: Callable[[np.ndarray], object]) -> Extractor:
  """Wraps ``fn(samples) -> features`` or ``-> (features, logits)`` as an extractor."""

  def extract(samples: np.ndarray, progress=None):
    out = fn(samples)
    features, logits = out if isinstance(out, tuple) else (out, None)
    features = np.asarray(features, np.float32)
    return features.reshape(len(features), -1), None if logits is None else np.asarray(logits)

  return extract


def inception(
  weights: str | None = None,
  batch_size: int = BATCH_SIZE,
  devices: Sequence[jax.Device] | None = None,
  flag: str | None = None,
) -> Extractor:
  """The FID Inception-v3 with weights from ``weights`` (default: the cache path).

  Raises:
    UserError: the weights file is missing (the message says where to get it and where to put
      it; ``flag`` names the option that points elsewhere) or malformed.
  """
  from gen_models.metrics import inception as inception_lib

  path = inception_lib.resolve_weights(weights or None, flag)
  return inception_lib.InceptionExtractor(
    inception_lib.load_variables(path), batch_size=batch_size, devices=devices
  )


def for_samples(
  name: str,
  kind: str,
  weights: str | None = None,
  batch_size: int = BATCH_SIZE,
  devices: Sequence[jax.Device] | None = None,
  flag: str | None = None,
) -> Extractor:
  """The extractor ``name`` for samples of ``kind`` (``"images"`` or ``"points"``/features);
  ``"auto"`` is Inception for images and identity otherwise."""
  if name not in NAMES:
    raise UserError(f"unknown extractor {name!r}; known: {', '.join(NAMES)}")
  if name == "identity" or (name == "auto" and kind != "images"):
    return identity
  if kind != "images":
    raise UserError("the Inception extractor needs images (N, H, W, C); got feature vectors")
  return inception(weights, batch_size, devices, flag)
