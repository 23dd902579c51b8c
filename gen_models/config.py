"""The trainer's config keys, and validation of a user config against its family's defaults.

Every family's ``default_config()`` starts from :func:`base_config`. A user config (a config file
plus ``--config.x=y`` overrides) may only set keys that the default has, with values of the same
type: a typo is an error, never a silently ignored key.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

import ml_collections

from gen_models.errors import UserError

# How generated images become uint8 pixels for the metrics (gen_models.data.images.to_uint8).
QUANTIZATIONS = ("nearest", "wgan_gp")

# Keys that may change when a run is resumed; any other change to a workdir's config is an error.
RESUMABLE_KEYS = (
  "num_train_steps",
  "log_every_steps",
  "eval_every_steps",
  "sample_every_steps",
  "checkpoint_every_steps",
  "max_checkpoints_to_keep",
  "eval.num_samples",
  "eval.metrics",
  "eval.extractor",
  "eval.inception_weights",
  "eval.nearest_k",
  "eval.final_num_samples",
  "eval.quantization",
  "dataset.data_dir",
  "conv_impl",  # Same function, only the round-off differs: a run may move between backends.
  "population.execution",  # How the members' steps run: the same numbers (round-off).
  "population.chunk",
)


def base_config() -> ml_collections.ConfigDict:
  """Keys every family shares (the trainer's)."""
  c = ml_collections.ConfigDict()
  c.model = ""
  c.seed = 0
  c.batch_size = 256  # Global batch size, split over all devices of all processes.
  c.num_train_steps = 1000
  c.log_every_steps = 100
  c.eval_every_steps = 1000  # 0: evaluate only at the end.
  c.sample_every_steps = 1000  # 0: write samples only at the end.
  c.checkpoint_every_steps = 1000
  c.max_checkpoints_to_keep = 3
  c.async_checkpointing = True
  # How conv nets compute their convolutions (gen_models/nn/conv.py): "auto" (per layer on CPU:
  # gemm where the kernel is a multiple of the stride and channels are >= 16 or the input an
  # image of 1-3 channels, else phases, and XLA's own kernel for transposed convs with <= 4
  # output channels; subpixel on GPU; xla on TPU), "xla", "space_to_depth", "subpixel", "phases"
  # or "gemm". The same function either way (round-off).
  c.conv_impl = "auto"

  # Many runs as one compiled program (gen_models/population.py): member seeds seed, seed + 1,
  # …; sweep "key=v1,v2;key2=w1,w2" makes a grid of the family's SWEEPABLE keys (the last key
  # varies fastest, the seeds innermost). seeds=1 and no sweep: a single run.
  c.population = ml_collections.ConfigDict()
  c.population.seeds = 1
  c.population.sweep = ""
  c.population.execution = "auto"  # auto, vmap, map or unroll (gen_models/population.py).
  c.population.chunk = 0  # > 0: vmap groups of this many members, run by map / unroll.

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "8gaussians"
  c.dataset.data_dir = ""  # TFDS data dir; "" means TFDS's default.
  c.dataset.split = "train"
  c.dataset.eval_split = "test"
  # True: image batches are {"image": (B, H, W, C), "label": (B,) int32} (labelled sets only).
  c.dataset.labels = False
  # True: training images mirrored left-right, each by a seeded coin of its position in the
  # example stream (gen_models.data.order.flips; image datasets only).
  c.dataset.random_flip = False

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 1000
  c.eval.num_image_samples = 64  # Images in each sample grid PNG.
  # Sample-quality metrics at every eval: comma-separated from fid, is, kid, prdc ("" = none),
  # on eval.num_samples generated vs as many held-out real examples.
  c.eval.metrics = ""
  c.eval.extractor = "auto"  # auto: Inception for images, identity for points.
  c.eval.inception_weights = ""  # "" = $GEN_MODELS_INCEPTION_WEIGHTS or the cache path.
  c.eval.nearest_k = 0  # k of precision/recall/density/coverage; 0 = the papers' 3 and 5.
  # Samples of the evaluation at the last step (e.g. the papers' 50,000); 0: eval.num_samples.
  c.eval.final_num_samples = 0
  # How generated images become the metrics' uint8 pixels (gen_models.data.images.to_uint8):
  # "nearest" (rounded), or "wgan_gp" (the WGAN-GP code's ⌊(x + 1)·255.99/2⌋, for its IS).
  c.eval.quantization = "nearest"
  return c


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _type_ok(value: Any, default: Any) -> bool:
  if default is None or value is None:
    return True
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  if isinstance(default, (list, tuple)):
    return isinstance(value, (list, tuple))
  return isinstance(value, type(default))


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks ``config`` against its family's defaults; returns it with defaults filled in.

  Raises:
    UserError: unknown model, unknown key (with the closest known key), or wrong value type.
  """
  # Here, not at the top: models import JAX, and config must stay light for workdir and report.
  from gen_models import models

  if "model" not in config:
    raise UserError("config has no 'model' key; known models: " + ", ".join(models.FAMILIES))
  defaults = models.module(config.model).default_config()
  flat_default, flat_user = _flatten(defaults), _flatten(config)
  for key, value in flat_user.items():
    if key not in flat_default:
      close = difflib.get_close_matches(key, list(flat_default), n=1)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      raise UserError(f"unknown config key {key!r} for model {config.model!r}{hint}")
    if not _type_ok(value, flat_default[key]):
      raise UserError(
        f"config key {key!r} must be of type {type(flat_default[key]).__name__}, "
        f"got {value!r} ({type(value).__name__})"
      )
  for key, value in flat_user.items():
    set_path(defaults, key, value)
  if defaults.eval.quantization not in QUANTIZATIONS:
    raise UserError(
      f"unknown eval.quantization {defaults.eval.quantization!r}; known: {', '.join(QUANTIZATIONS)}"
    )
  return defaults


def set_path(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """``set_path(c, "optimizer.learning_rate", 3e-4)`` sets ``c.optimizer.learning_rate``."""
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


def changed_keys(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> list[str]:
  """Flat keys whose values differ (lists and tuples compare equal)."""
  a, b = _flatten(json.loads(to_json(old))), _flatten(json.loads(to_json(new)))
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
