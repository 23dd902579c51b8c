"""The one training loop of every model family.

    mesh → dataset → family → workdir lock → state (the newest intact checkpoint, else
    initialised sharded) → loop: data → compiled step → metrics → samples / eval → checkpoint
    → final checkpoint; a SIGTERM / SIGINT ends the loop with a checkpoint at the step every
    process agrees on (:mod:`gen_models.preemption`), a lost peer process ends it with one line
    (:func:`gen_models.devices.watch_peers`).

Everything family-specific comes from :class:`gen_models.models.Family`. The compiled step is
the family's pure ``train_step`` wrapped with a finiteness check, ``jax.jit`` with state
replicated and batch split over the ``data`` axis, the old state donated.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from gen_models import config as config_lib
from gen_models import data as data_lib
from gen_models import devices as dev
from gen_models import models
from gen_models import population as population_lib
from gen_models.checkpointing import Checkpointer
from gen_models.data.images import to_uint8
from gen_models.divergences import wasserstein1
from gen_models.errors import Stopped, UserError
from gen_models.logs import MetricWriter, Progress, format_duration, info, warning
from gen_models.metrics import evaluate as evaluate_lib
from gen_models.metrics import extractors
from gen_models.pictures import image_grid, toy_plot
from gen_models.preemption import StopRequests
from gen_models.runs import load_run, read_config, restore_or_init  # noqa: F401 (load_run: API)
from gen_models.sampling import sample_chunks
from gen_models.workdir_lock import WorkdirLock

SAMPLE_STREAM = 1_000_003  # fold_in constant of the fixed key used for sample PNGs and eval.


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Creates ``workdir`` (checking it is writable) and records or checks ``config.json``.

  A workdir that already holds a run accepts only changes to :data:`RESUMABLE_KEYS`; anything
  else would silently mix two experiments, so it is an error. Nothing existing is overwritten.
  """
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None
  path = os.path.join(workdir, "config.json")
  written = False
  if jax.process_index() == 0 and not os.path.exists(path):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      f.write(config_lib.to_json(config))
    os.replace(tmp, path)  # Atomic: other processes never read a half-written file.
    written = True
  if jax.process_count() > 1:  # Process 0 has written config.json before anyone reads it.
    multihost_utils.sync_global_devices("gen_models.prepare_workdir")
  if not written and os.path.exists(path):
    old = read_config(path)
    # Keys added since the run was made count at their defaults (if it no longer validates, it is
    # compared as written: the differing keys are named below).
    with contextlib.suppress(UserError):
      old = config_lib.validate(old)
    changed = config_lib.changed_keys(old, config)
    fixed = [k for k in changed if k not in config_lib.RESUMABLE_KEYS]
    if fixed:
      raise UserError(
        f"workdir {workdir} holds a run with a different config ({', '.join(fixed)}); "
        "use a new --workdir, or the original values to resume"
      )
    if changed:
      info(f"resuming with changed {', '.join(changed)} (config.json keeps the original)")
  return workdir


def _non_finite_error(step: int, metrics: dict, ckpt: Checkpointer) -> UserError:
  last = ckpt.latest_step()
  where = f"{ckpt.path(last)} (step {last})" if last is not None else "none (no checkpoint yet)"
  shown = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()) if k != "finite")
  return UserError(
    f"non-finite loss or parameters at step {step} ({shown}); training stopped. "
    f"Last good checkpoint: {where}"
  )


def _index(member) -> int | None:
  return None if member is None else member.index


def _freeze(plan, metrics: dict, step: int, frozen: dict[int, int], ckpt: Checkpointer) -> None:
  """Reports, once each, the members whose step ``step`` was not finite (the population step has
  frozen them); a UserError when no member trains any more."""
  for m in plan.members:
    if not metrics["finite"][m.index] and m.index not in frozen:
      frozen[m.index] = step
      shown = ", ".join(
        f"{k}={float(v[m.index]):.4g}" for k, v in sorted(metrics.items()) if k != "finite"
      )
      warning(
        f"member {m.index} ({m.name}): non-finite loss or parameters at step {step} ({shown}); "
        "frozen at its last finite state, the others train on"
      )
  if len(frozen) == len(plan.members):
    last = ckpt.latest_step()
    where = f"{ckpt.path(last)} (step {last})" if last is not None else "none (no checkpoint yet)"
    raise UserError(
      f"every member of the population went non-finite (the last at step {step}); training "
      f"stopped. Last good checkpoint: {where}"
    )


def _due(step: int, every: int, total: int) -> bool:
  return step == total or (every > 0 and step % every == 0)


class _Outputs:
  """Sample PNGs and evaluation metrics, with the fixed sample key."""

  def __init__(self, config, family, dataset, writer, base_key, extract):
    self.config, self.family, self.dataset, self.writer = config, family, dataset, writer
    self.key = jax.random.fold_in(base_key, SAMPLE_STREAM)
    self._sample = jax.jit(family.sample, static_argnums=2)
    self._reference = None
    self._examples = None
    self.metrics = evaluate_lib.parse_metrics(config.eval.metrics)
    self._extract = extract
    self._real_features = {}  # By number of samples.
    self._critic = jax.jit(family.critic_values) if family.critic_values else None
    self._w1_floor = None

  def reference(self):
    if self._reference is None and self.family.num_reference:
      self._reference = self.dataset.reference(self.family.num_reference)
    return self._reference

  def write_samples(self, step: int, state, member: int | None = None) -> None:
    if self.dataset.kind == "points":  # The same points as a family's W1 evaluation at `step`.
      n = self.config.eval.num_samples
      fake = dev.to_host(self._sample(state, self.key, n))
      reference = self.dataset.reference(2 * n)
      real = reference[:n]
      if self._w1_floor is None:  # W1 between two real sets: what a perfect generator scores.
        self._w1_floor = wasserstein1(reference[n:], real)
      ratio = wasserstein1(fake, real) / self._w1_floor if np.all(np.isfinite(fake)) else np.nan
      critic = None
      if self._critic is not None:
        critic = lambda points: dev.to_host(self._critic(state, points))
      title = f"step {step}: W1 / noise floor = {ratio:.2f}"
      plot = toy_plot(real, fake, title=title, critic=critic)
      self.writer.image(step, "samples", plot, member=member)
    else:
      n = self.config.eval.num_image_samples
      value_range = self.dataset.value_range
      fake = dev.to_host(self._sample(state, self.key, n))
      self.writer.image(step, "samples", image_grid(to_uint8(fake, value_range)), member=member)
      if self.family.image_grids is not None:
        for name, grid in dev.to_host(self.family.image_grids(state, self.examples(n))).items():
          rows, columns = grid.shape[:2]
          images = to_uint8(grid.reshape(rows * columns, *grid.shape[2:]), value_range)
          self.writer.image(step, name, image_grid(images, columns=columns), member=member)

  def examples(self, n: int) -> np.ndarray:
    """``n`` fixed real examples for the family's image grids: held-out ones if the dataset has
    them, else the first training batch's (both the same at every call)."""
    if self._examples is None:
      self._examples = self.dataset.reference(n)
      if self._examples is None:
        self._examples = self.dataset.batch(0)[:n]
    return self._examples

  def _features(self, samples: np.ndarray) -> evaluate_lib.Features:
    if self.dataset.kind == "images":
      samples = to_uint8(samples, self.dataset.value_range, self.config.eval.quantization)
    features, logits = self._extract(samples)
    return evaluate_lib.Features(features=features, logits=logits)

  def sample_metrics(self, state, n: int) -> dict[str, float]:
    """``eval.metrics`` of ``n`` samples vs as many held-out real examples (at most all)."""
    if n not in self._real_features:  # Constant for the run: extracted once.
      self._real_features[n] = self._features(self.dataset.reference(n))
    key = jax.random.fold_in(self.key, 1)
    fake = sample_chunks(self._sample, state, key, n, min(n, self.config.batch_size))
    results = evaluate_lib.compute(
      self._real_features[n],
      self._features(fake),
      self.metrics,
      nearest_k=self.config.eval.nearest_k or None,
      seed=self.config.seed,
    )
    return {k: v for k, v in results.items() if not k.startswith(("num_", "nearest_k"))}

  def evaluate(self, step: int, state, final: bool = False) -> dict[str, float]:
    """The family's evaluation and ``eval.metrics``; on ``eval.final_num_samples`` samples when
    ``final`` and that is set, else on ``eval.num_samples``."""
    results = self.family.evaluate(state, self.key, self.reference())
    if self.metrics:
      n = self.config.eval.num_samples
      results.update(self.sample_metrics(state, final and self.config.eval.final_num_samples or n))
    return {f"eval/{k}": float(v) for k, v in results.items()}


def metric_extractor(config, kind: str):
  """The feature extractor of ``eval.metrics`` (None when there are none).

  Made before the workdir is touched, so that missing Inception weights or a metric the data
  cannot give stop the run at once, not at its first evaluation.
  """
  metrics = evaluate_lib.parse_metrics(config.eval.metrics)
  if not metrics:
    return None
  if config.eval.nearest_k < 0:
    raise UserError(f"eval.nearest_k must be >= 0 (0: the defaults), got {config.eval.nearest_k}")
  needed = max(config.eval.nearest_k, 5) + 1 if "prdc" in metrics else 2
  if config.eval.num_samples < needed:
    raise UserError(
      f"eval.metrics {','.join(metrics)} need eval.num_samples >= {needed}, "
      f"got {config.eval.num_samples}"
    )
  if config.eval.final_num_samples and config.eval.final_num_samples < needed:
    raise UserError(
      f"eval.final_num_samples must be 0 (= eval.num_samples) or >= {needed}, "
      f"got {config.eval.final_num_samples}"
    )
  # Batches of extractors.BATCH_SIZE images, or of all of them when an evaluation has fewer
  # (12 samples on 8 devices: batches of 16, not 6.5× that padded to 104).
  largest = max(config.eval.num_samples, config.eval.final_num_samples)
  extract = extractors.for_samples(
    config.eval.extractor,
    kind,
    config.eval.inception_weights or None,
    batch_size=min(extractors.BATCH_SIZE, largest),
    devices=jax.local_devices(),
    flag="--config.eval.inception_weights",
  )
  if "is" in metrics and extract is extractors.identity:
    raise UserError(
      "eval.metrics has 'is', which needs class logits; the identity extractor (used for "
      "points) has none: drop 'is' or use the Inception extractor on images"
    )
  return extract


def lock_workdir(workdir: str) -> WorkdirLock | None:
  """Process 0 takes ``<workdir>/lock`` (:class:`WorkdirLock`); every process learns whether it
  could, so that all of them stop with the error when another live run holds the workdir."""
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir).__enter__()
    except UserError as e:
      error = str(e)
  if jax.process_count() > 1:
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      error = f"process 0 could not lock workdir {workdir} (its error line says why)"
  if error is not None:
    raise UserError(error)
  return lock


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  devices: Sequence[jax.Device] | None = None,
) -> dict[str, float]:
  """Trains (or resumes) the run of ``config`` in ``workdir``.

  Args:
    config: a config of some family (validated here against its defaults).
    workdir: checkpoints, ``metrics.jsonl``, TensorBoard events, samples and ``config.json``.
    devices: the devices to use (default: all of them, over all processes).

  Returns:
    The metrics of the last logged step and the final evaluation, as floats.

  Raises:
    UserError: bad config, indivisible batch, unprepared dataset, unwritable workdir, a workdir
      that another live run holds, no checkpoint that restores, or a non-finite loss (the
      checkpoints before it are kept).
    Stopped: SIGTERM or SIGINT arrived; a checkpoint of the step it stopped at is complete.
  """
  config = config_lib.validate(config)
  members = population_lib.check(config)
  mesh = population_lib.make_mesh(config, members, devices)
  dev.check_batch_size(config.batch_size, mesh)
  dataset = data_lib.create(config, config.batch_size)
  family = models.make_family(config, dataset.shape)
  extract = metric_extractor(config, dataset.kind)
  workdir = prepare_workdir(workdir, config)  # Only once the config is known to be usable.
  lock = lock_workdir(workdir)
  try:
    plan = population_lib.Plan(config, family, dataset, mesh, members)
    ckpt = Checkpointer(
      os.path.join(workdir, "checkpoints"),
      max_to_keep=config.max_checkpoints_to_keep,
      async_save=config.async_checkpointing,
    )
    writer = MetricWriter(workdir, members if plan.population else None)
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  if plan.population and jax.process_index() == 0:
    population_lib.write_members(workdir, members)
  base_key = jax.random.key(config.seed)
  # Each member's samples and evaluation are those of its run alone: its config, its seed's
  # reference draws and sample key.
  outputs = {
    (m.index if plan.population else None): _Outputs(
      population_lib.member_config(config, m),
      family,
      data_lib.reseeded(dataset, m.seed),
      writer,
      jax.random.key(m.seed),
      extract,
    )
    for m in members
  }
  data_iter = plan.iterator
  stops = StopRequests().__enter__()  # From here on, SIGTERM / SIGINT stop with a checkpoint.
  peers = dev.watch_peers()  # From here on, a lost process ends this one with one line.
  peers.__enter__()
  error = None
  try:
    state, data_state = restore_or_init(plan.init, ckpt, base_key, plan.state_sharding)
    if data_state is not None:
      data_iter.set_state(data_state)
    elif family.data_init is not None:  # A fresh run: the data-dependent init, on global batch 0.
      state = plan.data_init(state)
    start = int(np.asarray(dev.to_host(state.step)).reshape(-1)[0])
    total = config.num_train_steps
    frozen = plan.frozen(state)  # {member index: step}, reported once.
    who = f"{len(members)} members, " if plan.population else ""
    info(
      f"{config.model} on {dataset.name}: {who}steps {start}→{total}, global batch "
      f"{config.batch_size} over {mesh.devices.size} devices ({jax.process_count()} processes"
      + (
        f"; members over {mesh.shape['members']} device groups)"
        if len(mesh.axis_names) > 1
        else ")"
      )
    )
    progress = Progress(start, total)
    pending: list[dict] = []  # Device metrics not yet fetched.
    window: list[dict] = []  # Host metrics since the last log line.
    last: dict = {}
    for step in range(start + 1, total + 1):
      batch = plan.put(next(data_iter))
      t0 = time.perf_counter()
      state, metrics = plan.step(state, batch)
      pending.append(metrics)
      if step == start + 1:
        jax.block_until_ready(state)
        info(f"first step (compile + run) took {format_duration(time.perf_counter() - t0)}")
        progress = Progress(step, total)
      stop = stops.reached(step)  # Called at every step: in multi-process runs it counts them.
      save = stop or _due(step, config.checkpoint_every_steps, total)
      log = _due(step, config.log_every_steps, total)
      if save or log:  # Fetch metrics (a host sync) only when they are needed.
        host = dev.to_host(pending)
        for i, m in enumerate(host):
          at = step - len(host) + 1 + i
          if not plan.population:
            if not m["finite"]:
              raise _non_finite_error(at, m, ckpt)
            continue
          _freeze(plan, m, at, frozen, ckpt)
        window += host
        pending = []
      if log:  # The logged value is the mean since the previous log line.
        means = {k: np.mean([m[k] for m in window], axis=0) for k in window[0] if k != "finite"}
        window = []
        rows = plan.rows(means)
        alive = [v for mem, v in rows if mem is None or mem.index not in frozen]
        shown = {k: float(np.mean([v[k] for v in alive])) for k in means}
        if plan.population:
          shown["members_training"] = float(len(alive))
        line, rate = progress.line(step, shown)
        info(line)
        last = {}
        for mem, values in rows:
          values = {k: float(v) for k, v in values.items()}
          writer.scalars(step, {**values, "steps_per_sec": rate}, member=_index(mem))
          last[_index(mem)] = values
      if _due(step, config.sample_every_steps, total):
        for mem, member_state in plan.states(state):
          outputs[_index(mem)].write_samples(step, member_state, member=_index(mem))
      if _due(step, config.eval_every_steps, total):
        for mem, member_state in plan.states(state):
          results = outputs[_index(mem)].evaluate(step, member_state, final=step == total)
          if results:
            name = f" {mem.name}" if mem is not None else ""
            info(f"eval at step {step}{name}: {json.dumps(results)}")
            writer.scalars(step, results, member=_index(mem))
            last.setdefault(_index(mem), {}).update(results)
      if save:
        ckpt.save(step, state, data_iter.get_state())
      if stop and step < total:
        ckpt.wait()  # Complete on disk before the process may exit.
        raise Stopped(stops.signal_name, step, ckpt.path(step))
    if not plan.population:
      return last.get(None, {})
    return [last.get(m.index, {}) for m in members]
  except BaseException as e:
    error = e
    if isinstance(e, jax.errors.JaxRuntimeError):
      peers.await_lost_peer()  # A failed collective: if a peer is gone, exits naming it.
    raise
  finally:
    try:
      ckpt.wait()
      ckpt.close()
      writer.close()
    finally:
      peers.__exit__(type(error), error, None)  # Tells the peers: done, or failed and why.
      stops.__exit__(None, None, None)
      if lock is not None:
        lock.release()
