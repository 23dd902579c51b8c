"""``python -m experiments.sample`` on a trained toy run, and ``launch/multi_process.sh``."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, run_cli

from experiments.configs import wgan_gp_toy
from gen_models import config as config_lib
from gen_models import devices as dev
from gen_models import models, trainer
from gen_models.checkpointing import Checkpointer

CPU = {"JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
  """A workdir holding a finished toy smoke run (config.json and checkpoints)."""
  workdir = str(tmp_path_factory.mktemp("toy_run"))
  trainer.train(wgan_gp_toy.get_config("smoke"), workdir)
  return workdir


def expected_samples(workdir: str, num: int, batch_size: int, seed: int | None) -> np.ndarray:
  """The samples the CLI should write, computed here: chunk ``i`` uses ``fold_in(key, i)``."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = config_lib.validate(config_lib.from_json(f.read()))
  family = models.make_family(config, (2,))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=3, async_save=False)
  abstract = jax.eval_shape(family.init, jax.random.key(config.seed))
  state, _ = ckpt.restore(ckpt.latest_step(), abstract, dev.replicated(dev.make_mesh()))
  ckpt.close()
  key = jax.random.key(config.seed if seed is None else seed)
  sample = jax.jit(family.sample, static_argnums=2)
  chunks = [
    np.asarray(sample(state, jax.random.fold_in(key, i), min(batch_size, num - start)))
    for i, start in enumerate(range(0, num, batch_size))
  ]
  return np.concatenate(chunks)


@pytest.mark.parametrize(
  ("num", "batch_size", "seed"),
  [(50, 16, None), (20, 1024, 3)],  # Several chunks, last one partial; one chunk, given seed.
)
def test_writes_the_samples_of_the_latest_checkpoint(run_dir, tmp_path, num, batch_size, seed):
  out = str(tmp_path / "samples.npy")
  args = [f"--workdir={run_dir}", f"--num_samples={num}", f"--output={out}"]
  args.append(f"--batch_size={batch_size}")
  if seed is not None:
    args.append(f"--seed={seed}")
  proc = run_cli("experiments.sample", *args, env=CPU)
  assert proc.returncode == 0, proc.stderr[-4000:]

  got = np.load(out, allow_pickle=False)
  assert got.shape == (num, 2)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, expected_samples(run_dir, num, batch_size, seed))


def test_vae_run_samples_are_uint8_images(tmp_path):
  """A VAE on dSprites: decoded means in [0, 1] written as uint8 [0, 255], as the trainer's."""
  from experiments.configs import beta_vae_dsprites
  from gen_models.data.images import to_uint8

  config = beta_vae_dsprites.get_config("smoke")
  config.vae.architecture = "mlp"
  config.vae.mlp_width = 16
  workdir = str(tmp_path / "vae")
  trainer.train(config, workdir, devices=jax.devices()[:1])
  out = str(tmp_path / "samples.npy")
  args = [f"--workdir={workdir}", "--num_samples=6", f"--output={out}", "--batch_size=4"]
  proc = run_cli("experiments.sample", *args, env=CPU)
  assert proc.returncode == 0, proc.stderr[-4000:]
  got = np.load(out, allow_pickle=False)
  assert got.shape == (6, 64, 64, 1) and got.dtype == np.uint8
  _, family, state = trainer.load_run(workdir, jax.local_devices()[:1])
  key, sample = jax.random.key(config.seed), jax.jit(family.sample, static_argnums=2)
  means = np.concatenate(
    [np.asarray(sample(state, jax.random.fold_in(key, i), n)) for i, n in enumerate([4, 2])]
  )
  assert means.min() >= 0.0 and means.max() <= 1.0  # Bernoulli means.
  np.testing.assert_array_equal(got, to_uint8(means, (0.0, 1.0)))


def test_bad_inputs_are_one_line_errors(run_dir, tmp_path):
  out = str(tmp_path / "out.npy")
  no_checkpoint = tmp_path / "no_checkpoint"
  no_checkpoint.mkdir()
  shutil.copy(os.path.join(run_dir, "config.json"), no_checkpoint)
  cases = [
    ([f"--workdir={tmp_path / 'missing'}", "--num_samples=5", f"--output={out}"], "no run in"),
    ([f"--workdir={run_dir}", "--num_samples=0", f"--output={out}"], "--num_samples"),
    ([f"--workdir={run_dir}", "--num_samples=5", f"--output={tmp_path / 'a.txt'}"], ".npy"),
    ([f"--workdir={no_checkpoint}", "--num_samples=5", f"--output={out}"], "no checkpoint"),
  ]
  for args, fragment in cases:
    proc = run_cli("experiments.sample", *args, env=CPU)
    assert proc.returncode == 1, (args, proc.stderr[-2000:])
    assert_one_line_error(proc, fragment)
  assert not os.path.exists(out)


@pytest.mark.slow
def test_multi_process_launcher_trains_and_checkpoints(tmp_path):
  workdir = str(tmp_path / "mp")
  config = wgan_gp_toy.get_config("smoke")
  # A fresh workdir: config.json is written by process 0 while process 1 waits (no race).
  env = {**os.environ, **CPU, "DEVICES_PER_PROCESS": "1", "PYTHON": sys.executable}
  proc = subprocess.run(
    [
      os.path.join(REPO, "launch", "multi_process.sh"),
      "2",
      "experiments/configs/wgan_gp_toy.py:smoke",
      workdir,
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  assert "over 2 devices (2 processes)" in proc.stdout, proc.stdout[-4000:]
  checkpoints = os.listdir(os.path.join(workdir, "checkpoints"))
  assert str(config.num_train_steps) in checkpoints
