"""A run's sample PNGs and evaluation metrics, drawn with a fixed sample key.

:class:`Outputs` writes the sample pictures (the toy figure with its W1 title, or image grids
plus the family's own grids) and computes the family's evaluation plus ``eval.metrics``;
:func:`metric_extractor` makes the feature extractor those metrics need. The sample key is
``fold_in(key(seed), SAMPLE_STREAM)``, the same at every step, so that samples of two steps
differ only by the training between them.
"""

from __future__ import annotations

import jax
import numpy as np

from gen_models import devices as dev
from gen_models.data.images import to_uint8
from gen_models.divergences import wasserstein1
from gen_models.errors import UserError
from gen_models.metrics import evaluate as evaluate_lib
from gen_models.metrics import extractors
from gen_models.pictures import image_grid, toy_plot
from gen_models.sampling import sample_chunks

SAMPLE_STREAM = 1_000_003  # fold_in constant of the fixed key used for sample PNGs and eval.


class Outputs:
  """Sample PNGs and evaluation metrics, with the fixed sample key."""

  def __init__(self, config, family, dataset, writer, base_key, extract):
    self.config, self.family, self.dataset, self.writer = config, family, dataset, writer
    self.key = jax.random.fold_in(base_key, SAMPLE_STREAM)
    self._sample = jax.jit(family.sample, static_argnums=2)
    self._reference = None
    self._examples = None
    self.metrics = evaluate_lib.parse_metrics(config.eval.metrics)
    self._extract = extract
    self._real_features = {}  # By number of samples.
    self._critic = jax.jit(family.critic_values) if family.critic_values else None
    self._w1_floor = None

  def reference(self):
    if self._reference is None and self.family.num_reference:
      self._reference = self.dataset.reference(self.family.num_reference)
    return self._reference

  def write_samples(self, step: int, state, member: int | None = None) -> None:
    if self.dataset.kind == "points":  # The same points as a family's W1 evaluation at `step`.
      n = self.config.eval.num_samples
      fake = dev.to_host(self._sample(state, self.key, n))
      reference = self.dataset.reference(2 * n)
      real = reference[:n]
      if self._w1_floor is None:  # W1 between two real sets: what a perfect generator scores.
        self._w1_floor = wasserstein1(reference[n:], real)
      ratio = wasserstein1(fake, real) / self._w1_floor if np.all(np.isfinite(fake)) else np.nan
      critic = None
      if self._critic is not None:
        critic = lambda points: dev.to_host(self._critic(state, points))
      title = f"step {step}: W1 / noise floor = {ratio:.2f}"
      plot = toy_plot(real, fake, title=title, critic=critic)
      self.writer.image(step, "samples", plot, member=member)
    else:
      n = self.config.eval.num_image_samples
      value_range = self.dataset.value_range
      fake = dev.to_host(self._sample(state, self.key, n))
      self.writer.image(step, "samples", image_grid(to_uint8(fake, value_range)), member=member)
      if self.family.image_grids is not None:
        for name, grid in dev.to_host(self.family.image_grids(state, self.examples(n))).items():
          rows, columns = grid.shape[:2]
          images = to_uint8(grid.reshape(rows * columns, *grid.shape[2:]), value_range)
          self.writer.image(step, name, image_grid(images, columns=columns), member=member)

  def examples(self, n: int) -> np.ndarray:
    """``n`` fixed real examples for the family's image grids: held-out ones if the dataset has
    them, else the first training batch's (both the same at every call)."""
    if self._examples is None:
      self._examples = self.dataset.reference(n)
      if self._examples is None:
        self._examples = self.dataset.batch(0)[:n]
    return self._examples

  def _features(self, samples: np.ndarray) -> evaluate_lib.Features:
    if self.dataset.kind == "images":
      samples = to_uint8(samples, self.dataset.value_range, self.config.eval.quantization)
    features, logits = self._extract(samples)
    return evaluate_lib.Features(features=features, logits=logits)

  def sample_metrics(self, state, n: int) -> dict[str, float]:
    """``eval.metrics`` of ``n`` samples vs as many held-out real examples (at most all)."""
    if n not in self._real_features:  # Constant for the run: extracted once.
      self._real_features[n] = self._features(self.dataset.reference(n))
    key = jax.random.fold_in(self.key, 1)
    fake = sample_chunks(self._sample, state, key, n, min(n, self.config.batch_size))
    results = evaluate_lib.compute(
      self._real_features[n],
      self._features(fake),
      self.metrics,
      nearest_k=self.config.eval.nearest_k or None,
      seed=self.config.seed,
    )
    return {k: v for k, v in results.items() if not k.startswith(("num_", "nearest_k"))}

  def evaluate(self, step: int, state, final: bool = False) -> dict[str, float]:
    """The family's evaluation and ``eval.metrics``; on ``eval.final_num_samples`` samples when
    ``final`` and that is set, else on ``eval.num_samples``."""
    results = self.family.evaluate(state, self.key, self.reference())
    if self.metrics:
      n = self.config.eval.num_samples
      results.update(self.sample_metrics(state, final and self.config.eval.final_num_samples or n))
    return {f"eval/{k}": float(v) for k, v in results.items()}


def metric_extractor(config, kind: str):
  """The feature extractor of ``eval.metrics`` (None when there are none).

  Made before the workdir is touched, so that missing Inception weights or a metric the data
  cannot give stop the run at once, not at its first evaluation.
  """
  metrics = evaluate_lib.parse_metrics(config.eval.metrics)
  if not metrics:
    return None
  if config.eval.nearest_k < 0:
    raise UserError(f"eval.nearest_k must be >= 0 (0: the defaults), got {config.eval.nearest_k}")
  needed = max(config.eval.nearest_k, 5) + 1 if "prdc" in metrics else 2
  if config.eval.num_samples < needed:
    raise UserError(
      f"eval.metrics {','.join(metrics)} need eval.num_samples >= {needed}, "
      f"got {config.eval.num_samples}"
    )
  if config.eval.final_num_samples and config.eval.final_num_samples < needed:
    raise UserError(
      f"eval.final_num_samples must be 0 (= eval.num_samples) or >= {needed}, "
      f"got {config.eval.final_num_samples}"
    )
  # Batches of extractors.BATCH_SIZE images, or of all of them when an evaluation has fewer
  # (12 samples on 8 devices: batches of 16, not 6.5× that padded to 104).
  largest = max(config.eval.num_samples, config.eval.final_num_samples)
  extract = extractors.for_samples(
    config.eval.extractor,
    kind,
    config.eval.inception_weights or None,
    batch_size=min(extractors.BATCH_SIZE, largest),
    devices=jax.local_devices(),
    flag="--config.eval.inception_weights",
  )
  if "is" in metrics and extract is extractors.identity:
    raise UserError(
      "eval.metrics has 'is', which needs class logits; the identity extractor (used for "
      "points) has none: drop 'is' or use the Inception extractor on images"
    )
  return extract
