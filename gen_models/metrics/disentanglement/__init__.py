r"""Disentanglement metrics of an encoder on data with ground-truth factors, one module per
metric as in disentanglement_lib (Locatello et al. 2019, github.com/google-research/
disentanglement_lib, ``evaluation/metrics/*.py`` and the ``unsupervised_study_v1`` metric
configs): :mod:`.beta_vae`, :mod:`.factor_vae`, :mod:`.mig`, :mod:`.dci`, :mod:`.sap`, and what
they share in :mod:`.common` (the ``encode`` and ``data`` interfaces, :class:`Draws`,
:class:`Scoring`, the checks). Each metric module has one public function named after the metric
(its score from codes or features, with the protocol in its docstring), ``draw_<metric>`` (its
random draws) and ``score_<metric>`` (its :class:`Scoring` from the codes of those draws); the
module names are shadowed here by those functions (``disentanglement.mig`` is the function).

Protocols and defaults follow disentanglement_lib; each function's docstring states them. The
random draws differ (one ``numpy.random.Generator`` here, drawn in blocks), not their
distribution. Codes are handled in float64; factors are integer classes. The classifiers are
scikit-learn's with every parameter that matters set explicitly: the values are the defaults of
scikit-learn before 0.22 (disentanglement_lib's time, 2018–2019, where its code relies on
defaults), which have changed since (logistic regression: liblinear one-vs-rest then, lbfgs
multinomial now). DCI's trees are :mod:`gen_models.metrics.boosting`'s port of scikit-learn's
unless ``dci_trees="sklearn"``.

This module: every metric by name (:data:`METRICS`, :data:`DRAW`, :data:`SCORE`), :func:`draw`
and :func:`evaluate` of one encoder (:mod:`gen_models.metrics.disentanglement_runner`: many).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from gen_models.errors import UserError
from gen_models.metrics.disentanglement.beta_vae import beta_vae, draw_beta_vae, score_beta_vae
from gen_models.metrics.disentanglement.common import (
  Draws,
  Encode,
  Scoring,
  batched_encoder,
  check_ground_truth,
  encode_draws,
  encode_observations,
  sample_codes,
)
from gen_models.metrics.disentanglement.dci import (
  TREES,
  dci,
  dci_from_importance,
  draw_dci,
  score_dci,
)
from gen_models.metrics.disentanglement.factor_vae import (
  draw_factor_vae,
  factor_vae,
  score_factor_vae,
)
from gen_models.metrics.disentanglement.mig import (
  discretize,
  draw_mig,
  entropy,
  mig,
  mutual_information,
  score_mig,
)
from gen_models.metrics.disentanglement.sap import draw_sap, sap, sap_matrix, score_sap

__all__ = [
  "DRAW",
  "METRICS",
  "SCORE",
  "TREES",
  "Draws",
  "Encode",
  "Scoring",
  "batched_encoder",
  "beta_vae",
  "check_ground_truth",
  "check_metrics",
  "dci",
  "dci_from_importance",
  "discretize",
  "draw",
  "draw_beta_vae",
  "draw_dci",
  "draw_factor_vae",
  "draw_mig",
  "draw_sap",
  "encode_draws",
  "encode_observations",
  "entropy",
  "evaluate",
  "factor_vae",
  "mig",
  "mutual_information",
  "sample_codes",
  "sap",
  "sap_matrix",
  "score",
  "score_beta_vae",
  "score_dci",
  "score_factor_vae",
  "score_mig",
  "score_sap",
]

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


def score(draws: Draws, codes: dict[str, np.ndarray], dci_trees: str = "numpy") -> Scoring:
  """The :class:`Scoring` of one metric's ``draws`` from their ``codes`` (:data:`SCORE`), DCI's
  trees by ``dci_trees`` (one of :data:`TREES`)."""
  if draws.metric == "dci":
    return score_dci(draws, codes, trees=dci_trees)
  return SCORE[draws.metric](draws, codes)


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
  dci_trees: str = "numpy",
) -> dict[str, float]:
  """The named metrics of one encoder, one after another (:func:`draw`'s draws and sizes; every
  observation encoded where it is drawn; DCI's trees by ``dci_trees``, as :func:`score`).
  ``on_metric(name, scores, seconds)`` is called after each.
  ``gen_models.metrics.disentanglement_runner.evaluate_members`` computes the same numbers for
  many encoders at once, faster.

  Returns:
    ``{"<metric>/<score>": value}``, e.g. ``beta_vae/eval_accuracy``, ``mig/mig``,
    ``dci/disentanglement``, ``sap/sap``.
  """
  results = {}
  for draws in draw(data, metrics, seed, num_train, num_eval):
    start = time.perf_counter()
    out = score(draws, encode_draws(encode, data, draws, max_batch), dci_trees).run()
    results.update({f"{draws.metric}/{k}": v for k, v in out.items()})
    if on_metric is not None:
      on_metric(draws.metric, out, time.perf_counter() - start)
  return results
