"""A run's workdir read back: its config, its newest intact checkpoint, its members.

Below both the trainer and the readers of finished runs (``sampling``, the evaluate commands), so
that neither imports the other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import jax

from gen_models import config as config_lib
from gen_models import data as data_lib
from gen_models import devices as dev
from gen_models import models
from gen_models import population as population_lib
from gen_models import workdir as workdir_lib
from gen_models.checkpointing import Checkpointer
from gen_models.errors import UserError
from gen_models.logs import info
from gen_models.train_state import TrainState


def restore_or_init(
  init: Callable[[jax.Array], TrainState], ckpt: Checkpointer, base_key, sharding
):
  """The newest intact checkpoint's ``(state, data_state)``, or a fresh sharded ``init(base_key)``
  and ``None``.

  A newest step that cannot be restored is skipped with a warning (and moved aside unless
  ``ckpt`` is read-only; :meth:`Checkpointer.restore_latest`); if no step restores, a UserError
  lists them. ``init`` runs once per run, so it is compiled without backend optimisation:
  XLA:CPU spends ~0.5 s optimising each truncated-normal initialiser (measured: the conv VAE's
  init compiles in 22 s at the default level, 6 s at level 0, on the shared 2-core machine).
  """
  init_fn = jax.jit(
    init, out_shardings=sharding, compiler_options={"xla_backend_optimization_level": 0}
  )
  abstract = jax.eval_shape(init_fn, base_key)
  restored = ckpt.restore_latest(abstract, sharding)
  if restored is None:
    return init_fn(base_key), None
  step, state, data_state = restored
  info(f"restored checkpoint {ckpt.path(step)}")
  return state, data_state


def state_init(config, family, members: Sequence[population_lib.Member]):
  """``base_key -> TrainState``: the family's ``init`` for a single run; for a population the
  stacked members (:func:`gen_models.population.init`; the key is each member's own seed's)."""
  if not population_lib.is_population(config):
    return family.init
  stacked = population_lib.init(family.init, members)
  return lambda base_key: stacked()


def load_members(workdir: str, devices: Sequence[jax.Device] | None = None):
  """``(config, family, state, members)`` of the latest checkpoint of the run in ``workdir``.

  ``state`` has a leading member axis when the run is a population
  (:func:`gen_models.population.is_population`); ``members`` lists them (one for a single run).

  Raises:
    UserError: no run (no ``config.json``), no checkpoint yet in ``workdir``, or none of its
      checkpoints can be restored.
  """
  workdir = os.path.abspath(workdir)
  config = config_lib.validate(workdir_lib.read_config(workdir))
  family = models.make_family(config, data_lib.example_shape(config))
  members = population_lib.members(config)
  ckpt_dir = workdir_lib.checkpoints_dir(workdir)
  if not os.path.isdir(ckpt_dir):
    raise UserError(f"no checkpoint yet in {ckpt_dir}")
  ckpt = Checkpointer(ckpt_dir, read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise UserError(f"no checkpoint yet in {ckpt_dir}")
    # Steps that fail to restore are skipped with a warning and left in place: readers never
    # change a workdir (the next training run moves them aside).
    sharding = dev.replicated(dev.make_mesh(devices))
    init = state_init(config, family, members)
    state, _ = restore_or_init(init, ckpt, jax.random.key(config.seed), sharding)
  finally:
    ckpt.close()
  return config, family, state, members


def load_run(workdir: str, devices: Sequence[jax.Device] | None = None):
  """``(config, family, state)`` of the latest checkpoint of the run in ``workdir`` (the state
  of a population has a leading member axis: :func:`load_members`)."""
  config, family, state, _ = load_members(workdir, devices)
  return config, family, state


def member_states(config, state: TrainState, members, member: int | None = None):
  """``[(member, state)]`` of every member (or of ``member``), each state without a member
  axis; a single run is its one member. A ``member`` out of range is a one-line error."""
  chosen = population_lib.select(members, member)
  if not population_lib.is_population(config):
    return [(chosen[0], state)]
  return [(m, population_lib.member_state(state, m.index)) for m in chosen]
