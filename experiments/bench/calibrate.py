r"""Calibrate the compiled-step model (gen_models/aot.py) against the one real GPU run.

    python -m experiments.bench.calibrate --compiled=A.json[,B.json] \
        --measured=experiments/results/bench_train_all_h200_2026-11-26.json --fit=toy,vae,resnet

Reads the compiled rows of ``--target`` (default ``gpu:h200``) from ``experiments.bench.compile``
JSON files and the measured JAX rows of ``experiments.bench.train`` (``conv_impl`` ``subpixel``,
what ``auto`` is on a GPU, or ``-`` for the MLPs), fits the per-launch cost and the compute
efficiency on the ``--fit`` configs only (at most half of the rows), and prints predicted against
measured for every row, with the ratio. Writes JSON to ``--output`` if given.
"""

from __future__ import annotations

import json

from absl import app, flags

from experiments import cli
from experiments.bench import common
from gen_models import aot
from gen_models.errors import UserError

_COMPILED = flags.DEFINE_list("compiled", [], "experiments.bench.compile JSON files.")
_MEASURED = flags.DEFINE_string(
  "measured",
  "experiments/results/bench_train_all_h200_2026-11-26.json",
  "experiments.bench.train JSON.",
)
_TARGET = flags.DEFINE_string("target", "gpu:h200", "The compiled target that was measured.")
_FIT = flags.DEFINE_list(
  "fit", ["toy", "vae", "resnet"], "Configs whose measurements fit the constants."
)
_OUTPUT = flags.DEFINE_string("output", None, "JSON path.")


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {e}") from None


def run() -> dict:
  target = aot.parse_target(_TARGET.value)
  rows = [r for p in _COMPILED.value for r in _read(p)["rows"] if r["target"] == target.spec]
  measured = {
    r["config"]: 1.0 / r["gen_steps_per_s"]
    for r in _read(_MEASURED.value)["rows"]
    if r["framework"] == "jax" and r["conv_impl"] in ("subpixel", "-")
  }
  measured = {c: s for c, s in measured.items() if any(r["config"] == c for r in rows)}
  if not measured:
    raise UserError(f"no compiled {target.spec} row matches a measured config")
  for c in _FIT.value:
    if c not in measured:
      raise UserError(f"--fit config {c!r} has no compiled and measured row")
  result = aot.calibrate(rows, measured, _FIT.value, target.chip)
  print(
    f"fitted on {', '.join(result['fit'])}: launch {result['launch_s'] * 1e6:.2f} µs per kernel, "
    f"compute at {100 * result['efficiency']:.0f} % of the data-sheet peak"
  )
  columns = (
    ("config", str),
    ("kernels", str),
    ("gflop", lambda v: f"{v:.3g}"),
    ("measured_ms", lambda v: f"{v:.3f}"),
    ("predicted_ms", lambda v: f"{v:.3f}"),
    ("ratio", lambda v: f"{v:.2f}"),
    ("held_out", lambda v: "held out" if v else "fit"),
  )
  table = [
    {**r, "measured_ms": 1e3 * r["measured_s"], "predicted_ms": 1e3 * r["predicted_s"]}
    for r in result["rows"]
  ]
  print(common.format_table(table, columns))
  return {
    **common.header("experiments.bench.calibrate"),
    "target": target.spec,
    "measured": _MEASURED.value,
    **result,
  }


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  result = cli.run_user_errors_as_exit(run)
  if _OUTPUT.value:
    cli.run_user_errors_as_exit(lambda: cli.write_json(_OUTPUT.value, result))
    print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
