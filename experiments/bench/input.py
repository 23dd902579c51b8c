r"""Benchmark of the host input pipeline: what one train step's data costs (not a test).

    python -m experiments.bench.input [--configs=toy,vae,cifar10,resnet] [--steps=N] \
        [--data_dir=DIR] [--examples=N] [--output=bench_input.json]

For each config, the dataset is made exactly as the trainer makes it (``gen_models.data.create``)
and ``--steps`` consecutive train steps of real data are drawn through the trainer's
``StepIterator`` (``batches_per_step`` global batches each: 5 for a WGAN-GP critic loop), after
one untimed step. ``input_steps_per_s`` is the most train steps per second this process's input
can feed: compare it with the step rates of ``experiments.bench.train`` (docs/BENCHMARKS.md) to
see whether a run on that device is input-bound.

* ``toy``: ``wgan_gp_toy`` (2-D points, computed per batch).
* ``vae``: ``beta_vae_dsprites`` on ``dsprites_procedural`` (rendered per batch).
* ``cifar10``, ``resnet``: ``wgan_gp_cifar10`` / ``wgan_gp_cifar10_resnet`` read through
  ``tfds.data_source`` + grain from ``--data_dir`` when given (a prepared ``cifar10``), else from
  ``--examples`` random 32×32×3 uint8 images with random labels written to a temporary data dir
  by the same converter as ``prepare_data cifar10`` (``gen_models.data.archives``), so the
  reading code is the real one and only the pixels are not CIFAR-10's. Any other name of
  ``experiments.bench.common.CONFIGS`` works too (the 32×32×3 ones read CIFAR-10 so).

``--population=N1,N2`` adds, for each N, the host input of a population of N members (seeds
``seed … seed+N−1``) through ``gen_models.data.members.MemberSteps`` as the trainer uses it: the
example indices of every member (``members: N, device_gather``) for the data sets held on the
device (dSprites, CIFAR-10), every member's stacked batches for the toy sets drawn on the host.
``input_steps_per_s`` is then population steps (N runs' steps each).

Runs in this process, one config after another; prints a table and writes JSON with the run
header (``experiments.bench.common.header``) and each row's load average (these machines are
shared).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags

from experiments import cli
from experiments.bench import common
from gen_models.errors import UserError

COLUMNS = (
  ("config", str),
  ("dataset", str),
  ("members", str),
  ("device_gather", str),
  ("batch", str),
  ("batches_per_step", str),
  ("ms_per_step", common.fixed(2)),
  ("ms_per_example", common.fixed(4)),
  ("input_steps_per_s", common.fixed(1)),
  common.LOAD_COLUMN,
)

_CONFIGS = flags.DEFINE_list(
  "configs", ["toy", "vae", "cifar10", "resnet"], f"Any of {', '.join(common.CONFIGS)}."
)
_STEPS = flags.DEFINE_integer("steps", 50, "Timed train steps of data per config.")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "TFDS data dir holding a prepared cifar10 (default: synthetic images)."
)
_EXAMPLES = flags.DEFINE_integer(
  "examples", 5000, "Train examples of the synthetic CIFAR-shaped dataset (without --data_dir)."
)
_OUTPUT = flags.DEFINE_string("output", "bench_input.json", "Where to write the JSON results.")
_POPULATION = flags.DEFINE_list(
  "population", [], "Population sizes to measure as well (e.g. 8,36)."
)


def write_synthetic_cifar10(data_dir: str, examples: int, seed: int = 0) -> str:
  """Random uint8 images ``(examples, 32, 32, 3)`` and labels in ``[0, 10)`` (train; a tenth as
  many for test) written as the prepared ``cifar10`` under ``data_dir``; returns its directory."""
  from gen_models.data import archives
  from gen_models.data import prepare as prepare_lib

  rng = np.random.default_rng(seed)
  arrays = {
    split: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n))
    for split, n in (("train", examples), ("test", max(1, examples // 10)))
  }
  return prepare_lib.write(archives.image_spec("cifar10", arrays, (32, 32, 3), ""), data_dir)


def _images(name: str) -> bool:
  """Whether config ``name`` reads CIFAR-10 (a TFDS data dir)."""
  return common.CONFIGS[name][1] == (32, 32, 3)


def _config(name: str, data_dir: str | None):
  config = common.load_config(common.CONFIGS[name][0])
  if _images(name):
    config.dataset.data_dir = data_dir
  return config


def measure(name: str, steps: int, data_dir: str | None, members: int = 0) -> dict:
  """One row: the host time of ``steps`` train steps of data for config ``name`` (of a
  population of ``members`` when > 0)."""
  from gen_models import data as data_lib
  from gen_models import models
  from gen_models.data import members as member_data

  config = _config(name, data_dir)
  dataset = data_lib.create(config, config.batch_size)
  family = models.make_family(config, dataset.shape)
  k = family.batches_per_step
  gather = members > 0 and member_data.has_table(dataset)
  if members:
    seeds = [config.seed + i for i in range(members)]
    it = member_data.MemberSteps(dataset, seeds, k, on_device=gather)
  else:
    it = data_lib.StepIterator(dataset, k)
  next(it)  # Opens files, fills caches, imports.
  load = os.getloadavg()[0]
  t0 = time.perf_counter()
  for _ in range(steps):
    next(it)
  elapsed = time.perf_counter() - t0
  per_step = elapsed / steps
  return {
    "config": name,
    "dataset": dataset.name,
    "members": members or "-",
    "device_gather": gather if members else "-",
    "batch": config.batch_size,
    "batches_per_step": k,
    "timed_steps": steps,
    "ms_per_step": 1000 * per_step,
    "ms_per_example": 1000 * per_step / (k * config.batch_size),
    "input_steps_per_s": 1 / per_step,
    "loadavg_1m": max(load, os.getloadavg()[0]),
  }


def run() -> dict:
  common.check_names(_CONFIGS.value, common.CONFIGS, "configs")
  if _STEPS.value < 1 or _EXAMPLES.value < 1:
    raise UserError("--steps and --examples must be >= 1")
  synthetic = None
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = _DATA_DIR.value
    if data_dir is None and any(_images(n) for n in _CONFIGS.value):
      write_synthetic_cifar10(tmp, _EXAMPLES.value)
      data_dir, synthetic = tmp, _EXAMPLES.value
    sizes = cli.positive_ints(_POPULATION.value, "population")
    rows = []
    for name in _CONFIGS.value:
      rows.append(measure(name, _STEPS.value, data_dir))
      rows += [measure(name, _STEPS.value, data_dir, n) for n in sizes]
  return {
    **common.header("experiments.bench.input"),
    "cifar10": f"synthetic, {synthetic} train examples" if synthetic else _DATA_DIR.value,
    "rows": rows,
  }


def main(argv):
  common.start(argv)
  results = cli.run_user_errors_as_exit(run)
  print(f"jax {results['jax_version']}, {results['cpu_count']} cores, {results['date']}")
  print(common.format_table(results["rows"], COLUMNS))
  cli.run_user_errors_as_exit(lambda: common.write_results(_OUTPUT.value, results))


if __name__ == "__main__":
  app.run(main)
