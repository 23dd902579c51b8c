r"""Populations: many runs — seeds × hyperparameters — trained as one compiled program.

A population is set by two config keys::

    population.seeds = S        # member seeds seed, seed + 1, …, seed + S − 1
    population.sweep = "vae.beta=1,4;optimizer.learning_rate=1e-4,3e-4"

Members enumerate the grid of ``sweep`` in the order written, the last key varying fastest, with
the seeds innermost: ``member = grid_index · S + seed_offset``. Member ``i`` *is* the run of its
seed and hyperparameters trained alone (:func:`member_config`), to float round-off:

* its state is the family's ``init(key(seed_i))``, one slice of a :class:`TrainState` whose
  every leaf has a leading member axis ``(N, …)``;
* its swept hyperparameters live in that state, ``state.hparams[key]`` (``(N,)`` float32), and
  the family's step reads them there instead of the config's constants (each family lists the
  keys it reads that way in its ``SWEEPABLE``); anything that changes shapes or code cannot vary;
* it reads the data in the order its seed gives when trained alone (:mod:`gen_models.data.members`).

A member whose loss or parameters go non-finite is frozen: from that step on its updates are
masked (``state.hparams["population.frozen_at"]`` holds the step, 0 while it trains), the
trainer reports it once, and the others train on.

How the members' steps run (``population.execution``, the same numbers either way):

* ``vmap``: ``jax.vmap`` over members (convolutions become grouped convolutions); on a
  ``members × data`` mesh (:func:`make_mesh`) each member group runs its own members
  (:func:`gen_models.devices.split_over_members`);
* ``map``: ``lax.map``, one member after another in a loop of the compiled program;
* ``unroll``: one member after another, unrolled in the compiled program;
* ``auto``: ``vmap``, except ``unroll`` for image models on CPU (measured: vmapped
  convolutions are ~3× slower there; the toy MLPs are faster vmapped).

``population.chunk = c > 0`` vmaps groups of ``c`` members and runs the groups by ``map`` or
``unroll``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_models import config as config_lib
from gen_models import data as data_lib
from gen_models import devices as dev
from gen_models import models, platform
from gen_models import workdir as workdir_lib
from gen_models.errors import UserError
from gen_models.train_state import TrainState, tree_all_finite

EXECUTIONS = ("auto", "vmap", "map", "unroll")
FROZEN = "population.frozen_at"  # hparams key: the step a member froze at (0: training).


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of a population.

  Attributes:
    index: its place in the population (0-based).
    name: e.g. ``"beta=4,seed=2"``: the swept values as written, then the seed.
    seed: its ``config.seed``.
    hparams: ``{config key: value}`` of its swept hyperparameters.
  """

  index: int
  name: str
  seed: int
  hparams: dict[str, float]

  def to_json(self) -> dict:
    return {"index": self.index, "name": self.name, "seed": self.seed, "hparams": self.hparams}


def sweepable_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The keys ``population.sweep`` may vary for ``config.model`` (the family's ``SWEEPABLE``)."""
  return tuple(getattr(models.module(config.model), "SWEEPABLE", ()))


def parse_sweep(text: str, sweepable: Sequence[str]) -> list[tuple[str, list[str]]]:
  """``"a.b=1,2;c.d=3"`` → ``[("a.b", ["1", "2"]), ("c.d", ["3"])]``.

  Raises:
    UserError: a part without ``=``, an unknown or unsweepable key, a key twice, an empty value
      list or a value that is not a number; the message lists the keys that can vary.
  """
  can = ", ".join(sweepable) or "none"
  out: list[tuple[str, list[str]]] = []
  for part in (p.strip() for p in text.split(";")):
    if not part:
      continue
    key, eq, values = part.partition("=")
    key = key.strip()
    if not eq:
      raise UserError(f"population.sweep part {part!r} is not KEY=V1,V2,...; keys: {can}")
    if key not in sweepable:
      raise UserError(
        f"population.sweep cannot vary {key!r} (it is not a value the step reads, or not a "
        f"key of this model); keys that can vary: {can}"
      )
    if key in (k for k, _ in out):
      raise UserError(f"population.sweep names {key!r} twice")
    items = [v.strip() for v in values.split(",")]
    if not values.strip() or any(not v for v in items):
      raise UserError(f"population.sweep {key!r} has an empty value in {values.strip()!r}")
    for v in items:
      try:
        if not math.isfinite(float(v)):
          raise ValueError
      except ValueError:
        raise UserError(f"population.sweep {key}={v!r} is not a finite number") from None
    out.append((key, items))
  return out


def _short_names(keys: Sequence[str]) -> dict[str, str]:
  """The last part of each key (``vae.beta`` → ``beta``), the whole key where that is ambiguous."""
  leaves = [k.rsplit(".", 1)[-1] for k in keys]
  return {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves, strict=True)}


def members(config: ml_collections.ConfigDict) -> list[Member]:
  """The members of ``config``'s population, in order (one member for a single run).

  Raises:
    UserError: ``population.seeds`` < 1, a bad ``population.sweep`` (:func:`parse_sweep`).
  """
  seeds = int(config.population.seeds)
  if seeds < 1:
    raise UserError(f"population.seeds must be >= 1, got {seeds}")
  grid = parse_sweep(config.population.sweep, sweepable_keys(config))
  short = _short_names([k for k, _ in grid])
  points: list[list[tuple[str, str]]] = [[]]
  for key, values in grid:  # The last key varies fastest.
    points = [p + [(key, v)] for p in points for v in values]
  out = []
  for point in points:
    for offset in range(seeds):
      seed = int(config.seed) + offset
      name = ",".join([f"{short[k]}={v}" for k, v in point] + [f"seed={seed}"])
      hparams = {k: float(v) for k, v in point}
      out.append(Member(len(out), name, seed, hparams))
  return out


def is_population(config: ml_collections.ConfigDict) -> bool:
  """Does ``config`` ask for a population (several seeds or a sweep), not a single run?"""
  return int(config.population.seeds) != 1 or bool(config.population.sweep.strip())


def member_config(config: ml_collections.ConfigDict, member: Member) -> ml_collections.ConfigDict:
  """The single-run config that ``member`` stands for: its seed and hyperparameters set, no
  population."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.seed = member.seed
  for key, value in member.hparams.items():
    old = _get(c, key)
    config_lib.set_path(c, key, type(old)(value) if isinstance(old, (int, float)) else value)
  c.population.seeds = 1
  c.population.sweep = ""
  return c


def _get(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def execution(config: ml_collections.ConfigDict, backend: str | None = None) -> str:
  """``population.execution`` with ``auto`` resolved for ``backend`` (default: the platform being
  traced for, :func:`gen_models.platform.current` — a compile target's, not the host's): ``vmap``,
  except ``unroll`` for image models (conv nets) on CPU, where vmapped convolutions become slow
  grouped convolutions (docs/POPULATIONS.md has the measurements)."""
  mode = config.population.execution
  if mode not in EXECUTIONS:
    raise UserError(f"unknown population.execution {mode!r}; known: {', '.join(EXECUTIONS)}")
  if mode == "auto":
    images = len(data_lib.example_shape(config)) == 3
    return "unroll" if images and (backend or platform.current()) == "cpu" else "vmap"
  return mode


def check(config: ml_collections.ConfigDict) -> list[Member]:
  """The members, each member's config checked by its family (a one-line error naming the
  member), and ``population.execution`` / ``population.chunk`` checked."""
  found = members(config)
  execution(config)
  chunk = int(config.population.chunk)
  if chunk < 0 or (chunk and len(found) % chunk):
    raise UserError(f"population.chunk must be 0 or divide the {len(found)} members, got {chunk}")
  if len(found) > 1:
    shape = data_lib.example_shape(config)
    for m in found:
      if m.hparams:
        try:
          models.make_family(member_config(config, m), shape)
        except UserError as e:
          raise UserError(f"population member {m.name}: {e}") from None
  return found


# ----------------------------------------------------------------------------------------------
# The population's state and step.


def init(family_init: Callable, members_: Sequence[Member]) -> Callable[[], TrainState]:
  """``() -> TrainState`` with a leading member axis: member ``i`` is ``family_init(key(seed_i))``
  with its swept values (float32) and ``population.frozen_at`` (int32, 0) in ``hparams``."""
  seeds = np.asarray([m.seed for m in members_], np.uint32)
  keys = sorted({k for m in members_ for k in m.hparams})
  values = {k: np.asarray([m.hparams[k] for m in members_], np.float32) for k in keys}

  def fn() -> TrainState:
    states = jax.vmap(lambda s: family_init(jax.random.key(s)))(jnp.asarray(seeds))
    hparams = {k: jnp.asarray(v) for k, v in values.items()}
    hparams[FROZEN] = jnp.zeros((len(members_),), jnp.int32)
    return states.replace(hparams={**states.hparams, **hparams})

  return fn


def _masked_member_step(train_step: Callable) -> Callable:
  """One member's step with its finiteness check: a member that is frozen, or whose new metrics
  or parameters are not all finite, keeps its old parameters, optimizer and mutable state (the
  step counter still advances, so all members stay at the same step)."""

  def step(state: TrainState, batch):
    new, metrics = train_step(state, batch)
    finite = tree_all_finite(metrics) & tree_all_finite(new.params)
    frozen_at = state.hparams[FROZEN]
    ok = finite & (frozen_at == 0)
    keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)
    hparams = {**new.hparams, FROZEN: jnp.where(ok | (frozen_at > 0), frozen_at, state.step + 1)}
    new = new.replace(
      params=keep(new.params, state.params),
      opt_state=keep(new.opt_state, state.opt_state),
      model_state=keep(new.model_state, state.model_state),
      ema_params=keep(new.ema_params, state.ema_params),
      hparams=hparams,
    )
    return new, {**metrics, "finite": finite}

  return step


def _index(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _split_leading(tree, groups: int, chunk: int):
  """Leaves ``(groups·chunk, …)`` → ``(groups, chunk, …)``."""
  return jax.tree.map(lambda x: x.reshape(groups, chunk, *x.shape[1:]), tree)


def _merge_leading(tree):
  """Leaves ``(groups, chunk, …)`` → ``(groups·chunk, …)``."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]), tree)


def population_step(train_step: Callable, num_members: int, mode: str, chunk: int = 0):
  """``(state, batch) -> (state, metrics)`` over every member: state leaves ``(N, …)``, batch
  ``(N, batches_per_step, B, …)`` (leafwise for dict batches), metrics ``{name: (N,)}`` with
  ``finite`` (bool). ``mode`` is a resolved :func:`execution`; ``chunk`` as the module says."""
  one = _masked_member_step(train_step)
  if mode == "vmap" or (chunk and chunk == num_members):
    return dev.split_over_members(jax.vmap(one))
  group = jax.vmap(one) if chunk else one
  groups = num_members // chunk if chunk else num_members

  def step(state, batch):
    if chunk:
      state, batch = _split_leading(state, groups, chunk), _split_leading(batch, groups, chunk)
    if mode == "map":
      out = jax.lax.map(lambda sb: group(*sb), (state, batch))
    else:
      out = _stack([group(_index(state, g), _index(batch, g)) for g in range(groups)])
    if chunk:
      out = _merge_leading(out)
    return out

  return step


def make_mesh(config, members_: Sequence[Member], devices=None):
  """The training mesh: ``data`` over every device, or for a vmapped population in one process
  ``members × data`` with ``gcd(N, devices)`` member groups, so that members spread over
  devices when N allows (each member's step then runs data-parallel within its group)."""
  devices = list(jax.devices() if devices is None else devices)
  groups = 1
  if is_population(config) and execution(config) == "vmap" and jax.process_count() == 1:
    groups = math.gcd(len(members_), len(devices))
  return dev.make_mesh(devices, groups)


def member_state(state: TrainState, i: int) -> TrainState:
  """Member ``i``'s slice of a population state (no member axis), its ``hparams`` kept."""
  return _index(state, i)


# ----------------------------------------------------------------------------------------------
# The workdir record.


def write_members(workdir: str, members_: Sequence[Member]) -> None:
  """``<workdir>/members.json``: every member's index, name, seed and hyperparameters."""
  workdir_lib.write_members(workdir, [m.to_json() for m in members_])


def select(members_: Sequence[Member], member: int | None) -> list[Member]:
  """All members, or the one ``--member`` names; a one-line error when it is out of range."""
  if member is None:
    return list(members_)
  if not 0 <= member < len(members_):
    raise UserError(
      f"--member={member} is out of range: this run has {len(members_)} member(s), "
      f"0..{len(members_) - 1}"
    )
  return [members_[member]]
