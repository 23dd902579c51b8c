"""``gen_models.workdir``: the workdir's names, its JSON records written and read back, and that
it (and ``report``, which reads workdirs through it) imports no JAX."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import types

import ml_collections
import numpy as np
import pytest
from conftest import REPO

from gen_models import workdir as wd
from gen_models.errors import UserError

MEMBER = types.SimpleNamespace(index=1, name="beta=4,seed=0")


def test_names():
  j, sub = os.path.join, "001_beta=4,seed=0"
  assert wd.config_path("w") == j("w", "config.json")
  assert wd.members_path("w") == j("w", "members.json")
  assert wd.lock_path("w") == j("w", "lock")
  assert wd.checkpoints_dir("w") == j("w", "checkpoints")
  assert wd.metrics_path("w") == j("w", "metrics.jsonl")
  assert wd.member_folder(1, "beta=4,seed=0") == sub
  assert wd.member_folder(1234, "x") == "1234_x"
  assert wd.tensorboard_dir("w") == j("w", "tensorboard")
  assert wd.tensorboard_dir("w", MEMBER) == j("w", "tensorboard", sub)
  assert wd.samples_dir("w") == j("w", "samples")
  assert wd.samples_dir("w", MEMBER) == j("w", "samples", sub)
  assert wd.sample_path("w", "samples", 6) == j("w", "samples", "samples_00000006.png")
  assert wd.sample_path("w", "traversals", 6, MEMBER) == j(
    "w", "samples", sub, "traversals_00000006.png"
  )
  assert wd.results_path("w", "evaluate", 100) == j("w", "results", "evaluate_step00000100.json")


@pytest.mark.parametrize(("kind", "step"), [("evaluate", 0), ("my_kind", 7), ("a_step", 123456789)])
def test_results_name_round_trip(kind, step):
  name = os.path.basename(wd.results_path("w", kind, step))
  assert wd.parse_results_name(name) == (kind, step)


@pytest.mark.parametrize("name", ["evaluate.json", "evaluate_step.json", "x_step12.json.tmp"])
def test_other_names_are_not_results_names(name):
  assert wd.parse_results_name(name) is None


def test_results_files_take_each_kinds_latest_step(tmp_path):
  for kind, step in [("evaluate", 50), ("evaluate", 100), ("disentanglement", 7)]:
    wd.write_results(str(tmp_path), kind, step, {"step": step})
  wd.write_json(str(tmp_path / "results" / "mine.json"), {})
  (tmp_path / "results" / "notes.txt").write_text("not json")
  got = wd.results_files(str(tmp_path))
  assert got == {
    "evaluate": (100, wd.results_path(str(tmp_path), "evaluate", 100)),
    "disentanglement": (7, wd.results_path(str(tmp_path), "disentanglement", 7)),
    "mine": (0, str(tmp_path / "results" / "mine.json")),
  }
  assert wd.results_files(str(tmp_path / "nothing")) == {}


def test_write_results_keeps_the_earlier_file(tmp_path):
  path = wd.write_results(str(tmp_path), "likelihood", 3, {"b": 1, "a": 2})
  assert path == wd.results_path(str(tmp_path), "likelihood", 3)
  text = pathlib.Path(path).read_text()
  assert text == '{\n  "a": 2,\n  "b": 1\n}\n'  # Keys sorted, indented.
  assert wd.write_results(str(tmp_path), "likelihood", 3, {"a": 3}) == path
  assert json.loads(pathlib.Path(path).read_text()) == {"a": 3}
  [old] = [f for f in os.listdir(tmp_path / "results") if ".replaced-" in f]
  assert old.startswith("likelihood_step00000003.json.replaced-")
  assert json.loads((tmp_path / "results" / old).read_text()) == {"b": 1, "a": 2}
  assert not [f for f in os.listdir(tmp_path / "results") if f.endswith(".tmp")]


def test_config_round_trip(tmp_path):
  c = ml_collections.ConfigDict({"model": "vae", "seed": 3, "optimizer": {"learning_rate": 1e-4}})
  c.sizes = (1, 2)
  assert not wd.is_run(str(tmp_path))
  assert wd.write_config(str(tmp_path), c) == wd.config_path(str(tmp_path))
  assert wd.is_run(str(tmp_path))
  back = wd.read_config(str(tmp_path))
  assert isinstance(back, ml_collections.ConfigDict)
  assert back.to_dict() == {**c.to_dict(), "sizes": [1, 2]}  # JSON has no tuples.
  assert not wd.is_run(wd.config_path(str(tmp_path)))  # A file is not a workdir.


@pytest.mark.parametrize(
  ("text", "message"),
  [(None, "no run in {w} (no config.json)"), ("{x", "is not valid JSON"), ("[1]", "got list")],
)
def test_bad_config_is_a_user_error(tmp_path, text, message):
  if text is not None:
    (tmp_path / "config.json").write_text(text)
  with pytest.raises(UserError, match=re.escape(message.format(w=tmp_path))):
    wd.read_config(str(tmp_path))


def test_members_round_trip(tmp_path):
  assert wd.read_members(str(tmp_path)) == {}  # A single run has none.
  rows = [
    {"index": 0, "name": "beta=1,seed=0", "seed": 0, "hparams": {"vae.beta": 1.0}},
    {"index": 1, "name": "beta=4,seed=0", "seed": 0, "hparams": {"vae.beta": 4.0}},
  ]
  assert wd.write_members(str(tmp_path), rows) == wd.members_path(str(tmp_path))
  assert wd.read_members(str(tmp_path)) == {0: rows[0], 1: rows[1]}
  wd.write_json(wd.members_path(str(tmp_path)), {"members": [{"name": "x"}]})
  with pytest.raises(UserError, match="members.json: expected"):
    wd.read_members(str(tmp_path))


def test_write_json_to_a_missing_folder_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="cannot write"):
    wd.write_json(str(tmp_path / "missing" / "x.json"), {})


@pytest.mark.parametrize(
  ("key", "value", "score"),
  [
    ("mig/mig", 0.2, True),
    ("fid", 3, True),
    ("sap/sap", None, True),  # A score that could not be computed.
    ("flag", True, False),
    ("dataset", "dsprites", False),
    ("seconds", {"total": 1.0}, False),
    ("member", 1, False),
    ("seed", 0, False),
    ("metric_seed", 0, False),
    ("step", 100, False),
    ("dequantization_samples", 4, False),
    ("num_eval", 5, False),
    ("nearest_k", 5, False),
  ],
)
def test_is_score(key, value, score):
  assert wd.is_score(key, value) is score


def test_metric_writer_uses_the_layout(tmp_path):
  from gen_models.logs import MetricWriter

  writer = MetricWriter(str(tmp_path), members=[MEMBER])
  path = writer.image(6, "samples", np.zeros((2, 2, 3), np.uint8), member=1)
  writer.scalars(6, {"loss": 1.5}, member=1)
  writer.close()
  assert path == wd.sample_path(str(tmp_path), "samples", 6, MEMBER) and os.path.isfile(path)
  assert os.listdir(wd.tensorboard_dir(str(tmp_path), MEMBER))
  [line] = pathlib.Path(wd.metrics_path(str(tmp_path))).read_text().splitlines()
  assert json.loads(line)["member_name"] == MEMBER.name


@pytest.mark.parametrize(
  "module",
  ["gen_models.workdir", "gen_models.report", "experiments.report"],
)
def test_imports_no_jax(module):
  code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'jax'))"
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]"
