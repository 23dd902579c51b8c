"""The one training loop of every model family.

    mesh → dataset → family → workdir lock → state (the newest intact checkpoint, else
    initialised sharded) → loop: data → compiled step → metrics → samples / eval → checkpoint
    → final checkpoint; a SIGTERM / SIGINT ends the loop with a checkpoint at the step every
    process agrees on (:mod:`gen_models.preemption`), a lost peer process ends it with one line
    (:func:`gen_models.devices.watch_peers`).

Everything family-specific comes from :class:`gen_models.models.Family`. The state, compiled step
and data of a single run or a population come from :class:`gen_models.plan.Plan`, the sample
PNGs and evaluations from :mod:`gen_models.outputs`. :func:`train` opens these in one
``contextlib.ExitStack`` and :func:`_loop` runs the steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from gen_models import config as config_lib
from gen_models import data as data_lib
from gen_models import devices as dev
from gen_models import models
from gen_models import population as population_lib
from gen_models import workdir as workdir_lib
from gen_models.checkpointing import Checkpointer
from gen_models.errors import Stopped, UserError
from gen_models.logs import MetricWriter, Progress, format_duration, info, warning
from gen_models.outputs import Outputs, metric_extractor
from gen_models.plan import Plan
from gen_models.preemption import StopRequests
from gen_models.runs import load_run  # noqa: F401 (load_run: API)
from gen_models.workdir_lock import WorkdirLock


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
  written = False
  if jax.process_index() == 0 and not os.path.exists(workdir_lib.config_path(workdir)):
    workdir_lib.write_config(workdir, config)  # Atomic: others never read half a file.
    written = True
  if jax.process_count() > 1:  # Process 0 has written config.json before anyone reads it.
    multihost_utils.sync_global_devices("gen_models.prepare_workdir")
  if not written and os.path.exists(workdir_lib.config_path(workdir)):
    old = workdir_lib.read_config(workdir)
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


def _last_good(ckpt: Checkpointer) -> str:
  last = ckpt.latest_step()
  return f"{ckpt.path(last)} (step {last})" if last is not None else "none (no checkpoint yet)"


def _check_finite(plan: Plan, metrics: dict, step: int, frozen: dict[int, int], ckpt) -> None:
  """A UserError when a single run's step ``step`` was not finite. In a population: reports,
  once each, the members whose step was not finite (the population step has frozen them) and
  adds them to ``frozen``; a UserError when no member trains any more."""
  for mem, values in plan.rows(metrics):
    if values["finite"] or (mem is not None and mem.index in frozen):
      continue
    shown = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(values.items()) if k != "finite")
    if mem is None:
      raise UserError(
        f"non-finite loss or parameters at step {step} ({shown}); training stopped. "
        f"Last good checkpoint: {_last_good(ckpt)}"
      )
    frozen[mem.index] = step
    warning(
      f"member {mem.index} ({mem.name}): non-finite loss or parameters at step {step} "
      f"({shown}); frozen at its last finite state, the others train on"
    )
  if frozen and len(frozen) == len(plan.members):
    raise UserError(
      f"every member of the population went non-finite (the last at step {step}); training "
      f"stopped. Last good checkpoint: {_last_good(ckpt)}"
    )


def _index(member) -> int | None:
  return None if member is None else member.index


def _due(step: int, every: int, total: int) -> bool:
  return step == total or (every > 0 and step % every == 0)


class Result(Mapping[str, float]):
  """What :func:`train` returns: each member's metrics of the last logged step and of the final
  evaluation, as floats.

  ``members[i]`` is member ``i``'s ``{name: value}``; a single run has one. A single run is also
  that mapping itself (``train(config, workdir)["eval/w1"]``); a population has no one set of
  metrics, so reading it as a mapping is a TypeError that points to ``members``.
  """

  def __init__(self, members: Sequence[dict[str, float]], population: bool):
    self.members = [dict(m) for m in members]
    self.population = population

  def _run(self) -> dict[str, float]:
    if self.population:
      raise TypeError(
        f"the result of a population of {len(self.members)} members: read .members[i]"
      )
    return self.members[0]

  def __getitem__(self, key: str) -> float:
    return self._run()[key]

  def __iter__(self):
    return iter(self._run())

  def __len__(self) -> int:
    return len(self._run())

  def __repr__(self) -> str:
    return f"Result({self.members if self.population else self.members[0]})"


def member_outputs(plan: Plan, writer: MetricWriter, extract) -> dict[int | None, Outputs]:
  """Each member's :class:`Outputs`, keyed as :meth:`Plan.states` names them (None for a single
  run): those of its run alone, with its config, its seed's reference draws and sample key."""
  return {
    (m.index if plan.population else None): Outputs(
      population_lib.member_config(plan.config, m),
      plan.family,
      data_lib.reseeded(plan.dataset, m.seed),
      writer,
      jax.random.key(m.seed),
      extract,
    )
    for m in plan.members
  }


def _announce(plan: Plan, start: int) -> None:
  config, mesh = plan.config, plan.mesh
  who = f"{len(plan.members)} members, " if plan.population else ""
  groups = ""
  if len(mesh.axis_names) > 1:
    groups = f"; members over {mesh.shape['members']} device groups"
  info(
    f"{config.model} on {plan.dataset.name}: {who}steps {start}→{config.num_train_steps}, global "
    f"batch {config.batch_size} over {mesh.devices.size} devices ({jax.process_count()} "
    f"processes{groups})"
  )


def _log(plan: Plan, step: int, window: list[dict], frozen, progress, writer) -> dict:
  """Logs the means of ``window`` (host metrics since the last log line): the console line over
  the members still training, each member's row to ``writer``. Returns ``{member index: row}``."""
  means = {k: np.mean([m[k] for m in window], axis=0) for k in window[0] if k != "finite"}
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
  return last


def _evaluate(plan: Plan, step: int, state, outputs, writer, last: dict) -> None:
  """Each member's evaluation at ``step``: logged, written and added to ``last``."""
  for mem, member_state in plan.states(state):
    results = outputs[_index(mem)].evaluate(
      step, member_state, final=step == plan.config.num_train_steps
    )
    if results:
      name = f" {mem.name}" if mem is not None else ""
      info(f"eval at step {step}{name}: {json.dumps(results)}")
      writer.scalars(step, results, member=_index(mem))
      last.setdefault(_index(mem), {}).update(results)


def _loop(plan: Plan, state, stops: StopRequests, ckpt, writer, outputs) -> dict:
  """Trains ``state`` to ``num_train_steps``: step, check, log, sample, evaluate, save; stops
  with a complete checkpoint at the step ``stops`` names. Returns ``{member index: metrics}``."""
  config = plan.config
  start, total = int(np.asarray(dev.to_host(state.step)).reshape(-1)[0]), config.num_train_steps
  _announce(plan, start)
  frozen = plan.frozen(state)  # {member index: step}, reported once.
  progress = Progress(start, total)
  pending: list[dict] = []  # Device metrics not yet fetched.
  window: list[dict] = []  # Host metrics since the last log line.
  last: dict = {}
  for step in range(start + 1, total + 1):
    batch = plan.put(next(plan.iterator))
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
      host, pending = dev.to_host(pending), []
      for i, m in enumerate(host):
        _check_finite(plan, m, step - len(host) + 1 + i, frozen, ckpt)
      window += host
    if log:  # The logged value is the mean since the previous log line.
      last, window = _log(plan, step, window, frozen, progress, writer), []
    if _due(step, config.sample_every_steps, total):
      for mem, member_state in plan.states(state):
        outputs[_index(mem)].write_samples(step, member_state, member=_index(mem))
    if _due(step, config.eval_every_steps, total):
      _evaluate(plan, step, state, outputs, writer, last)
    if save:
      ckpt.save(step, state, plan.iterator.get_state())
    if stop and step < total:
      ckpt.wait()  # Complete on disk before the process may exit.
      raise Stopped(stops.signal_name, step, ckpt.path(step))
  return last


def lock_workdir(workdir: str) -> contextlib.AbstractContextManager:
  """Process 0 takes ``<workdir>/lock`` (:class:`WorkdirLock`); every process learns whether it
  could, so that all of them stop with the error when another live run holds the workdir.

  Returns the held lock (a no-op elsewhere): its ``__exit__`` releases it (``ExitStack.push``).
  """
  lock, error = contextlib.nullcontext(), None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir)
      lock.acquire()
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
) -> Result:
  """Trains (or resumes) the run of ``config`` in ``workdir``.

  Args:
    config: a config of some family (validated here against its defaults).
    workdir: checkpoints, ``metrics.jsonl``, TensorBoard events, samples and ``config.json``.
    devices: the devices to use (default: all of them, over all processes).

  Returns:
    Each member's metrics of the last logged step and the final evaluation (:class:`Result`;
    a single run's read as ``result["eval/w1"]``).

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
  with contextlib.ExitStack() as stack:  # Exits in reverse order: read the pushes bottom-up.
    stack.push(lock_workdir(workdir))  # Released last, however the run ends.
    plan = Plan(config, family, dataset, mesh, members)
    ckpt = Checkpointer(
      workdir_lib.checkpoints_dir(workdir),
      max_to_keep=config.max_checkpoints_to_keep,
      async_save=config.async_checkpointing,
    )
    writer = MetricWriter(workdir, members if plan.population else None)
    if plan.population and jax.process_index() == 0:
      population_lib.write_members(workdir, members)
    outputs = member_outputs(plan, writer, extract)
    stops = stack.enter_context(StopRequests())  # SIGTERM / SIGINT: stop with a checkpoint.
    # A lost process ends this one with one line; on exit, tells the peers: done, or failed and
    # why. So the checkpoint is complete and the writer closed before the peers hear "done":
    peers = stack.enter_context(dev.watch_peers())
    stack.callback(writer.close)
    stack.callback(ckpt.close)
    stack.callback(ckpt.wait)
    stack.push(lambda kind, *_: _on_failed_collective(kind, peers))  # Runs first.
    state = plan.restore_or_init(ckpt)
    last = _loop(plan, state, stops, ckpt, writer, outputs)
  return Result([last.get(key, {}) for key in outputs], plan.population)  # In member order.


def _on_failed_collective(kind: type[BaseException] | None, peers) -> None:
  """A failed collective (``JaxRuntimeError``): if a peer is gone, exits naming it."""
  if kind is not None and issubclass(kind, jax.errors.JaxRuntimeError):
    peers.await_lost_peer()
