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
  """Shifted float32 rows ``(B, D)`` and their squared norms ``(B,)``, made once per block."""
  x = x.astype(jnp.float32) - shift
  return x, jnp.sum(x * x, axis=1)


def _prepared_blocks(x: np.ndarray, block: int, shift: jax.Array) -> list:
  return [_prepare(_pad_rows(x[s:e], block), shift) for s, e in _tiles(len(x), block)]


def _sq_dist(a, b) -> jax.Array:
  """Squared distances ``(A, B)`` between prepared blocks ``a`` and ``b`` (rows, norms)."""
  (xa, na), (xb, nb) = a, b
  ab = jax.lax.dot_general(xa, xb, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(na[:, None] + nb[None, :] - 2.0 * ab, 0.0)


def _merge_smallest(best: jax.Array, candidates: jax.Array, k: int) -> jax.Array:
  """The ``k`` smallest of ``best`` (R, k) and ``candidates`` (R, C) per row, ascending."""
  both = jnp.concatenate([best, candidates], axis=1)
  return -jax.lax.top_k(-both, k)[0]


@partial(jax.jit, static_argnames=("k",))
def _self_tile(a, b, best_a, best_b, a_start, b_start, n, *, k: int):
  """Updates the running k smallest of rows of ``a`` and ``b`` with tile ``d(a, b)``."""
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
  x: np.ndarray,
  ks: Sequence[int],
  block: int = DEFAULT_BLOCK,
  shift: np.ndarray | None = None,
  progress: Callable[[int], None] | None = None,
) -> dict[int, np.ndarray]:
  """Squared distance from each row of ``x`` (N, D) to its k-th nearest other row, per k.

  Returns ``{k: (N,) float32}``. A row's own zero distance is not counted (the reference code's
  ``partition(d, k)[:, k]`` with the self-distance at position 0 gives the same value); a
  duplicate of a row is another row, at distance 0. ``progress(tiles_done)`` is called per tile.
  """
  n = len(x)
  kmax = max(ks)
  if min(ks) < 1 or kmax >= n:
    raise ValueError(f"nearest_k must be in [1, N - 1 = {n - 1}], got {sorted(ks)}")
  block = min(block, n)
  shift = jnp.asarray(np.zeros(x.shape[1]) if shift is None else shift, jnp.float32)
  spans = _tiles(n, block)
  blocks = _prepared_blocks(x, block, shift)
  best = [jnp.full((block, kmax), jnp.inf, jnp.float32) for _ in spans]
  for i, (a0, _) in enumerate(spans):
    for j in range(i, len(spans)):
      best[i], best[j] = _self_tile(
        blocks[i], blocks[j], best[i], best[j], a0, spans[j][0], n, k=kmax
      )
      if progress is not None:
        progress(1)
  stacked = np.concatenate([np.asarray(bk) for bk in best])[:n]
  return {k: stacked[:, k - 1].copy() for k in ks}


def self_tile_count(n: int, block: int = DEFAULT_BLOCK) -> int:
  """Tiles :func:`kth_neighbour_sq_distances` computes for ``n`` rows (for progress bars)."""
  t = len(_tiles(n, min(block, n)))
  return t * (t + 1) // 2


def cross_tile_count(n_real: int, n_fake: int, block: int = DEFAULT_BLOCK) -> int:
  """Tiles :func:`cross_counts` computes (for progress bars)."""
  block = min(block, max(n_real, n_fake))
  return len(_tiles(n_real, block)) * len(_tiles(n_fake, block))


def _inside(d: jax.Array, radius: jax.Array, ties: Ties) -> jax.Array:
  return d <= radius if ties == "<=" else d < radius


@partial(jax.jit, static_argnames=("ties",))
def _cross_tile(real, fake, real_radii, fake_radius, n_real_valid, n_fake_valid, *, ties):
  """Reductions of one real × fake tile; radii are squared, ``real_radii`` is (K, R)."""
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
  real: np.ndarray,
  fake: np.ndarray,
  real_radii: Sequence[np.ndarray],
  fake_radius: np.ndarray,
  ties: Ties = "<=",
  block: int = DEFAULT_BLOCK,
  shift: np.ndarray | None = None,
  progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One pass over the real × fake distances.

  Args:
    real, fake: features (N, D) and (M, D).
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
  n, m = len(real), len(fake)
  block = min(block, max(n, m))
  shift = jnp.asarray(np.zeros(real.shape[1]) if shift is None else shift, jnp.float32)
  radii = np.stack([np.asarray(r, np.float32) for r in real_radii])
  counts = np.zeros((len(radii), m), np.int64)
  real_in_fake = np.zeros(n, bool)
  nearest_fake = np.full(n, np.inf, np.float32)
  real_blocks = _prepared_blocks(real, block, shift)
  real_spans = _tiles(n, block)
  real_radii_blocks = []
  for r0, r1 in real_spans:
    rr = np.full((len(radii), block), -np.inf, np.float32)
    rr[:, : r1 - r0] = radii[:, r0:r1]
    real_radii_blocks.append(rr)
  for f0, f1 in _tiles(m, block):
    f = _prepare(_pad_rows(fake[f0:f1], block), shift)
    fr = np.full(block, -np.inf, np.float32)
    fr[: f1 - f0] = fake_radius[f0:f1]
    for (r0, r1), r, rr in zip(real_spans, real_blocks, real_radii_blocks, strict=True):
      c, inside, near = _cross_tile(r, f, rr, fr, r1 - r0, f1 - f0, ties=ties)
      counts[:, f0:f1] += np.asarray(c)[:, : f1 - f0]
      real_in_fake[r0:r1] |= np.asarray(inside)[: r1 - r0]
      nearest_fake[r0:r1] = np.minimum(nearest_fake[r0:r1], np.asarray(near)[: r1 - r0])
      if progress is not None:
        progress(1)
  return counts, real_in_fake, nearest_fake
