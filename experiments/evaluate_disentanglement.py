r"""Disentanglement metrics of a trained run's encoder, written to JSON.

    python -m experiments.evaluate_disentanglement --workdir=DIR \
        [--metrics=beta_vae,factor_vae,mig,dci,sap] [--seed=S] --output=FILE.json

Restores the latest checkpoint of the run in DIR (``gen_models.runs.load_members``), encodes
observations with the family's ``encode`` (a VAE's posterior means; one device, compiled once for
``--batch_size`` images) and computes the metrics of ``gen_models.metrics.disentanglement`` on the
run's dataset (or ``--dataset``), which must have ground-truth factors (the dSprites family). The
sizes are disentanglement_lib's (10,000 training / 5,000 evaluation points) unless
``--num_train`` / ``--num_eval`` say otherwise. The JSON holds ``<metric>/<score>`` entries
(e.g. ``beta_vae/eval_accuracy``, ``mig/mig``, ``dci/disentanglement``, ``sap/sap``) and the
settings; the scores are also logged to the run's TensorBoard as ``disentanglement/...`` at the
checkpoint's step (``--notensorboard`` to skip).

A population's run is evaluated member by member (every member, or ``--member=I``): the JSON
holds ``members``, a row per member with its ``member`` index, ``name``, ``seed``, ``hparams``
and the scores; each member's scores go to its own TensorBoard run directory.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import app, flags

from experiments import cli
from gen_models import data, logs, population, runs
from gen_models.errors import UserError
from gen_models.metrics import disentanglement as dis

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run with an encoder.")
_METRICS = flags.DEFINE_string(
  "metrics", ",".join(dis.METRICS), f"Comma-separated, from: {', '.join(dis.METRICS)}."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the metrics' random draws.")
_OUTPUT = flags.DEFINE_string("output", None, "Output JSON file.")
_NUM_TRAIN = flags.DEFINE_integer(
  "num_train", None, "Training points of every metric (default: disentanglement_lib's 10,000)."
)
_NUM_EVAL = flags.DEFINE_integer(
  "num_eval", None, "Evaluation points of every metric (default: disentanglement_lib's 5,000)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Observations per compiled encoder call.")
_DATASET = flags.DEFINE_string("dataset", None, "Ground-truth dataset (default: the run's).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir of --dataset=dsprites.")
_MEMBER = flags.DEFINE_integer("member", None, "A population's member (default: every member).")
_TENSORBOARD = flags.DEFINE_bool("tensorboard", True, "Also log the scores to the run's TB.")
flags.mark_flags_as_required(["workdir", "output"])


def _metrics() -> tuple[str, ...]:
  names = tuple(m.strip() for m in _METRICS.value.split(",") if m.strip())
  unknown = [m for m in names if m not in dis.METRICS]
  if unknown or not names:
    raise UserError(f"--metrics: unknown {unknown or 'empty'}; known: {', '.join(dis.METRICS)}")
  return names


def _check_sizes() -> None:
  for flag in (_NUM_TRAIN, _NUM_EVAL):
    if flag.value is not None and flag.value < 2:
      raise UserError(f"--{flag.name} must be >= 2, got {flag.value}")
  if _BATCH_SIZE.value < 1:
    raise UserError(f"--batch_size must be >= 1, got {_BATCH_SIZE.value}")


def _dataset(config, workdir: str):
  """The ground-truth dataset to evaluate on; a one-line error for one without factors."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.dataset.name = _DATASET.value or config.dataset.name
  if _DATA_DIR.value is not None:
    c.dataset.data_dir = _DATA_DIR.value
  if c.dataset.name not in data.GROUND_TRUTH_DATASETS:
    raise UserError(
      f"dataset {c.dataset.name!r} (of the run in {workdir}) has no ground-truth factors; the "
      f"disentanglement metrics need one of: {', '.join(data.GROUND_TRUTH_DATASETS)} "
      f"(--dataset=NAME)"
    )
  if data.example_shape(c) != data.example_shape(config):
    raise UserError(
      f"--dataset={c.dataset.name} has examples of shape {data.example_shape(c)}, the run's "
      f"encoder takes {data.example_shape(config)}"
    )
  return data.create(c, config.batch_size)


def _log_to_tensorboard(workdir: str, step: int, results: dict[str, float], member=None) -> None:
  """The scores as ``disentanglement/...`` in the run's TensorBoard (a member's own run dir)."""
  from tensorboardX import SummaryWriter

  sub = "" if member is None else f"{member.index:03d}_{member.name}"
  try:
    writer = SummaryWriter(os.path.join(workdir, "tensorboard", sub))
  except OSError as e:
    raise UserError(f"cannot write TensorBoard events in {workdir}: {e.strerror or e}") from None
  for key, value in results.items():
    writer.add_scalar(f"disentanglement/{key}", value, step)
  writer.close()


def run() -> dict:
  metrics = _metrics()
  _check_sizes()
  output = os.path.abspath(_OUTPUT.value)
  if not os.path.isdir(os.path.dirname(output)):
    raise UserError(f"output directory {os.path.dirname(output)} does not exist")
  workdir = os.path.abspath(_WORKDIR.value)
  config, family, state, members = runs.load_members(workdir, jax.local_devices()[:1])
  chosen = runs.member_states(config, state, members, _MEMBER.value)
  dataset = _dataset(config, workdir)
  if family.encode is None:
    raise UserError(f"model {config.model!r} has no encoder; the metrics need one (e.g. a VAE)")
  rows = []
  for member, member_state in chosen:
    results = _evaluate(config, family, member_state, dataset, metrics)
    if population.is_population(config):
      logs.info(f"member {member.index} ({member.name}) done")
      results = {**cli.member_row(member), **results}
    rows.append(results)
  pop = population.is_population(config)
  results = {"members": rows} if pop else rows[0]
  cli.write_json(output, results, sort_keys=True)
  if _TENSORBOARD.value:
    for (member, _), row in zip(chosen, rows, strict=True):
      scores = {k: row[k] for k in metrics_keys(row)}
      _log_to_tensorboard(workdir, row["step"], scores, member if pop else None)
  return results


def metrics_keys(results: dict) -> list[str]:
  """The metric scores of a results row (not its identifying and size columns)."""
  skip = {"step", "dataset", "seed", "num_train", "num_eval", "member", "name", "hparams"}
  return [k for k in results if k not in skip]


def _evaluate(config, family, state, dataset, metrics) -> dict:
  """The chosen metrics of one run's ``state`` (no member axis), with the sizes used."""
  step = int(jax.device_get(state.step))
  logs.info(f"{config.model} at step {step} on {dataset.name}: {', '.join(metrics)}")
  encode = dis.batched_encoder(family.encode, state, _BATCH_SIZE.value)

  def report(name, scores, seconds):
    shown = ", ".join(f"{k}={v:.4g}" for k, v in scores.items())
    logs.info(f"{name}: {shown} ({logs.format_duration(seconds)})")

  scores = dis.evaluate(
    encode,
    dataset,
    metrics,
    seed=_SEED.value,
    num_train=_NUM_TRAIN.value,
    num_eval=_NUM_EVAL.value,
    max_batch=_BATCH_SIZE.value,
    on_metric=report,
  )
  return {
    **scores,
    "step": step,
    "dataset": dataset.name,
    "seed": _SEED.value,
    "num_train": _NUM_TRAIN.value,
    "num_eval": _NUM_EVAL.value,
  }


main = cli.results_main(run, width=36, output=_OUTPUT)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
