r"""Compile train steps for TPUs and GPUs this machine does not have: what fits, what it costs, what
it sends (gen_models/aot.py).

    python -m experiments.bench.compile --configs=toy,vae --targets=tpu:v5e:2x2,gpu:h100
    python -m experiments.bench.compile --config=experiments/configs/beta_vae_dsprites.py \
        --config.population.seeds=6 --targets=gpu:h100x8

Needs ``pip install -e '.[tpu,gpu-compile]'`` (libtpu; the CUDA plugin without NVIDIA's wheels).
``--configs`` are ``experiments.bench.train_steps.CONFIGS`` names; ``--config`` is one config file
with ``--config.*`` overrides. Targets: ``tpu:<chip>:<topology>`` (``tpu:v5e:2x2``,
``tpu:v5e:16x16``, ``tpu:v4:2x2x2``), ``gpu:<chip>[x<gpus>[x<hosts>]]`` (``gpu:h100``,
``gpu:h100x8``, ``gpu:h100x8x2``). One row per (config, target) is printed as it finishes, then
the table; the JSON goes to ``--output`` (default
``experiments/results/bench_compile_<configs>_<platforms>_<date>.json``). ``projected`` columns
are floors from the compiler's counts and data sheets, not timings (docs/BENCHMARKS.md, "Before
you rent accelerators"). Nothing here contacts any address but loopback (``TPU_SKIP_MDS_QUERY=1``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # Before libtpu loads: no metadata server.
os.environ.setdefault("NO_GCE_CHECK", "True")
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # No driver: compile only.
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # The host runs nothing but the CPU lowering.

import datetime  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import cli  # noqa: E402
from experiments.bench import common, train_steps  # noqa: E402
from gen_models import aot  # noqa: E402
from gen_models import config as config_lib  # noqa: E402
from gen_models.errors import UserError  # noqa: E402

_CONFIGS = flags.DEFINE_list("configs", [], f"Bench configs: {', '.join(train_steps.CONFIGS)}.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (path[:arg]).")
_TARGETS = flags.DEFINE_list("targets", ["tpu:v5e:2x2", "gpu:h100"], "Compile targets.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch size (default: the config's).")
_MEMBERS = flags.DEFINE_integer(
  "members", None, "Compile a population of this many seeds (population.seeds)."
)
_FIT = flags.DEFINE_bool(
  "fit_members", False, "Find the largest population (seeds) that fits each target by compiling."
)
_CONV = flags.DEFINE_string("conv_impl", None, "conv_impl of every config (default: its own).")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: experiments/results/...).")
_LAYERS = flags.DEFINE_list(
  "layers",
  [],
  "Instead of steps: every conv shape of train_steps.LAYERS (forward +"
  " backward, batch 64, one device) in each of these conv_impls, e.g. xla,subpixel,phases,gemm.",
)
_REQUIRE_FIT = flags.DEFINE_bool(
  "require_fit", False, "Exit with an error line when a step does not fit its target."
)


def _jobs() -> list[tuple[str, object, tuple]]:
  """``[(label, config, example shape)]`` from ``--configs`` and ``--config``."""
  jobs = []
  for name in _CONFIGS.value:
    if name not in train_steps.CONFIGS:
      raise UserError(f"unknown config {name!r}; known: {', '.join(train_steps.CONFIGS)}")
    jobs.append((name, train_steps.config_for(name, {}), train_steps.CONFIGS[name][1]))
  if _CONFIG.value is not None:
    config = config_lib.validate(cli.config_value(_CONFIG))
    jobs.append(("config", config, aot.examples_shape_of(config)))
  if not jobs:
    raise UserError("give --configs=NAME,... or --config=FILE")
  out = []
  for label, config, shape in jobs:
    config = config_lib.validate(config)
    if _BATCH.value is not None:
      config.batch_size = _BATCH.value
    if _CONV.value is not None:
      config.conv_impl = _CONV.value
    if _MEMBERS.value is not None:
      config.population.seeds = _MEMBERS.value
    out.append((label, config, tuple(shape)))
  return out


def _with_members(config, n: int):
  c = config_lib.validate(config)
  c.population.seeds = n
  return c


def _fit_members(label, config, shape, target, devices, say) -> dict:
  """The largest seeds-population that fits: N = 1 and 8 compiled, memory extrapolated linearly,
  then the edge checked by compiling (N_max fits, N_max + 1 does not)."""
  rows = {}

  def row(n):
    if n not in rows:
      say(f"{label} on {target.spec}: {n} member(s)")
      try:
        c = _with_members(config, n)
        rows[n] = aot.compile_step(c, shape, target, devices, cpu_flops=False)
      except aot.DoesNotFit:  # The TPU compiler refuses what does not fit.
        rows[n] = {"total_bytes": None, "fits": False}
    return rows[n]

  one, eight = row(1), row(8)
  if not one["fits"]:
    return {**one, "largest_members": 0, "fit_search": {"1": [one["total_bytes"], False]}}
  grown = (eight["total_bytes"] or 8 * one["total_bytes"]) - one["total_bytes"]
  per = max(grown / 7, 1024)  # TPU padding can hide N=2's growth.
  guess = max(1, min(10**7, int((target.chip.memory_bytes - one["total_bytes"]) // per) + 1))
  lo, hi, n = 1, None, guess  # row(lo) fits, row(hi) does not.
  while hi is None or hi - lo > 1:
    if row(n)["fits"]:
      lo = n
      n = (n + 1 if n == guess else 2 * n) if hi is None else (lo + hi) // 2
    else:
      hi = n
      n = n - 1 if n == guess and n - 1 > lo else (lo + hi) // 2
  n = lo
  best = row(n)
  return {
    **best,
    "fit_search": {str(k): [v["total_bytes"], v["fits"]] for k, v in sorted(rows.items())},
    "largest_members": n if best["fits"] else 0,
    "bytes_per_member": int(per),
  }


_COLUMNS = (
  ("config", str),
  ("target", str),
  ("members", str),
  ("compile_s", lambda v: f"{v:.0f}"),
  ("total_gib", lambda v: f"{v:.3g}"),
  ("fits", lambda v: "fits" if v else "DOES NOT FIT"),
  ("gflop_dev", lambda v: f"{v:.3g}"),
  ("gb_dev", lambda v: f"{v:.3g}"),
  ("allreduce_mb", lambda v: f"{v:.3g}"),
  ("kernels", str),
  ("floor_ms", lambda v: f"{v:.3g}"),
  ("launch_ms", lambda v: f"{v:.3g}"),
  ("proj_ex_s", lambda v: f"{v:,.0f}"),
)


def _table_row(r: dict) -> dict:
  coll = r["collectives"]
  return {
    "config": r["config"],
    "target": r["target"],
    "members": r.get("largest_members", r["members"]),
    "compile_s": r["compile_s"],
    "total_gib": r["total_bytes"] / aot.GiB,
    "fits": r["fits"],
    "gflop_dev": (r["flops_per_device"] or 0) / 1e9 or None,
    "gb_dev": (r["bytes_per_device"] or 0) / 1e9,
    "allreduce_mb": coll.get("all-reduce", {}).get("bytes", 0) / 1e6,
    "kernels": r["kernels"].get("total"),
    "floor_ms": r["roofline_floor_s"] * 1e3,
    "launch_ms": r["launch_floor_s"] * 1e3 if r["platform"] == "gpu" else None,
    "proj_ex_s": r["projected_examples_per_s"],
  }


def _layers(targets) -> dict:
  """The conv forms compared by the target compiler's own numbers, one row per layer and form."""
  from experiments.bench.train_steps import LAYER_BATCH, LAYERS
  from gen_models.nn.conv import check_impl, conv2d, conv_transpose2d

  impls = [check_impl(i) for i in _LAYERS.value]
  rows, t0, total = [], time.perf_counter(), len(targets) * len(LAYERS) * len(impls)
  for target in targets:
    device = aot.target_devices(target)[0]
    for net, kind, k, s, size, c_in, c_out in LAYERS:
      op = conv2d if kind == "conv" else conv_transpose2d
      for impl in impls:
        r = aot.compile_layer(
          op, (LAYER_BATCH, size, size, c_in), (k, k, c_in, c_out), (s, s), impl, target, device
        )
        r = {
          "target": target.spec,
          "layer": f"{net} {kind} {k}x{k}/{s} {size}²×{c_in}→{c_out}",
          **r,
        }
        rows.append(r)
        done = len(rows)
        eta = (time.perf_counter() - t0) / done * (total - done)
        print(
          f"[{done}/{total}, ETA {eta:.0f} s] {r['target']} {r['layer']} {impl}: "
          f"{(r['flops'] or 0) / 1e9:.3g} GFLOP, {r['bytes'] / 1e6:.3g} MB, "
          f"{r['convolutions']} convs, floor {r['floor_s'] * 1e6:.1f} µs",
          flush=True,
        )
  return {
    **common.header("experiments.bench.compile"),
    "what": "conv forms by the target compiler's estimates",
    "layers": rows,
  }


def run() -> dict:
  targets = [aot.parse_target(t) for t in _TARGETS.value]
  if _LAYERS.value:
    return _layers(targets)
  jobs = _jobs()
  devices = {t.spec: aot.target_devices(t) for t in targets}
  total, done, t0, rows = len(jobs) * len(targets), 0, time.perf_counter(), []

  def say(what: str) -> None:
    elapsed = time.perf_counter() - t0
    eta = f", ETA {elapsed / done * (total - done):.0f} s" if done else ""
    print(f"[{done}/{total}] {elapsed:.0f} s{eta}: compiling {what}", flush=True)

  path = _OUTPUT.value or _default_output([label for label, _, _ in jobs], targets)
  header = {
    **common.header("experiments.bench.compile"),
    "what": "train steps compiled ahead of time for accelerators (gen_models/aot.py); "
    "projected_* are floors from compiler counts and data sheets, not timings",
    "gpu_launch_s": aot.GPU_LAUNCH_S,
    "chips": {t.chip.name: t.chip.source for t in targets},
  }
  for label, config, shape in jobs:
    for target in targets:
      if _FIT.value:
        r = _fit_members(label, config, shape, target, devices[target.spec], say)
      else:
        say(f"{label} for {target.spec}")
        r = aot.compile_step(config, shape, target, devices[target.spec])
      r = {"config": label, **r}
      rows.append(r)
      done += 1
      print(common.format_table([_table_row(r)], _COLUMNS), flush=True)
      cli.write_json(path, {**header, "rows": rows})  # Every row kept if a later one fails.
      if _REQUIRE_FIT.value:
        aot.check_fits(r)
  return {**header, "rows": rows, "path": path}


def _default_output(labels: list[str], targets) -> str:
  """``experiments/results/bench_compile_<configs>_<platforms>_<UTC date>.json`` (the results
  naming rule, experiments/results/README.md)."""
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
  platforms = sorted({t.platform for t in targets})
  name = "_".join(["bench_compile", *labels, *platforms, date])
  return os.path.join(common.ROOT, "experiments", "results", f"{name}.json")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()
  results = cli.run_user_errors_as_exit(run)
  if "rows" in results:
    print()
    print(common.format_table([_table_row(r) for r in results["rows"]], _COLUMNS))
  path = results.pop("path", None) or _OUTPUT.value
  path = path or _default_output(["layers"], [aot.parse_target(t) for t in _TARGETS.value])
  cli.run_user_errors_as_exit(lambda: cli.write_json(path, results))
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
