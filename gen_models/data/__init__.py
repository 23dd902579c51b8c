"""Datasets by name, and the step-indexed iterator the trainer checkpoints.

Every dataset is *random access by batch index*: ``dataset.batch(i)`` returns this process's rows
of global batch ``i``. The rows of a global batch do not depend on how many processes or devices
share it, so a run on 1 or 8 devices, resumed or not, sees the same data.
"""

from __future__ import annotations

import copy
from typing import Protocol

import numpy as np

from gen_models.data import dsprites, images, toy
from gen_models.errors import UserError


class Dataset(Protocol):
  """What the trainer needs of a dataset.

  Attributes:
    name: the dataset's name in configs.
    kind: ``"points"`` (rows of ``R^d``) or ``"images"`` (``H×W×C`` floats).
    shape: the shape of one example, e.g. ``(2,)`` or ``(32, 32, 3)``.
    value_range: for images, the ``(low, high)`` pixel values of the model space: ``(-1.0, 1.0)``
      for the TFDS image sets, ``(0.0, 1.0)`` for the binary dSprites. ``low`` is black and
      ``high`` white when samples are turned into uint8 images (``images.to_uint8``). None for
      points.

  Labelled image datasets made with ``config.dataset.labels = True`` have ``num_classes`` (int)
  and batches ``{"image": (B, *shape) float32, "label": (B,) int32}``; otherwise ``num_classes``
  is None or absent. ``reference`` is images only either way.

  Datasets with ground-truth factors (the dSprites family) also have ``num_factors``,
  ``factor_sizes``, ``factor_names``, ``sample_factors(n, rng) -> (n, K) int`` and
  ``observations(factors) -> (n, *shape) float32``: see :func:`has_ground_truth`.
  """

  name: str
  kind: str
  shape: tuple[int, ...]
  value_range: tuple[float, float] | None

  def batch(self, index: int) -> np.ndarray | dict[str, np.ndarray]:
    """This process's rows of global batch ``index``: ``(B / num_processes, *shape)`` float32
    (or the labelled dict above)."""
    ...

  def reference(self, n: int) -> np.ndarray | None:
    """``n`` held-out real examples (the same on every process), or None if there are none."""
    ...


POINT_DATASETS = tuple(toy.DISTRIBUTIONS)
IMAGE_DATASETS = tuple(images.IMAGE_DATASETS) + dsprites.DATASETS
GROUND_TRUTH_DATASETS = dsprites.DATASETS
GROUND_TRUTH_ATTRIBUTES = (
  "num_factors",
  "factor_sizes",
  "factor_names",
  "sample_factors",
  "observations",
)


def _unknown(name: str) -> UserError:
  known = ", ".join(POINT_DATASETS + IMAGE_DATASETS)
  return UserError(f"unknown dataset {name!r}; known datasets: {known}")


def example_shape(config) -> tuple[int, ...]:
  """The shape of one example of ``config.dataset.name``, without opening the data."""
  name = config.dataset.name
  if name in toy.DISTRIBUTIONS:
    return toy.ToyDataset.shape
  if name in images.IMAGE_DATASETS:
    return images.IMAGE_DATASETS[name][0]
  if name in dsprites.DATASETS:
    return dsprites.IMAGE_SHAPE
  raise _unknown(name)


def value_range(config) -> tuple[float, float] | None:
  """The ``value_range`` of ``config.dataset.name`` (see :class:`Dataset`), without opening it."""
  name = config.dataset.name
  if name in toy.DISTRIBUTIONS:
    return None
  if name in images.IMAGE_DATASETS:
    return images.VALUE_RANGE
  if name in dsprites.DATASETS:
    return dsprites.VALUE_RANGE
  raise _unknown(name)


def num_classes(config) -> int | None:
  """The label classes the dataset of ``config`` yields (None without ``dataset.labels``), without
  opening the data.

  Raises:
    UserError: ``dataset.labels`` is True for a dataset without labels.
  """
  name = config.dataset.name
  if not config.dataset.get("labels", False):
    return None
  if name in images.NUM_CLASSES:
    return images.NUM_CLASSES[name]
  example_shape(config)  # Raises the unknown-dataset error.
  labelled = ", ".join(images.NUM_CLASSES)
  raise UserError(
    f"dataset.labels=True but dataset {name!r} has no labels (labelled datasets: {labelled})"
  )


def has_ground_truth(dataset) -> bool:
  """Does ``dataset`` have the ground-truth factor interface the disentanglement metrics use?"""
  return all(hasattr(dataset, a) for a in GROUND_TRUTH_ATTRIBUTES)


def create(config, global_batch_size: int) -> Dataset:
  """The dataset named by ``config.dataset.name``: toy sets and procedural dSprites in-process,
  images and the dSprites file from TFDS."""
  name = config.dataset.name
  labels = num_classes(config) is not None  # Raises if labels are asked of an unlabelled set.
  if config.dataset.get("random_flip", False) and name not in images.IMAGE_DATASETS:
    raise UserError(f"dataset.random_flip needs an image dataset (mnist, cifar10), got {name!r}")
  if name in toy.DISTRIBUTIONS:
    return toy.ToyDataset(name, global_batch_size, seed=config.seed)
  if name in images.IMAGE_DATASETS:
    return images.TfdsImageDataset(
      name,
      global_batch_size,
      seed=config.seed,
      data_dir=config.dataset.data_dir or None,
      split=config.dataset.split,
      eval_split=config.dataset.eval_split,
      labels=labels,
      random_flip=config.dataset.get("random_flip", False),
    )
  if name == "dsprites":
    return dsprites.DSprites(
      name, global_batch_size, seed=config.seed, data_dir=config.dataset.data_dir or None
    )
  if name in dsprites.DATASETS:
    return dsprites.ProceduralDSprites(name, global_batch_size, seed=config.seed)
  return example_shape(config)  # Raises the unknown-dataset error.


def reseeded(dataset, seed: int):
  """``dataset`` as the run of ``seed`` sees it: the same examples in memory (nothing is read or
  rendered again), its batch order and its held-out reference draws those of ``seed``.

  The training order of every dataset here is a function of its ``seed`` (the toy sets draw
  from it, the others shuffle by it through ``_rows``), and so is the choice of reference
  examples where there is one to make.
  """
  if int(seed) == int(dataset.seed):
    return dataset
  clone = copy.copy(dataset)
  clone.seed = int(seed)
  if hasattr(dataset, "rows_for_seed"):
    clone._rows = dataset.rows_for_seed(seed)
  return clone


class StepIterator:
  """Yields the real data of consecutive train steps; its state is the next step number.

  Each step consumes ``batches_per_step`` consecutive global batches (a GAN with
  ``n_critic=5`` uses 5), stacked to ``(batches_per_step, B_local, *shape)``; dict batches are
  stacked leafwise (``{"image": (k, B_local, H, W, C), "label": (k, B_local)}``).
  """

  def __init__(self, dataset: Dataset, batches_per_step: int, step: int = 0):
    self.dataset = dataset
    self.batches_per_step = batches_per_step
    self.step = step

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray | dict[str, np.ndarray]:
    k = self.batches_per_step
    batches = [self.dataset.batch(self.step * k + i) for i in range(k)]
    if isinstance(batches[0], dict):
      out = {key: np.stack([b[key] for b in batches]) for key in batches[0]}
    else:
      out = np.stack(batches)
    self.step += 1
    return out

  def get_state(self) -> dict:
    return {"step": int(self.step), "dataset": self.dataset.name}

  def set_state(self, state: dict) -> None:
    if state.get("dataset") != self.dataset.name:
      raise UserError(
        f"checkpoint data state is for dataset {state.get('dataset')!r}, "
        f"config says {self.dataset.name!r}"
      )
    self.step = int(state["step"])
