"""experiments/study_dsprites.py: the study's plan from the measuring run, its bad input."""

import pytest
from conftest import assert_one_line_error, run_cli

from experiments import study_dsprites as study
from gen_models.errors import UserError


def test_plan_takes_member_0s_last_interval_and_caps_at_the_schedule():
  rows = [
    {"step": 100, "member": 0, "steps_per_sec": 1.0},  # Compilation inside: not this one.
    {"step": 100, "member": 1, "steps_per_sec": 1.0},
    {"step": 200, "member": 0, "loss": 3.0},
    {"step": 200, "member": 0, "steps_per_sec": 10.0},
    {"step": 200, "member": 1, "steps_per_sec": 12.0},
  ]
  assert study.plan(rows, minutes=1.0, published_steps=300_000) == {
    "steps_per_sec": 10.0,
    "minutes": 1.0,
    "steps": 540,  # 0.9 × 60 s × 10 steps/s.
    "published_steps": 300_000,
    "members": 2,
  }
  assert study.plan(rows, minutes=1.0, published_steps=500)["steps"] == 500
  single = [{"step": 10, "steps_per_sec": 0.001}]
  assert study.plan(single, 1.0, 300_000) == {
    "steps_per_sec": 0.001,
    "minutes": 1.0,
    "steps": 1,  # At least one step.
    "published_steps": 300_000,
    "members": 1,
  }
  with pytest.raises(UserError, match="no steps_per_sec"):
    study.plan([{"step": 1, "loss": 1.0}], 1.0, 300_000)


def test_published_steps_of_the_config_file():
  assert study.published_steps("experiments/configs/beta_vae_dsprites.py") == 300_000
  with pytest.raises(UserError, match="no such file"):
    study.published_steps("experiments/configs/nope.py:smoke")


def test_bad_input_is_one_line(tmp_path):
  assert_one_line_error(run_cli("experiments.study_dsprites"), "--out")
  proc = run_cli("experiments.study_dsprites", f"--out={tmp_path}", "--config=nope.py")
  assert_one_line_error(proc, "--config=nope.py")
