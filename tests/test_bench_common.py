"""experiments/bench/common.py: the run header every benchmark JSON starts with, the worker
processes (a failure is one line), the config names and the table."""

import json
import sys

import pytest
from conftest import assert_one_line_error, run_cli

from experiments.bench import common, train_steps
from gen_models.errors import UserError


def run_bench(json_path, module: str, *args: str) -> dict:
  """Runs the benchmark ``module`` with ``args``; returns the JSON it wrote at ``json_path``,
  having checked that it starts with the one header."""
  proc = run_cli(module, *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(json_path) as f:
    results = json.load(f)
  assert tuple(results)[: len(common.HEADER_KEYS)] == common.HEADER_KEYS
  return results


def test_header_has_the_one_schema(monkeypatch):
  monkeypatch.setattr(sys, "argv", ["train.py", "--configs=toy", "--steps=1"])
  h = common.header("experiments.bench.train")
  assert tuple(h) == common.HEADER_KEYS
  assert h["command"] == "python -m experiments.bench.train --configs=toy --steps=1"
  assert h["backend"] == "cpu" and h["num_devices"] == 8  # conftest's fake devices.
  assert len(h["loadavg"]) == 3
  json.dumps(h)  # JSON as it is.


def test_one_config_table():
  assert train_steps.CONFIGS is common.CONFIGS  # The name the compile benchmark imports.
  assert {"toy", "cifar10", "vae", "resnet", "flow"} <= set(common.CONFIGS)
  assert common.load_config(common.CONFIGS["resnet_bf16"][0]).gan.compute_dtype == "bfloat16"
  with pytest.raises(UserError, match="no experiments/configs/nope.py"):
    common.load_config("nope:smoke")


def test_check_names_is_one_line():
  assert common.check_names(["toy"], common.CONFIGS, "configs") == ["toy"]
  for bad in (["toy", "cifar10_resnet"], []):
    with pytest.raises(UserError, match=r"^--configs must name some of toy, cifar10, "):
      common.check_names(bad, common.CONFIGS, "configs")


def test_format_table_right_aligns_and_dashes_missing_values():
  rows = [{"config": "toy", "ms": 1.25}, {"config": "cifar10", "ms": None}]
  table = common.format_table(rows, (("config", str), ("ms", common.fixed(1))))
  assert table.splitlines() == [" config   ms", "    toy  1.2", "cifar10    -"]


def test_spawn_returns_the_workers_json(tmp_path):
  # The metrics benchmark's reference FID worker: numpy and scipy only, 8 features of dimension 4.
  args = ["--_worker=fid_reference", "--_n=8", "--dim=4", "--seed=0"]
  result = common.spawn("experiments.bench.metrics", args, "fid", str(tmp_path))
  assert result["values"]["fid"] > 0 and result["data_sha256"]
  assert result["loadavg_1m"] >= 0


def test_spawn_failure_is_one_line(tmp_path, capfd):
  args = ["--_worker=nope", "--_n=8"]
  with pytest.raises(UserError) as e:
    common.spawn("experiments.bench.metrics", args, "nope", str(tmp_path))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith("benchmark worker nope failed (exit 1): ")
  # The last line of the worker's traceback.
  assert "UserError: --_worker must be one of prdc_ours, " in message
  assert "Traceback" in capfd.readouterr().err  # The worker's own output still shows.


def test_bench_train_runs_its_workers(tmp_path):
  """bench.train's plumbing on the toy step: the GEMM peak and the step, each in a fresh worker,
  behind the one header."""
  out = tmp_path / "train.json"
  results = run_bench(
    out,
    "experiments.bench.train",
    "--configs=toy",
    "--steps=1",
    "--warmup=0",
    "--conv_impls=xla",
    "--critic_loops=unrolled",
    "--notorch",
    "--nolayers",
    "--device_sweep=",
    "--peak_n=64",
    f"--output={out}",
  )
  (row,) = results["rows"]
  keys = ("config", "framework", "timed_steps", "n_critic")
  assert [row[k] for k in keys] == ["toy", "jax", 1, 5]
  assert row["gen_steps_per_s"] > 0 and row["flops_per_step"] > 0
  assert [g["n"] for g in results["gemm_peak"]] == [64, 64]


def test_bench_train_bad_configs_is_one_line():
  proc = run_cli("experiments.bench.train", "--configs=cifar10_resnet", "--notorch")
  assert_one_line_error(proc, "--configs must name some of toy, cifar10, vae, resnet")
