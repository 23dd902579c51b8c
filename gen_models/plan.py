"""What the trainer runs: one run or a population, the same loop.

A :class:`Plan` holds a run's initialiser, compiled step, shardings and data iterator. A single
run's state has no member axis and its step is the family's ``train_step`` with a finiteness
flag; a population's state has a leading member axis ``(N, …)`` and its step is
:func:`gen_models.population.population_step` (members frozen when non-finite), its data
:mod:`gen_models.data.members`. The trainer's loop reads both through the same methods.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np

from gen_models import devices as dev
from gen_models.checkpointing import Checkpointer
from gen_models.data import StepIterator
from gen_models.data import members as member_data
from gen_models.logs import info
from gen_models.population import (
  FROZEN,
  Member,
  execution,
  is_population,
  member_state,
  population_step,
)
from gen_models.runs import restore_or_init, state_init
from gen_models.train_state import TrainState, tree_all_finite


class Plan:
  """The state, step and data of a run for the trainer: a single run as today (no member axis),
  or a population (:func:`gen_models.population.population_step` over members, data by
  :mod:`gen_models.data.members`).

  Attributes:
    members: the members (one for a single run).
    population: whether states and metrics carry a member axis.
    init: ``base_key -> TrainState`` (pure; :meth:`restore_or_init` jits it sharded).
    step: the jitted ``(state, data) -> (state, metrics)``, old state donated; ``data`` as
      :meth:`put` returns it.
    iterator: yields each step's host data; has ``get_state`` / ``set_state``.
  """

  def __init__(self, config, family, dataset, mesh, members_: Sequence[Member]):
    self.config, self.family, self.dataset, self.mesh = config, family, dataset, mesh
    self.members = list(members_)
    self.population = is_population(config)
    self.init = state_init(config, family, self.members)
    self.state_sharding = dev.member_sharding(mesh) if self.population else dev.replicated(mesh)
    self._table = None
    n = len(self.members)
    if not self.population:
      self.iterator = StepIterator(dataset, family.batches_per_step)
      step, data_sharding = _checked_step(family.train_step), dev.batch_sharding(mesh, 1)
    else:
      on_device = member_data.has_table(dataset)
      self.iterator = member_data.MemberSteps(
        dataset, [m.seed for m in self.members], family.batches_per_step, on_device
      )
      members_step = population_step(
        family.train_step, n, execution(config), int(config.population.chunk)
      )
      data_sharding = dev.batch_sharding(mesh, 2)
      if on_device:
        decode, t0 = dataset.decode, time.perf_counter()
        table = jax.tree.map(np.asarray, dataset.table())
        self._table = jax.device_put(table, dev.replicated(mesh))
        size = sum(x.nbytes for x in jax.tree.leaves(table)) / 2**20
        info(
          f"{dataset.name}: the training split held on every device ({size:,.0f} MiB, "
          f"{time.perf_counter() - t0:.1f} s); each step gathers the {n} members' batches there"
        )
        step = lambda state, table, idx: members_step(state, member_data.gather(table, idx, decode))
      else:
        step = members_step
    self._data_sharding = data_sharding
    step = dev.under_mesh(step, mesh)  # Per-example noise split over `data` (shard_like_batch).
    if self._table is not None:
      shardings = (self.state_sharding, dev.replicated(mesh), data_sharding)
      jitted = jax.jit(
        step, in_shardings=shardings, out_shardings=self.state_sharding, donate_argnums=0
      )
      self.step = lambda state, idx: jitted(state, self._table, idx)
    else:
      self.step = jax.jit(
        step,
        in_shardings=(self.state_sharding, data_sharding),
        out_shardings=(self.state_sharding, self.state_sharding),
        donate_argnums=0,
      )

  def restore_or_init(self, ckpt: Checkpointer) -> TrainState:
    """The newest intact checkpoint's state, the iterator set to its data position; else a fresh
    state, data-initialised on global batch 0 when the family has a ``data_init``."""
    base_key = jax.random.key(self.config.seed)
    state, data_state = restore_or_init(self.init, ckpt, base_key, self.state_sharding)
    if data_state is not None:
      self.iterator.set_state(data_state)
    elif self.family.data_init is not None:
      state = self.data_init(state)
    return state

  def put(self, host_data):
    """This process's rows of a step's data → global arrays, split over ``data``."""
    return dev.global_batch(host_data, self.mesh, batch_axis=2 if self.population else 1)

  def data_init(self, state: TrainState) -> TrainState:
    """The family's data-dependent initialisation on global batch 0 (each member's own)."""
    if not self.population:
      first = dev.global_batch(self.dataset.batch(0), self.mesh)
      return jax.jit(self.family.data_init, out_shardings=self.state_sharding)(state, first)
    saved, self.iterator.step = self.iterator.step, 0
    data = self.put(next(self.iterator))  # Step 0: every member's batches 0..k-1.
    self.iterator.step = saved
    if self._table is not None:
      decode = self.dataset.decode
      data = jax.jit(lambda t, i: member_data.gather(t, i, decode))(self._table, data)
    first = jax.tree.map(lambda x: x[:, 0], data)  # (N, B, ...): each member's global batch 0.
    fn = jax.vmap(self.family.data_init)
    return jax.jit(fn, out_shardings=self.state_sharding)(state, first)

  def rows(self, metrics: dict) -> list[tuple[Member | None, dict]]:
    """Host metrics of one step → ``[(member, {name: value})]``: one row per member (member
    None for a single run)."""
    if not self.population:
      return [(None, metrics)]
    return [(m, {k: v[m.index] for k, v in metrics.items()}) for m in self.members]

  def states(self, state: TrainState) -> list[tuple[Member | None, TrainState]]:
    """``[(member, state without a member axis)]`` (member None for a single run)."""
    if not self.population:
      return [(None, state)]
    return [(m, member_state(state, m.index)) for m in self.members]

  def frozen(self, state: TrainState) -> dict[int, int]:
    """``{member index: step it froze at}`` of a (restored) population state."""
    if not self.population:
      return {}
    at = np.asarray(dev.to_host(state.hparams[FROZEN]))
    return {i: int(s) for i, s in enumerate(at) if s > 0}


def _checked_step(train_step):
  """``train_step`` plus a ``finite`` flag: all metrics and all new parameters are finite."""

  def step(state, batch):
    new_state, metrics = train_step(state, batch)
    finite = tree_all_finite(metrics) & tree_all_finite(new_state.params)
    return new_state, {**metrics, "finite": finite}

  return step
