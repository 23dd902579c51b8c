"""Everything about devices, meshes and shardings lives here.

The training mesh has one axis, ``data``, over every device of every process. Model state is
replicated (``P()``); batches are split along their batch axis. Each process produces only its
own rows of a global batch; :func:`global_batch` stitches them into one ``jax.Array``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gen_models.errors import UserError

DATA_AXIS = "data"

# Random numbers must not depend on how arrays are sharded (same seed on 1 or 8 devices gives
# the same noise). This is JAX's default since 0.5; set it explicitly so the guarantee is ours.
jax.config.update("jax_threefry_partitionable", True)


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins a multi-process run (``jax.distributed.initialize``).

  With no arguments JAX detects the cluster (SLURM, Cloud TPU, Open MPI). On CPU the cross-process
  collectives use gloo.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU devices only
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``data`` over ``devices`` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of model state: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Sharding of a batch whose axis ``batch_axis`` is split over ``data``."""
  return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Returns the per-process batch size or raises a one-line :class:`UserError`."""
  n_dev = mesh.devices.size
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
