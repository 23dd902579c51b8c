"""experiments.bench.boosting: its rows and its JSON, at tiny sizes."""

import json
import subprocess
import sys

import pytest

from experiments.bench import boosting as bench
from gen_models import UserError


def test_measure_rows():
  rows = bench.measure(n=60, d=3, classes=3, stages=2, sklearn_stages=1, seed=0)
  assert [r["fit"] for r in rows] == ["numpy", "numpy_libm_exp", "sklearn"]
  assert [r["stages_timed"] for r in rows] == [2, 2, 1]
  for r in rows:
    assert r["ms_per_tree"] == pytest.approx(1e3 * r["seconds"] / (2 * 3))
    assert r["speedup"] == pytest.approx(rows[-1]["seconds"] / r["seconds"])
  with pytest.raises(UserError, match="--classes"):
    bench.measure(n=60, d=3, classes=1, stages=2, sklearn_stages=1, seed=0)


def test_command_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  args = ["--n=50", "--d=2", "--classes=2", "--stages=2", f"--output={out}"]
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.bench.boosting", *args],
    capture_output=True,
    text=True,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr
  results = json.loads(out.read_text())
  assert results["sizes"]["n"] == 50 and len(results["rows"]) == 3
