"""Image datasets read with ``tfds.data_source`` (array_record, no TensorFlow) and grain.

Examples are shuffled as by ``grain.MapDataset.shuffle`` (a new permutation each epoch;
:mod:`gen_models.data.order`), mapped to
float32 in ``[-1, 1]`` (``x / 127.5 - 1``) and, for MNIST, zero-padded from 28×28 to 32×32 (2
pixels each side, as DCGAN-style 32×32 nets expect). Global batch ``i`` holds shuffled examples
``[i·B, (i+1)·B)``; process ``p`` reads rows ``[p·B/P, (p+1)·B/P)`` of it. With ``labels=True`` a
batch is ``{"image": (B, H, W, C) float32, "label": (B,) int32}``. ``random_flip`` mirrors
training images left-right, each by a seeded coin of its stream position.

The training split is read once, when the dataset is made, into one uint8 array (CIFAR-10: 150
MB, MNIST: 47 MB): reading and parsing a record costs ~0.3 ms, so 64 records per batch capped a
WGAN-GP step (5 batches) at about 10 steps/s, far below what an accelerator runs
(``python -m experiments.bench.input``, docs/BENCHMARKS.md). The batches are the same arrays,
in the same order, as reading each record through grain: only the time differs.

Where the examples come from (:func:`open_source`): the TFDS dataset ``gen_models_<name>`` that
``python -m experiments.prepare_data <name>`` wrote (:mod:`gen_models.data.archives`) if the data
dir has one, else TFDS's own ``<name>`` (``tfds build``, or ``tfds.testing.mock_data`` in tests).
Both hold the same images, labels, splits and order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gen_models.data import order
from gen_models.errors import UserError, first_line

VALUE_RANGE = (-1.0, 1.0)  # Model-space pixel values (``x / 127.5 - 1``).

# name -> (example shape after preprocessing, spatial zero padding per side)
IMAGE_DATASETS = {
  "mnist": ((32, 32, 1), 2),
  "cifar10": ((32, 32, 3), 0),
}
NUM_CLASSES = {"mnist": 10, "cifar10": 10}
PREPARED_PREFIX = "gen_models_"  # prepare_data writes dataset ``name`` as ``gen_models_<name>``.
# name -> what prepare_data's --source is (for the not-prepared error).
SOURCES = {
  "mnist": "the folder of the four IDX .gz files",
  "cifar10": "cifar-10-binary.tar.gz",
}


def not_prepared(name: str, where: str, reason: str) -> UserError:
  """The one-line "dataset not prepared" error: prepare_data first, ``tfds build`` second."""
  return UserError(
    f"dataset {name!r} is not prepared in {where} ({reason}). Convert the original files once: "
    f"python -m experiments.prepare_data {name} --source=PATH --data_dir=DIR (PATH: "
    f"{SOURCES[name]}), then pass --config.dataset.data_dir=DIR; or, with TensorFlow: "
    f"tfds build {name} --file_format=array_record --data_dir=DIR"
  )


def open_source(name: str, split: str, data_dir: str | None):
  """Split ``split`` of ``gen_models_<name>`` (prepared by ``prepare_data``) if ``data_dir`` has
  it, else of TFDS's ``name``; or the one-line error that says how to prepare it."""
  import tensorflow_datasets as tfds  # Imported here: toy runs need no TFDS at all.

  where = data_dir or "~/tensorflow_datasets (or $TFDS_DATA_DIR)"
  prepared = PREPARED_PREFIX + name
  try:
    return tfds.data_source(prepared, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    pass  # No prepared copy: TFDS's own dataset (a `tfds build` directory, or its mock) next.
  except Exception as e:  # A prepared copy that cannot be read (e.g. no such split).
    raise not_prepared(name, where, f"{prepared} split {split!r}: {first_line(e)}") from None
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises several types for "not prepared"; all mean the same here.
    reason = f"no {prepared}; {name} split {split!r}: {first_line(e)}"
    raise not_prepared(name, where, reason) from None


def to_model_space(images: np.ndarray, pad: int) -> np.ndarray:
  """uint8 images ``(n, H, W, C)`` → float32 ``x / 127.5 − 1`` in ``[-1, 1]``, zero (-1) padded by
  ``pad`` pixels on each side: ``(n, H + 2·pad, W + 2·pad, C)``."""
  x = np.asarray(images).astype(np.float32) / 127.5 - 1.0
  if pad:
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)
  return x


def read_split(source, labels: bool, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray | None]:
  """Every record of ``source`` (a TFDS data source of ``{"image", "label"}`` records) in order:
  ``(images (N, H, W, C) uint8, labels (N,) int64 or None)``, read ``chunk`` records at a time."""
  n = len(source)
  if n == 0:
    raise UserError("the prepared split has no examples")
  first = np.asarray(source[0]["image"])
  images = np.empty((n, *first.shape), np.uint8)
  out_labels = np.empty((n,), np.int64) if labels else None
  for start in range(0, n, chunk):
    keys = list(range(start, min(n, start + chunk)))
    try:
      records = source.__getitems__(keys)  # One batched array_record read.
    except (AttributeError, TypeError):  # tfds.testing.mock_data's sources: one at a time.
      records = [source[i] for i in keys]
    for i, record in zip(keys, records, strict=True):
      images[i] = record["image"]
      if out_labels is not None:
        out_labels[i] = record["label"]
  return images, out_labels


class TfdsImageDataset:
  """Random-access shuffled image batches from a prepared TFDS dataset.

  Attributes:
    num_classes: the number of label classes when made with ``labels=True``, else None.
  """

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
    labels: bool = False,
    random_flip: bool = False,
  ):
    self.name = name
    self.random_flip = random_flip
    self.shape, self._pad = IMAGE_DATASETS[name]
    self.num_classes = NUM_CLASSES[name] if labels else None
    self._data_dir, self._eval_split = data_dir, eval_split
    order.check_seed(seed)  # Before reading anything.
    source = open_source(name, split, data_dir)
    self._images, self._labels = read_split(source, labels)
    self.seed, self.global_batch_size = seed, global_batch_size
    # grain's MapDataset.source(source).shuffle(seed).repeat().batch(B_local) order.
    self._rows = order.ProcessBatches(len(self._images), global_batch_size, seed)

  def rows_for_seed(self, seed: int) -> order.ProcessBatches:
    """``index -> (B_local,)`` example indices of the training order of ``seed``."""
    return order.ProcessBatches(len(self._images), self.global_batch_size, seed)

  def table(self) -> dict[str, np.ndarray]:
    """The training split as stored: ``{"image": (N, H, W, C) uint8[, "label": (N,) int32]}``."""
    out = {"image": self._images}
    if self._labels is not None:
      out["label"] = self._labels.astype(np.int32)
    return out

  def decode(self, rows: dict) -> jax.Array | dict[str, jax.Array]:
    """Rows of :meth:`table` (leading axes ``(...)``) → the batch form of :meth:`batch`, on the
    device: images ``(..., H + 2·pad, W + 2·pad, C)`` float32 as :func:`to_model_space`."""
    # A lookup of to_model_space's own 256 values: bit for bit the host's float32 x / 127.5 − 1
    # (XLA may compute the division as a multiplication, 1 ulp off).
    x = jnp.asarray(to_model_space(np.arange(256, dtype=np.uint8), 0))[rows["image"]]
    if self._pad:
      p = self._pad
      x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(p, p), (p, p), (0, 0)], constant_values=-1.0)
    if "label" not in rows:
      return x
    return {"image": x, "label": rows["label"]}

  def batch(self, index: int) -> np.ndarray | dict[str, np.ndarray]:
    """This process's rows of global batch ``index``: ``(B_local, H, W, C)`` float32, or with
    labels ``{"image": (B_local, H, W, C) float32, "label": (B_local,) int32}``. With
    ``random_flip`` the example at flat stream position ``t`` is mirrored left-right when
    ``order.flips(seed, t)``: the same batches on any process count and on resume."""
    rows = self._rows(index)
    images = to_model_space(self._images[rows], self._pad)
    if self.random_flip:
      b = len(rows)
      flip = order.flips(self.seed, self._rows.local(index) * b + np.arange(b))
      images[flip] = images[flip, :, ::-1]
    if self._labels is None:
      return images
    return {"image": images, "label": self._labels[rows].astype(np.int32)}

  def reference(self, n: int) -> np.ndarray:
    """The first ``min(n, size)`` examples of the eval split, images only: ``(n, H, W, C)``."""
    source = open_source(self.name, self._eval_split, self._data_dir)
    n = min(n, len(source))
    return to_model_space(np.stack([source[i]["image"] for i in range(n)]), self._pad)


def to_uint8(
  x: np.ndarray, value_range: tuple[float, float] = VALUE_RANGE, quantization: str = "nearest"
) -> np.ndarray:
  """Model-space images with values in ``value_range = (low, high)`` → uint8 ``[0, 255]``.

  ``"nearest"``: ``low`` → 0, ``high`` → 255, linear in between, rounded to nearest, clipped.
  ``"wgan_gp"``: the WGAN-GP code's Inception input (gan_cifar_resnet.py's
  ``((x + 1)·(255.99/2)).astype('int32')``): ``⌊(x − low)·255.99/(high − low)⌋``, clipped, which
  truncates instead of rounding (``high`` → 255, and every level is 1/256 of the range wide)."""
  low, high = value_range
  if quantization == "wgan_gp":
    scaled = np.floor((np.asarray(x, np.float64) - low) * (255.99 / (high - low)))
    return np.clip(scaled, 0, 255).astype(np.uint8)
  if quantization != "nearest":
    raise ValueError(f"unknown quantization {quantization!r}; known: nearest, wgan_gp")
  scaled = (np.asarray(x) - low) * (255.0 / (high - low))  # For [-1, 1]: (x + 1) · 127.5.
  return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
