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
from test_multiprocess import free_port

from experiments.configs import wgan_gp_toy
from gen_models import config as config_lib
from gen_models import trainer
from gen_models.errors import EXIT_STOPPED, Stopped, UserError
from gen_models.workdir_lock import WorkdirLock

CONFIG_FLAG = "--config=experiments/configs/wgan_gp_toy.py:smoke"
ONE = jax.devices()[:1]  # Single-process runs use one device, so all share one compiled step.
# Long enough that a signal always comes first; the resumed runs lower num_train_steps.
LONG = {"num_train_steps": 100_000, "checkpoint_every_steps": 2, "log_every_steps": 2}


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
  """A persistent compilation cache shared by this module's subprocesses and this process; the
  environment of a one-device subprocess."""
  cache = str(tmp_path_factory.mktemp("xla_cache"))
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update(names[0], cache)
  jax.config.update(names[1], 0.0)
  yield {
    "JAX_COMPILATION_CACHE_DIR": cache,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1",  # Subprocesses: one device.
  }
  for n, v in old.items():
    jax.config.update(n, v)
  from jax.experimental.compilation_cache import compilation_cache

  compilation_cache.reset_cache()


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


@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_and_the_run_resumes_bit_exactly(tmp_path, cache_env):
  """SIGTERM (twice, the second during the stop) → exit 75, a checkpoint at the reported step;
  the same command resumes; garbling the newest checkpoint falls back to the previous one and
  moves the bad one aside; the result equals an uninterrupted run bit for bit throughout."""
  workdir = str(tmp_path / "run")
  log = str(tmp_path / "run.log")
  cmd = [sys.executable, "-m", "experiments.main", CONFIG_FLAG, f"--workdir={workdir}"]
  with open(log, "w") as out:
    proc = subprocess.Popen(
      [*cmd, *flags_of(LONG)],
      cwd=REPO,
      env={**os.environ, **cache_env},
      stdout=out,
      stderr=subprocess.STDOUT,
    )
    proc.args = [log]  # For wait_for_logged_step's message.
    wait_for_logged_step(workdir, 4, [proc])
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # A second signal while stopping changes nothing.
    assert proc.wait(timeout=120) == EXIT_STOPPED, read(log)[-3000:]
  output = read(log)
  assert "Traceback" not in output, output[-3000:]
  n = stopped_step(output)
  assert max(steps_in(os.path.join(workdir, "checkpoints"))) == n
  assert final(workdir)[1] == n
  assert read(os.path.join(workdir, "lock")) == ""  # Released: the file is empty.

  # The same command (num_train_steps may change on resume) continues to n + 4.
  resumed = run_cli(
    "experiments.main", CONFIG_FLAG, f"--workdir={workdir}",
    *flags_of({**LONG, "num_train_steps": n + 4}), env=cache_env,
  )  # fmt: skip
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"restored checkpoint {workdir}/checkpoints/{n}" in resumed.stderr
  reference = str(tmp_path / "reference")
  trainer.train(toy(**{**LONG, "num_train_steps": n + 4}), reference, devices=ONE)
  chex.assert_trees_all_equal(final(reference), final(workdir))

  # Garble the newest checkpoint: the restart falls back to the one before, moves n + 4 aside.
  garble(os.path.join(workdir, "checkpoints", str(n + 4)))
  trainer.train(toy(**{**LONG, "num_train_steps": n + 6}), workdir, devices=ONE)
  assert os.path.isdir(os.path.join(workdir, "bad_checkpoints", str(n + 4), "state"))
  trainer.train(toy(**{**LONG, "num_train_steps": n + 6}), reference, devices=ONE)
  chex.assert_trees_all_equal(final(reference), final(workdir))

  # Every checkpoint garbled: one error line naming each step, exit 1, nothing deleted.
  steps = steps_in(os.path.join(workdir, "checkpoints"))
  for step in steps:
    garble(os.path.join(workdir, "checkpoints", str(step)))
  before = sorted(os.walk(workdir))
  out = str(tmp_path / "samples.npy")
  proc = run_cli(
    "experiments.sample", f"--workdir={workdir}", "--num_samples=4", f"--output={out}",
    env=cache_env,
  )  # fmt: skip
  last = assert_one_line_error(proc, "no checkpoint in", "can be restored")
  for step in steps:
    assert f"step {step} (" in last or f"; {step} (" in last, last
  assert "Event loop is closed" not in proc.stderr
  assert sorted(os.walk(workdir)) == before  # A reader moves nothing.
  # A training run moves them all aside and stops with the same error.
  with pytest.raises(UserError, match=r"no checkpoint in .* tried step \d+ \(.*\); \d+ \("):
    trainer.train(toy(**{**LONG, "num_train_steps": n + 8}), workdir, devices=ONE)
  assert steps_in(os.path.join(workdir, "checkpoints")) == []
  bad = set(os.listdir(os.path.join(workdir, "bad_checkpoints")))
  twice = {f"{n + 4}.1"} if n + 4 in steps else set()  # Bad twice: both copies kept.
  assert bad == {*map(str, steps), str(n + 4), *twice}


def test_a_live_run_holds_the_workdir_and_a_dead_ones_lock_is_taken_over(tmp_path, cache_env):
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
  trainer.train(toy(num_train_steps=2), workdir, devices=ONE)  # Takes it over, trains, releases.
  assert steps_in(os.path.join(workdir, "checkpoints")) == [2]
  assert read(os.path.join(workdir, "lock")) == ""
  with WorkdirLock(workdir):  # Free again.
    pass


def test_sigterm_in_process_raises_stopped_after_saving(tmp_path, cache_env, monkeypatch):
  """The signal handler's path without a subprocess: a SIGTERM sent to ourselves during step 3
  stops the run at step 3 with a complete checkpoint there."""
  from gen_models import preemption

  real = preemption.StopRequests.reached

  def reached(self, step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)  # Handled by StopRequests, not the default action.
    return real(self, step)

  monkeypatch.setattr(preemption.StopRequests, "reached", reached)
  with pytest.raises(Stopped) as e:
    trainer.train(
      toy(num_train_steps=10, checkpoint_every_steps=100), str(tmp_path / "run"), devices=ONE
    )
  assert (e.value.signal_name, e.value.step) == ("SIGTERM", 3)
  assert steps_in(tmp_path / "run" / "checkpoints") == [3]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # The previous handler is back.


def start_processes(workdir, log_prefix, env, extra=(), n=2, devices_each=4):
  """``n`` processes of one run over loopback, ``devices_each`` fake devices each."""
  port = free_port()
  procs = []
  for i in range(n):
    log = f"{log_prefix}.{i}.log"
    with open(log, "w") as out:
      proc = subprocess.Popen(
        [
          sys.executable, "-m", "experiments.main", CONFIG_FLAG, f"--workdir={workdir}",
          f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}", f"--process_id={i}",
          *extra,
        ],
        cwd=REPO,
        env={**os.environ, **env,
             "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_each}"},
        stdout=out,
        stderr=subprocess.STDOUT,
      )  # fmt: skip
    proc.args = [log]
    procs.append(proc)
  return procs


@pytest.mark.slow
def test_two_processes_stop_together_resume_on_one_device_and_survive_a_lost_peer(
  tmp_path, cache_env
):
  """SIGTERM to process 1 of 2 (4 fake devices each): both save and stop at the same step. The
  checkpoint of 8 devices over 2 processes resumes in 1 process on 1 device and matches an
  uninterrupted 1-device run. Then, restarted, process 1 is SIGKILLed: process 0 exits with one
  error line naming it within the peer timeout, and no checkpoint is lost."""
  workdir = str(tmp_path / "multi")
  procs = start_processes(workdir, str(tmp_path / "stop"), cache_env, flags_of(LONG))
  try:
    wait_for_logged_step(workdir, 4, procs)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()
  outputs = [read(p.args[0]) for p in procs]
  assert codes == [EXIT_STOPPED] * 2, outputs[0][-3000:] + outputs[1][-3000:]
  n = stopped_step(outputs[0])
  assert stopped_step(outputs[1]) == n  # The same step on both processes.
  assert "over 8 devices (2 processes)" in outputs[0]
  assert max(steps_in(os.path.join(workdir, "checkpoints"))) == n

  trainer.train(toy(**{**LONG, "num_train_steps": n + 2}), workdir, devices=ONE)
  reference = str(tmp_path / "reference")
  trainer.train(toy(**{**LONG, "num_train_steps": n + 2}), reference, devices=ONE)
  resumed, step = final(workdir)
  assert step == n + 2
  # Same batches and noise; only the 8-device reduction order of steps 1..n differs.
  chex.assert_trees_all_close(resumed, final(reference)[0], rtol=2e-5, atol=2e-6)

  timeout = 5
  procs = start_processes(
    workdir, str(tmp_path / "kill"), cache_env, [*flags_of(LONG), f"--peer_timeout_s={timeout}"]
  )
  try:
    wait_for_logged_step(workdir, n + 6, procs)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code = procs[0].wait(timeout=120)
    elapsed = time.monotonic() - killed
  finally:
    for p in procs:
      p.kill()
  output = read(procs[0].args[0])
  assert code == 1, output[-3000:]
  assert "Traceback" not in output and "Check failure" not in output, output[-3000:]
  last = output.strip().splitlines()[-1]
  assert last.startswith("error: process 1 of 2 was lost"), output[-3000:]
  assert elapsed < 2 * timeout, elapsed  # Bound: timeout × 1.1 + one step (documented).
  assert final(workdir)[1] >= n + 6  # The checkpoints written before the kill restore.
