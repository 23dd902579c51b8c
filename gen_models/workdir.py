"""A run's workdir: the names of what it holds, and its JSON records read and written.

::

  <workdir>/
    config.json          the run's config, written once (a resume is checked against it)
    members.json         a population's members: {"members": [{index, name, seed, hparams}]}
    lock                 held while a training run is live (gen_models.workdir_lock)
    checkpoints/<step>/  orbax checkpoints
    bad_checkpoints/     steps that failed to restore, moved aside (never deleted)
    metrics.jsonl        the logged scalars, a line per logged step (and member)
    tensorboard/         TensorBoard events; a member's under tensorboard/<member folder>/
    samples/             <name>_<step, 8 digits>.png; a member's under samples/<member folder>/
    results/             <kind>_step<step, 8 digits>.json: what the evaluation commands found

A member folder is ``<index, 3 digits>_<name>`` (``001_beta=4,seed=0``). A results file holds a
single run's flat row or a population's ``{"members": [row, ...]}``; a row's scores are its
numeric columns that :func:`is_score` keeps.

Nothing here imports JAX: ``gen_models.report`` and the commands that only read a workdir use it
without starting a backend. Every function is pure path arithmetic or file I/O; the writers are
atomic (a temporary file, then a rename), so a reader never sees half a file.
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
from collections.abc import Sequence

import ml_collections

from gen_models import config as config_lib
from gen_models.errors import UserError

CONFIG_FILE = "config.json"
MEMBERS_FILE = "members.json"
LOCK_FILE = "lock"
CHECKPOINTS_DIR = "checkpoints"
BAD_CHECKPOINTS_DIR = "bad_checkpoints"  # The checkpoints folder's sibling.
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"
RESULTS_DIR = "results"

# Columns of a results row that identify it or state a setting of the evaluation, not a score
# (besides these: ``num_*`` sizes and ``nearest_k*``; :func:`is_score`).
NOT_SCORES = frozenset(
  {"member", "name", "seed", "hparams", "step", "dataset", "metric_seed", "seconds"}
  | {"dequantization_samples", "ties", "dci_trees"}
)
_RESULTS_NAME = re.compile(r"^(?P<kind>.+)_step(?P<step>\d+)\.json$")


# ----------------------------------------------------------------------------------------------
# Names.


def config_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_FILE)


def members_path(workdir: str) -> str:
  return os.path.join(workdir, MEMBERS_FILE)


def lock_path(workdir: str) -> str:
  return os.path.join(workdir, LOCK_FILE)


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINTS_DIR)


def metrics_path(workdir: str) -> str:
  return os.path.join(workdir, METRICS_FILE)


def member_folder(index: int, name: str) -> str:
  """A member's sub-folder of ``tensorboard/`` and ``samples/``: ``001_beta=4,seed=0``."""
  return f"{index:03d}_{name}"


def _under(workdir: str, folder: str, member) -> str:
  if member is None:
    return os.path.join(workdir, folder)
  return os.path.join(workdir, folder, member_folder(member.index, member.name))


def tensorboard_dir(workdir: str, member=None) -> str:
  """The TensorBoard run folder of the run, or of ``member`` (anything with ``index`` and
  ``name``, e.g. a :class:`gen_models.population.Member`): one run per member, so that
  TensorBoard overlays them."""
  return _under(workdir, TENSORBOARD_DIR, member)


def samples_dir(workdir: str, member=None) -> str:
  """The folder of the run's sample PNGs, or of ``member``'s (as :func:`tensorboard_dir`)."""
  return _under(workdir, SAMPLES_DIR, member)


def sample_path(workdir: str, name: str, step: int, member=None) -> str:
  """``samples/[<member folder>/]<name>_<step, 8 digits>.png``."""
  return os.path.join(samples_dir(workdir, member), f"{name}_{step:08d}.png")


def results_path(workdir: str, kind: str, step: int) -> str:
  """``<workdir>/results/<kind>_step<step, 8 digits>.json``. Creates nothing."""
  return os.path.join(workdir, RESULTS_DIR, f"{kind}_step{step:08d}.json")


def parse_results_name(filename: str) -> tuple[str, int] | None:
  """``(kind, step)`` of a results file's base name (``evaluate_step00000100.json`` →
  ``("evaluate", 100)``); None for a name that is not ``<kind>_step<digits>.json``."""
  match = _RESULTS_NAME.match(filename)
  return (match["kind"], int(match["step"])) if match else None


def results_files(workdir: str) -> dict[str, tuple[int, str]]:
  """``{kind: (step, path)}``: the latest step's file of each kind in ``<workdir>/results``
  (another ``*.json`` there is a kind of its own, named after the file, at step 0)."""
  latest: dict[str, tuple[int, str]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, RESULTS_DIR, "*.json"))):
    name = os.path.basename(path)
    kind, step = parse_results_name(name) or (os.path.splitext(name)[0], 0)
    if kind not in latest or step > latest[kind][0]:
      latest[kind] = (step, path)
  return latest


def is_score(key: str, value) -> bool:
  """Is the column ``key`` of a results row a score: a number (or None, a score that could not
  be computed) that is not an identity or a setting (:data:`NOT_SCORES`, ``num_*`` sizes,
  ``nearest_k*``)?"""
  if isinstance(value, bool) or not isinstance(value, (int, float)) and value is not None:
    return False
  return key not in NOT_SCORES and not key.startswith(("num_", "nearest_k"))


# ----------------------------------------------------------------------------------------------
# Records.


def read_json(path: str):
  """The parsed JSON file ``path``.

  Raises:
    UserError: it cannot be read or is not valid JSON.
  """
  try:
    with open(path) as f:
      return json.load(f)
  except OSError as e:
    raise UserError(f"cannot read {path}: {e.strerror or e}") from None
  except ValueError as e:
    raise UserError(f"{path} is not valid JSON: {e}") from None


def write_json(path: str, obj: object, sort_keys: bool = False) -> None:
  """Writes ``obj`` as indented JSON to ``path`` atomically (a temporary file, then a rename).

  Raises:
    UserError: the file cannot be written.
  """
  _write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def _write_text(path: str, text: str) -> None:
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except OSError as e:
    raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def is_run(workdir: str) -> bool:
  """Does the folder ``workdir`` hold a run (a ``config.json``)?"""
  return os.path.isdir(workdir) and os.path.isfile(config_path(workdir))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config recorded in ``<workdir>/config.json`` (as written; not validated).

  Raises:
    UserError: no ``config.json`` (no run there), or one that is not a JSON object.
  """
  path = config_path(workdir)
  if not os.path.exists(path):
    raise UserError(f"no run in {workdir} (no {CONFIG_FILE})")
  config = read_json(path)
  if not isinstance(config, dict):
    raise UserError(f"{path} is not a config (a JSON object), got {type(config).__name__}")
  return ml_collections.ConfigDict(config)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes ``config`` to ``<workdir>/config.json`` atomically; returns the path."""
  path = config_path(workdir)
  _write_text(path, config_lib.to_json(config))
  return path


def write_members(workdir: str, members: Sequence[dict]) -> str:
  """Writes ``<workdir>/members.json``: ``{"members": members}``, each ``{"index", "name",
  "seed", "hparams"}``; returns the path."""
  path = members_path(workdir)
  write_json(path, {"members": list(members)})
  return path


def read_members(workdir: str) -> dict[int, dict]:
  """``{index: {"index", "name", "seed", "hparams"}}`` of ``<workdir>/members.json``; empty
  when there is none (a single run).

  Raises:
    UserError: the file is malformed.
  """
  path = members_path(workdir)
  if not os.path.exists(path):
    return {}
  data = read_json(path)
  try:
    return {int(m["index"]): m for m in data["members"]}
  except (KeyError, TypeError, ValueError):
    raise UserError(
      f"{path}: expected {{'members': [{{'index', 'name', 'seed', 'hparams'}}]}}"
    ) from None


def write_results(workdir: str, kind: str, step: int, results: dict) -> str:
  """Writes ``results`` (keys sorted) to :func:`results_path`, making ``results/``; returns the
  path. An earlier file there is kept, renamed ``<name>.replaced-<UTC time>``: a workdir loses
  nothing.

  Raises:
    UserError: the folder or the file cannot be written.
  """
  path = results_path(workdir, kind, step)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
      stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
      os.replace(path, f"{path}.replaced-{stamp}")
  except OSError as e:
    raise UserError(f"cannot create {os.path.dirname(path)}: {e.strerror or e}") from None
  write_json(path, results, sort_keys=True)
  return path
