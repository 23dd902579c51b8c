"""experiments.bench.boosting: its rows and its JSON, at tiny sizes (run as a command: its absl
flags must not meet the other commands' in the test process)."""

import pytest
from conftest import assert_one_line_error, run_cli
from test_bench_common import run_bench


def test_command_writes_rows_and_json(tmp_path):
  out = tmp_path / "bench.json"
  args = ["--n=60", "--d=3", "--classes=3", "--stages=2", "--sklearn_stages=1", f"--output={out}"]
  results = run_bench(out, "experiments.bench.boosting", *args)
  assert results["sizes"]["n"] == 60
  rows = results["rows"]
  assert [r["fit"] for r in rows] == ["numpy", "numpy_libm_exp", "sklearn"]
  assert [r["stages_timed"] for r in rows] == [2, 2, 1]
  for r in rows:
    assert r["ms_per_tree"] == pytest.approx(1e3 * r["seconds"] / (2 * 3))
    assert r["speedup"] == pytest.approx(rows[-1]["seconds"] / r["seconds"])


def test_bad_sizes_are_one_line(tmp_path):
  proc = run_cli("experiments.bench.boosting", "--classes=1", f"--output={tmp_path / 'x.json'}")
  assert_one_line_error(proc, "--classes")
