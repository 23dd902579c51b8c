"""Runs that survive SIGTERM, garbled checkpoints, a busy workdir and a change of device count.

The subprocess tests run ``experiments.main`` on the toy smoke config, share one persistent XLA
compilation cache (the same step compiles once for the whole module) and chain their checks
on one workdir, since every process start costs seconds of import and compile.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import pytest
from conftest import REPO, assert_one_line_error, run_cli

from experiments.configs import wgan_gp_toy
from gen_models import config as config_lib
from gen_models import trainer
from gen_models.errors import Stopped, UserError
from gen_models.workdir_lock import WorkdirLock

# Orbax's failed reads of a garbled step end in "Event loop is closed" errors raised where nothing
# can catch them, some after the test that caused them; the entry points drop them
# (experiments/cli.py), pytest would report them as warnings.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
CONFIG_FLAG = "--config=experiments/configs/wgan_gp_toy.py:smoke"
ONE = jax.devices()[:1]  # Single-process runs use one device, so all share one compiled step.
# Long enough that a signal always comes first; the resumed runs lower num_train_steps.
LONG = {"num_train_steps": 100_000, "checkpoint_every_steps": 2, "log_every_steps": 2}


@pytest.fixture(scope="module")
def cache_env():
  """The environment of a one-device subprocess (it inherits the session's compilation cache
  from conftest through the environment, as this process uses it)."""
  return {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def toy(**overrides):
  c = wgan_gp_toy.get_config("smoke")
  for key, value in overrides.items():
    config_lib.set_path(c, key, value)
  return c


def read(path) -> str:
  return pathlib.Path(path).read_text()


def flags_of(overrides):
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def final(workdir):
  _, _, state = trainer.load_run(str(workdir), ONE)
  return jax.device_get((state.params, state.opt_state)), int(state.step)


def steps_in(path):
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def wait_for_logged_step(workdir, step, procs, timeout=180):
  """Waits until ``metrics.jsonl`` has a line of step >= ``step`` (the run is in its loop)."""
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if any(p.poll() is not None for p in procs):
      raise AssertionError("a run ended early: " + read(procs[0].args[-1])[-3000:])
    if os.path.exists(path):
      lines = [json.loads(x) for x in read(path).splitlines() if x.strip()]
      if lines and lines[-1]["step"] >= step:
        return
    time.sleep(0.05)
  raise AssertionError(f"no step {step} logged in {timeout} s")


def stopped_step(stderr: str) -> int:
  last = stderr.strip().splitlines()[-1]
  match = re.fullmatch(
    r"stopped by SIGTERM.* at step (\d+); checkpoint (\S+); run the same command to resume", last
  )
  assert match, stderr[-3000:]
  return int(match.group(1))


def garble(step_dir):
  """Overwrites every file of the state's OCDBT data with bytes that are not a valid file."""
  n = 0
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for name in files:
      if os.sep + "d" in root:
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"\x00garbled" * 7)
        n += 1
  assert n > 0


def test_sigterm_saves_at_its_step_resumes_bit_exactly_and_bad_checkpoints_fall_back(
  tmp_path, cache_env, monkeypatch, caplog
):
  """SIGTERM during step 3 (and again during the save) → Stopped at step 3 with a complete
  checkpoint there; running again resumes and ends bit-identical to an uninterrupted run.
  Garbling the newest checkpoint falls back to the one before (moved aside, not deleted), still
  bit-identical. All garbled: a reader gives one ``error:`` line listing each step, exit 1, and
  moves nothing; a training run moves them all aside."""
  from gen_models import checkpointing, preemption

  real_reached, real_wait = preemption.StopRequests.reached, checkpointing.Checkpointer.wait
  signals = []

  def reached(self, step):
    if step == 3 and not signals:
      signals.append(step)
      os.kill(os.getpid(), signal.SIGTERM)  # Handled by StopRequests, not the default action.
    return real_reached(self, step)

  def wait(self):
    if len(signals) == 1:  # A second SIGTERM while the stop's checkpoint is being written.
      signals.append("again")
      os.kill(os.getpid(), signal.SIGTERM)
    return real_wait(self)

  config = lambda n: toy(num_train_steps=n, checkpoint_every_steps=2)
  workdir, reference = str(tmp_path / "run"), str(tmp_path / "reference")
  with monkeypatch.context() as m:
    m.setattr(preemption.StopRequests, "reached", reached)
    m.setattr(checkpointing.Checkpointer, "wait", wait)
    with pytest.raises(Stopped) as e:
      trainer.train(config(10), workdir, devices=ONE)
  assert signals == [3, "again"]
  assert (e.value.signal_name, e.value.step) == ("SIGTERM", 3)
  assert str(e.value) == (
    f"stopped by SIGTERM at step 3; checkpoint {workdir}/checkpoints/3; "
    "run the same command to resume"
  )
  assert steps_in(os.path.join(workdir, "checkpoints")) == [2, 3]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # The previous handler is back.
  assert read(os.path.join(workdir, "lock")) == ""  # Released.

  trainer.train(config(6), workdir, devices=ONE)  # Resumes from 3.
  trainer.train(config(6), reference, devices=ONE)
  chex.assert_trees_all_equal(final(reference), final(workdir))

  # The newest checkpoint garbled: the restart falls back to 4 and moves 6 aside.
  garble(os.path.join(workdir, "checkpoints", "6"))
  caplog.clear()
  trainer.train(config(8), workdir, devices=ONE)
  warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert any(
    m.startswith(f"checkpoint {workdir}/checkpoints/6 cannot be restored (")
    and m.endswith(f"moved to {workdir}/bad_checkpoints/6")
    for m in warned
  ), warned
  assert os.path.isdir(os.path.join(workdir, "bad_checkpoints", "6", "state"))
  trainer.train(config(8), reference, devices=ONE)
  chex.assert_trees_all_equal(final(reference), final(workdir))

  # Every checkpoint garbled: one error line naming each step, exit 1, nothing moved.
  steps = steps_in(os.path.join(workdir, "checkpoints"))
  assert steps == [4, 6, 8]
  for step in steps:
    garble(os.path.join(workdir, "checkpoints", str(step)))
  before = sorted(os.walk(workdir))
  out = str(tmp_path / "samples.npy")
  proc = run_cli(
    "experiments.sample", f"--workdir={workdir}", "--num_samples=4", f"--output={out}",
    env=cache_env,
  )  # fmt: skip
  last = assert_one_line_error(proc, f"no checkpoint in {workdir}/checkpoints can be restored")
  assert re.search(r"tried step 8 \(.*\); 6 \(.*\); 4 \(", last), last
  assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) <= 5, proc.stderr  # Three warnings, one error.
  assert sorted(os.walk(workdir)) == before  # A reader moves nothing.
  with pytest.raises(UserError, match=r"tried step 8 \(.*\); 6 \(.*\); 4 \("):
    trainer.train(config(10), workdir, devices=ONE)
  assert steps_in(os.path.join(workdir, "checkpoints")) == []
  assert set(os.listdir(os.path.join(workdir, "bad_checkpoints"))) == {"4", "6", "6.1", "8"}


def test_sigint_alone_stops_like_sigterm_and_restores_the_previous_handler(tmp_path, monkeypatch):
  """Ctrl-C (SIGINT, no SIGTERM) during step 2 → no KeyboardInterrupt: Stopped at step 2 with a
  complete checkpoint there, the lock released and the previous SIGINT handler back."""
  from gen_models import preemption

  real_reached = preemption.StopRequests.reached
  sent = []

  def reached(self, step):
    if step == 2 and not sent:
      sent.append(step)
      os.kill(os.getpid(), signal.SIGINT)
    return real_reached(self, step)

  before = signal.getsignal(signal.SIGINT)
  workdir = str(tmp_path / "run")
  monkeypatch.setattr(preemption.StopRequests, "reached", reached)
  with pytest.raises(Stopped) as e:
    trainer.train(toy(num_train_steps=10, checkpoint_every_steps=5), workdir, devices=ONE)
  assert sent == [2]
  assert (e.value.signal_name, e.value.step) == ("SIGINT", 2)
  assert str(e.value).startswith("stopped by SIGINT at step 2; ")
  assert steps_in(os.path.join(workdir, "checkpoints")) == [2]
  assert signal.getsignal(signal.SIGINT) is before
  assert read(os.path.join(workdir, "lock")) == ""


def test_a_live_run_holds_the_workdir_and_a_dead_ones_lock_is_taken_over(
  tmp_path, cache_env, caplog
):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from gen_models.workdir_lock import WorkdirLock; "
      f"WorkdirLock({workdir!r}).acquire(); print('locked', flush=True); time.sleep(600)",
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=rf"in use by a run \(pid {holder.pid} on host "):
      trainer.train(toy(num_train_steps=2), workdir, devices=ONE)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # Refused before anything.
  finally:
    holder.kill()
    holder.wait()
  held = json.loads(read(os.path.join(workdir, "lock")))
  assert held["pid"] == holder.pid  # The dead run's record is still there: a stale lock.
  caplog.clear()
  trainer.train(toy(num_train_steps=2), workdir, devices=ONE)  # Takes it over, trains, releases.
  assert any(
    r.getMessage().startswith(
      f"taking over the lock of a run that is no longer running (pid {holder.pid} on host "
    )
    for r in caplog.records
  )
  assert steps_in(os.path.join(workdir, "checkpoints")) == [2]
  assert read(os.path.join(workdir, "lock")) == ""
  with WorkdirLock(workdir):  # Free again.
    pass
