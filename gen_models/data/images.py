"""Image datasets read with ``tfds.data_source`` (array_record, no TensorFlow) and grain.

Examples are shuffled by ``grain.MapDataset.shuffle`` (a new permutation each epoch), mapped to
float32 in ``[-1, 1]`` (``x / 127.5 - 1``) and, for MNIST, zero-padded from 28×28 to 32×32 (2
pixels each side, as DCGAN-style 32×32 nets expect). Global batch ``i`` holds shuffled examples
``[i·B, (i+1)·B)``; process ``p`` reads rows ``[p·B/P, (p+1)·B/P)`` of it.
"""

from __future__ import annotations

import grain
import numpy as np

from gen_models.errors import UserError

VALUE_RANGE = (-1.0, 1.0)  # Model-space pixel values (``x / 127.5 - 1``).

# name -> (example shape after preprocessing, spatial zero padding per side)
IMAGE_DATASETS = {
  "mnist": ((32, 32, 1), 2),
  "cifar10": ((32, 32, 3), 0),
}


def open_source(name: str, split: str, data_dir: str | None):
  """``tfds.data_source(name, split)`` or a one-line error that says how to prepare it."""
  import tensorflow_datasets as tfds  # Imported here: toy runs need no TFDS at all.

  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises several types for "not prepared"; all mean the same here.
    where = data_dir or "~/tensorflow_datasets (or $TFDS_DATA_DIR)"
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(
      f"dataset {name!r} split {split!r} is not prepared in {where} ({reason}). Prepare it once, "
      f"on a machine with internet: pip install tensorflow tensorflow-datasets && "
      f"tfds build {name} --file_format=array_record --data_dir=DIR, "
      f"then pass --config.dataset.data_dir=DIR"
    ) from None


def _preprocess(pad: int):
  def fn(record) -> np.ndarray:
    x = np.asarray(record["image"], np.float32) / 127.5 - 1.0
    if pad:
      x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)
    return x

  return fn


class TfdsImageDataset:
  """Random-access shuffled image batches from a prepared TFDS dataset."""

  kind = "images"
  value_range = VALUE_RANGE

  def __init__(
    self,
    name: str,
    global_batch_size: int,
    seed: int,
    data_dir: str | None,
    split: str = "train",
    eval_split: str = "test",
  ):
    import jax

    self.name = name
    self.shape, pad = IMAGE_DATASETS[name]
    self._preprocess = _preprocess(pad)
    self._data_dir, self._eval_split = data_dir, eval_split
    source = open_source(name, split, data_dir)
    self._num_processes, self._process = jax.process_count(), jax.process_index()
    local = global_batch_size // self._num_processes
    self._batches = (
      grain.MapDataset.source(source)
      .shuffle(seed=seed)
      .repeat()
      .map(self._preprocess)
      .batch(local, drop_remainder=True)
    )

  def batch(self, index: int) -> np.ndarray:
    return self._batches[index * self._num_processes + self._process]

  def reference(self, n: int) -> np.ndarray:
    source = open_source(self.name, self._eval_split, self._data_dir)
    n = min(n, len(source))
    return np.stack([self._preprocess(source[i]) for i in range(n)])


def to_uint8(x: np.ndarray, value_range: tuple[float, float] = VALUE_RANGE) -> np.ndarray:
  """Model-space images with values in ``value_range = (low, high)`` → uint8 ``[0, 255]``: ``low``
  → 0, ``high`` → 255, linear in between, rounded to nearest, clipped."""
  low, high = value_range
  scaled = (np.asarray(x) - low) * (255.0 / (high - low))  # For [-1, 1]: (x + 1) · 127.5.
  return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
