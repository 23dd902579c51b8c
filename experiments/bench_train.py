r"""Benchmark of the compiled WGAN-GP train step on the current backend (not a test).

    python -m experiments.bench_train [--configs=toy,cifar10] [--steps=N] [--warmup=N] \
        [--batch_size=B] [--output=bench_train.json]

For each config: the family's ``train_step`` jitted exactly as the trainer does (state
replicated, batch ``(n_critic, B, *shape)`` split over ``data`` on axis 1, state donated),
with the time of ``.lower(...).compile()``, then ``--warmup`` untimed steps and ``--steps``
timed steps. ``gen_steps_per_s`` counts generator updates (one per train step, after its
``n_critic`` critic updates); ``examples_per_s = n_critic · B · gen_steps_per_s`` counts real
examples consumed. Batches are placed on the devices before timing (a pool of a few, cycled),
so the numbers are of the compiled step alone, without the input pipeline. Default step counts
are per backend (``CONFIGS``): one cifar10 step takes ~40 s on a 2-core CPU.

* ``toy``: ``experiments/configs/wgan_gp_toy.py``, batches of the real 2-D toy dataset.
* ``cifar10``: ``experiments/configs/wgan_gp_cifar10.py`` on 32×32×3 standard-normal batches
  (no TFDS data needed).

Side by side in one run, each config is timed with the n_critic critic updates as a rolled
``lax.scan`` and unrolled (``gan.unroll_critic``), on one device and, when there are several,
on all of them. ``ratio`` is a row's ``examples_per_s`` over the config's first row (1 device,
scan), so machine noise that hits the whole run cancels.
Prints a table and writes the rows, with the JAX version, backend, device kind and date, as JSON.
"""

from __future__ import annotations

import datetime
import platform
import time

import jax
import numpy as np
from absl import app, flags

from experiments import cli
from experiments.configs import wgan_gp_cifar10, wgan_gp_toy
from gen_models import config as config_lib
from gen_models import data as data_lib
from gen_models import devices as dev
from gen_models import models
from gen_models.errors import UserError

# name -> (config getter, example shape, (timed steps, warm-up steps) by backend). One cifar10
# step (dim 64, batch 64, n_critic 5) takes ~40 s on a 2-core CPU, so CPU defaults are minimal.
CONFIGS = {
  "toy": (wgan_gp_toy.get_config, (2,), {"default": (200, 10)}),
  "cifar10": (wgan_gp_cifar10.get_config, (32, 32, 3), {"default": (20, 2), "cpu": (1, 1)}),
}
POOL = 4  # Distinct device-resident batches cycled through by the timed loop.

_CONFIGS = flags.DEFINE_list("configs", ["toy", "cifar10"], f"Any of {', '.join(CONFIGS)}.")
_STEPS = flags.DEFINE_integer(
  "steps", None, "Timed steps (default: toy 200; cifar10 20, or 1 on CPU)."
)
_WARMUP = flags.DEFINE_integer(
  "warmup", None, "Untimed steps after compiling (default: toy 10; cifar10 2, or 1 on CPU)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch size (default: config's).")
_OUTPUT = flags.DEFINE_string("output", "bench_train.json", "Where to write the JSON results.")


def _rate(x: float) -> str:
  return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


COLUMNS = (
  ("config", str),
  ("backend", str),
  ("devices", str),
  ("critic_loop", str),
  ("batch", str),
  ("n_critic", str),
  ("compile_s", "{:.2f}".format),
  ("gen_steps_per_s", _rate),
  ("examples_per_s", _rate),
  ("ratio", "{:.2f}".format),
)


def _batches(name: str, config, shape: tuple[int, ...], n_critic: int) -> list[np.ndarray]:
  """``POOL`` host batches ``(n_critic, B, *shape)`` float32."""
  if name == "toy":
    it = data_lib.StepIterator(data_lib.create(config, config.batch_size), n_critic)
    return [next(it) for _ in range(POOL)]
  rng = np.random.default_rng(0)
  size = (n_critic, config.batch_size, *shape)
  return [rng.standard_normal(size, dtype=np.float32) for _ in range(POOL)]


def bench(name: str, devices: list[jax.Device], steps: int, warmup: int, unroll: bool) -> dict:
  """One row: compile time and throughput of config ``name``'s train step on ``devices``.

  ``unroll`` selects ``gan.unroll_critic``: the n_critic critic updates as a rolled
  ``lax.scan`` (False) or unrolled into straight-line code (True).
  """
  get_config, shape, _ = CONFIGS[name]
  config = get_config()
  config.gan.unroll_critic = unroll
  if _BATCH_SIZE.value is not None:
    config.batch_size = _BATCH_SIZE.value
  config = config_lib.validate(config)
  mesh = dev.make_mesh(devices)
  dev.check_batch_size(config.batch_size, mesh)
  family = models.make_family(config, shape)
  n_critic = family.batches_per_step

  state_sharding = dev.replicated(mesh)
  state = jax.jit(family.init, out_shardings=state_sharding)(jax.random.key(config.seed))
  pool = [dev.global_batch(b, mesh, batch_axis=1) for b in _batches(name, config, shape, n_critic)]
  step_fn = jax.jit(
    family.train_step,
    in_shardings=(state_sharding, dev.batch_sharding(mesh, batch_axis=1)),
    out_shardings=(state_sharding, state_sharding),
    donate_argnums=0,
  )
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, pool[0]).compile()
  compile_s = time.perf_counter() - t0

  for i in range(warmup):
    state, metrics = compiled(state, pool[i % POOL])
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for i in range(steps):
    state, metrics = compiled(state, pool[i % POOL])
  jax.block_until_ready((state, metrics))
  elapsed = time.perf_counter() - t0
  if not all(np.isfinite(float(v)) for v in dev.to_host(metrics).values()):
    raise UserError(f"{name}: non-finite metrics after {warmup + steps} steps")

  rate = steps / elapsed
  return {
    "config": name,
    "backend": jax.default_backend(),
    "devices": len(devices),
    "critic_loop": "unrolled" if unroll else "scan",
    "batch": config.batch_size,
    "n_critic": n_critic,
    "compile_s": compile_s,
    "gen_steps_per_s": rate,
    "examples_per_s": n_critic * config.batch_size * rate,
    "ratio": None,
    "timed_steps": steps,
    "warmup_steps": warmup,
    "timed_s": elapsed,
  }


def format_table(rows: list[dict]) -> str:
  cells = [[c for c, _ in COLUMNS]]
  for r in rows:
    cells.append(["-" if r[c] is None else fmt(r[c]) for c, fmt in COLUMNS])
  widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
  return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells)


def run() -> dict:
  unknown = [n for n in _CONFIGS.value if n not in CONFIGS]
  if unknown or not _CONFIGS.value:
    raise UserError(f"--configs must name some of {', '.join(CONFIGS)}; got {_CONFIGS.value}")
  if (_STEPS.value is not None and _STEPS.value < 1) or (_WARMUP.value or 0) < 0:
    raise UserError("--steps must be >= 1 and --warmup >= 0")
  all_devices = jax.devices()
  rows = []
  for name in _CONFIGS.value:
    defaults = CONFIGS[name][2]
    default_steps, default_warmup = defaults.get(jax.default_backend(), defaults["default"])
    steps = _STEPS.value if _STEPS.value is not None else default_steps
    warmup = _WARMUP.value if _WARMUP.value is not None else default_warmup
    device_sets = [all_devices[:1]] + ([all_devices] if len(all_devices) > 1 else [])
    baseline = None
    for devices in device_sets:
      for unroll in (False, True):
        row = bench(name, devices, steps, warmup, unroll)
        baseline = baseline or row["examples_per_s"]
        row["ratio"] = row["examples_per_s"] / baseline
        rows.append(row)
  return {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "jax_version": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": all_devices[0].device_kind,
    "num_devices": len(all_devices),
    "python": platform.python_version(),
    "machine": platform.machine(),
    "ratio_definition": (
      "examples_per_s / that of the config's first row (1 device, scan), same global batch"
    ),
    "rows": rows,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()
  results = cli.run_user_errors_as_exit(run)
  print(
    f"jax {results['jax_version']}, {results['num_devices']} × {results['device_kind']}, "
    f"{results['date']}"
  )
  print(format_table(results["rows"]))
  cli.run_user_errors_as_exit(lambda: cli.write_json(_OUTPUT.value, results))
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
