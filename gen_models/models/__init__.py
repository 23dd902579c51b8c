"""Model families by name.

``config.model`` selects a module here; each module defines ``default_config()`` (the complete
config of that family, trainer keys included) and ``make_family(config) -> Family``. Adding a
family is one new file plus one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gen_models.errors import UserError
from gen_models.train_state import TrainState

FAMILIES: dict[str, str] = {
  "wgan_gp": "gen_models.models.wgan_gp",
  "vae": "gen_models.models.vae",
  "realnvp": "gen_models.models.realnvp",
}


@dataclasses.dataclass(frozen=True)
class Family:
  """The pure functions the trainer needs from a model family.

  Attributes:
    init: ``rng -> TrainState`` at step 0 (pure; the trainer jits it with output shardings).
    train_step: ``(state, batch) -> (state, metrics)``; ``batch`` is
      ``(batches_per_step, B, *example_shape)`` float32, or with ``dataset.labels``
      ``{"image": that array, "label": (batches_per_step, B) int32}``; ``metrics`` a dict of
      scalars.
    sample: ``(state, rng, n) -> (n, *example_shape)`` in data space; ``n`` is static.
    evaluate: host-side ``(state, rng, reference) -> {name: float}``; ``reference`` holds
      held-out real examples (or None) as returned by the dataset.
    batches_per_step: how many global data batches one train step consumes.
    num_reference: how many held-out examples ``evaluate`` wants (0: none).
    encode: ``(state, x (B, *example_shape)) -> (B, d)`` codes (a VAE's posterior means), for
      representation metrics; None for a family without an encoder.
    image_grids: ``(state, examples (n, *example_shape)) -> {name: (rows, cols, *example_shape)}``
      extra pictures in data space made from real examples (a VAE's reconstructions and latent
      traversals), written beside the sample grid for image data; None: none.
    critic_values: optional ``(state, points (N, *example_shape)) -> (N,)``, the family's
      critic/discriminator output at ``points``; the 2-D sample plot draws it as contours.
    data_init: optional ``(state, batch (B, *example_shape)) -> state``, a data-dependent
      initialisation (a flow's ActNorm) that the trainer runs once on global batch 0 of a fresh
      run, outside the compiled step; never on restore.
  """

  init: Callable[[jax.Array], TrainState]
  train_step: Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
  sample: Callable[[TrainState, jax.Array, int], jax.Array]
  evaluate: Callable[[TrainState, jax.Array, np.ndarray | None], dict[str, float]]
  batches_per_step: int = 1
  num_reference: int = 0
  encode: Callable[[TrainState, jax.Array], jax.Array] | None = None
  image_grids: Callable[[TrainState, jax.Array], dict[str, jax.Array]] | None = None
  critic_values: Callable[[TrainState, jax.Array], jax.Array] | None = None
  data_init: Callable[[TrainState, jax.Array], TrainState] | None = None


def module(name: str) -> Any:
  """The module of family ``name``; a one-line error for an unknown name."""
  if name not in FAMILIES:
    raise UserError(f"unknown model {name!r}; known models: {', '.join(sorted(FAMILIES))}")
  return importlib.import_module(FAMILIES[name])


def make_family(config, example_shape: tuple[int, ...]) -> Family:
  """The :class:`Family` for ``config.model`` on examples of shape ``example_shape``."""
  return module(config.model).make_family(config, example_shape)
