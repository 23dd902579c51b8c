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
from gen_models.checkpointing import Checkpointer
from gen_models.data.images import to_uint8
from gen_models.divergences import wasserstein1
from gen_models.errors import Stopped, UserError
from gen_models.images import image_grid, toy_plot
from gen_models.logs import MetricWriter, Progress, format_duration, info
from gen_models.metrics import evaluate as evaluate_lib
from gen_models.metrics import extractors
from gen_models.preemption import StopRequests
from gen_models.sampling import sample_chunks
from gen_models.train_state import tree_all_finite
from gen_models.workdir_lock import WorkdirLock

SAMPLE_STREAM = 1_000_003  # fold_in constant of the fixed key used for sample PNGs and eval.


def _read_config(path: str) -> ml_collections.ConfigDict:
  """A workdir's ``config.json``; a one-line error if it is not valid JSON."""
  try:
    with open(path) as f:
      return config_lib.from_json(f.read())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON: {e}") from None


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
    old = _read_config(path)
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


def _checked_step(train_step):
  """``train_step`` plus a ``finite`` flag: all metrics and all new parameters are finite."""

  def step(state, batch):
    new_state, metrics = train_step(state, batch)
    finite = tree_all_finite(metrics) & tree_all_finite(new_state.params)
    return new_state, {**metrics, "finite": finite}

  return step


def _non_finite_error(step: int, metrics: dict, ckpt: Checkpointer) -> UserError:
  last = ckpt.latest_step()
  where = f"{ckpt.path(last)} (step {last})" if last is not None else "none (no checkpoint yet)"
  shown = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()) if k != "finite")
  return UserError(
    f"non-finite loss or parameters at step {step} ({shown}); training stopped. "
    f"Last good checkpoint: {where}"
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

  def write_samples(self, step: int, state) -> None:
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
      self.writer.image(step, "samples", toy_plot(real, fake, title=title, critic=critic))
    else:
      n = self.config.eval.num_image_samples
      value_range = self.dataset.value_range
      fake = dev.to_host(self._sample(state, self.key, n))
      self.writer.image(step, "samples", image_grid(to_uint8(fake, value_range)))
      if self.family.image_grids is not None:
        for name, grid in dev.to_host(self.family.image_grids(state, self.examples(n))).items():
          rows, columns = grid.shape[:2]
          images = to_uint8(grid.reshape(rows * columns, *grid.shape[2:]), value_range)
          self.writer.image(step, name, image_grid(images, columns=columns))

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
      samples = to_uint8(samples, self.dataset.value_range)
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
  extract = extractors.for_samples(
    config.eval.extractor,
    kind,
    config.eval.inception_weights or None,
    devices=jax.local_devices(),
    flag="--config.eval.inception_weights",
  )
  if "is" in metrics and extract is extractors.identity:
    raise UserError(
      "eval.metrics has 'is', which needs class logits; the identity extractor (used for "
      "points) has none: drop 'is' or use the Inception extractor on images"
    )
  return extract


def restore_or_init(family, ckpt: Checkpointer, base_key, sharding):
  """The newest intact checkpoint's ``(state, data_state)``, or a fresh sharded state and ``None``.

  A newest step that cannot be restored is skipped with a warning (and moved aside unless
  ``ckpt`` is read-only; :meth:`Checkpointer.restore_latest`); if no step restores, a UserError
  lists them. ``init`` runs once per run, so it is compiled without backend optimisation:
  XLA:CPU spends ~0.5 s optimising each truncated-normal initialiser (measured: the conv VAE's
  init compiles in 22 s at the default level, 6 s at level 0, on the shared 2-core machine).
  """
  init_fn = jax.jit(
    family.init,
    out_shardings=sharding,
    compiler_options={"xla_backend_optimization_level": 0},
  )
  abstract = jax.eval_shape(init_fn, base_key)
  restored = ckpt.restore_latest(abstract, sharding)
  if restored is None:
    return init_fn(base_key), None
  step, state, data_state = restored
  info(f"restored checkpoint {ckpt.path(step)}")
  return state, data_state


def load_run(workdir: str, devices: Sequence[jax.Device] | None = None):
  """``(config, family, state)`` of the latest checkpoint of the run in ``workdir``.

  Raises:
    UserError: no run (no ``config.json``), no checkpoint yet in ``workdir``, or none of its
      checkpoints can be restored.
  """
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"no run in {workdir} (no config.json)")
  config = config_lib.validate(_read_config(path))
  family = models.make_family(config, data_lib.example_shape(config))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise UserError(f"no checkpoint yet in {ckpt_dir}")
  ckpt = Checkpointer(ckpt_dir, read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise UserError(f"no checkpoint yet in {ckpt_dir}")
    # Steps that fail to restore are skipped with a warning and left in place: readers never
    # change a workdir (the next training run moves them aside).
    sharding = dev.replicated(dev.make_mesh(devices))
    state, _ = restore_or_init(family, ckpt, jax.random.key(config.seed), sharding)
  finally:
    ckpt.close()
  return config, family, state


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
  mesh = dev.make_mesh(devices)
  dev.check_batch_size(config.batch_size, mesh)
  dataset = data_lib.create(config, config.batch_size)
  family = models.make_family(config, dataset.shape)
  extract = metric_extractor(config, dataset.kind)
  workdir = prepare_workdir(workdir, config)  # Only once the config is known to be usable.
  lock = lock_workdir(workdir)

  state_sharding = dev.replicated(mesh)
  base_key = jax.random.key(config.seed)
  step_fn = jax.jit(
    _checked_step(family.train_step),
    in_shardings=(state_sharding, dev.batch_sharding(mesh, batch_axis=1)),
    out_shardings=(state_sharding, state_sharding),
    donate_argnums=0,
  )

  try:
    ckpt = Checkpointer(
      os.path.join(workdir, "checkpoints"),
      max_to_keep=config.max_checkpoints_to_keep,
      async_save=config.async_checkpointing,
    )
    writer = MetricWriter(workdir)
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  outputs = _Outputs(config, family, dataset, writer, base_key, extract)
  data_iter = data_lib.StepIterator(dataset, family.batches_per_step)
  stops = StopRequests().__enter__()  # From here on, SIGTERM / SIGINT stop with a checkpoint.
  peers = dev.watch_peers()  # From here on, a lost process ends this one with one line.
  peers.__enter__()
  error = None
  try:
    state, data_state = restore_or_init(family, ckpt, base_key, state_sharding)
    if data_state is not None:
      data_iter.set_state(data_state)
    elif family.data_init is not None:  # A fresh run: the data-dependent init, on global batch 0.
      first = dev.global_batch(dataset.batch(0), mesh)
      state = jax.jit(family.data_init, out_shardings=state_sharding)(state, first)
    start = int(dev.to_host(state.step))
    total = config.num_train_steps
    info(
      f"{config.model} on {dataset.name}: steps {start}→{total}, global batch "
      f"{config.batch_size} over {mesh.devices.size} devices ({jax.process_count()} processes)"
    )
    progress = Progress(start, total)
    pending: list[dict] = []  # Device metrics not yet fetched.
    window: list[dict] = []  # Host metrics since the last log line.
    last: dict[str, float] = {}
    for step in range(start + 1, total + 1):
      batch = dev.global_batch(next(data_iter), mesh, batch_axis=1)
      t0 = time.perf_counter()
      state, metrics = step_fn(state, batch)
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
          if not m["finite"]:
            raise _non_finite_error(step - len(host) + 1 + i, m, ckpt)
        window += host
        pending = []
      if log:  # The logged value is the mean since the previous log line.
        last = {k: float(np.mean([m[k] for m in window])) for k in window[0] if k != "finite"}
        window = []
        line, rate = progress.line(step, last)
        info(line)
        writer.scalars(step, {**last, "steps_per_sec": rate})
      if _due(step, config.sample_every_steps, total):
        outputs.write_samples(step, state)
      if _due(step, config.eval_every_steps, total):
        results = outputs.evaluate(step, state, final=step == total)
        if results:
          info(f"eval at step {step}: {json.dumps(results)}")
          writer.scalars(step, results)
          last.update(results)
      if save:
        ckpt.save(step, state, data_iter.get_state())
      if stop and step < total:
        ckpt.wait()  # Complete on disk before the process may exit.
        raise Stopped(stops.signal_name, step, ckpt.path(step))
    return last
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
