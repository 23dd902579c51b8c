"""What the theory commands share: the output directory, the JSON and the printed numbers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np
from absl import app

from experiments import cli
from gen_models.errors import UserError


def output_dir(path: str) -> str:
  """Creates ``path``; a one-line error if it cannot be created."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --output_dir {path!r}: {e.strerror or e}") from None
  return path


def finish(directory: str, name: str, results: dict, figures: list[str]) -> None:
  """Writes ``<name>.json`` (and ``results["arrays"]``, if any, as ``<name>_arrays.npz``);
  prints the scalars, the ``summary`` and the files written, one a line."""
  results = dict(results)
  arrays = results.pop("arrays", None)
  path = os.path.join(directory, f"{name}.json")
  cli.write_json(path, results)
  if arrays:
    figures = [*figures, os.path.join(directory, f"{name}_arrays.npz")]
    try:
      np.savez(figures[-1], **arrays)
    except OSError as e:
      raise UserError(f"cannot write {figures[-1]}: {e.strerror or e}") from None
  for key, value in results.items():
    if isinstance(value, float):
      print(f"{key}: {value:.6g}")
    elif isinstance(value, (int, str, bool)):
      print(f"{key}: {value}")
    elif key == "summary":
      for k, v in value.items():
        print(f"{k}: {json.dumps(v)}")
  for f in [*figures, path]:
    print(f"wrote {f}")


def run_command(name: str, output_dir_flag, compute: Callable[[str], tuple[dict, list[str]]]):
  """The ``main`` of a theory command: ``compute(directory) -> (results, figure paths)``.

  Every :class:`UserError` (bad flag value, unwritable directory) is one ``error:`` line.
  """

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.quiet_library_logs()

    def body():
      directory = output_dir(output_dir_flag.value)
      results, figures = compute(directory)
      finish(directory, name, results, figures)

    cli.run_user_errors_as_exit(body)

  app.run(main, flags_parser=cli.parse_flags)


def check_positive(**values: int | float) -> None:
  """A one-line error naming the first flag that is not > 0."""
  for flag, value in values.items():
    if not value > 0:
      raise UserError(f"--{flag} must be > 0, got {value}")
