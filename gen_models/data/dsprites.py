r"""dSprites (Matthey et al. 2017): the original file, or the same factor grid rendered in-process.

Factors (the original file's colour factor has one value and is dropped), posY varying fastest:

=========== ======= ================================================
factor      classes values (as in the file's ``latents_values``)
=========== ======= ================================================
shape       3       1 square, 2 ellipse, 3 heart
scale       6       ``linspace(0.5, 1, 6)``
orientation 40      ``linspace(0, 2π, 40)`` (classes 0 and 39 draw the same image)
pos_x       32      ``linspace(0, 1, 32)``
pos_y       32      ``linspace(0, 1, 32)``
=========== ======= ================================================

737,280 binary 64×64 images. Every dataset here yields float32 ``(64, 64, 1)`` images with values
in {0, 1} (``value_range = (0.0, 1.0)``) and exposes the ground truth that the disentanglement
metrics need: ``num_factors``, ``factor_sizes``, ``factor_names``, ``sample_factors(n, rng)`` and
``observations(factors)``.

Three datasets (``config.dataset.name``):

* ``dsprites``: the original ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``, converted once by
  ``python -m experiments.prepare_data dsprites --source=FILE.npz --data_dir=DIR`` (:func:`prepare`)
  into array_record files (:mod:`gen_models.data.prepare`: TFDS dataset ``gen_models_dsprites``,
  ``tfds.features.Tensor`` features, examples in the file's order; no TensorFlow) and read with
  ``tfds.data_source``.
* ``dsprites_procedural``: the same factor grid, each image rendered on demand by :func:`render`
  (no file, random access by index, deterministic: float64 numpy arithmetic).
* ``dsprites_procedural_smoke``: a 384-image sub-grid of the procedural one for tests (shape 3 ×
  scale {0.5, 1} × orientation classes {0, 10, 20, 30} × pos classes {0, 10, 21, 31}²).

How close the rendering is to the original
-------------------------------------------
The file's author (dsprites-dataset issue #2, #3) drew the shapes as vectors in Love2D on a canvas
of size 1 × 1 (square: ``love.graphics.rectangle``, ellipse: ``love.graphics.ellipse``, heart: a
custom vertex mesh), placed, scaled and rotated by Love2D's draw transform, and rasterised them at
64 × 64 without antialiasing; the jagged edges of rotated shapes are such rasterisation
artefacts. The procedural
renderer does the same in kind: one binary sample at each pixel centre (the OpenGL rule for filled
polygons) of an exactly defined shape. It is *the same grid of factors with the same meaning, not
the same pixels*; where it differs:

* Sizes and the position range are this module's choices, not measured from the file (the file
  was not available here): the sprite centre moves over ``0.25 + 0.5·pos`` of the canvas (pixels
  16 to 48), the square's side is ``0.32·scale`` (20.5 px at scale 1), the ellipse's axes are
  ``0.4·scale × 0.2·scale``, the heart is ``0.34·scale`` wide.
* The ellipse is exact (Love2D draws a polygon); the heart is the algebraic curve
  ``(x² + y² − 1)³ = x² y³``, not the author's mesh.
* Rotation is counter-clockwise on screen about the bounding-box centre; the file's direction and
  centre of rotation for the heart are not documented.
* As in the file, a square looks the same every 90° and an ellipse every 180°, so orientation is
  not identifiable from those images; class 39 (2π) draws exactly the image of class 0.

The two have not been compared pixel by pixel here (no copy of the file on these machines);
``tests/test_dsprites.py`` checks the renderer against exact pixel counts, its rotation against
``np.rot90`` and the converted-file path against the renderer on a small npz of the same layout.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from gen_models.data import order
from gen_models.data import prepare as prepare_lib
from gen_models.errors import UserError, first_line

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
IMAGE_SHAPE = (64, 64, 1)
VALUE_RANGE = (0.0, 1.0)
TFDS_NAME = "gen_models_dsprites"  # Not "dsprites": that name is TFDS's own (Image features).
VERSION = "1.0.0"  # Of the prepared files.
DATASETS = ("dsprites", "dsprites_procedural", "dsprites_procedural_smoke")
REFERENCE_STREAM = 1


def full_grid_values() -> tuple[np.ndarray, ...]:
  """The value of every class of every factor, as in the original file's ``latents_values``."""
  return (
    np.array([1.0, 2.0, 3.0]),
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2 * math.pi, 40),
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
  )


# Classes of the full grid kept in the smoke grid, per factor.
SMOKE_CLASSES = ((0, 1, 2), (0, 5), (0, 10, 20, 30), (0, 10, 21, 31), (0, 10, 21, 31))


def smoke_grid_values() -> tuple[np.ndarray, ...]:
  return tuple(v[list(c)] for v, c in zip(full_grid_values(), SMOKE_CLASSES, strict=True))


# ---------------------------------------------------------------------------------------------
# Rendering.

_CENTRE_LOW, _CENTRE_SPAN = 0.25, 0.5  # Sprite centre = 0.25 + 0.5·pos (canvas units).
_SQUARE_HALF = 0.16  # Half the square's side at scale 1.
_ELLIPSE_AXES = (0.2, 0.1)  # Semi-axes at scale 1 (horizontal, vertical at orientation 0).
# The heart (x² + y² − 1)³ ≤ x² y³ spans x ∈ [−1.1390, 1.1390], y ∈ [−1, 1.2366] (y up); it is
# shifted to centre its bounding box and scaled to 0.34 wide at scale 1.
_HEART_HALF_WIDTH, _HEART_Y_CENTRE = 1.1390, 0.1183
_HEART_UNIT = 0.17 / _HEART_HALF_WIDTH  # Canvas units per heart-curve unit at scale 1.


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  return (u / _ELLIPSE_AXES[0]) ** 2 + (v / _ELLIPSE_AXES[1]) ** 2 <= 1.0


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  x, y = u / _HEART_UNIT, v / _HEART_UNIT + _HEART_Y_CENTRE
  x2 = x * x
  return (x2 + y * y - 1.0) ** 3 <= x2 * y**3


# Sprite-frame (scale 1, y up) membership tests of shapes 1, 2, 3.
_INSIDE = {1: _square, 2: _ellipse, 3: _heart}
# Every sprite lies within 15.3 px of its centre (the heart's farthest point; the rotated square's
# corner is at 14.5 px), so a 34-px window around the centre pixel holds all of it.
_WINDOW, _WINDOW_BEFORE = 34, 16


def render(values: np.ndarray, size: int = 64, window: bool = True) -> np.ndarray:
  """Binary sprites of the given factor values.

  Args:
    values: ``(n, 5)`` float64 ``(shape 1|2|3, scale, orientation in radians, pos_x, pos_y)``,
      as in the original file's ``latents_values`` without colour.
    size: image height and width in pixels (64 for dSprites).
    window: evaluate only the 34 × 34 pixels around each sprite's centre (the same result as
      testing every pixel, about 4× faster; ``size`` must be 64).

  Returns:
    ``(n, size, size)`` bool: pixel ``[r, c]`` is on when its centre
    ``((c + ½)/size, (r + ½)/size)`` (canvas units, y down) lies inside the shape. A pure function
    of ``values``.
  """
  values = np.asarray(values, np.float64)
  if values.ndim != 2 or values.shape[1] != 5:
    raise ValueError(f"values must be (n, 5), got {values.shape}")
  shape = np.rint(values[:, 0]).astype(np.int64)
  if not np.all(np.isin(shape, (1, 2, 3))):
    raise ValueError("shape values must be 1 (square), 2 (ellipse) or 3 (heart)")
  n = len(values)
  centre_x = _CENTRE_LOW + _CENTRE_SPAN * values[:, 3]  # Canvas units.
  centre_y = _CENTRE_LOW + _CENTRE_SPAN * values[:, 4]  # Canvas units, y down.
  if window:
    if size != 64:
      raise ValueError("window=True needs size=64")
    # First pixel row / column of each window, and the window's pixel indices (n, W).
    first_c = np.floor(centre_x * size - 0.5).astype(np.int64) - _WINDOW_BEFORE
    first_r = np.floor(centre_y * size - 0.5).astype(np.int64) - _WINDOW_BEFORE
    cols = first_c[:, None] + np.arange(_WINDOW)
    rows = first_r[:, None] + np.arange(_WINDOW)
  else:
    cols = rows = np.broadcast_to(np.arange(size), (n, size))
  theta = np.mod(values[:, 2], 2 * math.pi)  # 2π → exactly 0: class 39 draws class 0's image.
  cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
  dx = ((cols + 0.5) / size - centre_x[:, None])[:, None, :]  # (n, 1, W)
  dy = (centre_y[:, None] - (rows + 0.5) / size)[:, :, None]  # (n, H, 1), y up
  scale = values[:, 1, None, None]
  inside = np.zeros((n, rows.shape[1], cols.shape[1]), bool)
  for s, test in _INSIDE.items():
    i = np.flatnonzero(shape == s)
    if len(i):  # Inverse rotation by θ, then inverse scaling, then the shape's test.
      u = (dx[i] * cos[i] + dy[i] * sin[i]) / scale[i]
      v = (dy[i] * cos[i] - dx[i] * sin[i]) / scale[i]
      inside[i] = test(u, v)
  if not window:
    return inside
  pad = _WINDOW_BEFORE + 2  # Windows reach at most 17 px past the canvas.
  out = np.zeros((n, size + 2 * pad, size + 2 * pad), bool)
  for k, (r, c) in enumerate(zip((first_r + pad).tolist(), (first_c + pad).tolist(), strict=True)):
    out[k, r : r + _WINDOW, c : c + _WINDOW] = inside[k]
  return out[:, pad:-pad, pad:-pad]


# ---------------------------------------------------------------------------------------------
# The ground-truth interface shared by both datasets.


class GroundTruth:
  """Factor bookkeeping of a full factor grid stored with the last factor varying fastest.

  Attributes:
    factor_names: the ``num_factors`` names.
    factor_sizes: classes per factor.
    num_factors: ``len(factor_sizes)``.
  """

  factor_names = FACTOR_NAMES

  def __init__(self, factor_values: tuple[np.ndarray, ...]):
    self._values = tuple(np.asarray(v, np.float64) for v in factor_values)
    self.factor_sizes = tuple(len(v) for v in self._values)
    self.num_factors = len(self.factor_sizes)
    self.num_examples = math.prod(self.factor_sizes)

  def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` factor-class vectors ``(n, num_factors)`` int64; factors uniform and independent."""
    return rng.integers(0, self.factor_sizes, size=(n, self.num_factors), dtype=np.int64)

  def check_factors(self, factors) -> np.ndarray:
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape[1] != self.num_factors:
      raise ValueError(f"factors must be (n, {self.num_factors}), got {factors.shape}")
    if not np.issubdtype(factors.dtype, np.integer):
      raise ValueError(f"factors must be integer classes, got {factors.dtype}")
    if np.any(factors < 0) or np.any(factors >= np.array(self.factor_sizes)):
      raise ValueError(f"factor classes out of range for sizes {self.factor_sizes}")
    return factors.astype(np.int64)

  def factor_values(self, factors) -> np.ndarray:
    """The values ``(n, num_factors)`` float64 of factor classes ``(n, num_factors)``."""
    factors = self.check_factors(factors)
    return np.stack([v[factors[:, j]] for j, v in enumerate(self._values)], axis=1)

  def index_of(self, factors) -> np.ndarray:
    """Example indices ``(n,)`` of factor classes ``(n, num_factors)`` (last factor fastest)."""
    return np.ravel_multi_index(tuple(self.check_factors(factors).T), self.factor_sizes)

  def factors_of(self, index) -> np.ndarray:
    """Factor classes ``(n, num_factors)`` int64 of example indices ``(n,)``."""
    return np.stack(np.unravel_index(np.asarray(index), self.factor_sizes), axis=-1).astype(
      np.int64
    )


def _reference_indices(num_examples: int, n: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(np.random.SeedSequence([seed, REFERENCE_STREAM]))
  return np.sort(rng.choice(num_examples, size=min(n, num_examples), replace=False))


class _Gathered:
  """The device-side reading of a dSprites ``table()`` (packed bits) and its training order."""

  def rows_for_seed(self, seed: int) -> order.ProcessBatches:
    """``index -> (B_local,)`` example indices of the training order of ``seed``."""
    return order.ProcessBatches(self.num_examples, self.global_batch_size, seed)

  def decode(self, rows: dict) -> jax.Array:
    """Packed rows ``(..., 64, 8)`` uint8 → images ``(..., 64, 64, 1)`` float32 in {0, 1}."""
    return jnp.unpackbits(rows["bits"], axis=-1)[..., None].astype(jnp.float32)


class ProceduralDSprites(_Gathered, GroundTruth):
  """dSprites rendered in-process (``dsprites_procedural``, ``dsprites_procedural_smoke``).

  ``batch(i)`` is this process's rows of global batch ``i`` of grain's seeded per-epoch shuffle
  of the grid (as the image datasets); ``reference(n)`` is ``n`` distinct grid images chosen by
  ``(seed, REFERENCE_STREAM)`` (dSprites has no test split).

  Each image is rendered once, the first time it is asked for, and kept as packed bits (512
  bytes an image: 377 MB for the whole grid): after the first epoch a batch costs its shuffle
  indices and an unpacking (~0.5 ms), not the ~2 ms of rendering 64 sprites. The images are the
  same either way (:func:`render` is a pure function of the factor values).
  """

  kind = "images"
  shape = IMAGE_SHAPE
  value_range = VALUE_RANGE

  def __init__(self, name: str, global_batch_size: int, seed: int):
    if name not in ("dsprites_procedural", "dsprites_procedural_smoke"):
      raise ValueError(f"not a procedural dSprites name: {name!r}")
    super().__init__(full_grid_values() if name == "dsprites_procedural" else smoke_grid_values())
    self.name, self.seed, self.global_batch_size = name, seed, global_batch_size
    self._rows = order.ProcessBatches(self.num_examples, global_batch_size, seed)
    side = IMAGE_SHAPE[0]
    self._bits = np.zeros((self.num_examples, side, side // 8), np.uint8)
    # Touch every page now, in order (1.2 s for the full grid here): first writes at random
    # places cost ~80 µs a page fault on these VMs, 4× the rendering they would save.
    self._bits.fill(0)
    self._rendered = np.zeros((self.num_examples,), bool)

  def images(self, index) -> np.ndarray:
    """Images ``(n, 64, 64, 1)`` float32 in {0, 1} of example indices ``(n,)``."""
    index = np.asarray(index, np.int64).reshape(-1)
    new = np.unique(index[~self._rendered[index]])
    if len(new):
      self._bits[new] = np.packbits(render(self.factor_values(self.factors_of(new))), axis=-1)
      self._rendered[new] = True
    return np.unpackbits(self._bits[index], axis=-1)[..., None].astype(np.float32)

  def observations(self, factors) -> np.ndarray:
    """The images ``(n, 64, 64, 1)`` float32 in {0, 1} of factor classes ``(n, 5)``."""
    return self.images(self.index_of(factors))

  def batch(self, index: int) -> np.ndarray:
    return self.images(self._rows(index))

  def reference(self, n: int) -> np.ndarray:
    return self.images(_reference_indices(self.num_examples, n, self.seed))

  def table(self) -> dict[str, np.ndarray]:
    """Every grid image as packed bits ``{"bits": (N, 64, 8) uint8}``, rendering the ones not
    yet rendered in blocks of 4096 on a thread per CPU (numpy releases the GIL; the blocks are
    disjoint rows). The full grid takes about a minute of one core here."""
    import concurrent.futures

    missing = np.flatnonzero(~self._rendered)
    blocks = [missing[i : i + 4096] for i in range(0, len(missing), 4096)]
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
      list(pool.map(self.images, blocks))
    return {"bits": self._bits}


# ---------------------------------------------------------------------------------------------
# The original file: conversion and reading.


def _not_prepared(where: str, reason: str) -> UserError:
  return UserError(
    f"dataset 'dsprites' is not prepared in {where} ({reason}). Either convert the original "
    f"file once: python -m experiments.prepare_data dsprites "
    f"--source=dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz --data_dir=DIR, then pass "
    f"--config.dataset.data_dir=DIR; or use --config.dataset.name=dsprites_procedural "
    f"(the same factor grid rendered in-process, no file)"
  )


def open_source(data_dir: str | None):
  """The prepared ``train`` split (``tfds.data_source``), or the one-line not-prepared error."""
  import tensorflow_datasets as tfds

  where = data_dir or "~/tensorflow_datasets (or $TFDS_DATA_DIR)"
  try:
    source = tfds.data_source(TFDS_NAME, split="train", data_dir=data_dir, download=False)
    sizes = tuple(int(s) for s in source.dataset_info.metadata["factor_sizes"])
  except Exception as e:  # TFDS raises several types for "not prepared"; all mean the same here.
    raise _not_prepared(where, first_line(e)) from None
  if len(source) != math.prod(sizes):
    raise _not_prepared(where, f"{len(source)} examples for a factor grid of {sizes}")
  return source, sizes


class DSprites(_Gathered, GroundTruth):
  """The original dSprites images from the files :func:`prepare` wrote (``dsprites``).

  Same batches and reference rule as :class:`ProceduralDSprites`; ``observations`` reads the
  examples of the given factor classes by index and checks their stored classes.
  """

  kind = "images"
  shape = IMAGE_SHAPE
  value_range = VALUE_RANGE

  def __init__(self, name: str, global_batch_size: int, seed: int, data_dir: str | None):
    self._source, sizes = open_source(data_dir)
    values = [np.zeros(s) for s in sizes]  # Filled from the examples' stored values below.
    for j, size in enumerate(sizes):  # Class c of factor j: the example with all others at 0.
      base = math.prod(sizes[j + 1 :])
      for c in range(size):
        values[j][c] = self._source[c * base]["factor_values"][j]
    super().__init__(tuple(values))
    self.name, self.seed, self.global_batch_size = name, seed, global_batch_size
    self._rows = order.ProcessBatches(self.num_examples, global_batch_size, seed)

  def table(self) -> dict[str, np.ndarray]:
    """Every image as packed bits ``{"bits": (N, 64, 8) uint8}`` (377 MB), read in order."""
    bits = np.empty((self.num_examples, IMAGE_SHAPE[0], IMAGE_SHAPE[1] // 8), np.uint8)
    for start in range(0, self.num_examples, 4096):
      index = np.arange(start, min(self.num_examples, start + 4096))
      bits[index] = np.packbits(self.images(index)[..., 0].astype(np.uint8), axis=-1)
    return {"bits": bits}

  def images(self, index) -> np.ndarray:
    """Images ``(n, 64, 64, 1)`` float32 of example indices ``(n,)``."""
    records = self._source.__getitems__([int(i) for i in np.asarray(index)])
    classes = np.stack([r["factor_classes"] for r in records])
    if not np.array_equal(classes, self.factors_of(index)):
      raise UserError("the prepared dSprites files are not in the original order: prepare again")
    return np.stack([r["image"] for r in records]).astype(np.float32)

  def observations(self, factors) -> np.ndarray:
    """The images ``(n, 64, 64, 1)`` float32 in {0, 1} of factor classes ``(n, 5)``."""
    return self.images(self.index_of(factors))

  def batch(self, index: int) -> np.ndarray:
    return self.images(self._rows(index))

  def reference(self, n: int) -> np.ndarray:
    return self.images(_reference_indices(self.num_examples, n, self.seed))


def read_npz(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(imgs (N, 64, 64) uint8, classes (N, 5) int64, values (N, 5) float64)`` of an original-
  layout npz, checked: one colour, a full factor grid in the file's order (last factor fastest),
  binary images. Read with ``allow_pickle=False``; the ``metadata`` pickle is never loaded.

  Raises:
    UserError: unreadable file, missing arrays, or any of the checks failing.
  """
  if not os.path.isfile(path):
    raise UserError(f"--source={path} does not exist")
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in ("imgs", "latents_classes", "latents_values") if k not in f.files]
      if missing:
        raise UserError(f"{path}: not a dSprites npz (no {', '.join(missing)}; has {f.files})")
      imgs, classes, values = f["imgs"], f["latents_classes"], f["latents_values"]
  except UserError:
    raise
  except Exception as e:  # Not a zip, truncated, object arrays: one line.
    raise UserError(f"cannot read {path}: {type(e).__name__}: {e}") from None
  n = len(imgs)
  if imgs.shape[1:] != (64, 64) or classes.shape != (n, 6) or values.shape != (n, 6):
    raise UserError(
      f"{path}: expected imgs (N, 64, 64), latents_classes and latents_values (N, 6), got "
      f"{imgs.shape}, {classes.shape}, {values.shape}"
    )
  if n == 0 or np.any(classes[:, 0] != classes[0, 0]):
    raise UserError(f"{path}: expected one colour class and at least one image")
  classes, values = classes[:, 1:].astype(np.int64), values[:, 1:].astype(np.float64)
  sizes = tuple(int(s) for s in classes.max(axis=0) + 1)
  grid = np.stack(np.unravel_index(np.arange(n), sizes), axis=-1) if math.prod(sizes) == n else None
  if grid is None or not np.array_equal(classes, grid):
    raise UserError(
      f"{path}: latents_classes are not the full factor grid {sizes} in the original order "
      f"(posY varying fastest)"
    )
  if imgs.dtype != np.uint8 or imgs.max() > 1:
    raise UserError(f"{path}: imgs must be uint8 in {{0, 1}}, got {imgs.dtype} max {imgs.max()}")
  return imgs, classes, values


def prepare(source: str, data_dir: str) -> str:
  """Converts the original dSprites npz ``source`` into array_record files under ``data_dir``
  (:func:`gen_models.data.prepare.write`; examples in the file's order).

  Returns:
    The directory of the prepared files (``data_dir/gen_models_dsprites/1.0.0``).

  Raises:
    UserError: see :func:`read_npz`; ``data_dir`` cannot be written; or it already holds a
      prepared copy (never overwritten).
  """
  prepare_lib.ensure_new(TFDS_NAME, VERSION, data_dir)
  imgs, classes, values = read_npz(source)

  def examples():
    for i in range(len(imgs)):
      image = imgs[i, :, :, None]
      yield i, {"image": image, "factor_classes": classes[i], "factor_values": values[i]}

  spec = prepare_lib.Spec(
    name=TFDS_NAME,
    version=VERSION,
    description="dSprites (Matthey et al. 2017), converted by gen_models without TensorFlow.",
    features={
      "image": (IMAGE_SHAPE, np.uint8),
      "factor_classes": ((5,), np.int64),
      "factor_values": ((5,), np.float64),
    },
    splits={"train": examples},
    shuffle=False,  # Example i is the file's example i: index = ravel(classes).
    metadata={
      "factor_names": list(FACTOR_NAMES),
      "factor_sizes": [int(s) for s in classes.max(axis=0) + 1],
    },
    homepage="https://github.com/google-deepmind/dsprites-dataset",
  )
  return prepare_lib.write(spec, data_dir)
