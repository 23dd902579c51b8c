"""What every benchmark shares: the config names, the run header, the worker processes, the
JSON and the tables.

* :data:`CONFIGS`: one name per benchmarked config (``toy``, ``cifar10``, ``vae``, ``resnet``,
  ...), the same in every benchmark's ``--configs`` and in the JSON rows.
* :func:`header`: the keys (:data:`HEADER_KEYS`) every benchmark JSON starts with, so that
  results from different commands and machines can be read the same way. JSON files recorded
  before this header (``experiments/results/`` up to 2026-12-07) keep the keys they were written
  with.
* :func:`spawn` / :func:`write_worker_result`: one measurement in a fresh Python process, so that
  compilation caches, allocators and imports of one row do not reach the next.
* :func:`finish` (the header, the fields, the file), :func:`write_results`, :func:`format_table`:
  the JSON and the printed table.

No JAX at module level: ``experiments.bench.metrics`` spawns workers that must not import it.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time

# name -> (config module of experiments/configs, ":ARG" optional; example shape; (timed steps,
# warm-up steps) by backend). One cifar10 step (dim 64, batch 64, n_critic 5) takes seconds on
# a 2-core CPU, so CPU defaults are small.
CONFIGS = {
  "toy": ("wgan_gp_toy", (2,), {"default": (200, 10)}),
  "cifar10": ("wgan_gp_cifar10", (32, 32, 3), {"default": (20, 2), "cpu": (3, 1)}),
  "vae": ("beta_vae_dsprites", (64, 64, 1), {"default": (50, 5), "cpu": (20, 3)}),
  "resnet": ("wgan_gp_cifar10_resnet", (32, 32, 3), {"default": (20, 2), "cpu": (2, 1)}),
  "resnet_bf16": (
    "wgan_gp_cifar10_resnet:bfloat16",
    (32, 32, 3),
    {"default": (20, 2), "cpu": (2, 1)},
  ),
  "flow": ("realnvp_toy", (2,), {"default": (200, 10)}),
  "realnvp_cifar10": ("realnvp_cifar10", (32, 32, 3), {"default": (20, 2), "cpu": (2, 1)}),
  "realnvp_cifar10_bf16": (
    "realnvp_cifar10:bfloat16",
    (32, 32, 3),
    {"default": (20, 2), "cpu": (2, 1)},
  ),
}
# The keys of :func:`header`, in order: what ran, when, with what, on what.
HEADER_KEYS = (
  "command",
  "date",
  "jax_version",
  "backend",
  "device_kind",
  "num_devices",
  "cpu_count",
  "python",
  "machine",
  "processor",
  "loadavg",
)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _user_error(message: str) -> Exception:
  from gen_models.errors import UserError  # Imports JAX: only when needed (see the docstring).

  return UserError(message)


def check_names(values: list[str], known, flag: str) -> list[str]:
  """``values`` of the list flag ``--flag`` when all are in ``known`` and there is one at
  least; else a one-line error naming the known ones."""
  unknown = [v for v in values if v not in known]
  if unknown or not values:
    raise _user_error(f"--{flag} must name some of {', '.join(known)}; got {values}")
  return list(values)


def load_config(spec: str):
  """The validated config of ``spec``, ``MODULE`` or ``MODULE:ARG`` of experiments/configs
  (``MODULE.get_config(ARG)``); a one-line error when there is no such module."""
  import importlib

  from gen_models import config as config_lib

  name, _, arg = spec.partition(":")
  try:
    module = importlib.import_module(f"experiments.configs.{name}")
  except ModuleNotFoundError:
    raise _user_error(f"config {spec!r}: no experiments/configs/{name}.py") from None
  return config_lib.validate(module.get_config(arg or None))


def header(command: str) -> dict:
  """The start of every benchmark's JSON (:data:`HEADER_KEYS`): ``command`` (``python -m
  <command>`` and this process's arguments), then ``experiments.bench.hardware.run_info`` (UTC
  date, jax version, backend, first device's kind, device count, CPU count, Python, machine),
  the processor's name and the 1, 5 and 15-minute load averages now."""
  from experiments.bench import hardware

  return {
    "command": shlex.join(["python", "-m", command, *sys.argv[1:]]),
    **hardware.run_info(),
    "processor": platform.processor(),
    "loadavg": list(os.getloadavg()),
  }


def start(argv: list[str]) -> None:
  """The start of every benchmark's ``main``: no positional arguments (absl's usage error), and
  the libraries' chatter filtered (``experiments.cli.quiet_library_logs``)."""
  from absl import app

  from experiments import cli

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()


def write_results(path: str | None, results: dict) -> None:
  """Writes ``results`` as indented JSON to ``path`` (atomically) and says so; a one-line error
  when it cannot. Nothing for a None ``path`` (no ``--output``)."""
  from experiments import cli

  if path is None:
    return
  cli.write_json(path, results)
  print(f"wrote {path}", flush=True)


def finish(command: str, output: str | None, **fields) -> dict:
  """A benchmark's results: :func:`header` then ``fields``, written to ``output`` when given
  (:func:`write_results`)."""
  results = {**header(command), **fields}
  write_results(output, results)
  return results


def format_table(rows: list[dict], columns) -> str:
  """A right-aligned text table of ``rows``: ``columns`` is ``(key, formatter)`` pairs; a missing
  or None value prints as ``-``."""
  cells = [[c for c, _ in columns]]
  for r in rows:
    cells.append(["-" if r.get(c) is None else fmt(r[c]) for c, fmt in columns])
  widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
  return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells)


def fixed(digits: int):
  """A column formatter: ``digits`` after the point."""
  return lambda v: f"{v:.{digits}f}"


LOAD_COLUMN = ("loadavg_1m", fixed(1))


def spawn(module: str, args: list[str], label: str, tmp: str, env: dict | None = None) -> dict:
  """One measurement in a fresh ``python -m module *args --_result=FILE`` run from the
  repository root, ``env`` added to the environment; its output is shown as it comes.

  Returns:
    The JSON object the worker wrote to ``FILE`` (:func:`write_worker_result`), with
    ``loadavg_1m``: the machine's 1-minute load average, the higher of before and after (other
    processes on the cores make wall times longer).

  Raises:
    UserError: the worker failed; one line with its exit code and the last line it wrote to
      stderr (its error, or the last line of its traceback).
  """
  path = os.path.join(tmp, "worker_result.json")
  if os.path.exists(path):
    os.remove(path)
  argv = [sys.executable, "-m", module, *args, f"--_result={path}"]
  print(f"  {label} ...", end="", flush=True)
  load = os.getloadavg()[0]
  t0 = time.perf_counter()
  proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE)
  tail = _relay(proc.stderr)
  code = proc.wait()
  if code != 0 or not os.path.exists(path):
    print(flush=True)
    lines = [line.strip() for line in tail.decode(errors="replace").splitlines() if line.strip()]
    last = lines[-1].removeprefix("error: ") if lines else "no message"
    raise _user_error(f"benchmark worker {label} failed (exit {code}): {last}")
  with open(path) as f:
    result = json.load(f)
  result["loadavg_1m"] = max(load, os.getloadavg()[0])
  print(f" {time.perf_counter() - t0:.0f} s", flush=True)
  return result


def _relay(stream, keep: int = 8192) -> bytes:
  """Copies ``stream`` to this process's stderr as it comes; returns its last ``keep`` bytes."""
  tail = b""
  while chunk := stream.read1(65536):
    sys.stderr.buffer.write(chunk)
    sys.stderr.flush()
    tail = (tail + chunk)[-keep:]
  return tail


def write_worker_result(path: str, result: dict) -> None:
  """The worker's side of :func:`spawn`: its result as JSON at ``path`` (``--_result``)."""
  with open(path, "w") as f:
    json.dump(result, f)
