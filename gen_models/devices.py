"""Everything about devices, meshes and shardings lives here.

The training mesh has one axis, ``data``, over every device of every process. Model state is
replicated (``P()``); batches are split along their batch axis. Each process produces only its
own rows of a global batch; :func:`global_batch` stitches them into one ``jax.Array``.

A vmapped population (:mod:`gen_models.population`) may also split its members over devices:
the mesh is then ``members × data``, its state split along the leading member axis
(:func:`member_sharding`) and its batches along both.

A step traced under its mesh (:func:`under_mesh`) splits what it draws per example, a generator's
noise, over ``data`` like a batch (:func:`shard_like_batch`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gen_models.errors import EXIT_ERROR, Stopped, UserError

DATA_AXIS = "data"
MEMBERS_AXIS = "members"

# Random numbers must not depend on how arrays are sharded (same seed on 1 or 8 devices gives
# the same noise). This is JAX's default since 0.5; set it explicitly so the guarantee is ours.
jax.config.update("jax_threefry_partitionable", True)


DEFAULT_PEER_TIMEOUT_S = 60
_peer_timeout_s = DEFAULT_PEER_TIMEOUT_S


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  peer_timeout_s: int = DEFAULT_PEER_TIMEOUT_S,
) -> None:
  """Joins a multi-process run (``jax.distributed.initialize``).

  With no arguments JAX detects the cluster (SLURM, Cloud TPU, Open MPI). On CPU the cross-process
  collectives use gloo. ``peer_timeout_s`` is how long a process may go silent before the others
  give up on it (:func:`watch_peers`); JAX's own heartbeat timeout, which aborts the process with
  a stack trace, is set to twice that as a backstop.
  """
  global _peer_timeout_s
  if peer_timeout_s < 1:
    raise UserError(f"--peer_timeout_s must be >= 1, got {peer_timeout_s}")
  _peer_timeout_s = peer_timeout_s
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU devices only
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    heartbeat_timeout_seconds=2 * peer_timeout_s,
  )


class _PeerWatch:
  """A thread that exits this process with one ``error:`` line when another process is lost.

  Every ``timeout / 10`` seconds each process bumps a counter under its key in the distributed
  runtime's key-value store and reads the others'. A peer whose counter has not moved for
  ``timeout`` seconds (SIGKILL, a dead host) is lost; so is one that wrote ``failed``; a failed
  call to the store means the coordinator (process 0) is gone. Peers that wrote ``done`` have
  left the loop normally; a peer not yet seen (still starting) is not judged — should it die
  before its first beat, JAX's heartbeat timeout (2 × timeout) ends the run. Without the watch
  the survivors would wait in their next collective until JAX's heartbeat timeout aborts them
  with a fatal log and a stack trace.
  """

  def __init__(self, timeout: float):
    from jax._src import distributed  # The runtime client: key-value store of the coordinator.

    self.client = distributed.global_state.client
    self.timeout, self.me, self.n = timeout, jax.process_index(), jax.process_count()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="gen_models.peer_watch", daemon=True)

  def _key(self, process: int) -> str:
    return f"gen_models/peer_watch/{process}"

  def _lost(self, message: str) -> None:
    from absl import logging

    logging.flush()
    print(
      f"error: {message}; stopping this process too (rerun the same command on every process "
      "to resume from the last checkpoint)",
      file=sys.stderr,
      flush=True,
    )
    os._exit(EXIT_ERROR)

  def _run(self) -> None:
    seen = {p: (None, time.monotonic()) for p in range(self.n) if p != self.me}
    beat = 0
    while not self._stop.wait(self.timeout / 10):
      beat += 1
      try:
        self.client.key_value_set(self._key(self.me), f"alive {beat}", allow_overwrite=True)
      except Exception:
        if not self._stop.is_set():
          self._lost(f"lost contact with the coordinator (process 0 of {self.n})")
        return
      now = time.monotonic()
      for p, (last, since) in seen.items():
        try:
          value = self.client.key_value_try_get(self._key(p))
        except Exception:  # Not written yet: the peer has not started its loop.
          value = None
        if value == "done":
          continue
        if value is not None and value.startswith("failed"):
          self._lost(f"process {p} of {self.n} {value}")
        if value != last:
          seen[p] = (value, now)
        elif value is not None and now - since > self.timeout and not self._stop.is_set():
          self._lost(
            f"process {p} of {self.n} was lost (no sign of life for {self.timeout:g} s: "
            "killed, crashed or its host is down)"
          )

  def __enter__(self) -> _PeerWatch:
    self._thread.start()
    return self

  def await_lost_peer(self) -> None:
    """Called when a collective failed (gloo raises at once when a peer's socket closes): waits
    up to 1.5 × timeout for the watch to name the lost process and exit; returns if it doesn't."""
    self._thread.join(1.5 * self.timeout)

  def __exit__(self, exc_type, exc, tb) -> None:
    self._stop.set()
    self._thread.join()
    failed = exc is not None and not isinstance(exc, Stopped)
    state = f"failed ({type(exc).__name__}: {exc})" if failed else "done"
    with contextlib.suppress(Exception):
      self.client.key_value_set(self._key(self.me), state.splitlines()[0], allow_overwrite=True)


class _NoPeers(contextlib.nullcontext):
  def await_lost_peer(self) -> None:
    pass


def watch_peers(timeout: float | None = None):
  """``with watch_peers() as w:`` a lost process ends this one within ``timeout`` (+10%) seconds
  with one ``error:`` line naming it; call ``w.await_lost_peer()`` when a collective fails.

  A no-op in a one-process run. ``timeout`` defaults to the ``peer_timeout_s`` given to
  :func:`initialize_distributed`.
  """
  if jax.process_count() == 1:
    return _NoPeers()
  return _PeerWatch(timeout or _peer_timeout_s)


def make_mesh(devices: Sequence[jax.Device] | None = None, members: int = 1) -> Mesh:
  """A 1-D mesh with axis ``data`` over ``devices`` (default: all devices of all processes), or
  with ``members`` > 1 a 2-D ``members × data`` mesh of ``members`` groups of devices."""
  devices = list(jax.devices() if devices is None else devices)
  if members == 1:
    return Mesh(np.asarray(devices), (DATA_AXIS,))
  grid = np.asarray(devices).reshape(members, len(devices) // members)
  return Mesh(grid, (MEMBERS_AXIS, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of model state: a full copy on every device."""
  return NamedSharding(mesh, P())


def member_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a population's state: split along its leading member axis over ``members``
  (a full copy on every device of a 1-D mesh)."""
  return NamedSharding(mesh, P(MEMBERS_AXIS) if MEMBERS_AXIS in mesh.axis_names else P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Sharding of a batch whose axis ``batch_axis`` is split over ``data`` (and, on a
  ``members × data`` mesh, whose leading member axis is split over ``members``)."""
  spec = [None] * batch_axis + [DATA_AXIS]
  if MEMBERS_AXIS in mesh.axis_names:
    spec[0] = MEMBERS_AXIS
  return NamedSharding(mesh, P(*spec))


def under_mesh(fn, mesh: Mesh):
  """``fn`` traced with ``mesh`` as the context mesh, so that :func:`shard_like_batch` inside it
  knows the ``data`` axis (jit it as usual; the mesh is only read while tracing)."""

  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced


def shard_like_batch(x: jax.Array) -> jax.Array:
  """``x`` (leading axis: examples) split over ``data`` like a batch, when traced under a mesh
  with that axis (:func:`under_mesh`); the identity otherwise (no mesh: eager, one device).

  For what a step draws per example with no data input to take a sharding from (a generator's
  noise): left unconstrained, the partitioner computes it, and all that follows from it, in full
  on every device. Values do not change (``jax_threefry_partitionable``). Under ``vmap`` the
  member axis stays unconstrained (split over ``members`` by the state's sharding).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names:
    return x
  return jax.lax.with_sharding_constraint(x, P(DATA_AXIS))


def split_over_members(fn):
  """``fn`` over arguments and results whose every leaf has a leading member axis, run as one
  program per member group when traced under a ``members × data`` mesh (:func:`under_mesh`):
  ``jax.shard_map`` manual over ``members``, ``data`` left to the partitioner. The identity on
  any other mesh, or none.

  Without it, the partitioner sees a vmapped step's grouped convolutions (the member axis folded
  into their feature groups), cannot split them along the members and gathers their operands on
  every device: a β-VAE population of 4 on 4 × 2 devices sent 63 all-gathers (123 MB) a step,
  and none with it (docs/BENCHMARKS.md). Each group runs its own members; a member's gradient is
  all-reduced over its group's ``data`` devices only.
  """

  def run(*args):
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or MEMBERS_AXIS not in mesh.axis_names:
      return fn(*args)
    spec = P(MEMBERS_AXIS)
    groups = jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, axis_names={MEMBERS_AXIS})
    return groups(*args)

  return run


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Returns the per-process batch size or raises a one-line :class:`UserError`."""
  n_dev = mesh.shape[DATA_AXIS]
  if global_batch_size <= 0 or global_batch_size % n_dev:
    raise UserError(
      f"batch_size={global_batch_size} cannot be split evenly over {n_dev} devices; "
      f"use a multiple of {n_dev} (--config.batch_size=...)"
    )
  return global_batch_size // jax.process_count()


def process_rows(global_batch_size: int) -> slice:
  """The rows of every global batch that this process produces."""
  local = global_batch_size // jax.process_count()
  start = jax.process_index() * local
  return slice(start, start + local)


def global_batch(local: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
  """Makes one global ``jax.Array`` per leaf from this process's rows (``batch_axis`` split)."""
  sharding = batch_sharding(mesh, batch_axis)

  def one(x):
    x = np.asarray(x)
    shape = list(x.shape)
    shape[batch_axis] *= jax.process_count()
    return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

  return jax.tree.map(one, local)


def to_host(tree: Any) -> Any:
  """Global arrays → numpy with the full global value, on every process."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(one, tree)
