"""Orbax checkpoints of the train state plus the data iterator's state.

Layout: ``<workdir>/checkpoints/<step>/{state,data}``; ``state`` is the :class:`TrainState`
pytree (the typed PRNG key stored as its raw ``uint32`` key data), ``data`` is JSON. Orbax
writes each step to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest.

A step that cannot be restored (missing or garbled files) is skipped for the newest intact one
(:meth:`Checkpointer.restore_latest`); a writer moves it to ``<workdir>/bad_checkpoints/`` so
that it is never overwritten nor deleted, readers leave it where it is.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Sharding
from orbax.checkpoint._src.metadata import array_metadata_store  # As orbax's default handler.

from gen_models.errors import UserError, first_line
from gen_models.logs import warning
from gen_models.train_state import TrainState
from gen_models.workdir import BAD_CHECKPOINTS_DIR


def _to_saveable(state: TrainState) -> TrainState:
  return state.replace(rng=jax.random.key_data(state.rng))


@functools.cache  # Once a process: the registry is orbax's global one.
def _array_handler_for_this_backend() -> None:
  """On CPU, orbax writes each replicated array from one device instead of slicing it over
  its replicas (``use_replica_parallel``, orbax's default except on GPU): the slices buy
  nothing on host memory and each new shape compiled a ``jit(slice)`` per save, ~6 s a save
  of a small model in a fresh process with 8 devices (measured, cProfile). The bytes written
  are the same. GPU and TPU keep orbax's default."""
  if jax.default_backend() == "cpu":
    handler = ocp.type_handlers.ArrayHandler(
      use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()
    )
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def _all_agree(ok: bool) -> bool:
  """True iff ``ok`` on every process (so that all processes take the same branch)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


class Checkpointer:
  """A thin wrapper of ``ocp.CheckpointManager`` that knows the state's layout.

  Args:
    directory: where step directories go (absolute or relative to the cwd).
    max_to_keep: keep the newest this many checkpoints.
    async_save: write in a background thread (``wait()`` blocks until done).
    read_only: only restore; never create, save, move or delete anything.
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
    self.read_only = read_only
    _array_handler_for_this_backend()
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save and not read_only,
        create=not read_only,
        read_only=read_only,
        save_interval_steps=0 if read_only else 1,
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

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

  def restore_latest(
    self, abstract_state: TrainState, sharding: Sharding
  ) -> tuple[int, TrainState, dict] | None:
    """``(step, state, data_state)`` of the newest step that restores; None if there is no step.

    Steps are tried newest first. A step that fails (missing or garbled files, a half-written
    step, a restored step number that is not the directory's) gives one warning naming it and
    why; a writer moves it to ``<workdir>/bad_checkpoints/<step>`` (never deleted), a reader
    (``read_only``) leaves it. In a multi-process run every process tries the same steps and a
    step counts as intact only if it restored on every process.

    Raises:
      UserError: there are steps but none restores; the message lists each step and why.
    """
    tried = []
    for step in reversed(self.all_steps()):
      error = None
      try:
        state, data_state = self.restore(step, abstract_state, sharding)
        restored_step = int(np.asarray(state.step.addressable_data(0)).reshape(-1)[0])
        if restored_step != step:
          error = f"it holds step {restored_step}"
      except Exception as e:  # Orbax and tensorstore raise ValueError, OSError, KeyError, ...
        error = first_line(e, max_len=160)
      if _all_agree(error is None):
        return step, state, data_state
      error = error or "it failed on another process"
      tried.append(f"{step} ({error})")
      moved = self._move_aside(step)
      where = f"moved to {moved}" if moved else "left in place (read-only)"
      warning(f"checkpoint {self.path(step)} cannot be restored ({error}); {where}")
    if tried:
      raise UserError(
        f"no checkpoint in {self.directory} can be restored; tried step {'; '.join(tried)}"
      )
    return None

  def _move_aside(self, step: int) -> str | None:
    """Moves step ``step`` to ``<parent>/bad_checkpoints/<step>[.N]`` (process 0; all wait)."""
    if self.read_only:
      return None
    target = os.path.join(os.path.dirname(self.directory), BAD_CHECKPOINTS_DIR, str(step))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"gen_models.move_aside.{step}.before")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      base, n = target, 1
      while os.path.exists(target):  # Never overwrite an earlier bad copy.
        target, n = f"{base}.{n}", n + 1
      os.rename(self.path(step), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"gen_models.move_aside.{step}.after")
    self._manager.reload()
    return target

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
