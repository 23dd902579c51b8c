"""The example order of the shuffled datasets: grain's global shuffle, computed per batch.

``batch_indices(n, b, seed, i)`` is batch ``i`` of
``grain.MapDataset.range(n).shuffle(seed=seed).repeat().batch(b, drop_remainder=True)``: flat
position ``t = i·b + j`` of the endless stream is example
``index_shuffle(t mod n, max_index=n − 1, seed=(seed + ⌊t / n⌋) mod 2³², rounds=4)`` — a new
permutation of the ``n`` examples each epoch, and batches run on across epoch boundaries. That is
what grain's ``ShuffleMapDataset`` and ``RepeatMapDataset`` compute element by element through
their Python layers (~27 µs an element on this CPU); calling ``grain.experimental.index_shuffle``
directly takes ~5 µs. ``tests/test_data_order.py`` checks the equality with grain's datasets.
"""

from __future__ import annotations

import numpy as np
from grain.experimental import index_shuffle

from gen_models.errors import UserError

_SEEDS = 2**32  # grain's shuffle seeds are 32-bit.


def check_seed(seed: int) -> int:
  """``seed`` if grain's shuffle takes it (``0 ≤ seed < 2³²``), else a one-line UserError."""
  if not 0 <= seed < _SEEDS:
    raise UserError(f"seed must be in [0, 2**32) for the data shuffle, got {seed}")
  return int(seed)


def batch_indices(num_examples: int, batch_size: int, seed: int, batch: int) -> np.ndarray:
  """Example indices ``(batch_size,)`` int64 of batch ``batch`` of the seeded endless shuffle
  of ``num_examples`` examples (the module docstring gives the formula)."""
  if num_examples < 1 or batch_size < 1 or batch < 0:
    raise ValueError(f"bad order arguments: n={num_examples}, b={batch_size}, batch={batch}")
  epochs, positions = divmod(np.arange(batch * batch_size, (batch + 1) * batch_size), num_examples)
  last = num_examples - 1
  return np.array(
    [
      index_shuffle(k, last, (seed + e) % _SEEDS, 4)  # (index, max_index, seed, rounds)
      for e, k in zip(epochs.tolist(), positions.tolist(), strict=True)
    ],
    np.int64,
  )


class ProcessBatches:
  """This process's rows of every global batch of a shuffled dataset of ``num_examples``.

  Global batch ``i`` of ``B`` examples holds flat positions ``[i·B, (i+1)·B)`` of the order above;
  process ``p`` of ``P`` takes rows ``[p·B/P, (p+1)·B/P)``, i.e. local batch ``i·P + p`` of
  ``B/P``. Calling it with ``i`` gives those example indices ``(B/P,)`` int64.
  """

  def __init__(self, num_examples: int, global_batch_size: int, seed: int):
    import jax

    self.num_examples, self.seed = num_examples, check_seed(seed)
    self.num_processes, self.process = jax.process_count(), jax.process_index()
    self.local_batch_size = global_batch_size // self.num_processes

  def __call__(self, index: int) -> np.ndarray:
    return batch_indices(self.num_examples, self.local_batch_size, self.seed, self.local(index))

  def local(self, index: int) -> int:
    """The local batch number ``i·P + p`` of global batch ``index`` (its flat positions are
    ``[local·B/P, (local + 1)·B/P)``)."""
    return index * self.num_processes + self.process


_M64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser (Steele et al. 2014) on uint64 values, wrapping mod 2⁶⁴."""
  x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(_M64)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def flips(seed: int, positions: np.ndarray) -> np.ndarray:
  """Whether the example at each flat stream position ``t`` is flipped horizontally: the top bit
  of ``splitmix64(splitmix64(seed) + t)`` (``(N,)`` bool). A pure function of the seed and the
  position — the same on every process count and on resume — and independent of which example
  the shuffle put there."""
  with np.errstate(over="ignore"):
    key = _splitmix64(np.asarray([check_seed(seed)], np.uint64))
    h = _splitmix64(key + np.asarray(positions, np.uint64))
  return (h >> np.uint64(63)).astype(bool)
