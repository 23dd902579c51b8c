"""Samples of a trained run, drawn reproducibly from its latest checkpoint."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from gen_models import data, population, runs
from gen_models import devices as dev
from gen_models.data import images
from gen_models.errors import UserError


def sample_chunks(
  sample_fn: Callable[[object, jax.Array, int], jax.Array],
  state,
  key: jax.Array,
  num_samples: int,
  batch_size: int,
) -> np.ndarray:
  """``num_samples`` samples on the host, chunk ``i`` of ``batch_size`` drawn with
  ``sample_fn(state, fold_in(key, i), n)`` (model space: points, or images in [-1, 1])."""
  chunks = []
  for i, start in enumerate(range(0, num_samples, batch_size)):
    n = min(batch_size, num_samples - start)
    chunks.append(np.asarray(dev.to_host(sample_fn(state, jax.random.fold_in(key, i), n))))
  return np.concatenate(chunks)


def draw_samples(
  workdir: str, num_samples: int, seed: int | None, batch_size: int, member: int | None = None
) -> tuple[np.ndarray, str, int]:
  """``(samples, kind, checkpoint step)`` from the latest checkpoint of the run in ``workdir``.

  Chunk ``i`` of ``batch_size`` samples uses the key ``fold_in(key(seed), i)``, ``seed``
  defaulting to the run's ``config.seed``: a given ``(seed, batch_size, num_samples)`` always
  gives the same samples. Runs in this process on its local devices.

  A population's run needs ``member`` (its index); its samples are the member's, its seed the
  member's own by default. A single run takes ``member`` None or 0.

  ``kind`` is ``"images"`` (uint8 ``(N, H, W, C)``, the dataset's ``value_range`` mapped to
  [0, 255] by the run's ``eval.quantization``, as its own evaluations did) or ``"points"``
  (float32 ``(N, D)``).
  """
  if num_samples < 1:
    raise UserError(f"--num_samples must be >= 1, got {num_samples}")
  if batch_size < 1:
    raise UserError(f"--batch_size must be >= 1, got {batch_size}")
  config, family, state, members = runs.load_members(workdir, jax.local_devices())
  if population.is_population(config) and member is None:
    raise UserError(
      f"the run in {workdir} is a population of {len(members)} members: choose one with "
      f"--member=0..{len(members) - 1}"
    )
  [(chosen, state)] = runs.member_states(config, state, members, member or 0)
  config = population.member_config(config, chosen)
  step = int(dev.to_host(state.step))
  kind = "points" if config.dataset.name in data.POINT_DATASETS else "images"

  key = jax.random.key(config.seed if seed is None else seed)
  sample_fn = jax.jit(family.sample, static_argnums=2)
  x = sample_chunks(sample_fn, state, key, num_samples, batch_size)
  if kind == "images":
    x = images.to_uint8(x, data.value_range(config), config.eval.quantization)
    return x, kind, step
  return x.astype(np.float32), kind, step
