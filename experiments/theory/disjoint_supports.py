r"""KL, JSD and W1 between two parallel segments, against their offset θ.

    python -m experiments.theory.disjoint_supports --output_dir=DIR [--quick]

Writes ``DIR/disjoint_supports.png`` and ``.json`` and prints the comparison of the sample
estimates with the closed forms. See ``gen_models/theory/disjoint_supports.py``.
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags

from experiments.theory import common
from gen_models.theory import disjoint_supports as lib

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory for the PNG and the JSON.")
_QUICK = flags.DEFINE_bool("quick", False, "A seconds-long run (tests): 5 offsets, 50 points.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the samples.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Points per distribution and offset.")
_CELL_WIDTH = flags.DEFINE_float("cell_width", 0.01, "Histogram cell width in x (KL, JSD).")
flags.mark_flags_as_required(["output_dir"])


def compute(directory: str):
  common.check_positive(num_samples=_NUM_SAMPLES.value, cell_width=_CELL_WIDTH.value)
  thetas = np.linspace(-1.0, 1.0, 5 if _QUICK.value else 41)
  results = lib.run(
    thetas=thetas,
    num_samples=50 if _QUICK.value else _NUM_SAMPLES.value,
    cell_width=_CELL_WIDTH.value,
    seed=_SEED.value,
  )
  return results, [lib.plot(results, os.path.join(directory, "disjoint_supports.png"))]


if __name__ == "__main__":
  common.run_command("disjoint_supports", _OUTPUT_DIR, compute)
