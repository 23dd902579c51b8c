"""The example order of the shuffled datasets: grain's global shuffle, computed per batch.

``batch_indices(n, b, seed, i)`` is batch ``i`` of
``grain.MapDataset.range(n).shuffle(seed=seed).repeat().batch(b, drop_remainder=True)``: flat
position ``t = i·b + j`` of the endless stream is example
``index_shuffle(t mod n, max_index=n − 1, seed=(seed + ⌊t / n⌋) mod 2³², rounds=4)`` — a new
permutation of the ``n`` examples each epoch, and batches run on across epoch boundaries. That is
what grain's ``ShuffleMapDataset`` and ``RepeatMapDataset`` compute element by element through
their Python layers (~27 µs an element on this CPU); calling ``grain.experimental.index_shuffle``
directly takes ~5 µs. :func:`index_shuffle` computes the same permutation for a whole array of
positions at once in numpy (~0.5 µs an element: a batch of every member of a 36-member population
in ~1 ms instead of ~60 ms); for sets much smaller than the cipher's 2¹⁶ block, whose cycle
walking would loop thousands of times, it calls grain's function element by element.
``tests/test_data_order.py`` checks the equality with grain's datasets and with
``grain.experimental.index_shuffle`` element by element.

The permutation (grain's ``index_shuffle.cc``, facts only): a Feistel network of the Simon round
function ``F(x) = (x ⋘ 1 & x ⋘ 8) ⊕ (x ⋘ 2)`` on two words of ``w`` bits, block size
``2w = max(b + b mod 2, 16)`` with ``b = ⌈log₂ max_index⌉``, ``rounds`` round keys from C++'s
``std::seed_seq{seed}.generate`` (the standard's algorithm, :func:`seed_seq_words`) truncated to
``w`` bits; two rounds ``L ← L ⊕ F(R) ⊕ k₂ᵢ, R ← R ⊕ F(L) ⊕ k₂ᵢ₊₁`` at a time; encryptions
repeated until the value is ``≤ max_index`` (cycle walking).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from gen_models.errors import UserError

_SEEDS = 2**32  # grain's shuffle seeds are 32-bit.
_M32 = 0xFFFFFFFF


def seed_seq_words(seed: int, n: int) -> list[int]:
  """``std::seed_seq{seed}.generate`` of ``n`` 32-bit words, as the C++ standard specifies it
  ([rand.util.seedseq]: a fill with 0x8b8b8b8b, then two mixing passes)."""
  out, s = [0x8B8B8B8B] * n, 1
  t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
  p = (n - t) // 2
  q, m = p + t, max(s + 1, n)
  mix = lambda x: (x ^ (x >> 27)) & _M32
  for k in range(m):
    r1 = (1664525 * mix(out[k % n] ^ out[(k + p) % n] ^ out[(k - 1) % n])) & _M32
    r2 = (r1 + (s if k == 0 else k % n + seed if k <= s else k % n)) & _M32
    out[(k + p) % n] = (out[(k + p) % n] + r1) & _M32
    out[(k + q) % n] = (out[(k + q) % n] + r2) & _M32
    out[k % n] = r2
  for k in range(m, m + n):
    r3 = (1566083941 * mix((out[k % n] + out[(k + p) % n] + out[(k - 1) % n]) & _M32)) & _M32
    r4 = (r3 - k % n) & _M32
    out[(k + p) % n] ^= r3
    out[(k + q) % n] ^= r4
    out[k % n] = r4
  return out


@functools.lru_cache(maxsize=4096)
def _round_keys(seed: int, rounds: int) -> tuple[int, ...]:
  return tuple(seed_seq_words(seed, rounds))


def index_shuffle(index: np.ndarray, max_index: int, seed, rounds: int = 4) -> np.ndarray:
  """The positions of ``index`` (any shape, ints in ``[0, max_index]``) in grain's permutation of
  ``[0, max_index]`` for ``seed`` (an int, or ints broadcastable to ``index``: one permutation
  per element) — ``grain.experimental.index_shuffle`` elementwise, vectorised (the module
  docstring gives the cipher). Returns int64 of ``index``'s shape."""
  index = np.asarray(index, np.uint64)
  if max_index == 0:
    return np.zeros(index.shape, np.int64)
  bits = math.ceil(math.log2(max_index))
  w = max(bits + bits % 2, 16) // 2
  if (1 << 2 * w) > 16 * (max_index + 1):
    # A small set in the 2¹⁶ block: cycle walking takes ~2¹⁶/n rounds an element, a loop of
    # numpy calls here; grain's C++ walks each element in microseconds.
    from grain.experimental import index_shuffle as grain_index_shuffle

    seeds = np.broadcast_to(np.asarray(seed, np.int64) & _M32, index.shape)
    flat = [
      grain_index_shuffle(int(i), max_index, int(s), rounds)
      for i, s in zip(index.reshape(-1).tolist(), seeds.reshape(-1).tolist(), strict=True)
    ]
    return np.asarray(flat, np.int64).reshape(index.shape)
  mask, width = np.uint64((1 << w) - 1), np.uint64(w)
  seeds, where = np.unique(
    np.broadcast_to(np.asarray(seed, np.int64) & _M32, index.shape), return_inverse=True
  )
  table = np.asarray([_round_keys(int(s), rounds) for s in seeds], np.uint64) & mask
  keys = table[where.reshape(index.shape)]  # (*index.shape, rounds)
  rotl = lambda x, r: ((x << np.uint64(r)) | (x >> (width - np.uint64(r)))) & mask
  f = lambda x: (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)

  def encrypt(v, k):
    left, right = (v >> width) & mask, v & mask
    for i in range(0, rounds, 2):
      left = left ^ f(right) ^ k[..., i]
      right = right ^ f(left) ^ k[..., i + 1]
    return (left << width) | right

  out, todo = index.copy(), np.ones(index.shape, bool)
  while todo.any():  # Cycle walking: re-encrypt what fell outside [0, max_index].
    out[todo] = encrypt(out[todo], keys[todo])
    todo = out > np.uint64(max_index)
  return out.astype(np.int64)


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
  return many_batch_indices(num_examples, batch_size, [seed], [batch])[0, 0]


def many_batch_indices(
  num_examples: int, batch_size: int, seeds: Sequence[int], batches: Sequence[int]
) -> np.ndarray:
  """:func:`batch_indices` of every seed and batch at once: ``(len(seeds), len(batches),
  batch_size)`` int64, in one vectorised shuffle (a population's step: its members' seeds)."""
  flat = np.asarray(batches, np.int64)[:, None] * batch_size + np.arange(batch_size)
  epochs, positions = divmod(flat, num_examples)  # A batch may span an epoch boundary.
  seed = (np.asarray(seeds, np.int64)[:, None, None] + epochs[None]) % _SEEDS
  return index_shuffle(np.broadcast_to(positions, seed.shape), num_examples - 1, seed)


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

  @staticmethod
  def stacked(rows: Sequence[ProcessBatches], indices: Sequence[int]) -> np.ndarray:
    """``rows[n](indices[j])`` for every ``n`` and ``j``: ``(N, len(indices), B/P)`` int64, all
    in one vectorised shuffle; ``rows`` differ only in their seed."""
    first = rows[0]
    local = [first.local(i) for i in indices]
    seeds = [r.seed for r in rows]
    return many_batch_indices(first.num_examples, first.local_batch_size, seeds, local)


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
