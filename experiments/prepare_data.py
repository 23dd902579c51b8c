r"""Convert a downloaded dataset file into the array_record files the datasets read (no TensorFlow).

    python -m experiments.prepare_data {dsprites,mnist,cifar10} --source=PATH --data_dir=DIR

Subcommands (one per dataset; each is a function of the library, this file only dispatches):

* ``dsprites``: the original ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``
  (github.com/google-deepmind/dsprites-dataset), read with ``allow_pickle=False`` (its ``metadata``
  pickle is never loaded), written as the TFDS dataset ``gen_models_dsprites`` under DIR. Then
  train with ``--config.dataset.name=dsprites --config.dataset.data_dir=DIR``. About 3 GB of
  memory for the full file.

* ``mnist``: PATH is the folder holding the four original IDX files ``train-images-idx3-ubyte.gz``,
  ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``;
  written as ``gen_models_mnist`` (:func:`gen_models.data.archives.prepare_mnist`).
* ``cifar10``: PATH is ``cifar-10-binary.tar.gz`` (the "binary version"); written as
  ``gen_models_cifar10`` (:func:`gen_models.data.archives.prepare_cifar10`).

Both hold the images, labels, splits and example order of ``tfds build mnist|cifar10``; then train
with ``--config.dataset.name=mnist|cifar10 --config.dataset.data_dir=DIR`` (docs/DATASETS.md).

Adding a dataset is one library function ``prepare(source, data_dir) -> path`` (built on
:mod:`gen_models.data.prepare`) and one entry in :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

from collections.abc import Callable

from absl import app, flags

from experiments import cli
from gen_models.data import archives, dsprites
from gen_models.errors import UserError

_SOURCE = flags.DEFINE_string("source", None, "The downloaded file to convert.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir to write into.")
flags.mark_flags_as_required(["source", "data_dir"])

# subcommand -> prepare(source, data_dir) -> directory of the written files.
SUBCOMMANDS: dict[str, Callable[[str, str], str]] = {
  "dsprites": dsprites.prepare,
  "mnist": archives.prepare_mnist,
  "cifar10": archives.prepare_cifar10,
}


def run(argv: list[str]) -> str:
  if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
    got = " ".join(argv[1:]) or "nothing"
    raise UserError(
      f"expected one subcommand, one of: {', '.join(SUBCOMMANDS)}; got {got} "
      f"(usage: python -m experiments.prepare_data {'|'.join(SUBCOMMANDS)} --source=PATH "
      f"--data_dir=DIR)"
    )
  return SUBCOMMANDS[argv[1]](_SOURCE.value, _DATA_DIR.value)


def main(argv):
  cli.quiet_library_logs()
  path = cli.run_user_errors_as_exit(lambda: run(argv))
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
