r"""Write samples of a trained run to a ``.npy`` file.

    python -m experiments.sample --workdir=/tmp/run --num_samples=10000 --output=samples.npy \
        [--seed=S] [--batch_size=B] [--member=I]

Reads ``<workdir>/config.json``, restores the latest checkpoint (no training data is loaded) and
draws ``num_samples`` samples in chunks of ``batch_size``. Chunk ``i`` uses the key
``fold_in(key(seed), i)``, ``seed`` defaulting to the run's ``config.seed``, so a given
``(seed, batch_size, num_samples)`` always gives the same file. Output: image runs
``(N, H, W, C)`` uint8 in ``[0, 255]``; point runs ``(N, D)`` float32. Written with
``np.save`` (no pickle). Runs in one process on the local devices. A population's run
(``population.seeds`` / ``population.sweep``) needs ``--member``, the member's index
(``<workdir>/members.json``); its seed defaults to the member's own.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from absl import app, flags

from experiments import cli
from gen_models import sampling
from gen_models.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a run (holds config.json).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Number of samples to write.")
_OUTPUT = flags.DEFINE_string("output", None, "Output file; must end in .npy.")
_SEED = flags.DEFINE_integer("seed", None, "Sampling seed (default: the run's config.seed).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1024, "Samples per compiled sampling call.")
_MEMBER = flags.DEFINE_integer("member", None, "A population's member to sample (its index).")
flags.mark_flags_as_required(["workdir", "num_samples", "output"])


def _check_output(path: str) -> str:
  """Absolute ``path`` after checking it ends in ``.npy`` and its directory is writable."""
  if not path.endswith(".npy"):
    raise UserError(f"--output must end in .npy, got {path!r}")
  path = os.path.abspath(path)
  directory = os.path.dirname(path)
  if not os.path.isdir(directory):
    raise UserError(f"output directory {directory} does not exist")
  try:
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    raise UserError(f"output directory {directory} is not writable: {e.strerror or e}") from None
  return path


def sample_to_file(
  workdir: str,
  num_samples: int,
  output: str,
  seed: int | None,
  batch_size: int,
  member: int | None = None,
) -> tuple[tuple[int, ...], int]:
  """Writes the samples; returns ``(shape of the saved array, checkpoint step)``."""
  output = _check_output(output)
  samples, _, step = sampling.draw_samples(workdir, num_samples, seed, batch_size, member)
  try:
    np.save(output, samples, allow_pickle=False)
  except OSError as e:
    raise UserError(f"cannot write {output}: {e.strerror or e}") from None
  return samples.shape, step


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()
  shape, step = cli.run_user_errors_as_exit(
    lambda: sample_to_file(
      _WORKDIR.value,
      _NUM_SAMPLES.value,
      _OUTPUT.value,
      _SEED.value,
      _BATCH_SIZE.value,
      _MEMBER.value,
    )
  )
  print(f"wrote samples of shape {shape} from checkpoint step {step} to {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
