r"""A report of a population's (or several runs') evaluation results: tables and figures.

    python -m experiments.report --workdir=W [--workdir=W2 ...] [--results=FILE.json ...] \
        --output=DIR [--metrics=mig/mig,dci/disentanglement]

Reads each workdir's ``results/<kind>_step<step>.json`` (written by the evaluation commands; the
latest step of each kind, merged per member) and each ``--results`` file, pools their members
(a grid split over two workdirs is one grid; each row keeps its workdir), and writes
``DIR/summary.md`` (per metric a table over the hyperparameter settings: n, median, IQR, range;
Spearman's ρ with each swept key; the fraction of the variance between settings rather than
between seeds), ``DIR/summary.json`` (the same numbers and every member's value) and a figure
per metric, ``DIR/<metric, / as _>.png`` and ``.pdf``. See ``gen_models.report``.
"""

from __future__ import annotations

import os

from absl import app, flags

from experiments import cli
from gen_models import report
from gen_models.errors import UserError

_WORKDIR = flags.DEFINE_multi_string("workdir", [], "A workdir with results/*.json (repeatable).")
_RESULTS = flags.DEFINE_multi_string("results", [], "A results JSON file (repeatable).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for summary.md, summary.json, figures.")
_METRICS = flags.DEFINE_string(
  "metrics", None, "Comma-separated metrics to report (default: every score but *_std[err])."
)
flags.mark_flags_as_required(["output"])


def run() -> tuple[str, list[str]]:
  """Writes the report; returns its markdown and the paths written."""
  if not _WORKDIR.value and not _RESULTS.value:
    raise UserError("nothing to report: give --workdir=W or --results=FILE.json")
  rows = []
  for workdir in _WORKDIR.value:
    rows += report.load_workdir(workdir, cli.results_commands(workdir))
  for path in _RESULTS.value:
    rows += report.load_results_file(path)
  metrics = [m.strip() for m in (_METRICS.value or "").split(",") if m.strip()] or None
  summary = report.summarize(rows, metrics)
  out = _OUTPUT.value
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --output={out}: {e.strerror or e}") from None
  markdown = report.write_markdown(summary)
  written = [os.path.join(out, "summary.md"), os.path.join(out, "summary.json")]
  try:
    with open(written[0], "w") as f:
      f.write(markdown)
  except OSError as e:
    raise UserError(f"cannot write {written[0]}: {e.strerror or e}") from None
  cli.write_json(written[1], summary)
  for metric in summary["metrics"]:
    png = os.path.join(out, report.metric_filename(metric) + ".png")
    written += report.plot_metric(summary, metric, png)
  return markdown, written


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.quiet_library_logs()
  markdown, written = cli.run_user_errors_as_exit(run)
  print(markdown)
  for path in written:
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
