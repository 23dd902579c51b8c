r"""Where a train step's time goes, op by op (not a test).

    python -m experiments.bench.profile_step --config=resnet_bf16 [--conv_impl=auto] \
        [--critic_loop=unrolled] [--batch_size=B] [--steps=N] [--warmup=N] [--top=25] \
        --output=DIR

Compiles the train step of a ``experiments.bench.train`` config exactly as that benchmark does
(one device), times ``--steps`` steps untraced, then traces ``--steps`` more with
``jax.profiler`` and reads the trace against the optimised HLO (``experiments/bench/profiling.py``):
per category (convolutions, matrix products, elementwise and reduction fusions, copies and
transposes, collectives), per kind of op (every call of one convolution shape together) and
per op, the time a step, its share, the ops a step, and for
convolutions and matrix products their FLOPs and achieved FLOP/s; and the device's busy time
against the wall time (below 1: it waited on the host or on launches). Prints the tables and
writes ``DIR/profile.json`` and ``DIR/step.hlo.txt`` (the optimised HLO, for reading the ops
named in the tables); ``--keep_trace`` keeps the trace under ``DIR/trace`` for TensorBoard or
XProf. Works on CPU (thunks on XLA's executor threads: ops run two at a time there, so their
sum can exceed the wall time) and on GPU (kernels on the streams).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time

import jax
from absl import app, flags

from experiments import cli
from experiments.bench import common, hardware, profiling, train_steps
from gen_models.errors import UserError

_CONFIG = flags.DEFINE_enum("config", "toy", list(train_steps.CONFIGS), "The step to profile.")
_CONV_IMPL = flags.DEFINE_string("conv_impl", "auto", "conv_impl of conv configs.")
_CRITIC_LOOP = flags.DEFINE_enum(
  "critic_loop", "unrolled", ["unrolled", "scan"], "Critic loop of WGAN-GP configs."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch size (default: config's).")
_STEPS = flags.DEFINE_integer("steps", 5, "Steps timed, then as many traced.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
_TOP = flags.DEFINE_integer("top", 25, "Ops listed, longest first.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for profile.json and step.hlo.txt.")
_KEEP = flags.DEFINE_bool("keep_trace", False, "Keep the profiler trace under OUTPUT/trace.")

_MS = ("seconds_per_step", lambda v: f"{v * 1e3:.2f} ms")
_SHARE = ("share", lambda v: f"{100 * v:.1f} %")
_COUNT = ("count_per_step", lambda v: f"{v:.0f}")
_FLOPS = ("flops_per_step", hardware.si)
_RATE = ("flops_per_s", lambda v: f"{hardware.si(v)}/s")
CATEGORY_COLUMNS = (("category", str), _MS, _SHARE, _COUNT, _FLOPS, _RATE)
KIND_COLUMNS = (("category", str), _MS, _SHARE, _COUNT, _RATE, ("kind", str))


def profile(output: str) -> dict:
  """Compiles, times and traces the step; writes ``output``/step.hlo.txt; returns the JSON."""
  if _STEPS.value < 1 or _WARMUP.value < 0:
    raise UserError("--steps must be at least 1 and --warmup at least 0")
  spec = {
    "config": _CONFIG.value,
    "conv_impl": _CONV_IMPL.value,
    "critic_loop": _CRITIC_LOOP.value,
    "batch_size": _BATCH_SIZE.value,
    "devices": 1,
  }
  print(f"profile_step: compiling {_CONFIG.value} ...", flush=True)
  step_fn, state, pool, config, n_critic = train_steps.make_step(spec)
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, pool[0])
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  hlo = compiled.as_text()
  with open(os.path.join(output, "step.hlo.txt"), "w") as f:
    f.write(hlo)
  print(f"profile_step: compiled in {compile_s:.1f} s; {_WARMUP.value} warm-up steps", flush=True)
  state, _, _ = train_steps.run_steps(compiled, state, pool, _WARMUP.value)
  state, _, untraced_s = train_steps.run_steps(compiled, state, pool, _STEPS.value)
  print(
    f"profile_step: {_STEPS.value} steps in {untraced_s:.2f} s untraced; tracing as many",
    flush=True,
  )
  trace_dir = os.path.join(output, "trace") if _KEEP.value else tempfile.mkdtemp()
  try:
    with jax.profiler.trace(trace_dir):
      state, _, traced_s = train_steps.run_steps(compiled, state, pool, _STEPS.value)
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
      raise UserError(f"the profiler wrote no trace under {trace_dir}")
    planes = jax.profiler.ProfileData.from_file(paths[-1]).planes
    ops = profiling.parse_hlo(hlo)
    events = profiling.op_events(planes, profiling.module_name(hlo))
    matched_by = "hlo_module"
    if not events:  # A backend that names the module otherwise: the step's ops by name.
      events = [e for e in profiling.op_events(planes, None) if e[0] in ops]
      matched_by = "hlo_op names"
  finally:
    if not _KEEP.value:
      shutil.rmtree(trace_dir, ignore_errors=True)
  if not events:
    raise UserError("the trace holds no event of the step's ops (no hlo_op stats)")
  summary = profiling.summarize(ops, events, _STEPS.value, traced_s, _TOP.value)
  return {
    **common.header("experiments.bench.profile_step"),
    **spec,
    "batch": config.batch_size,
    "n_critic": n_critic,
    "compile_s": compile_s,
    "untraced_s_per_step": untraced_s / _STEPS.value,
    "program_flops_per_step": hardware.flops_of_lowered(lowered),
    "events_matched_by": matched_by,
    **summary,
  }


def main(argv):
  common.start(argv)

  def run() -> dict:
    if not _OUTPUT.value:
      raise UserError("--output=DIR is required")
    try:
      os.makedirs(_OUTPUT.value, exist_ok=True)
    except OSError as e:
      raise UserError(f"cannot write --output={_OUTPUT.value}: {e.strerror}") from e
    return profile(_OUTPUT.value)

  result = cli.run_user_errors_as_exit(run)
  flops = result["program_flops_per_step"]
  print(
    f"{result['config']} on {result['device_kind']} ({result['backend']}), jax "
    f"{result['jax_version']}: {result['untraced_s_per_step'] * 1e3:.1f} ms a step untraced, "
    f"{result['wall_s_per_step'] * 1e3:.1f} traced; ops {result['op_s_per_step'] * 1e3:.1f} ms "
    f"a step ({result['ops_per_step']:.0f} of them), busy {result['busy_s_per_step'] * 1e3:.1f} "
    f"ms ({100 * result['busy_fraction']:.0f} % of the wall time); "
    f"{flops / 1e9 if flops else float('nan'):.1f} GFLOP a step (XLA's cost analysis)"
  )
  print(common.format_table(result["categories"], CATEGORY_COLUMNS))
  print(common.format_table(result["kinds"], KIND_COLUMNS))
  path = os.path.join(_OUTPUT.value, "profile.json")
  cli.run_user_errors_as_exit(lambda: cli.write_json(path, result))
  print(f"wrote {path} and {os.path.join(_OUTPUT.value, 'step.hlo.txt')}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
