r"""The disentanglement metrics of many encoders at once (a population's members), fast.

:func:`evaluate_members` gives every member the numbers that
:func:`gen_models.metrics.disentanglement.evaluate` gives it alone, for the same seed (the same
draws, the same classifiers), provided the encoder is a function of the image alone (a VAE's
posterior mean is); it differs in how the work is done:

1. **Draws first.** Every metric's random draws (:func:`disentanglement.draw`) are made on the
   host before anything is encoded: at disentanglement_lib's sizes 2.9 million factor vectors,
   the same for every member.
2. **Each distinct observation encoded once, for all members.** The factor vectors are mapped to
   their grid index and deduplicated: on dSprites (737,280 images) the 2.9 million draws hold
   about 723,000 distinct images, so the encoder does 4× less work, and the images are rendered
   or gathered once for the whole population rather than once per member. ``codes_of`` encodes
   them in large compiled batches (:func:`jax_codes`: on the device from the dataset's table
   when it has one, every member per batch).
3. **The classifiers in parallel.** Each metric's scoring is a list of independent jobs (one
   per factor for DCI and SAP; :class:`disentanglement.Scoring`); the jobs of every member and
   metric run in a pool of worker processes (DCI's numpy trees hold the GIL too often for
   threads: measured 89 s of classifiers for one member with 2 threads, no faster than one).

Progress (encoding, then the classifiers) goes to ``progress(label, done, total)``
(:class:`gen_models.logs.ProgressBar` draws it with an ETA), and the seconds of each phase are
returned, so that where the time goes is measured, not guessed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from gen_models.errors import UserError
from gen_models.metrics import disentanglement as dis

Progress = Callable[[str, int, int], None]
PROCESSES_FROM = 100_000  # Factor vectors drawn from which the classifiers run in processes.
# ``codes_of(factors (U, K) int64, progress) -> codes (M, U, d)``: every member's codes of the
# observations of ``factors``.
CodesOf = Callable[[np.ndarray, Progress | None], np.ndarray]


def unique_factors(
  draws: list[dis.Draws], factor_sizes
) -> tuple[np.ndarray, dict[tuple[str, str], np.ndarray]]:
  """``(factors (U, K) int64, inverse)``: the distinct factor vectors of all ``draws`` in grid
  order, and per ``(metric, name)`` the row of each drawn vector ``(n,)`` in them."""
  keys = {
    (d.metric, name): np.ravel_multi_index(tuple(f.T), factor_sizes)
    for d in draws
    for name, f in d.factors.items()
  }
  unique, inverse = np.unique(np.concatenate(list(keys.values())), return_inverse=True)
  out, start = {}, 0
  for key, k in keys.items():
    out[key] = inverse[start : start + len(k)]
    start += len(k)
  factors = np.stack(np.unravel_index(unique, factor_sizes), axis=-1).astype(np.int64)
  return factors, out


def default_workers() -> int:
  """Threads for the classifier jobs: the CPUs this process may use."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def evaluate_members(
  codes_of: CodesOf,
  data,
  metrics=dis.METRICS,
  seed: int = 0,
  num_train: int | None = None,
  num_eval: int | None = None,
  workers: int | None = None,
  progress: Progress | None = None,
  processes: bool | None = None,
  dci_trees: str = "numpy",
) -> tuple[list[dict[str, float]], dict[str, float]]:
  """The named metrics of every member of ``codes_of``.

  Args:
    codes_of: every member's codes of given factor vectors (:data:`CodesOf`); ``M`` members.
    data: the ground-truth dataset (:mod:`gen_models.metrics.disentanglement`'s interface).
    metrics, seed, num_train, num_eval: as :func:`disentanglement.draw`.
    workers: parallel classifier jobs (default: :func:`default_workers`); 1 runs them here.
    progress: ``progress(label, done, total)`` for the encoding and the classifiers.
    processes: run the jobs in worker processes (numpy-bound jobs such as DCI's trees hold the
      GIL too often for threads to run them in parallel) rather than threads; None: processes
      when at least :data:`PROCESSES_FROM` factor vectors are drawn (the published sizes draw
      2.9 million), threads for small evaluations, where starting processes costs more.
    dci_trees: DCI's trees, ``"numpy"`` (the port, default) or ``"sklearn"``
      (:func:`disentanglement.score`).

  Returns:
    ``(scores, seconds)``: per member ``{"<metric>/<score>": value}`` (as
    :func:`disentanglement.evaluate`), and the wall seconds of ``draw``, ``encode`` (rendering or
    gathering the observations included), ``classifiers`` and ``total``, with ``observations``
    (distinct ones encoded per member) and ``drawn`` (factor vectors drawn).

  Raises:
    UserError: unknown metrics, a dataset without ground truth, or codes that are not finite
      ``(M, U, d)``.
  """
  start = time.perf_counter()
  draws = dis.draw(data, metrics, seed, num_train, num_eval)
  factors, inverse = unique_factors(draws, tuple(data.factor_sizes))
  drawn = sum(len(v) for v in inverse.values())
  t_draw = time.perf_counter()
  codes = np.asarray(codes_of(factors, progress), np.float64)
  t_encode = time.perf_counter()
  if codes.ndim != 3 or codes.shape[1] != len(factors) or codes.shape[2] < 1:
    raise UserError(f"codes_of must return codes (M, U={len(factors)}, d), got {codes.shape}")
  if not np.all(np.isfinite(codes)):
    bad = sorted({int(m) for m in np.flatnonzero(~np.all(np.isfinite(codes), axis=(1, 2)))})
    raise UserError(f"the encoder returned NaN or infinite codes (members {bad})")
  scorings = []  # (member, metric, Scoring)
  for m in range(codes.shape[0]):
    for d in draws:
      member_codes = {name: codes[m, inverse[(d.metric, name)]] for name in d.factors}
      scorings.append((m, d.metric, dis.score(d, member_codes, dci_trees)))
  workers = workers or default_workers()
  if processes is None:  # Small evaluations (tests, smoke runs) are not worth starting processes.
    processes = drawn >= PROCESSES_FROM
  results = _run_jobs(scorings, workers, processes, progress)
  scores = [{} for _ in range(codes.shape[0])]
  for (m, metric, _), out in zip(scorings, results, strict=True):
    scores[m].update({f"{metric}/{k}": v for k, v in out.items()})
  end = time.perf_counter()
  seconds = {
    "draw": t_draw - start,
    "encode": t_encode - t_draw,
    "classifiers": end - t_encode,
    "total": end - start,
    "observations": len(factors),
    "drawn": drawn,
  }
  return scores, seconds


def _pool(workers: int, processes: bool) -> concurrent.futures.Executor:
  """Processes (``forkserver``: children that do not inherit this process's threads, e.g.
  JAX's) or threads."""
  if not (processes and _main_importable()):
    return concurrent.futures.ThreadPoolExecutor(max_workers=workers)
  methods = multiprocessing.get_all_start_methods()
  context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
  return concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)


def _main_importable() -> bool:
  """Can worker processes import ``__main__`` (they do): a module, a script file, or none (an
  interactive session)? Not a program read from stdin or ``-c``."""
  main = sys.modules.get("__main__")
  if getattr(main, "__spec__", None) is not None:
    return True
  path = getattr(main, "__file__", None)
  return path is None or os.path.isfile(path)


def _run_jobs(scorings, workers: int, processes: bool, progress) -> list[dict[str, float]]:
  """Every scoring's jobs in a pool of ``workers``; each scoring's combined scores. Jobs with a
  known cost (DCI's trees, by their number of classes) are submitted first, most expensive first,
  so that no long job starts last."""
  jobs = [(i, j, job) for i, (_, _, s) in enumerate(scorings) for j, job in enumerate(s.jobs)]
  cost = lambda t: (scorings[t[0]][2].costs or (0.0,) * (t[1] + 1))[t[1]]
  jobs.sort(key=lambda t: -cost(t))
  results = [[None] * len(s.jobs) for _, _, s in scorings]
  if progress is not None:
    progress("classifiers", 0, len(jobs))
  if workers <= 1:
    for done, (i, j, job) in enumerate(jobs, start=1):
      results[i][j] = job()
      if progress is not None:
        progress("classifiers", done, len(jobs))
  else:
    with _pool(workers, processes) as pool:
      futures = {pool.submit(job): (i, j) for i, j, job in jobs}
      for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
        i, j = futures[future]
        results[i][j] = future.result()
        if progress is not None:
          progress("classifiers", done, len(jobs))
  return [s.combine(r) for (_, _, s), r in zip(scorings, results, strict=True)]


MEMBER_EXECUTIONS = {
  "auto": None,
  "vmap": True,
  "loop": False,
}  # Name → :func:`jax_codes` ``vmap``.


def jax_codes(
  encode_fn,
  state,
  dataset,
  num_members: int | None,
  batch_size: int = 1024,
  vmap: bool | None = None,
  timing: dict | None = None,
) -> CodesOf:
  """``codes_of`` from a family's ``encode(state, x (B, *shape)) -> (B, d)`` and a state.

  Observations come from the dataset's table on the device (``table()``, ``decode`` and
  ``index_of``: dSprites, as packed bits) when the distinct observations are at least a quarter
  of the grid — one host-to-device copy, then every batch gathered there from int32 indices —
  and otherwise from ``dataset.observations`` on the host (rendering only what is drawn). Each
  batch of ``batch_size`` observations (the last one padded) is encoded by every member, in one
  compiled call vmapped over the members (``vmap``; the default on accelerators) or one compiled
  call per member (the default on CPU, where XLA runs a vmapped conv net slower than a loop:
  docs/POPULATIONS.md). The next batch is dispatched before the last one's codes are copied
  back.

  Args:
    encode_fn: the family's ``encode``.
    state: a :class:`TrainState`, with a leading member axis of ``num_members`` for a population
      (``num_members=None``: a single run, one member).
    dataset: the ground-truth dataset.
    batch_size: observations per compiled call.
    vmap: see above; None chooses by the backend.
    timing: if given, each call sets ``timing["observations"]``: the seconds spent making the
      observations available (the table: rendering, reading and copying it to the device; or
      ``dataset.observations`` on the host), the rest of the call being the encoder's.

  Returns:
    ``codes_of(factors (U, K), progress) -> (M, U, d)`` float32 numpy codes.
  """
  import jax
  import jax.numpy as jnp

  from gen_models import population
  from gen_models.data import members as members_data

  if batch_size < 1:
    raise UserError(f"batch_size must be >= 1, got {batch_size}")
  if vmap is None:
    vmap = jax.default_backend() != "cpu"
  if num_members is None:
    states, vmap = [state], False
  elif vmap:
    states = [state]
  else:
    states = [population.member_state(state, i) for i in range(num_members)]
  encode_one = jax.jit(encode_fn)
  encode_all = jax.jit(jax.vmap(encode_fn, in_axes=(0, None)))
  decode = jax.jit(lambda table, index: members_data.gather(table, index, dataset.decode))

  def encode_batch(x) -> list:
    """``x (B, *shape)`` → every member's codes, as device arrays (``[(M, B, d)]`` or M of
    ``(B, d)``)."""
    return [encode_all(states[0], x)] if vmap else [encode_one(s, x) for s in states]

  def codes_of(factors: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    n = len(factors)
    on_table = members_data.has_table(dataset) and hasattr(dataset, "index_of")
    on_table = on_table and 4 * n >= dataset.num_examples
    spent = 0.0
    if progress is not None:
      progress("encode", 0, n)  # Starts the clock of the ETA.
    if on_table:
      start = time.perf_counter()
      table = jax.block_until_ready(jax.device_put(dataset.table()))
      index = dataset.index_of(factors).astype(np.int32)
      spent += time.perf_counter() - start
    out, pending = [], collections.deque()

    def collect() -> None:
      begin, stop, arrays = pending.popleft()
      block = [np.asarray(a) for a in arrays]
      block = block[0] if vmap else np.stack(block)
      out.append(block[:, : stop - begin])
      if progress is not None:
        progress("encode", stop, n)

    for begin in range(0, n, batch_size):
      stop = min(n, begin + batch_size)
      if on_table:
        rows = np.zeros(batch_size, np.int32)
        rows[: stop - begin] = index[begin:stop]
        x = decode(table, rows)
      else:
        start = time.perf_counter()
        obs = np.asarray(dataset.observations(factors[begin:stop]), np.float32)
        spent += time.perf_counter() - start
        x = np.zeros((batch_size, *obs.shape[1:]), np.float32)
        x[: stop - begin] = obs
        x = jnp.asarray(x)
      pending.append((begin, stop, encode_batch(x)))
      if len(pending) > 1:
        collect()
    while pending:
      collect()
    if timing is not None:
      timing["observations"] = spent
    return np.concatenate(out, axis=1) if out else np.zeros((len(states), 0, 0), np.float32)

  return codes_of
