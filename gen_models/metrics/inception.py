"""The Inception-v3 network of FID, in Flax linen, and a batched feature extractor.

Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision")
as frozen in the TensorFlow graph of 2015-12-05 that defines the Fréchet Inception Distance
(Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium"), in the layout of its PyTorch port ``pt_inception-2015-12-05-6726825d.pth``
(pytorch-fid): torchvision's ``Inception3`` without the auxiliary head, 1008 classes, and the
graph's three quirks — the average pools of the A, C and E blocks exclude the padding from the
mean (``count_include_pad=False``), and the last block (``Mixed_7c``) max-pools where the others
average.

Outputs: ``features``, the 2048-d "pool3" vector (global average of the last block), used by FID;
``logits``, the 1008 class scores (1000 ImageNet classes plus 8 unused), used by the Inception
Score. By default these are ``pool3 @ W`` with ``W`` the ``fc`` kernel and **without the fc
bias**: the published Inception Score code (openai/improved-gan ``inception_score/model.py``,
copied by TTUR and the WGAN-GP repository) multiplies pool3 by the weight of
``softmax/logits/MatMul`` and takes the softmax of that, never adding the bias; torch-fidelity
and torchmetrics call these "logits_unbiased". ``InceptionV3(unbiased_logits=False)`` gives the
fc layer's full output ``pool3 @ W + b``.

Weights live in the project's own format, a single ``.npz`` whose keys are the flattened Flax
variable paths joined with ``/`` (``params/Mixed_5b/branch1x1/conv/kernel``,
``batch_stats/Mixed_5b/branch1x1/bn/mean``, ...), read with ``allow_pickle=False``. The published
PyTorch weights are converted once with ``python -m experiments.convert_inception_weights``.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gen_models import devices as dev
from gen_models.errors import UserError

INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_LOGITS = 1008
WEIGHTS_ENV = "GEN_MODELS_INCEPTION_WEIGHTS"
TORCH_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
TORCH_WEIGHTS_URL = (
  f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{TORCH_WEIGHTS_NAME}"
)
# torch.hub names files by the first 8 hex digits of their SHA-256.
TORCH_WEIGHTS_SHA256_PREFIX = "6726825d"

_Padding = tuple[int, int]
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# The network.


class BasicConv2d(nn.Module):
  """``conv`` (no bias) → ``bn`` (running statistics, ε = 0.001) → ReLU, as in torchvision.

  ``padding`` is ``(rows, columns)`` of zeros added on both sides, like ``torch.nn.Conv2d``.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: _Padding = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(
      self.features,
      self.kernel_size,
      strides=self.strides,
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      precision=_HIGHEST,
      name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3×3, stride 1, padding 1, mean over the pixels inside the image only (the FID graph's)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
  """3×3 max pool; stride 1 keeps the size (padding 1), stride 2 is VALID."""
  padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), (stride, stride), padding)


class InceptionA(nn.Module):
  """``Mixed_5b/5c/5d``: 35×35, output 224 + ``pool_features`` channels."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """``Mixed_6a``: 35×35×288 → 17×17×768."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
  """``Mixed_6b/6c/6d/6e``: 17×17×768, factorized 7×7 convolutions of ``channels_7x7``."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    row = {"kernel_size": (1, 7), "padding": (0, 3)}
    col = {"kernel_size": (7, 1), "padding": (3, 0)}
    b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, **row, name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, **col, name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, **col, name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, **row, name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, **col, name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, **row, name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """``Mixed_7a``: 17×17×768 → 8×8×1280."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
  """``Mixed_7b`` (``pool="avg"``) and ``Mixed_7c`` (``pool="max"``): 8×8 → 8×8×2048."""

  pool: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    row = {"kernel_size": (1, 3), "padding": (0, 1)}
    col = {"kernel_size": (3, 1), "padding": (1, 0)}
    b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        BasicConv2d(384, **row, name="branch3x3_2a")(b3),
        BasicConv2d(384, **col, name="branch3x3_2b")(b3),
      ],
      axis=-1,
    )
    bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
      [
        BasicConv2d(384, **row, name="branch3x3dbl_3a")(bd),
        BasicConv2d(384, **col, name="branch3x3dbl_3b")(bd),
      ],
      axis=-1,
    )
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x)
    bp = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception-v3, inference only (batch norm uses its running statistics).

  Input: ``(N, 299, 299, 3)`` float32 in ``[-1, 1]`` (see :func:`preprocess`); any size from
  75×75 runs, but FID is defined at 299×299. Output: ``(features, logits)``, ``(N, 2048)``
  float32 pool3 features and ``(N, 1008)`` float32 logits: ``pool3 @ W`` without the ``fc``
  bias if ``unbiased_logits`` (the published Inception Score's; module docstring), else
  ``pool3 @ W + b``. Submodule names are those of the torchvision / pytorch-fid state dict, so
  weight conversion is a renaming.
  """

  unbiased_logits: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)  # 149×149×32
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)  # 147×147×32
    x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)  # 147×147×64
    x = _max_pool_3x3(x, stride=2)  # 73×73×64
    x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)  # 73×73×80
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)  # 71×71×192
    x = _max_pool_3x3(x, stride=2)  # 35×35×192
    x = InceptionA(32, name="Mixed_5b")(x)  # 35×35×256
    x = InceptionA(64, name="Mixed_5c")(x)  # 35×35×288
    x = InceptionA(64, name="Mixed_5d")(x)  # 35×35×288
    x = InceptionB(name="Mixed_6a")(x)  # 17×17×768
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)  # 17×17×768
    x = InceptionD(name="Mixed_7a")(x)  # 8×8×1280
    x = InceptionE("avg", name="Mixed_7b")(x)  # 8×8×2048
    x = InceptionE("max", name="Mixed_7c")(x)  # 8×8×2048
    features = jnp.mean(x, axis=(1, 2))  # pool3, (N, 2048)
    fc = nn.Dense(NUM_LOGITS, precision=_HIGHEST, name="fc")
    logits = fc(features)  # pool3 @ W + b (also creates the fc parameters)
    if self.unbiased_logits:
      logits = jnp.dot(features, fc.variables["params"]["kernel"], precision=_HIGHEST)
    return features.astype(jnp.float32), logits.astype(jnp.float32)


def preprocess(images: jax.Array | np.ndarray) -> jax.Array:
  """uint8 ``(N, H, W, C)``, ``C`` ∈ {1, 3} → float32 ``(N, 299, 299, 3)`` in ``[-1, 1]``.

  Exactly pytorch-fid's input pipeline: pixels scaled to ``[0, 1]`` (``x / 255``), a grayscale
  channel repeated three times, bilinear resize to 299×299 as ``F.interpolate(mode="bilinear",
  align_corners=False)`` — half-pixel centres, source coordinates clamped at the border, no
  antialiasing when downsampling, which is ``jax.image.resize(method="linear",
  antialias=False)`` — then ``2x − 1``. Images already 299×299 are not resampled. Works on
  numpy or traced arrays (the extractor calls it inside its compiled function).
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"expected (N, H, W, 1 or 3) images, got shape {images.shape}")
  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  n, h, w, c = x.shape
  if c == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (n, INPUT_SIZE, INPUT_SIZE, 3), method="linear", antialias=False)
  return 2.0 * x - 1.0


# ----------------------------------------------------------------------------------------------
# Variables: shapes, random values, the .npz format, where the file lives.


@functools.cache
def variable_shapes() -> dict[str, tuple[int, ...]]:
  """``{"params/Mixed_5b/branch1x1/conv/kernel": (1, 1, 192, 64), ...}`` of the whole model."""
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  abstract = jax.eval_shape(InceptionV3().init, jax.random.key(0), x)
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract, sep="/").items()}


def num_params() -> int:
  """Number of trainable parameters (conv kernels, batch-norm scales and biases, ``fc``)."""
  return sum(int(np.prod(s)) for k, s in variable_shapes().items() if k.startswith("params/"))


def random_variables(seed: int) -> dict[str, Any]:
  """Random variables of the right structure, for tests and smoke runs (not for FID).

  Kernels are He-normal so activations keep their scale through the 94 ReLU layers; batch-norm
  scales, biases, running means and variances are random too (variances in [0.5, 2]), so that
  every variable affects the output. numpy float32 arrays, the same for the same ``seed``.
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in variable_shapes().items():
    leaf = key.rsplit("/", 1)[1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      gain = 1.0 if key.startswith("params/fc/") else 2.0  # ReLU follows every conv.
      value = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(gain / fan_in))
    elif leaf == "scale":
      value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif leaf == "var":
      value = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:  # bias, mean
      value = rng.normal(0.0, 0.1, shape).astype(np.float32)
    flat[key] = value
  return traverse_util.unflatten_dict(flat, sep="/")


def _umask() -> int:
  mask = os.umask(0o022)  # Reading the umask means setting it; put it straight back.
  os.umask(mask)
  return mask


def save_variables(path: str, variables: Mapping[str, Any]) -> None:
  """Writes ``variables`` as one uncompressed ``.npz`` (``/``-joined keys), atomically.

  The file gets the permissions of any new file (``0o666`` less the umask), not the ``0o600``
  of the temporary file it is written to, so that a shared weights cache is readable by all.
  """
  flat = {
    k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(variables, sep="/").items()
  }
  path = os.path.abspath(path)
  directory = os.path.dirname(path)
  try:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".inception-", suffix=".npz.tmp")
  except OSError as e:
    raise UserError(f"cannot write {path}: {e.strerror or e}") from None
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, allow_pickle=False, **flat)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except OSError as e:
    os.unlink(tmp)
    raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def check_variables(flat: Mapping[str, np.ndarray], source: str) -> None:
  """Raises a one-line :class:`UserError` naming the first missing, extra or misshapen key."""
  expected = variable_shapes()
  for key, shape in expected.items():
    if key not in flat:
      raise UserError(f"{source}: missing Inception variable {key} (shape {shape})")
  for key in flat:
    if key not in expected:
      raise UserError(f"{source}: unexpected variable {key}, not part of the FID Inception")
  for key, shape in expected.items():
    if tuple(flat[key].shape) != shape:
      raise UserError(f"{source}: variable {key} has shape {tuple(flat[key].shape)}, not {shape}")
    if not np.issubdtype(flat[key].dtype, np.floating):
      raise UserError(f"{source}: variable {key} has dtype {flat[key].dtype}, not float")


def load_variables(path: str) -> dict[str, Any]:
  """Reads a weights ``.npz`` written by :func:`save_variables`; nested dict of float32 arrays.

  No pickle: ``np.load(allow_pickle=False)``. Every expected variable must be present with its
  shape (checked against ``jax.eval_shape`` of the model's ``init``) and nothing else may be:
  otherwise a one-line :class:`UserError` names the first offending key.
  """
  try:
    with np.load(path, allow_pickle=False) as npz:
      flat = {k: npz[k] for k in npz.files}
  except FileNotFoundError:
    raise UserError(f"Inception weights {path} do not exist") from None
  except Exception as e:  # Not a zip, a pickled entry, a truncated file, ...
    raise UserError(f"cannot read Inception weights {path}: {type(e).__name__}: {e}") from None
  check_variables(flat, path)
  flat = {k: v.astype(np.float32) for k, v in flat.items()}
  return traverse_util.unflatten_dict(flat, sep="/")


def default_weights_path() -> str:
  """``$GEN_MODELS_INCEPTION_WEIGHTS``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)
  ``/gen_models/inception_v3_fid.npz``."""
  if os.environ.get(WEIGHTS_ENV):
    return os.path.expanduser(os.environ[WEIGHTS_ENV])
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "gen_models", "inception_v3_fid.npz")


def resolve_weights(path: str | None = None, flag: str | None = None) -> str:
  """``path`` (default :func:`default_weights_path`) if the file exists, else a one-line
  :class:`UserError` with the download URL and the conversion command. ``flag``, e.g.
  ``"--inception_weights"``, is named in that message as the way to point elsewhere."""
  path = os.path.expanduser(path) if path else default_weights_path()
  if os.path.isfile(path):
    return path
  elsewhere = f"pass {flag}=PATH" if flag else "pass another path"
  raise UserError(
    f"Inception weights not found at {path}; download the published FID weights from "
    f"{TORCH_WEIGHTS_URL} and convert them with `python -m experiments.convert_inception_weights "
    f"--input={TORCH_WEIGHTS_NAME} --output={path}` (or {elsewhere} or set ${WEIGHTS_ENV} to use "
    "a file elsewhere)"
  )


# ----------------------------------------------------------------------------------------------
# The published PyTorch weights.


def variables_from_torch(state_dict: Mapping[str, np.ndarray], source: str) -> dict[str, Any]:
  """pytorch-fid state dict → Flax variables (nested dict of float32 arrays), checked.

  ``X.conv.weight`` (O, I, H, W) → ``params/X/conv/kernel`` (H, W, I, O); ``X.bn.weight`` /
  ``bias`` → ``params/X/bn/scale`` / ``bias``; ``X.bn.running_mean`` / ``running_var`` →
  ``batch_stats/X/bn/mean`` / ``var``; ``X.bn.num_batches_tracked`` is dropped; ``fc.weight``
  (1008, 2048) → ``params/fc/kernel`` (2048, 1008); ``fc.bias`` → ``params/fc/bias``. An unknown
  or missing name or a wrong shape is a one-line :class:`UserError` naming the torch key.
  """
  renames = {
    "conv.weight": ("params", "conv/kernel"),
    "bn.weight": ("params", "bn/scale"),
    "bn.bias": ("params", "bn/bias"),
    "bn.running_mean": ("batch_stats", "bn/mean"),
    "bn.running_var": ("batch_stats", "bn/var"),
  }
  expected = variable_shapes()
  flat = {}
  for name, value in state_dict.items():
    if name.endswith(".bn.num_batches_tracked"):
      continue
    if name in ("fc.weight", "fc.bias"):
      key = "params/fc/" + ("kernel" if name == "fc.weight" else "bias")
    else:
      module, _, leaf = name.rpartition(".")
      module, _, layer = module.rpartition(".")
      if f"{layer}.{leaf}" not in renames:
        raise UserError(f"{source}: unexpected tensor {name}, not part of the FID Inception")
      collection, suffix = renames[f"{layer}.{leaf}"]
      key = "/".join([collection, *module.split("."), suffix])
    value = np.asarray(value)
    if name.endswith("conv.weight") and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    elif name == "fc.weight" and value.ndim == 2:
      value = value.T
    if key not in expected:
      raise UserError(f"{source}: unexpected tensor {name}, not part of the FID Inception")
    if value.shape != expected[key]:
      raise UserError(
        f"{source}: tensor {name} has the wrong shape {np.shape(state_dict[name])} "
        f"(expected {expected[key]} after transposing to Flax layout)"
      )
    if not np.issubdtype(value.dtype, np.floating):
      raise UserError(f"{source}: tensor {name} has dtype {value.dtype}, not float")
    flat[key] = np.ascontiguousarray(value, np.float32)
  for key in expected:
    if key not in flat:
      raise UserError(f"{source}: no tensor for Inception variable {key} in the checkpoint")
  return traverse_util.unflatten_dict(flat, sep="/")


# ----------------------------------------------------------------------------------------------
# Batched extraction.


class InceptionExtractor:
  """Inception features and logits of uint8 images, in fixed-size data-parallel batches.

  ``extractor = InceptionExtractor(load_variables(resolve_weights()), batch_size=200)``, then
  ``features, logits = extractor(images)`` with ``images`` uint8 ``(N, H, W, C)``, ``C`` ∈ {1, 3}:
  ``features`` float32 ``(N, 2048)`` (pool3), ``logits`` float32 ``(N, 1008)`` (``pool3 @ W``
  without the fc bias, the published Inception Score's logits; see :class:`InceptionV3`).

  One compiled function (``preprocess`` + the network; uint8 goes to the devices, the float
  conversion and resize happen there) runs on batches of exactly ``batch_size`` images: the last
  batch is zero-padded and the padding dropped, so there is one compilation per input
  ``(H, W, C)`` whatever ``N``, and a row's result does not depend on ``N`` or on its batch
  neighbours. Batches are split over ``devices`` (default: this process's local devices) with the
  variables replicated; ``batch_size`` is rounded up to a multiple of the device count. One batch
  is in flight while the previous one is copied back, so memory stays bounded by two batches plus
  the outputs. Convolutions use ``Precision.HIGHEST`` (no TF32 / bfloat16 passes on GPU or TPU).
  """

  def __init__(
    self,
    variables: Mapping[str, Any],
    batch_size: int = 100,
    devices: Sequence[jax.Device] | None = None,
  ):
    if batch_size < 1:
      raise UserError(f"Inception batch size must be >= 1, got {batch_size}")
    self.mesh = dev.make_mesh(jax.local_devices() if devices is None else devices)
    n_dev = self.mesh.devices.size
    self.batch_size = -(-batch_size // n_dev) * n_dev
    self._batch_sharding = dev.batch_sharding(self.mesh)
    self._variables = jax.device_put(dict(variables), dev.replicated(self.mesh))
    self._forward = jax.jit(
      self._apply,
      in_shardings=(dev.replicated(self.mesh), self._batch_sharding),
      out_shardings=(self._batch_sharding, self._batch_sharding),
    )
    self.num_traces = 0  # How often _apply was traced, i.e. compiled: once per (H, W, C).

  def _apply(self, variables: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    self.num_traces += 1
    return InceptionV3().apply(variables, preprocess(images))

  def __call__(
    self, images: np.ndarray, progress: Callable[[int, int], Any] | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, 2048), logits (N, 1008))`` float32 of uint8 ``(N, H, W, C)`` images.

    ``progress(done, total)`` is called after each batch with the number of images done.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise UserError(
        f"Inception needs uint8 images of shape (N, H, W, 1 or 3), got {images.dtype} "
        f"{images.shape}"
      )
    total, size = len(images), self.batch_size
    features = np.empty((total, NUM_FEATURES), np.float32)
    logits = np.empty((total, NUM_LOGITS), np.float32)
    pending = None

    def collect(start: int, out: tuple[jax.Array, jax.Array]) -> None:
      stop = min(start + size, total)
      host_features, host_logits = dev.to_host(out)
      features[start:stop] = host_features[: stop - start]
      logits[start:stop] = host_logits[: stop - start]
      if progress is not None:
        progress(stop, total)

    for start in range(0, total, size):
      batch = images[start : start + size]
      if len(batch) < size:
        pad = np.zeros((size - len(batch), *batch.shape[1:]), np.uint8)
        batch = np.concatenate([batch, pad])
      out = self._forward(self._variables, jax.device_put(batch, self._batch_sharding))
      if pending is not None:
        collect(*pending)
      pending = (start, out)
    if pending is not None:
      collect(*pending)
    return features, logits
