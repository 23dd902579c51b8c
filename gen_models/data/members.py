"""The data of a population: every member's batches of a train step, in its own seed's order.

Member ``i`` reads exactly the batches that the run of its seed trained alone reads
(``gen_models.data.StepIterator`` over the dataset made with ``seed_i``). Two ways:

* **On the device** (datasets with a ``table()``: the image sets held in memory and dSprites):
  the whole training split lives on every device in its compact form (uint8 images, dSprites as
  packed bits) and each step gathers every member's rows there; the host computes only the
  example indices ``(N, batches_per_step, B_local)`` int32, so its cost does not grow with the
  data, only with N by a few indices.
* **On the host** (the toy sets, drawn from ``(seed, batch index)`` in microseconds): one dataset
  per distinct seed, the members' batches stacked ``(N, batches_per_step, B_local, …)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gen_models.data import StepIterator, order, reseeded
from gen_models.errors import UserError


def has_table(dataset) -> bool:
  """Can ``dataset`` hold its training split on the device (``table``, ``decode``,
  ``rows_for_seed``)?"""
  return all(hasattr(dataset, a) for a in ("table", "decode", "rows_for_seed"))


def gather(table: dict[str, jax.Array], data, decode: Callable):
  """The batches of ``data`` from ``table`` (leaves ``(num_examples, …)``), decoded to model space
  by ``decode`` (leafwise rows → the dataset's batch form). ``data`` is the indices ``(N, k, B)``,
  or ``{"index": those, "flip": (N, k, B) bool}`` for a dataset with ``random_flip``: the images
  where ``flip`` is set are mirrored left-right, as the dataset's own ``batch`` mirrors them."""
  index = data["index"] if isinstance(data, dict) else data
  out = decode({k: jnp.take(v, index, axis=0) for k, v in table.items()})
  if isinstance(data, dict):
    flip = data["flip"][..., None, None, None]
    mirror = lambda x: jnp.where(flip, x[..., ::-1, :], x)  # (..., H, W, C): W reversed.
    out = {**out, "image": mirror(out["image"])} if isinstance(out, dict) else mirror(out)
  return out


class MemberSteps(StepIterator):
  """Yields each train step's data for every member; its state is the next step number (saved
  and restored as :class:`StepIterator`'s).

  ``next()`` gives the host arrays the compiled step takes: when :attr:`on_device`, the indices
  ``(N, k, B_local)`` int32 (with ``random_flip``, ``{"index": those, "flip": (N, k, B_local)
  bool}``: :func:`gather`), else the batches ``(N, k, B_local, …)`` (dict batches leafwise).

  Args:
    dataset: the dataset of the run's own seed (``config.seed``).
    seeds: each member's seed, ``(N,)``.
    batches_per_step: the family's.
    on_device: gather on the device (needs :func:`has_table`).
  """

  def __init__(self, dataset, seeds: Sequence[int], batches_per_step: int, on_device: bool):
    super().__init__(dataset, batches_per_step)
    self.seeds, self.on_device = [int(s) for s in seeds], on_device
    distinct = sorted(set(self.seeds))
    if on_device:
      if not has_table(dataset):
        raise UserError(f"dataset {dataset.name!r} cannot be gathered on the device")
      rows = {s: dataset.rows_for_seed(s) for s in distinct}
      self._rows = [rows[s] for s in self.seeds]
    else:
      self._iters = {s: StepIterator(reseeded(dataset, s), batches_per_step) for s in distinct}

  def __next__(self):
    k, t = self.batches_per_step, self.step
    self.step += 1
    if self.on_device:  # Every member's indices in one vectorised shuffle.
      index = order.ProcessBatches.stacked(self._rows, range(t * k, t * k + k)).astype(np.int32)
      if not getattr(self.dataset, "random_flip", False):
        return index
      b = index.shape[-1]
      flips = [
        [order.flips(r.seed, r.local(t * k + j) * b + np.arange(b)) for j in range(k)]
        for r in self._rows
      ]
      return {"index": index, "flip": np.asarray(flips)}
    by_seed = {}
    for s, it in self._iters.items():
      it.step = t
      by_seed[s] = next(it)
    batches = [by_seed[s] for s in self.seeds]
    return jax.tree.map(lambda *xs: np.stack(xs), *batches)
