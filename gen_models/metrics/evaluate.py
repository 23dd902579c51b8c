"""All sample-quality metrics from two sets of extracted features — ``(real, fake)`` order.

:func:`compute` is what ``experiments/evaluate.py`` and the trainer's periodic evaluation both
call, so a number logged during training and one computed afterwards from the same samples agree.
Keys of the result (only those of the requested metrics):

- ``fid`` — Fréchet distance (:mod:`.fid`); the real side may be precomputed statistics.
- ``is_mean``, ``is_std`` — Inception Score of the fakes (:mod:`.inception_score`); needs logits.
- ``kid_mean``, ``kid_std`` — unbiased KID (:mod:`.kid`).
- ``precision``, ``density`` (fidelity), ``recall``, ``coverage`` (diversity) (:mod:`.prdc`),
  with ``nearest_k_precision_recall`` and ``nearest_k_density_coverage``.
- always ``num_real`` and ``num_fake``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from gen_models.errors import UserError
from gen_models.metrics import fid as fid_lib
from gen_models.metrics import inception_score as is_lib
from gen_models.metrics import kid as kid_lib
from gen_models.metrics import prdc as prdc_lib

METRICS = ("fid", "is", "kid", "prdc")


def parse_metrics(spec: str) -> tuple[str, ...]:
  """``"fid,kid"`` → ``("fid", "kid")``; an unknown name is a :class:`UserError`."""
  names = tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
  unknown = [n for n in names if n not in METRICS]
  if unknown:
    raise UserError(f"unknown metric {unknown[0]!r}; known metrics: {', '.join(METRICS)}")
  return names


@dataclasses.dataclass
class Features:
  """One side of a comparison: features ``(N, D)`` and/or logits ``(N, C)``, or FID stats."""

  features: np.ndarray | None = None
  logits: np.ndarray | None = None
  stats: fid_lib.FeatureStats | None = None

  @property
  def n(self) -> int:
    if self.features is not None:
      return len(self.features)
    if self.logits is not None:
      return len(self.logits)
    return self.stats.n if self.stats is not None else 0


def _need_features(side: Features, which: str, metric: str) -> np.ndarray:
  if side.features is None:
    raise UserError(f"{metric} needs {which} features (N, D); {which} has only FID statistics")
  return side.features


def _counter(progress, label: str, total: int) -> Callable[[int], None] | None:
  """Turns ``progress(label, done, total)`` into a ``tick(units)`` callback."""
  if progress is None:
    return None
  done = [0]

  def tick(units: int) -> None:
    done[0] += units
    progress(label, done[0], total)

  return tick


def _check_dims(real: Features, fake: Features) -> None:
  def dim(side: Features) -> int | None:
    if side.features is not None:
      return side.features.shape[1]
    return side.stats.mean.shape[0] if side.stats is not None else None

  d_real, d_fake = dim(real), dim(fake)
  if d_real is not None and d_fake is not None and d_real != d_fake:
    raise UserError(f"real and fake features differ in dimension: {d_real} vs {d_fake}")


def compute(
  real: Features,
  fake: Features,
  metrics: tuple[str, ...],
  *,
  nearest_k: int | None = None,
  ties: str = "<=",
  kid_subsets: int = 100,
  kid_subset_size: int = 1000,
  is_splits: int = 10,
  seed: int = 0,
  progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, float]:
  """The requested ``metrics`` (names from :data:`METRICS`) of ``fake`` against ``real``.

  ``nearest_k`` sets k for all of precision/recall/density/coverage; ``None`` keeps the papers'
  defaults (3 and 5). ``progress(metric, done, total)`` reports long computations.
  """
  _check_dims(real, fake)
  out: dict[str, float] = {"num_real": real.n, "num_fake": fake.n}
  for name in metrics:
    if name == "fid":
      r = real.stats if real.stats is not None else _need_features(real, "real", "FID")
      f = fake.stats if fake.stats is not None else _need_features(fake, "fake", "FID")
      out["fid"] = fid_lib.fid(r, f)
    elif name == "is":
      if fake.logits is None:
        raise UserError(
          "IS needs class logits of the fakes: give images (run through Inception) "
          "or an .npz with a 'logits' array"
        )
      out["is_mean"], out["is_std"] = is_lib.inception_score(
        logits=fake.logits, splits=min(is_splits, len(fake.logits))
      )
    elif name == "kid":
      r, f = _need_features(real, "real", "KID"), _need_features(fake, "fake", "KID")
      out["kid_mean"], out["kid_std"] = kid_lib.kid(r, f, kid_subsets, kid_subset_size, seed)
    elif name == "prdc":
      r, f = _need_features(real, "real", "PRDC"), _need_features(fake, "fake", "PRDC")
      k_pr = nearest_k or prdc_lib.PRECISION_RECALL_K
      k_dc = nearest_k or prdc_lib.DENSITY_COVERAGE_K
      if max(k_pr, k_dc) >= min(len(r), len(f)):
        raise UserError(
          f"nearest_k={max(k_pr, k_dc)} needs more than that many real and fake samples, "
          f"got {len(r)} and {len(f)}"
        )
      tick = _counter(progress, "prdc", prdc_lib.work_units(len(r), len(f)))
      out.update(prdc_lib.prdc(r, f, k_pr, k_dc, ties=ties, progress=tick))
      out["nearest_k_precision_recall"] = k_pr
      out["nearest_k_density_coverage"] = k_dc
    else:
      raise UserError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
  return out
