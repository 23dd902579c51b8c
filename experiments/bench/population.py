r"""Benchmark of a population's compiled step against its members run one after another.

    python -m experiments.bench.population [--configs=toy,vae,flow] [--population=1,4,8] \
        [--executions=auto,vmap,map,unroll] [--steps=N] [--warmup=N] [--output=FILE.json]

For each config and population size N: the single run's step (the family's ``train_step``
jitted as the trainer does) and the population's step (``gen_models.population.population_step``
for every ``--executions`` way of running the members), both on batches already on the device.
``examples_per_s`` counts real examples of every member (``N · n_critic · B`` a step);
``vs_sequential`` is the population's examples/s over the single run's, i.e. over the N members
trained one after another (> 1: the population is faster). ``gflop`` is XLA's cost analysis of
the step (``experiments.bench.hardware``), ``gflop_per_s`` what the measured rate achieves,
``pct_peak`` that against the device's peak (``bench.hardware.peak_of``): on CPU a float32
matrix product measured in the same run (``peak_gflop_per_s`` in the JSON), on an H200 its TF32
dense peak (XLA's default precision for float32 matmuls there).

* ``toy``: ``wgan_gp_toy.py`` (MLP 512, batch 256, n_critic 5) on the toy set's batches.
* ``vae``: ``beta_vae_dsprites.py`` (conv nets, batch 64) on random binary images; the sweep is
  over β, as the disentanglement study's.
* ``flow``: ``realnvp_toy.py`` (10 couplings, batch 256).

All in this process, one measurement after another; the JSON has the run header
(``experiments.bench.common.header``) and the load average before and after each row. The config
names are those of ``experiments.bench.common.CONFIGS``.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import cli
from experiments.bench import common, hardware
from gen_models import config as config_lib
from gen_models import data as data_lib
from gen_models import models, population

# common.CONFIGS name -> (the swept key, its N values).
SWEEPS = {
  "toy": ("gan.gp_weight", lambda n: np.geomspace(1, 100, n)),
  "vae": ("vae.beta", lambda n: np.geomspace(1, 16, n)),
  "flow": ("optimizer.learning_rate", lambda n: np.geomspace(3e-4, 3e-3, n)),
}

_CONFIGS = flags.DEFINE_list("configs", ["toy", "vae", "flow"], f"From {', '.join(SWEEPS)}.")
_POPULATION = flags.DEFINE_list("population", ["1", "4", "8"], "Population sizes N.")
_EXECUTIONS = flags.DEFINE_list(
  "executions", ["vmap", "map", "unroll"], f"From {', '.join(population.EXECUTIONS)}."
)
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps (default: by config and backend).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON file for the results.")


def _default_steps(name: str) -> int:
  cpu = jax.default_backend() == "cpu"
  return {"toy": 20, "vae": 3, "flow": 20}[name] if cpu else 50


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def _batch(name: str, config, n_critic: int, members: int | None):
  shape = data_lib.example_shape(config)
  rng = np.random.default_rng(0)
  lead = (
    (n_critic, config.batch_size) if members is None else (members, n_critic, config.batch_size)
  )
  if name == "vae":
    return (rng.random((*lead, *shape)) < 0.3).astype(np.float32)
  return rng.standard_normal((*lead, *shape)).astype(np.float32)


def _measure(step, state, batch, steps: int, warmup: int) -> dict:
  state = jax.tree.map(jnp.copy, state)  # The step donates it; the caller's stays usable.
  lowered = jax.jit(step, donate_argnums=0).lower(state, batch)
  t = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  flops = hardware.flops_of_lowered(lowered) or float("nan")
  for _ in range(warmup):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  return {"compile_s": compile_s, "steps_per_s": steps / (time.perf_counter() - t), "flops": flops}


def _rows(name: str, sizes: list[int], executions: list[str], peak: float) -> list[dict]:
  base = common.load_config(common.CONFIGS[name][0])
  family = models.make_family(base, data_lib.example_shape(base))
  k, b = family.batches_per_step, base.batch_size
  steps, warmup = _STEPS.value or _default_steps(name), _WARMUP.value
  key, values_of = SWEEPS[name]
  rows = []

  def add(kind, n, execution, measured, load0):
    ex = n * k * b * measured["steps_per_s"]
    gflop = measured["flops"] / 1e9
    rows.append(
      {
        "config": name,
        "kind": kind,
        "members": n,
        "execution": execution,
        "compile_s": round(measured["compile_s"], 2),
        "steps_per_s": measured["steps_per_s"],
        "examples_per_s": ex,
        "gflop": gflop,
        "gflop_per_s": gflop * measured["steps_per_s"],
        "pct_peak": 100 * gflop * measured["steps_per_s"] / peak,
        "load_before": load0,
        "load_after": os.getloadavg()[0],
      }
    )
    print(common.format_table(rows[-1:], _COLUMNS), flush=True)

  load0 = os.getloadavg()[0]
  single = _measure(
    family.train_step, family.init(jax.random.key(0)), _batch(name, base, k, None), steps, warmup
  )
  add("single run", 1, "-", single, load0)
  single_ex = rows[-1]["examples_per_s"]
  for n in sizes:
    c = config_lib.validate(base)
    c.population.sweep = f"{key}=" + ",".join(f"{v:.4g}" for v in values_of(n))
    members = population.members(c)
    state = jax.jit(population.init(family.init, members))()
    batch = _batch(name, base, k, n)
    for execution in executions:
      mode = population.execution(_with_execution(c, execution))
      step = population.population_step(family.train_step, n, mode)
      load0 = os.getloadavg()[0]
      label = execution if execution == mode else f"{execution}={mode}"
      add("population", n, label, _measure(step, state, batch, steps, warmup), load0)
      rows[-1]["vs_sequential"] = rows[-1]["examples_per_s"] / single_ex
  return rows


def _with_execution(config, execution: str):
  c = config_lib.validate(config)
  c.population.execution = execution
  return c


def _g(digits: int):
  return lambda v: f"{v:.{digits}g}"


_COLUMNS = (
  ("config", str),
  ("kind", str),
  ("members", str),
  ("execution", str),
  ("compile_s", _g(3)),
  ("steps_per_s", _g(3)),
  ("examples_per_s", lambda v: f"{v:,.0f}"),
  ("gflop", _g(3)),
  ("gflop_per_s", _g(3)),
  ("pct_peak", common.fixed(1)),
  ("vs_sequential", common.fixed(2)),
)


def run() -> dict:
  common.check_names(_CONFIGS.value, SWEEPS, "configs")
  sizes = cli.positive_ints(_POPULATION.value, "population")
  common.check_names(_EXECUTIONS.value, population.EXECUTIONS, "executions")
  peak_note, peak = hardware.device_peak()
  peak /= 1e9
  rows = []
  for name in _CONFIGS.value:
    rows += _rows(name, sizes, _EXECUTIONS.value, peak)
  print(common.format_table(rows, _COLUMNS))
  return common.finish(
    "experiments.bench.population",
    _OUTPUT.value,
    peak_gflop_per_s=peak,
    peak_note=peak_note,
    rows=rows,
  )


def main(argv):
  common.start(argv)
  cli.run_user_errors_as_exit(run)


if __name__ == "__main__":
  app.run(main)
