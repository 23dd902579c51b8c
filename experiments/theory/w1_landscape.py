r"""W1 between ½δ_a + ½δ_b and ½δ₋₁ + ½δ₁ over the generator's parameters (a, b).

    python -m experiments.theory.w1_landscape --output_dir=DIR [--quick]

Writes ``DIR/w1_landscape.png`` and ``.json`` and prints the minima found on the grid, the value
at their midpoint and the agreement with the closed form. See ``gen_models/theory/w1_landscape.py``.
"""

from __future__ import annotations

import os

from absl import flags

from experiments.theory import common
from gen_models.theory import w1_landscape as lib

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory for the PNG and the JSON.")
_QUICK = flags.DEFINE_bool("quick", False, "A seconds-long run (tests): a 21 × 21 grid.")
_GRID_POINTS = flags.DEFINE_integer("grid_points", 161, "Grid points per axis on [-2, 2].")
flags.mark_flags_as_required(["output_dir"])


def compute(directory: str):
  common.check_positive(grid_points=_GRID_POINTS.value)
  results = lib.run(grid_points=21 if _QUICK.value else _GRID_POINTS.value)
  return results, [lib.plot(results, os.path.join(directory, "w1_landscape.png"))]


if __name__ == "__main__":
  common.run_command("w1_landscape", _OUTPUT_DIR, compute)
