r"""Trains a discriminator between two known 1-D densities and compares it with D* = p/(p + q).

    python -m experiments.theory.optimal_discriminator --output_dir=DIR [--quick]

Writes ``DIR/optimal_discriminator.png`` and ``.json`` and prints V(trained D), V(D*) on the
grid and the closed form −log 4 + 2·JSD(p ‖ q). See ``gen_models/theory/optimal_discriminator.py``.
"""

from __future__ import annotations

import os

from absl import flags

from experiments.theory import common
from gen_models.theory import optimal_discriminator as lib

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory for the PNG and the JSON.")
_QUICK = flags.DEFINE_bool("quick", False, "A seconds-long run (tests): few steps, small net.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the initialisation and the samples.")
_STEPS = flags.DEFINE_integer("steps", 4000, "Discriminator steps (Adam, batches of 1024).")
flags.mark_flags_as_required(["output_dir"])


def compute(directory: str):
  common.check_positive(steps=_STEPS.value)
  small = dict(steps=20, batch_size=128, width=16, grid_points=801) if _QUICK.value else {}
  results = lib.run(**{"seed": _SEED.value, "steps": _STEPS.value, **small})
  return results, [lib.plot(results, os.path.join(directory, "optimal_discriminator.png"))]


if __name__ == "__main__":
  common.run_command("optimal_discriminator", _OUTPUT_DIR, compute)
