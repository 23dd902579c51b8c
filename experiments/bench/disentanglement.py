r"""Benchmark of the disentanglement metrics of a population: where the time goes (not a test).

    python -m experiments.bench.disentanglement [--config=beta_vae_dsprites] \
        [--members=1,6] [--metrics=beta_vae,factor_vae,mig,dci,sap] [--num_train=N --num_eval=M] \
        [--output=FILE.json]

For each population size N of ``--members``, a population of N freshly initialised members of the
config's model (the encoder's cost does not depend on training; the classifiers' a little) is
evaluated by ``gen_models.metrics.disentanglement_runner.evaluate_members`` at
disentanglement_lib's sizes (or ``--num_train``/``--num_eval``), exactly as
``experiments.evaluate_disentanglement`` does, in a fresh process per row (so that each row
renders its own dSprites table). Columns: seconds of ``draw`` (the factor vectors of all five
metrics), ``observations`` (rendering or reading the images and copying them to the device),
``encoder`` (every member encoding every distinct observation), ``classifiers`` (the fits of all
members, ``--workers`` threads) and ``total``; ``other_pct`` = everything but the encoder as a
share of the total (the issue's target: ≤ 20 % on a 2-core CPU); the encoder's FLOPs per image
(XLA's cost analysis of the compiled batch), its achieved FLOP/s and % of the device's peak
(``experiments.bench.hardware``: the data sheet on a known GPU, a GEMM measured in the same run on a
CPU); ``s_per_member``. The JSON (``--output``) has the run header
(``experiments.bench.common.header``), the load average before and after each row, and the
rows.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from experiments import cli
from experiments.bench import common, hardware
from gen_models import data, logs, models, population
from gen_models.errors import UserError
from gen_models.metrics import disentanglement as dis
from gen_models.metrics import disentanglement_runner as runner

_CONFIG = flags.DEFINE_string(
  "config",
  "beta_vae_dsprites",
  "A config of experiments/configs: module name, optionally NAME:ARG (beta_vae_dsprites:smoke).",
)
_MEMBERS = flags.DEFINE_list("members", ["1"], "Population sizes, one row each.")
_METRICS = flags.DEFINE_list("metrics", list(dis.METRICS), "Metrics to compute.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", None, "Training points (default: published).")
_NUM_EVAL = flags.DEFINE_integer("num_eval", None, "Evaluation points (default: published).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1024, "Observations per compiled call.")
_WORKERS = flags.DEFINE_integer("workers", None, "Classifier threads (default: the CPUs).")
_EXECUTION = flags.DEFINE_enum(
  "member_execution", "auto", list(runner.MEMBER_EXECUTIONS), "As evaluate_disentanglement's."
)
_OUTPUT = flags.DEFINE_string("output", None, "Output JSON file.")
_WORKER = flags.DEFINE_integer("_worker", None, "Internal: measure one row (N members).")
_RESULT = flags.DEFINE_string("_result", None, "Internal: where the worker writes its JSON.")

_COLUMNS = [
  ("members", str),
  ("draw_s", common.fixed(1)),
  ("observations_s", common.fixed(1)),
  ("encoder_s", common.fixed(1)),
  ("classifiers_s", common.fixed(1)),
  ("total_s", common.fixed(1)),
  ("other_pct", lambda v: f"{v:.0f}%"),
  ("s_per_member", common.fixed(1)),
  ("encoder_gflop_per_s", lambda v: f"{v:,.0f}"),
  ("percent_of_peak", lambda v: f"{v:.0f}%"),
  ("load", common.fixed(1)),
]


def _config():
  config = common.load_config(_CONFIG.value)
  config.population.sweep = ""
  return config


def _row(n: int) -> dict:
  """One measurement: N fresh members through ``evaluate_members``."""
  config = _config()
  config.population.seeds = n
  members = population.members(config)
  family = models.make_family(config, data.example_shape(config))
  if family.encode is None:
    raise UserError(f"model {config.model!r} has no encoder")
  state = jax.jit(population.init(family.init, members))()
  dataset = data.create(config, config.batch_size)
  vmap = runner.MEMBER_EXECUTIONS[_EXECUTION.value]
  timing = {}
  codes_of = runner.jax_codes(
    family.encode, state, dataset, n, _BATCH_SIZE.value, vmap, timing=timing
  )
  one = population.member_state(state, 0)
  x = jax.ShapeDtypeStruct((_BATCH_SIZE.value, *data.example_shape(config)), np.float32)
  flops_per_image = (hardware.flops(family.encode, one, x) or float("nan")) / _BATCH_SIZE.value
  load_before = os.getloadavg()[0]
  _, seconds = runner.evaluate_members(
    codes_of,
    dataset,
    tuple(_METRICS.value),
    seed=0,
    num_train=_NUM_TRAIN.value,
    num_eval=_NUM_EVAL.value,
    workers=_WORKERS.value,
    progress=logs.ProgressBar(),
  )
  encoder = seconds["encode"] - timing["observations"]
  encoded = seconds["observations"] * n
  return {
    "members": n,
    "draw_s": seconds["draw"],
    "observations_s": timing["observations"],
    "encoder_s": encoder,
    "classifiers_s": seconds["classifiers"],
    "total_s": seconds["total"],
    "other_pct": 100.0 * (seconds["total"] - encoder) / seconds["total"],
    "s_per_member": seconds["total"] / n,
    "distinct_observations": seconds["observations"],
    "drawn": seconds["drawn"],
    "encoder_flops_per_image": flops_per_image,
    "encoder_flops": flops_per_image * encoded,
    "encoder_gflop_per_s": flops_per_image * encoded / encoder / 1e9,
    "load_before": load_before,
    "load": max(load_before, os.getloadavg()[0]),
  }


def run() -> dict:
  sizes = cli.positive_ints(_MEMBERS.value, "members")
  dis.check_metrics(_METRICS.value)
  _config()  # A bad --config is one error here, not one per row.
  peak_note, peak = hardware.device_peak()
  rows = []
  args = [a for a in sys.argv[1:] if not a.startswith(("--members", "--output"))]
  with tempfile.TemporaryDirectory() as tmp:
    for n in sizes:
      row = common.spawn(
        "experiments.bench.disentanglement", [f"--_worker={n}", *args], f"{n} member(s)", tmp
      )
      row["percent_of_peak"] = 100.0 * row["encoder_gflop_per_s"] * 1e9 / peak
      rows.append(row)
  print(common.format_table(rows, _COLUMNS))
  return common.finish(
    "experiments.bench.disentanglement",
    _OUTPUT.value,
    config=_CONFIG.value,
    metrics=list(_METRICS.value),
    num_train=_NUM_TRAIN.value,
    num_eval=_NUM_EVAL.value,
    batch_size=_BATCH_SIZE.value,
    peak_gflop_per_s=peak / 1e9,
    peak_note=peak_note,
    rows=rows,
  )


def main(argv):
  common.start(argv)
  if _WORKER.value is not None:
    row = cli.run_user_errors_as_exit(lambda: _row(_WORKER.value))
    common.write_worker_result(_RESULT.value, row)
    return
  start = time.perf_counter()
  cli.run_user_errors_as_exit(run)
  print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)
