"""The k-nearest-neighbour engine behind precision/recall and density/coverage.

Everything is computed from squared Euclidean distances on ``block × block`` tiles, each tile one
jit-compiled call, so memory is O(block² + block · k) on top of the inputs whatever N is — never
N × N. Distances are never stored; each tile is reduced as soon as it is made:

- :func:`kth_neighbour_sq_distances` — for every point of one set, the squared distance to its
  k-th nearest *other* point, for several k at once (a running top-(max k) merge across tiles;
  the set's distance matrix is symmetric, so only tiles on and above the diagonal are computed,
  each reduced along both axes).
- :func:`cross_counts` — one pass over the real × fake tiles that gives, per fake point, whether
  it lies inside some real point's k-NN ball and inside how many; and per real point, whether it
  lies inside some fake point's ball and its squared distance to the nearest fake point.

Squared distances come from ``|a|² + |b|² − 2 aᵀb`` in float32 on features shifted by one common
vector (the real features' mean by default; distances do not change), which keeps ``|a|²`` close
to the distances themselves and the round-off relative to them small. Comparisons are made on
squared distances (``d ≤ r ⇔ d² ≤ r²`` for d, r ≥ 0). Duplicated rows are at a distance of
float32 round-off (~1e-7 of the squared norm), not exactly 0; bitwise-equal rows get equal
values, so ties among duplicates are still ties.

Exactness: every pair's distance is computed by the same formula whatever the tile, so results do
not depend on ``block`` beyond float32 round-off in the matrix product (tests check exact equality
with a float64 brute force for several block sizes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_BLOCK = 1024

Ties = str  # "<" or "<="
TIES = ("<", "<=")


def _pad_rows(x: np.ndarray, block: int) -> np.ndarray:
  if len(x) == block:
    return x
  out = np.zeros((block, x.shape[1]), x.dtype)
  out[: len(x)] = x
  return out


def _tiles(n: int, block: int) -> list[tuple[int, int]]:
  return [(s, min(s + block, n)) for s in range(0, n, block)]


@jax.jit
def _prepare(x: jax.Array, shift: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Shifted float32 rows ``(B, D)`` and their squared norms ``(B,)``."""
  x = x.astype(jnp.float32) - shift
  return x, jnp.sum(x * x, axis=1)


@partial(jax.jit, donate_argnums=(0, 1))
def _write_block(rows, norms, x, shift, start):
  """Writes shifted block ``x`` (B, D) and its squared norms into ``rows``/``norms`` in place."""
  x, nx = _prepare(x, shift)
  rows = jax.lax.dynamic_update_slice_in_dim(rows, x, start, axis=0)
  return rows, jax.lax.dynamic_update_slice_in_dim(norms, nx, start, axis=0)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A feature set ready for tiling: shifted float32 rows, zero-padded to a multiple of
  ``block``, as one device array ``rows`` (N', D) with their squared norms ``norms`` (N',).

  One array, not a list of per-block buffers, and tiles are sliced from it inside the compiled
  tile functions: no per-tile copies or allocations that the allocator would keep (measured:
  per-block buffers made the 50k run peak 0.7 GB above its inputs plus this array).
  """

  rows: jax.Array
  norms: jax.Array
  n: int
  block: int


def prepare(x: np.ndarray, block: int, shift: np.ndarray | None = None) -> Prepared:
  """``x`` (N, D) shifted by ``shift`` (default 0), as a :class:`Prepared` of tile ``block``."""
  n, d = x.shape
  shift = jnp.asarray(np.zeros(d) if shift is None else shift, jnp.float32)
  padded = -(-n // block) * block
  rows, norms = jnp.zeros((padded, d), jnp.float32), jnp.zeros(padded, jnp.float32)
  for s, e in _tiles(n, block):
    rows, norms = _write_block(rows, norms, _pad_rows(x[s:e], block), shift, s)
  return Prepared(rows, norms, n, block)


def _tile(p_rows: jax.Array, p_norms: jax.Array, start: jax.Array, block: int):
  return (
    jax.lax.dynamic_slice_in_dim(p_rows, start, block, axis=0),
    jax.lax.dynamic_slice_in_dim(p_norms, start, block, axis=0),
  )


def _sq_dist(a, b) -> jax.Array:
  """Squared distances ``(A, B)`` between prepared blocks ``a`` and ``b`` (rows, norms)."""
  (xa, na), (xb, nb) = a, b
  ab = jax.lax.dot_general(xa, xb, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(na[:, None] + nb[None, :] - 2.0 * ab, 0.0)


def _merge_smallest(best: jax.Array, candidates: jax.Array, k: int) -> jax.Array:
  """The ``k`` smallest of ``best`` (R, k) and ``candidates`` (R, C) per row, ascending."""
  both = jnp.concatenate([best, candidates], axis=1)
  return -jax.lax.top_k(-both, k)[0]


@partial(jax.jit, static_argnames=("k", "block"))
def _self_tile(rows, norms, best_a, best_b, a_start, b_start, n, *, k: int, block: int):
  """Updates the running k smallest of tile rows ``a`` and ``b`` with ``d(a, b)``."""
  a = _tile(rows, norms, a_start, block)
  b = _tile(rows, norms, b_start, block)
  d = _sq_dist(a, b)
  rows = a_start + jnp.arange(d.shape[0])
  cols = b_start + jnp.arange(d.shape[1])
  invalid = (rows[:, None] == cols[None, :]) | (cols[None, :] >= n) | (rows[:, None] >= n)
  d = jnp.where(invalid, jnp.inf, d)
  best_a = _merge_smallest(best_a, d, k)
  # On the diagonal (a is b) the row update above is the whole update.
  best_b = jnp.where(a_start == b_start, best_a, _merge_smallest(best_b, d.T, k))
  return best_a, best_b


def kth_neighbour_sq_distances(
  x: np.ndarray | Prepared,
  ks: Sequence[int],
  block: int = DEFAULT_BLOCK,
  shift: np.ndarray | None = None,
  progress: Callable[[int], None] | None = None,
) -> dict[int, np.ndarray]:
  """Squared distance from each row of ``x`` (N, D) to its k-th nearest other row, per k.

  ``x`` may be a :class:`Prepared` set (then ``block`` and ``shift`` are its own). Returns
  ``{k: (N,) float32}``. A row's own zero distance is not counted (the reference code's
  ``partition(d, k)[:, k]`` with the self-distance at position 0 gives the same value); a
  duplicate of a row is another row. ``progress(tiles_done)`` is called per tile.
  """
  p = x if isinstance(x, Prepared) else prepare(x, min(block, len(x)), shift)
  n, block = p.n, p.block
  kmax = max(ks)
  if min(ks) < 1 or kmax >= n:
    raise ValueError(f"nearest_k must be in [1, N - 1 = {n - 1}], got {sorted(ks)}")
  starts = [s for s, _ in _tiles(n, block)]
  best = [jnp.full((block, kmax), jnp.inf, jnp.float32) for _ in starts]
  for i, a0 in enumerate(starts):
    for j in range(i, len(starts)):
      b0 = starts[j]
      best[i], best[j] = _self_tile(
        p.rows, p.norms, best[i], best[j], a0, b0, n, k=kmax, block=block
      )
      if progress is not None:
        progress(1)
  stacked = np.concatenate([np.asarray(bk) for bk in best])[:n]
  return {k: stacked[:, k - 1].copy() for k in ks}


def self_tile_count(n: int, block: int = DEFAULT_BLOCK) -> int:
  """Tiles :func:`kth_neighbour_sq_distances` computes for ``n`` rows (for progress bars)."""
  t = len(_tiles(n, block))
  return t * (t + 1) // 2


def cross_tile_count(n_real: int, n_fake: int, block: int = DEFAULT_BLOCK) -> int:
  """Tiles :func:`cross_counts` computes (for progress bars)."""
  return len(_tiles(n_real, block)) * len(_tiles(n_fake, block))


def _inside(d: jax.Array, radius: jax.Array, ties: Ties) -> jax.Array:
  return d <= radius if ties == "<=" else d < radius


@partial(jax.jit, static_argnames=("ties", "block"))
def _cross_tile(
  rows, norms, real_start, fake, real_radii, fake_radius, n_real_valid, n_fake_valid, *, ties, block
):
  """Reductions of one real × fake tile; radii are squared, ``real_radii`` is (K, R)."""
  real = _tile(rows, norms, real_start, block)
  d = _sq_dist(fake, real)  # (F, R)
  real_ok = jnp.arange(d.shape[1]) < n_real_valid
  fake_ok = jnp.arange(d.shape[0]) < n_fake_valid
  valid = fake_ok[:, None] & real_ok[None, :]
  # Per fake point and per k: inside how many real balls (precision: > 0, density: the count).
  in_real = _inside(d[None], real_radii[:, None, :], ties) & valid[None]
  fake_counts = jnp.sum(in_real, axis=2, dtype=jnp.int32)  # (K, F)
  # Per real point: inside some fake ball (recall); nearest fake (coverage).
  in_fake = _inside(d, fake_radius[:, None], ties) & valid
  real_in_fake = jnp.any(in_fake, axis=0)
  nearest_fake = jnp.min(jnp.where(valid, d, jnp.inf), axis=0)
  return fake_counts, real_in_fake, nearest_fake


def cross_counts(
  real: Prepared,
  fake: np.ndarray,
  real_radii: Sequence[np.ndarray],
  fake_radius: np.ndarray,
  ties: Ties = "<=",
  shift: np.ndarray | None = None,
  progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One pass over the real × fake distances, fake blocks prepared one at a time.

  Args:
    real: the prepared real features (N rows); its ``block`` is the tile side.
    fake: fake features (M, D), shifted by ``shift`` as ``real`` was.
    real_radii: K arrays (N,) of squared real k-NN radii.
    fake_radius: (M,) squared fake k-NN radii.
    ties: ``"<="`` (closed balls) or ``"<"`` (open balls).

  Returns:
    ``counts`` (K, M) int: for each radius set, the number of real balls containing each fake;
    ``real_in_fake`` (N,) bool: the real point lies in at least one fake ball;
    ``nearest_fake`` (N,) float32: squared distance from each real point to its nearest fake.
  """
  if ties not in TIES:
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
  n, m, block = real.n, len(fake), real.block
  shift = jnp.asarray(np.zeros(fake.shape[1]) if shift is None else shift, jnp.float32)
  radii = np.full((len(real_radii), len(real.rows)), -np.inf, np.float32)
  for i, r in enumerate(real_radii):
    radii[i, :n] = r
  counts = np.zeros((len(radii), m), np.int64)
  real_in_fake = np.zeros(n, bool)
  nearest_fake = np.full(n, np.inf, np.float32)
  real_spans = _tiles(n, block)
  for f0, f1 in _tiles(m, block):
    f = _prepare(_pad_rows(fake[f0:f1], block), shift)
    fr = np.full(block, -np.inf, np.float32)
    fr[: f1 - f0] = fake_radius[f0:f1]
    for r0, r1 in real_spans:
      c, inside, near = _cross_tile(
        real.rows,
        real.norms,
        r0,
        f,
        radii[:, r0 : r0 + block],
        fr,
        r1 - r0,
        f1 - f0,
        ties=ties,
        block=block,
      )
      counts[:, f0:f1] += np.asarray(c)[:, : f1 - f0]
      real_in_fake[r0:r1] |= np.asarray(inside)[: r1 - r0]
      nearest_fake[r0:r1] = np.minimum(nearest_fake[r0:r1], np.asarray(near)[: r1 - r0])
      if progress is not None:
        progress(1)
  return counts, real_in_fake, nearest_fake
