r"""Benchmark of DCI's gradient-boosted trees: gen_models.metrics.boosting against scikit-learn.

    python -m experiments.bench.boosting [--n=2000 --d=10 --classes=10 --stages=20] \
        [--sklearn_stages=20] [--output=experiments/results/bench_boosting_cpu_<date>.json]

Fits ``--n`` × ``--d`` Gaussian codes with class-dependent means and ``--classes`` classes,
``--stages`` boosting stages (DCI's other settings: learning rate 0.1, depth 3), three ways:
``numpy`` (:func:`gen_models.metrics.boosting.fit_gradient_boosting`, the default ``np.exp``),
``numpy_libm_exp`` (the same with ``exp=libm_exp``, bit-equal to scikit-learn on every CPU) and
``sklearn`` (``boosting.sklearn_classifier``), which is timed on ``--sklearn_stages`` stages and
scaled to ``--stages`` (stages cost alike). Columns: seconds, ms per tree (``classes`` trees per
stage, 1 for 2 classes), speed-up over scikit-learn. The JSON has the machine, the sizes, the load
average before and after, and the rows.

DCI's sizes, the numbers quoted in ``boosting.py``: ``--n=10000 --classes=40 --stages=100
--sklearn_stages=10`` (30 s against 126 s on one shared core of the development machine).
"""

from __future__ import annotations

import datetime
import os
import time

import numpy as np
import sklearn
from absl import app, flags

from experiments import cli
from experiments.bench import common
from gen_models.errors import UserError
from gen_models.metrics import boosting

_N = flags.DEFINE_integer("n", 2000, "Training points.")
_D = flags.DEFINE_integer("d", 10, "Code dimensions (features).")
_CLASSES = flags.DEFINE_integer("classes", 10, "Classes (>= 2).")
_STAGES = flags.DEFINE_integer("stages", 20, "Boosting stages (DCI: 100).")
_SKLEARN_STAGES = flags.DEFINE_integer(
  "sklearn_stages", None, "Stages scikit-learn is timed on, then scaled (default: --stages)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Data and trees' seed.")
_OUTPUT = flags.DEFINE_string(
  "output",
  None,
  "Output JSON (default: experiments/results/bench_boosting_cpu_<UTC date>.json; '' for none).",
)

_SIZE_NAMES = ("n", "d", "classes", "stages", "sklearn_stages", "seed")
_COLUMNS = (
  ("fit", str),
  ("stages_timed", str),
  ("seconds", lambda v: f"{v:.2f}"),
  ("ms_per_tree", lambda v: f"{v:.2f}"),
  ("speedup", lambda v: f"{v:.2f}"),
)


def measure(n: int, d: int, classes: int, stages: int, sklearn_stages: int, seed: int) -> list:
  """The three fits' rows (see the module docstring)."""
  if min(n, d, stages, sklearn_stages) < 1 or classes < 2 or n < classes:
    raise UserError("need --n, --d, --stages, --sklearn_stages >= 1 and 2 <= --classes <= --n")
  rng = np.random.default_rng(seed)
  y = np.arange(n) % classes  # Every class present.
  x = rng.normal(size=(n, d)) + rng.normal(size=(classes, d))[y]
  trees_per_stage = 1 if classes == 2 else classes
  fits = {
    "numpy": lambda: boosting.fit_gradient_boosting(x, y, n_estimators=stages, seed=seed),
    "numpy_libm_exp": lambda: boosting.fit_gradient_boosting(
      x, y, n_estimators=stages, seed=seed, exp=boosting.libm_exp
    ),
    "sklearn": lambda: boosting.sklearn_classifier(seed, n_estimators=sklearn_stages).fit(x, y),
  }
  rows = []
  for name, fit in fits.items():
    timed = sklearn_stages if name == "sklearn" else stages
    print(f"{name}: {timed} stages of {trees_per_stage} tree(s) ...", flush=True)
    start = time.perf_counter()
    fit()
    seconds = (time.perf_counter() - start) * stages / timed
    rows.append(
      {
        "fit": name,
        "stages_timed": timed,
        "seconds": seconds,
        "ms_per_tree": 1e3 * seconds / (stages * trees_per_stage),
      }
    )
  for row in rows:
    row["speedup"] = rows[-1]["seconds"] / row["seconds"]
  return rows


def run() -> dict:
  output = _OUTPUT.value
  if output is None:
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    output = f"experiments/results/bench_boosting_cpu_{today}.json"
  sklearn_stages = _SKLEARN_STAGES.value or _STAGES.value
  load_before = os.getloadavg()[0]
  sizes = (_N.value, _D.value, _CLASSES.value, _STAGES.value, sklearn_stages, _SEED.value)
  rows = measure(*sizes)
  print(common.format_table(rows, _COLUMNS))
  return common.finish(
    "experiments.bench.boosting",
    output or None,
    numpy=np.__version__,
    sklearn=sklearn.__version__,
    sizes=dict(zip(_SIZE_NAMES, sizes, strict=True)),
    load_before=load_before,
    load_after=os.getloadavg()[0],
    rows=rows,
  )


def main(argv):
  common.start(argv)
  cli.run_user_errors_as_exit(run)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
