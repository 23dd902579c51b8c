"""A real two-process run (jax.distributed on loopback, gloo) equals a one-process run."""

import os
import socket
import subprocess
import sys

import chex
import jax
import pytest
from conftest import REPO

from experiments.configs import wgan_gp_toy
from gen_models import trainer


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path):
  workdir = str(tmp_path / "multi")
  port = free_port()
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
  }
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=experiments/configs/wgan_gp_toy.py:smoke",
        f"--workdir={workdir}",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs, strict=True):
    assert p.returncode == 0, out[-3000:]
  assert "over 4 devices (2 processes)" in outputs[0]

  trainer.train(
    wgan_gp_toy.get_config("smoke"), str(tmp_path / "single"), devices=jax.devices()[:4]
  )
  _, _, multi = trainer.load_run(workdir, jax.devices()[:4])
  _, _, single = trainer.load_run(str(tmp_path / "single"), jax.devices()[:4])
  assert int(multi.step) == int(single.step) == 6
  # Same global batches, same noise; only cross-process reduction order may differ.
  chex.assert_trees_all_close(
    jax.device_get(multi.params), jax.device_get(single.params), rtol=2e-5, atol=2e-6
  )
