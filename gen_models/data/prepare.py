"""Writing arrays as a TFDS dataset of array_record files, without TensorFlow.

Every ``python -m experiments.prepare_data`` subcommand ends here: a
``tfds.core.GeneratorBasedBuilder`` with ``tfds.features.Tensor`` features (stored as raw
numpy bytes, so nothing needs TensorFlow to encode or decode them) writes each split with TFDS's
own writer, and the datasets read it back with ``tfds.data_source``.

Example order: with ``shuffle=False`` a split keeps the generator's order. With ``shuffle=True``
TFDS's writer orders the examples as ``tfds build`` does for every shuffled builder: by the
128-bit md5 of ``split_name + str(key)`` (``tensorflow_datasets/core/hashing.py``), so a
converter that yields the keys and split names of TFDS's own builder gets TFDS's own order.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from gen_models.errors import UserError


@dataclasses.dataclass(frozen=True)
class Spec:
  """A dataset to write.

  Attributes:
    name: the TFDS dataset name (files under ``data_dir/name/version``).
    version: ``"x.y.z"``.
    description: one paragraph for ``dataset_info.json``.
    features: feature name -> ``(shape, numpy dtype)`` of one example.
    splits: split name -> a function returning that split's ``(key, example)`` pairs, where an
      example maps every feature name to an array of its shape and dtype.
    shuffle: order examples by the hash of their keys (as TFDS builders do), else keep the
      generators' order.
    metadata: JSON-able extras stored in ``dataset_info`` (``source.dataset_info.metadata``).
    homepage: where the original data lives.
  """

  name: str
  version: str
  description: str
  features: dict[str, tuple[tuple[int, ...], Any]]
  splits: dict[str, Callable[[], Iterator[tuple[Any, dict[str, np.ndarray]]]]]
  shuffle: bool
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
  homepage: str = ""


def _builder_class(spec: Spec):
  """A TFDS builder class that writes ``spec`` (made per call: TFDS is imported lazily)."""
  import tensorflow_datasets as tfds

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = spec.name
    VERSION = tfds.core.Version(spec.version)
    RELEASE_NOTES = {spec.version: "Written by gen_models' prepare_data (no TensorFlow)."}
    # No checksums file to look for (nothing is downloaded). TFDS's own lookup imports the
    # optional package importlib_resources for builders defined inside a package.
    code_path = None

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        description=spec.description,
        features=tfds.features.FeaturesDict(
          {k: tfds.features.Tensor(shape=s, dtype=d) for k, (s, d) in spec.features.items()}
        ),
        disable_shuffling=not spec.shuffle,
        metadata=tfds.core.MetadataDict(spec.metadata),
        homepage=spec.homepage or None,
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in spec.splits}

    def _generate_examples(self, split):
      yield from spec.splits[split]()

  return Builder


def ensure_new(name: str, version: str, data_dir: str) -> str:
  """The directory dataset ``name`` ``version`` is written to under ``data_dir``; converters call
  this before reading a large source.

  Raises:
    UserError: it exists (a prepared copy is never overwritten).
  """
  target = os.path.join(data_dir, name, version)
  if os.path.exists(target):
    raise UserError(f"{target} already exists (prepared before); remove it to convert again")
  return target


def write(spec: Spec, data_dir: str) -> str:
  """Writes ``spec``'s splits as array_record files under ``data_dir``.

  Returns:
    The directory of the written files (``data_dir/name/version``).

  Raises:
    UserError: ``data_dir`` already holds this dataset (never overwritten) or cannot be written.
  """
  import tensorflow_datasets as tfds

  ensure_new(spec.name, spec.version, data_dir)
  try:
    os.makedirs(data_dir, exist_ok=True)
    builder = _builder_class(spec)(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
  except OSError as e:
    raise UserError(f"cannot write to --data_dir={data_dir}: {e.strerror or e}") from None
  return os.fspath(builder.data_path)
