"""Orbax checkpoints of the train state plus the data iterator's state.

Layout: ``<workdir>/checkpoints/<step>/{state,data}``; ``state`` is the :class:`TrainState`
pytree (the typed PRNG key stored as its raw ``uint32`` key data), ``data`` is JSON. Orbax
writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from jax.sharding import Sharding

from gen_models.train_state import TrainState


def _to_saveable(state: TrainState) -> TrainState:
  return state.replace(rng=jax.random.key_data(state.rng))


class Checkpointer:
  """A thin wrapper of ``ocp.CheckpointManager`` that knows the state's layout.

  Args:
    directory: where step directories go (absolute or relative to the cwd).
    max_to_keep: keep the newest this many checkpoints.
    async_save: write in a background thread (``wait()`` blocks until done).
    read_only: only restore; never create, save or delete anything.
  """

  def __init__(
    self,
    directory: str,
    *,
    max_to_keep: int | None = None,
    async_save: bool = True,
    read_only: bool = False,
  ):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save and not read_only,
        create=not read_only,
        read_only=read_only,
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: TrainState, data_state: dict) -> None:
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_saveable(state)), data=ocp.args.JsonSave(data_state)
      ),
      force=True,
    )

  def restore(
    self, step: int, abstract_state: TrainState, sharding: Sharding
  ) -> tuple[TrainState, dict]:
    """Restores ``step`` into the structure, dtypes and ``sharding`` of ``abstract_state``."""
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract_state.replace(rng=jax.eval_shape(jax.random.key_data, abstract_state.rng)),
    )
    out = self._manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()),
    )
    state = out["state"]
    return state.replace(rng=jax.random.wrap_key_data(state.rng)), dict(out["data"])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
