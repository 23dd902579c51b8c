r"""The generator's gradient norm for three losses as a discriminator trained from scratch improves.

    python -m experiments.theory.vanishing_gradients --output_dir=DIR [--quick]

Trains WGAN-GP on 8 Gaussians (``experiments/configs/wgan_gp_toy.py`` with ``--mlp_width``),
freezes the generator at ``--snapshots`` and writes ``DIR/vanishing_gradients.png`` and
``.json``. See ``gen_models/theory/vanishing_gradients.py``.
"""

from __future__ import annotations

import os

from absl import flags

from experiments.configs import wgan_gp_toy
from experiments.theory import common
from gen_models.errors import UserError
from gen_models.theory import vanishing_gradients as lib

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory for the PNG and the JSON.")
_QUICK = flags.DEFINE_bool("quick", False, "A seconds-long run (tests): the smoke config.")
_SNAPSHOTS = flags.DEFINE_list("snapshots", ["0", "100", "1000"], "Generator steps to freeze G at.")
_MLP_WIDTH = flags.DEFINE_integer("mlp_width", 128, "Hidden units of G and D (3 layers).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Discriminators trained from scratch per G and loss.")
_STEPS = flags.DEFINE_integer("discriminator_steps", 3000, "Steps of each discriminator.")
_EVERY = flags.DEFINE_integer("every", 100, "Discriminator steps between gradient measurements.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam step size of the discriminators.")
_GP_WEIGHT = flags.DEFINE_float("gp_weight", 10.0, "λ of the WGAN-GP critic.")
flags.mark_flags_as_required(["output_dir"])


def compute(directory: str):
  try:
    snapshots = tuple(int(s) for s in _SNAPSHOTS.value)
  except ValueError:
    raise UserError(f"--snapshots must be integers, got {','.join(_SNAPSHOTS.value)}") from None
  if not snapshots or min(snapshots) < 0:
    raise UserError(f"--snapshots must be non-negative steps, got {snapshots}")
  common.check_positive(
    mlp_width=_MLP_WIDTH.value,
    seeds=_SEEDS.value,
    discriminator_steps=_STEPS.value,
    every=_EVERY.value,
    learning_rate=_LR.value,
  )
  if _STEPS.value % _EVERY.value:
    raise UserError(f"--discriminator_steps must be a multiple of --every ({_EVERY.value})")
  config = wgan_gp_toy.get_config("smoke" if _QUICK.value else None)
  if _QUICK.value:
    kwargs = dict(snapshots=(0, 3), seeds=2, discriminator_steps=20, every=10, num_z=64)
  else:
    config.gan.mlp_width = _MLP_WIDTH.value
    kwargs = dict(
      snapshots=snapshots, seeds=_SEEDS.value, discriminator_steps=_STEPS.value, every=_EVERY.value
    )
  results = lib.run(config, learning_rate=_LR.value, gp_weight=_GP_WEIGHT.value, **kwargs)
  return results, [lib.plot(results, os.path.join(directory, "vanishing_gradients.png"))]


if __name__ == "__main__":
  common.run_command("vanishing_gradients", _OUTPUT_DIR, compute)
