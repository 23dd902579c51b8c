r"""MNIST and CIFAR-10 from their original archives into the files :mod:`.images` reads.

``python -m experiments.prepare_data {mnist,cifar10} --source=PATH --data_dir=DIR`` calls
:func:`prepare_mnist` / :func:`prepare_cifar10`; they write the TFDS datasets ``gen_models_mnist``
and ``gen_models_cifar10`` (:func:`gen_models.data.prepare.write`: ``tfds.features.Tensor``
features ``image`` uint8 ``(H, W, C)`` and ``label`` int64, array_record, no TensorFlow).

What ``tfds build mnist`` / ``tfds build cifar10`` would give (TFDS 4.9 builders
``image_classification/mnist.py`` 3.0.1 and ``cifar.py`` 3.0.2, read for these facts):

* splits ``train`` and ``test``; MNIST 60,000 / 10,000 examples, CIFAR-10 50,000 / 10,000;
* example ``i`` of a split (``data_batch_1..5.bin`` concatenated for CIFAR-10's train split) has
  key ``i``; TFDS's writer orders each split by ``md5(split_name + str(i))`` (the builders do not
  disable shuffling), so the prepared files, written by the same writer with the same keys and
  split names, hold the examples in ``tfds build``'s order;
* ``image`` is the archive's pixels unchanged (CIFAR-10's channel-major R, G, B planes transposed
  to ``(32, 32, 3)``), ``label`` the archive's label byte.

TFDS stores its images PNG-encoded (``tfds.features.Image``) and CIFAR-10 also an ``id`` text
(``"train_00042"``); here images are raw uint8 tensors and there is no ``id``. Decoded examples
(``image``, ``label``) are the same.

Formats read (both checked; any deviation is a one-line :class:`UserError`):

* MNIST (yann.lecun.com/exdb/mnist): four gzip files ``train-images-idx3-ubyte.gz``,
  ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``.
  IDX: big-endian int32 magic ``0x00000803`` (images: uint8, 3 dimensions) or ``0x00000801``
  (labels: uint8, 1 dimension), the dimensions as big-endian int32, then the uint8 data.
* CIFAR-10 (cs.toronto.edu/~kriz/cifar.html): ``cifar-10-binary.tar.gz`` with
  ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and ``test_batch.bin``, each a sequence of
  3,073-byte records: 1 label byte (0-9) + 3,072 pixel bytes (1,024 R, then G, then B, row-major
  32 × 32).
"""

from __future__ import annotations

import gzip
import os
import tarfile
import zlib

import numpy as np

from gen_models.data import images
from gen_models.data import prepare as prepare_lib
from gen_models.errors import UserError

VERSION = "1.0.0"  # Of the prepared files.
NUM_CLASSES = 10
MNIST_FILES = {  # split -> (images file, labels file)
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 0x00000803, 0x00000801
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_FILES = {
  "train": tuple(f"data_batch_{k}.bin" for k in range(1, 6)),
  "test": ("test_batch.bin",),
}
CIFAR10_RECORD = 1 + 3 * 32 * 32


# ---------------------------------------------------------------------------------------------
# MNIST.


def _gunzip(path: str) -> bytes:
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist")
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise UserError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def read_idx(path: str, magic: int) -> np.ndarray:
  """The uint8 array of a gzipped IDX file whose magic number must be ``magic``.

  Returns:
    ``(n, rows, cols)`` for images (magic ``0x803``), ``(n,)`` for labels (``0x801``).

  Raises:
    UserError: missing or not gzip, another magic number, or data of the wrong length.
  """
  raw = _gunzip(path)
  ndim = magic & 0xFF  # The magic's last byte: the number of dimensions.
  header = 4 + 4 * ndim
  got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
  if got != magic:
    got = "missing" if got is None else f"{got:#010x}"
    raise UserError(f"{path}: IDX magic number {got}, expected {magic:#010x}")
  if len(raw) < header:
    raise UserError(f"{path}: {len(raw)} bytes, shorter than the {header}-byte IDX header")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
  size = int(np.prod(shape))
  if len(raw) - header != size:
    raise UserError(
      f"{path}: {len(raw) - header} data bytes, expected {size} for dimensions {shape} "
      f"(truncated or corrupt)"
    )
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_mnist(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """split -> ``(images (n, 28, 28, 1) uint8, labels (n,) int64)`` of the four IDX files in
  ``folder``, in file order.

  Raises:
    UserError: a missing or malformed file (see :func:`read_idx`), 28 × 28 images, labels in
      0-9 and as many labels as images.
  """
  if not os.path.isdir(folder):
    raise UserError(
      f"--source={folder} is not a folder (expected the folder of the four MNIST files: "
      f"{', '.join(f for pair in MNIST_FILES.values() for f in pair)})"
    )
  out = {}
  for split, (images_file, labels_file) in MNIST_FILES.items():
    images = read_idx(os.path.join(folder, images_file), IDX_IMAGES_MAGIC)
    labels = read_idx(os.path.join(folder, labels_file), IDX_LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
      raise UserError(f"{images_file}: images of {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
      raise UserError(f"{images_file} has {len(images)} images but {labels_file} {len(labels)}")
    if labels.size and labels.max() >= NUM_CLASSES:
      raise UserError(f"{labels_file}: label {labels.max()} outside 0-{NUM_CLASSES - 1}")
    out[split] = (images[..., None], labels.astype(np.int64))
  return out


# ---------------------------------------------------------------------------------------------
# CIFAR-10.


def decode_cifar10(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
  """``(images (n, 32, 32, 3) uint8, labels (n,) int64)`` of one binary batch's bytes.

  Raises:
    UserError: a length that is not a whole number of 3,073-byte records, or a label above 9.
  """
  if len(raw) % CIFAR10_RECORD:
    raise UserError(
      f"{name}: {len(raw)} bytes is not a whole number of {CIFAR10_RECORD}-byte records "
      f"(truncated or corrupt)"
    )
  records = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR10_RECORD)
  labels = records[:, 0].astype(np.int64)
  if labels.size and labels.max() >= NUM_CLASSES:
    raise UserError(f"{name}: label {labels.max()} outside 0-{NUM_CLASSES - 1}")
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # Planes → (H, W, C).
  return np.ascontiguousarray(images), labels


def read_cifar10(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """split -> ``(images (n, 32, 32, 3) uint8, labels (n,) int64)`` of ``cifar-10-binary.tar.gz``;
  the train split is ``data_batch_1..5.bin`` concatenated, in file order.

  Raises:
    UserError: missing, not a gzipped tar, a missing batch file, or a malformed batch.
  """
  if not os.path.isfile(path):
    raise UserError(f"--source={path} does not exist (expected cifar-10-binary.tar.gz)")
  out = {}
  try:
    with tarfile.open(path, "r:gz") as tar:
      for split, files in CIFAR10_FILES.items():
        parts = []
        for file in files:
          member = f"{CIFAR10_DIR}/{file}"
          try:
            raw = tar.extractfile(member)
          except KeyError:
            raw = None
          if raw is None:
            raise UserError(f"{path}: no file {member} in the archive")
          parts.append(decode_cifar10(raw.read(), member))
        out[split] = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise UserError(f"cannot read {path}: {type(e).__name__}: {e}") from None
  return out


# ---------------------------------------------------------------------------------------------
# Conversion.


def prepared_name(name: str) -> str:
  """``gen_models_<name>``: the TFDS name :func:`.images.open_source` looks for first."""
  return images.PREPARED_PREFIX + name


def image_spec(name: str, arrays: dict, image_shape: tuple[int, ...], homepage: str):
  """The :class:`gen_models.data.prepare.Spec` of image dataset ``name`` (``"mnist"`` or
  ``"cifar10"``) from ``arrays``: split -> ``(images (n, *image_shape) uint8, labels (n,) int)``,
  keys and order as TFDS's own builder."""

  def split_examples(split):
    def generate():
      images, labels = arrays[split]
      for i in range(len(images)):  # Key i, as TFDS's builder: the writer's hash gives its order.
        yield i, {"image": images[i], "label": labels[i]}

    return generate

  return prepare_lib.Spec(
    name=prepared_name(name),
    version=VERSION,
    description=f"{name} from its original archive, converted by gen_models without TensorFlow "
    f"(the images, labels, splits and order of tfds build {name}).",
    features={"image": (image_shape, np.uint8), "label": ((), np.int64)},
    splits={split: split_examples(split) for split in arrays},
    shuffle=True,  # As TFDS's own builder: the order of `tfds build`.
    metadata={"num_classes": NUM_CLASSES},
    homepage=homepage,
  )


def prepare_mnist(source: str, data_dir: str) -> str:
  """Converts the folder ``source`` of the four MNIST IDX files; returns the written directory
  (``data_dir/gen_models_mnist/1.0.0``). Raises :class:`UserError` on any bad input."""
  prepare_lib.ensure_new(prepared_name("mnist"), VERSION, data_dir)
  arrays = read_mnist(source)
  return prepare_lib.write(
    image_spec("mnist", arrays, (28, 28, 1), "http://yann.lecun.com/exdb/mnist/"), data_dir
  )


def prepare_cifar10(source: str, data_dir: str) -> str:
  """Converts ``cifar-10-binary.tar.gz``; returns the written directory
  (``data_dir/gen_models_cifar10/1.0.0``). Raises :class:`UserError` on any bad input."""
  prepare_lib.ensure_new(prepared_name("cifar10"), VERSION, data_dir)
  arrays = read_cifar10(source)
  homepage = "https://www.cs.toronto.edu/~kriz/cifar.html"
  return prepare_lib.write(image_spec("cifar10", arrays, (32, 32, 3), homepage), data_dir)
