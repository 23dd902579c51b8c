"""Real multi-process runs (jax.distributed on loopback, gloo): they agree with one process,
stop together on a signal to one of them, resume on another device count, and survive a lost
peer. The helpers and the shared compilation cache come from ``test_preemption``."""

import os
import signal
import socket
import subprocess
import sys
import time

import chex
import pytest
from conftest import REPO
from test_preemption import (  # noqa: F401  (cache_env is a fixture)
  CONFIG_FLAG,
  LONG,
  ONE,
  cache_env,
  final,
  flags_of,
  read,
  steps_in,
  stopped_step,
  toy,
  wait_for_logged_step,
)

from gen_models import trainer
from gen_models.errors import EXIT_STOPPED


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


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
  tmp_path,
  cache_env,  # noqa: F811  (the fixture imported above)
):
  """SIGTERM to process 1 of 2 (4 fake devices each): both save and stop at the same step. The
  checkpoint of 8 devices over 2 processes resumes in 1 process on 1 device and matches an
  uninterrupted 1-device run (so 2 processes and 1 process compute the same training, to float32
  round-off). Then, restarted, process 1 is SIGKILLed: process 0 exits with one error line
  naming it within the peer timeout, and no checkpoint is lost."""
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
  last_step = max(steps_in(os.path.join(workdir, "checkpoints")))
  assert last_step >= n + 2 and final(workdir)[1] == last_step  # Nothing lost.
