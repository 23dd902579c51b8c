r"""The disentanglement study on one machine, sized to a time budget (docs/REPRODUCING.md).

    python -m experiments.study_dsprites --out=DIR [--minutes=8] \
        [--config=experiments/configs/beta_vae_dsprites.py] [--sweep=vae.beta=1,2,4,6,8,16] \
        [--seeds=3] [--measure=300] [--eval_flags="--num_train=40"] [--train_flags="..."]

Locatello et al. 2019's β-VAE grid on dSprites as one population (``--config`` and ``--sweep``:
e.g. ``…/annealed_vae_dsprites.py`` and ``vae.c_max=5,10,25,50,75,100``), in four steps, each a
fresh process of the ordinary commands:

1. measure: ``--measure`` steps of the population (``experiments.main``) in ``DIR/measure``, and
   its steps/s over the last logged interval (compilation excluded);
2. train: as many steps as 90 % of ``--minutes`` allows at that rate, at most the config's own
   ``num_train_steps`` (300k), in ``DIR/run``; the plan is ``DIR/plan.json``. SIGTERM after the
   budget and two minutes leaves a resumable checkpoint (exit 75 counts as done);
3. the five metrics of every member (``experiments.evaluate_disentanglement``, plus
   ``--eval_flags``), to ``DIR/run/results/``;
4. the report (``experiments.report``) in ``DIR/report``.

``--train_flags`` go to both training runs (e.g. ``--config.vae.capacity_steps=20000``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

from absl import app, flags

from experiments import cli
from gen_models import workdir
from gen_models.errors import EXIT_STOPPED, UserError

_OUT = flags.DEFINE_string("out", None, "Directory for the study (measure/, run/, report/).")
_MINUTES = flags.DEFINE_float("minutes", 8.0, "Training budget in minutes.")
_CONFIG = flags.DEFINE_string(
  "config", "experiments/configs/beta_vae_dsprites.py", "Config file, optionally FILE:ARG."
)
_SWEEP = flags.DEFINE_string("sweep", "vae.beta=1,2,4,6,8,16", "The population's sweep.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per setting (members = settings × seeds).")
_MEASURE = flags.DEFINE_integer("measure", 300, "Steps of the measuring run.")
_EVAL_FLAGS = flags.DEFINE_string("eval_flags", "", "Extra flags of evaluate_disentanglement.")
_TRAIN_FLAGS = flags.DEFINE_string("train_flags", "", "Extra flags of both training runs.")

NEVER = 1_000_000_000  # An interval no run reaches: no evaluation, samples or checkpoints.


def plan(metrics_rows: list[dict], minutes: float, published_steps: int) -> dict:
  """The training plan from the measuring run's ``metrics.jsonl`` rows.

  The rate is member 0's (or the single run's) ``steps_per_sec`` of the last logged interval,
  so compilation, in the first, is excluded; ``steps`` = 90 % of ``minutes`` at that rate, at
  least 1 and at most ``published_steps``; ``members`` counts the members that logged.

  Raises:
    UserError: no row has a rate (the run logged no interval).
  """
  logged = [r for r in metrics_rows if "steps_per_sec" in r]
  rates = [r["steps_per_sec"] for r in logged if r.get("member", 0) == 0]
  if not rates:
    raise UserError("the measuring run logged no steps_per_sec: raise --measure")
  rate = rates[-1]
  steps = max(1, min(published_steps, int(0.9 * minutes * 60 * rate)))
  members = len({r.get("member", 0) for r in logged})
  return {
    "steps_per_sec": rate,
    "minutes": minutes,
    "steps": steps,
    "published_steps": published_steps,
    "members": members,
  }


def published_steps(config: str) -> int:
  """``num_train_steps`` of the config file ``config`` (``FILE`` or ``FILE:ARG``)."""
  path, _, arg = config.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"--config={config}: no such file")
  spec = importlib.util.spec_from_file_location("study_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return int(module.get_config(arg or None).num_train_steps)


def _python(*args: str) -> list[str]:
  return [sys.executable, "-m", *args]


def _check(argv: list[str], what: str, timeout_s: float | None = None, ok=(0,)) -> None:
  """Runs ``argv``; on ``timeout_s`` sends SIGTERM (the trainer saves and exits 75) and waits."""
  proc = subprocess.Popen(argv)
  try:
    code = proc.wait(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait()
  if code not in ok:
    raise UserError(f"{what} failed (exit {code}); its output is above")


def run() -> dict:
  out = _OUT.value
  if not out:
    raise UserError("--out=DIR is required")
  if _MINUTES.value <= 0 or _SEEDS.value < 1 or _MEASURE.value < 1:
    raise UserError("--minutes must be > 0, --seeds and --measure >= 1")
  target = published_steps(_CONFIG.value)
  os.makedirs(out, exist_ok=True)
  population = [f"--config.population.sweep={_SWEEP.value}"]
  population += [f"--config.population.seeds={_SEEDS.value}"]
  train_flags = shlex.split(_TRAIN_FLAGS.value)
  train = _python("experiments.main", f"--config={_CONFIG.value}", *population)

  grid = f"{_SWEEP.value} × {_SEEDS.value} seeds"
  print(f"== 1/4 measure: {_MEASURE.value} steps ({grid})", flush=True)
  measure = os.path.join(out, "measure")
  shutil.rmtree(measure, ignore_errors=True)  # A fresh measurement, not a resumed one.
  every = [f"--config.{k}_every_steps={NEVER}" for k in ("eval", "sample", "checkpoint")]
  argv = [*train, f"--workdir={measure}", f"--config.num_train_steps={_MEASURE.value}"]
  argv += [f"--config.log_every_steps={(_MEASURE.value + 2) // 3}", *every, *train_flags]
  _check(argv, "the measuring run")
  with open(workdir.metrics_path(measure)) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  result = plan(rows, _MINUTES.value, target)
  cli.write_json(os.path.join(out, "plan.json"), result)
  print(
    f"{result['members']} members at {result['steps_per_sec']:.1f} steps/s: {result['steps']} "
    f"steps fit in {_MINUTES.value:g} min ({100 * result['steps'] / target:.1f}% of {target})"
  )

  print(f"== 2/4 train: {result['steps']} steps (SIGTERM after the budget)", flush=True)
  run_dir = os.path.join(out, "run")
  argv = [*train, f"--workdir={run_dir}", f"--config.num_train_steps={result['steps']}"]
  _check([*argv, *train_flags], "training", _MINUTES.value * 60 + 120, ok=(0, EXIT_STOPPED))

  print("== 3/4 metrics of every member", flush=True)
  argv = _python("experiments.evaluate_disentanglement", f"--workdir={run_dir}")
  _check([*argv, *shlex.split(_EVAL_FLAGS.value)], "evaluate_disentanglement")

  print("== 4/4 report", flush=True)
  report = os.path.join(out, "report")
  _check(_python("experiments.report", f"--workdir={run_dir}", f"--output={report}"), "report")
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.run_user_errors_as_exit(run)


if __name__ == "__main__":
  app.run(main)
