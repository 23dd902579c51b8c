"""Inception Score (Salimans et al. 2016, "Improved techniques for training GANs").

    IS = exp( E_x KL( p(y|x) || p(y) ) ),   p(y) = E_x p(y|x),

computed, as in the reference code, on ``splits`` consecutive chunks of the samples (rows
``[i N / splits, (i + 1) N / splits)``, integer division), reporting the mean and the population
standard deviation (``ddof = 0``) of the per-chunk scores. It measures how confidently each sample
is classified (fidelity) and how evenly the classes are covered (diversity) together, and needs no
real data. Its range is [1, C]: uniform predictions give 1, confident predictions spread evenly over
C classes give C. Computed in float64 with ``0 log 0 = 0``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, rel_entr


def inception_score(
  *, logits: np.ndarray | None = None, probs: np.ndarray | None = None, splits: int = 10
) -> tuple[float, float]:
  """Mean and std of the IS over ``splits`` chunks, from ``logits`` or ``probs`` ``(N, C)``.

  For the FID Inception network pass its 1008 unbiased logits ``pool3 @ W`` (what
  :class:`~gen_models.metrics.inception.InceptionExtractor` returns): the TF reference code takes
  the softmax over all 1008 outputs of the fc kernel's product with pool3, without the fc bias.
  """
  if (logits is None) == (probs is None):
    raise ValueError("pass exactly one of logits= or probs=")
  if logits is not None:
    p = np.exp(log_softmax(np.asarray(logits, np.float64), axis=1))
  else:
    p = np.asarray(probs, np.float64)
  if p.ndim != 2:
    raise ValueError(f"class predictions must be (N, C), got shape {p.shape}")
  n = p.shape[0]
  if not 1 <= splits <= n:
    raise ValueError(f"splits must be in [1, N={n}], got {splits}")
  scores = []
  for i in range(splits):
    part = p[i * n // splits : (i + 1) * n // splits]
    marginal = part.mean(axis=0, keepdims=True)
    kl = rel_entr(part, marginal).sum(axis=1).mean()
    scores.append(np.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))
