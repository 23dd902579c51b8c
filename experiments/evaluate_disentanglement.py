r"""Disentanglement metrics of a trained run's encoder, written to JSON.

    python -m experiments.evaluate_disentanglement --workdir=DIR \
        [--metrics=beta_vae,factor_vae,mig,dci,sap] [--seed=S] [--output=FILE.json]

Restores the latest checkpoint of the run in DIR (``gen_models.runs.load_members``), encodes
observations with the family's ``encode`` (a VAE's posterior means; one device, compiled once for
``--batch_size`` images) and computes the metrics of ``gen_models.metrics.disentanglement`` on the
run's dataset (or ``--dataset``), which must have ground-truth factors (the dSprites family). The
sizes are disentanglement_lib's (10,000 training / 5,000 evaluation points) unless
``--num_train`` / ``--num_eval`` say otherwise. The JSON holds ``<metric>/<score>`` entries
(e.g. ``beta_vae/eval_accuracy``, ``mig/mig``, ``dci/disentanglement``, ``sap/sap``), the
settings and ``seconds`` (where the time went: drawing, encoding, classifiers); it is written to
``--output`` and, by default, to ``DIR/results/disentanglement_step<step>.json``, where
``python -m experiments.report`` finds it (an earlier file of the same step is kept, renamed
``….json.replaced-<time>``). The scores are also logged to the run's TensorBoard as
``disentanglement/...`` at the checkpoint's step (``--notensorboard`` to skip).

DCI's trees are ``gen_models.metrics.boosting``'s port of scikit-learn's, or with
``--dci_trees=sklearn`` scikit-learn's own (the same scores, about 4x slower).

A population's members are evaluated together (every member, or ``--member=I``;
``gen_models.metrics.disentanglement_runner``): the same draws for all, each distinct observation
encoded once by every member, the classifiers of all members in ``--workers`` threads; each
member's scores are those of its run evaluated alone with the same ``--seed``. The JSON holds
``members``, a row per member with its ``member`` index, ``name``, ``seed``, ``hparams`` and the
scores; each member's scores go to its own TensorBoard run directory. A progress bar with an ETA
is drawn on stderr.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from absl import app, flags

from experiments import cli
from gen_models import data, logs, population, runs
from gen_models import workdir as workdir_lib
from gen_models.errors import UserError
from gen_models.metrics import disentanglement as dis
from gen_models.metrics import disentanglement_runner as runner

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run with an encoder.")
_METRICS = flags.DEFINE_string(
  "metrics", ",".join(dis.METRICS), f"Comma-separated, from: {', '.join(dis.METRICS)}."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the metrics' random draws.")
_OUTPUT = flags.DEFINE_string("output", None, "Output JSON file (optional).")
_NUM_TRAIN = flags.DEFINE_integer(
  "num_train", None, "Training points of every metric (default: disentanglement_lib's 10,000)."
)
_NUM_EVAL = flags.DEFINE_integer(
  "num_eval", None, "Evaluation points of every metric (default: disentanglement_lib's 5,000)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1024, "Observations per compiled encoder call.")
_WORKERS = flags.DEFINE_integer(
  "workers", None, "Threads for the classifiers (default: the CPUs this process may use)."
)
_MEMBER_EXECUTION = flags.DEFINE_enum(
  "member_execution",
  "auto",
  list(runner.MEMBER_EXECUTIONS),
  "How every member encodes a batch: one vmapped call, or a call per member (auto: vmap on "
  "accelerators, loop on CPU).",
)
_COPY = flags.DEFINE_bool(
  "results_copy", True, "Also write DIR/results/disentanglement_step<step>.json (for reports)."
)
_DCI_TREES = flags.DEFINE_enum(
  "dci_trees",
  "numpy",
  list(dis.TREES),
  "DCI's gradient-boosted trees: numpy (gen_models.metrics.boosting, scikit-learn's model 4x "
  "faster) or sklearn (scikit-learn's own GradientBoostingClassifier).",
)
_DATASET = flags.DEFINE_string("dataset", None, "Ground-truth dataset (default: the run's).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir of --dataset=dsprites.")
_MEMBER = flags.DEFINE_integer("member", None, "A population's member (default: every member).")
_TENSORBOARD = flags.DEFINE_bool("tensorboard", True, "Also log the scores to the run's TB.")
flags.mark_flags_as_required(["workdir"])


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
  if _WORKERS.value is not None and _WORKERS.value < 1:
    raise UserError(f"--workers must be >= 1, got {_WORKERS.value}")


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

  try:
    writer = SummaryWriter(workdir_lib.tensorboard_dir(workdir, member))
  except OSError as e:
    raise UserError(f"cannot write TensorBoard events in {workdir}: {e.strerror or e}") from None
  for key, value in results.items():
    writer.add_scalar(f"disentanglement/{key}", value, step)
  writer.close()


def _merge_member(workdir: str, step: int, results: dict) -> dict:
  """With ``--member``: the workdir's results of this step with this member's row replaced (or
  added), so that evaluating one member does not drop the others from reports."""
  path = workdir_lib.results_path(workdir, "disentanglement", step)
  try:
    with open(path) as f:
      old = json.load(f)
    rows = [r for r in old["members"] if r["member"] != _MEMBER.value]
  except (OSError, ValueError, KeyError, TypeError):
    return results
  rows = sorted(rows + results["members"], key=lambda r: r["member"])
  return {**results, "members": rows}


def run() -> dict:
  metrics = _metrics()
  _check_sizes()
  output = os.path.abspath(_OUTPUT.value) if _OUTPUT.value else None
  if output and not os.path.isdir(os.path.dirname(output)):
    raise UserError(f"output directory {os.path.dirname(output)} does not exist")
  workdir = os.path.abspath(_WORKDIR.value)
  config, family, state, members = runs.load_members(workdir, jax.local_devices()[:1])
  pop = population.is_population(config)
  chosen = runs.member_states(config, state, members, _MEMBER.value)
  dataset = _dataset(config, workdir)
  if family.encode is None:
    raise UserError(f"model {config.model!r} has no encoder; the metrics need one (e.g. a VAE)")
  if pop and _MEMBER.value is None:
    codes_of = runner.jax_codes(
      family.encode, state, dataset, len(members), _BATCH_SIZE.value, _vmap()
    )
  else:
    codes_of = runner.jax_codes(family.encode, chosen[0][1], dataset, None, _BATCH_SIZE.value)
  step = int(jax.device_get(chosen[0][1].step))
  who = f"{len(chosen)} member(s)" if pop else "the run"
  logs.info(f"{config.model} at step {step} on {dataset.name}, {who}: {', '.join(metrics)}")
  scores, seconds = runner.evaluate_members(
    codes_of,
    dataset,
    metrics,
    seed=_SEED.value,
    num_train=_NUM_TRAIN.value,
    num_eval=_NUM_EVAL.value,
    workers=_WORKERS.value,
    progress=logs.ProgressBar(),
    dci_trees=_DCI_TREES.value,
  )
  logs.info(_timing_line(seconds))
  settings = {
    "step": step,
    "dataset": dataset.name,
    "metric_seed": _SEED.value,
    "num_train": _NUM_TRAIN.value,
    "num_eval": _NUM_EVAL.value,
  }
  if "dci" in metrics:
    settings["dci_trees"] = _DCI_TREES.value
  rows = [{**s, **settings} for s in scores]
  if pop:
    rows = [{**cli.member_row(m), **r} for (m, _), r in zip(chosen, rows, strict=True)]
    results = {"members": rows}
  else:
    results = dict(rows[0])
  results["seconds"] = seconds
  if output:
    cli.write_json(output, results, sort_keys=True)
    logs.info(f"wrote {output}")
  if _COPY.value:
    copy = _merge_member(workdir, step, results) if pop and _MEMBER.value is not None else results
    logs.info(f"wrote {workdir_lib.write_results(workdir, 'disentanglement', step, copy)}")
  if _TENSORBOARD.value:
    for (member, _), row in zip(chosen, rows, strict=True):
      scores_ = {k: v for k, v in row.items() if workdir_lib.is_score(k, v)}
      _log_to_tensorboard(workdir, row["step"], scores_, member if pop else None)
  return results


def _vmap() -> bool | None:
  return runner.MEMBER_EXECUTIONS[_MEMBER_EXECUTION.value]


def _timing_line(seconds: dict) -> str:
  """Where the time went, e.g. ``encode 41.0 s (62%), classifiers 24.2 s (37%), …``."""
  total = max(seconds["total"], 1e-9)
  parts = [
    f"{k} {seconds[k]:.1f} s ({100 * seconds[k] / total:.0f}%)"
    for k in ("draw", "encode", "classifiers")
  ]
  return (
    f"{', '.join(parts)}; {seconds['observations']} distinct observations encoded per member "
    f"for {seconds['drawn']} drawn"
  )


main = cli.results_main(run, width=36)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
