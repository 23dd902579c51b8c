"""Bad input ends in one ``error:`` line and a non-zero exit; nothing in a workdir is lost."""

import dataclasses
import json
import os

import jax.numpy as jnp
import ml_collections
import pytest
from conftest import assert_one_line_error, run_cli

from experiments.configs import wgan_gp_toy
from gen_models import UserError, models, trainer

TOY = "--config=experiments/configs/wgan_gp_toy.py:smoke"


def snapshot(directory):
  """``{relative path: bytes}`` of every file under ``directory``."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


@pytest.mark.parametrize(
  ("flags", "fragments"),
  [
    (["--config.gan.lossx=1"], ["unknown config key", "lossx"]),
    (["--config.batch_size=abc"], ["--config.batch_size=abc"]),
    (["--config.model=vqgan"], ["unknown model 'vqgan'", "wgan_gp"]),
    (["--config.dataset.name=imagenet"], ["unknown dataset 'imagenet'", "8gaussians"]),
    (["--config.gan.loss=hinge"], ["unknown gan.loss 'hinge'"]),
    (["--config.batch_size=30"], ["batch_size=30", "8 devices"]),
    (["--config.optimizer.learning_rate=1e38"], ["non-finite", "step 1", "no checkpoint yet"]),
    (["--config.population.sweep=gan.latent_dim=2,4"], ["cannot vary 'gan.latent_dim'"]),
    (["--config.population.sweep=gan.gp_weight="], ["empty value"]),
  ],
)
def test_cli_rejects(tmp_path, flags, fragments):
  workdir = tmp_path / "run"
  proc = run_cli("experiments.main", TOY, f"--workdir={workdir}", *flags)
  assert_one_line_error(proc, *fragments)


def test_missing_config_file(tmp_path):
  proc = run_cli(
    "experiments.main", "--config=experiments/configs/nope.py", f"--workdir={tmp_path}"
  )
  assert_one_line_error(proc, "nope.py")


def test_unknown_key_in_config_file(tmp_path):
  path = tmp_path / "my_config.py"
  path.write_text(
    "from experiments.configs import wgan_gp_toy\n"
    "def get_config():\n"
    "  c = wgan_gp_toy.get_config('smoke')\n"
    "  c.optimizer.lerning_rate = 1e-3\n"
    "  return c\n"
  )
  proc = run_cli("experiments.main", f"--config={path}", f"--workdir={tmp_path / 'run'}")
  assert_one_line_error(proc, "optimizer.lerning_rate", "did you mean 'optimizer.learning_rate'")
  assert not (tmp_path / "run").exists()


def test_wrong_type_in_config_file():
  d = wgan_gp_toy.get_config("smoke").to_dict()
  d["gan"]["n_critic"] = "five"  # ConfigDict itself refuses this; a dict-built config does not.
  c = ml_collections.ConfigDict(d)
  with pytest.raises(UserError, match="gan.n_critic.*int"):
    trainer.train(c, "/nonexistent/never/created")


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  proc = run_cli("experiments.main", TOY, f"--workdir={blocker / 'run'}")
  assert_one_line_error(proc, "not writable")
  assert blocker.read_text() == "not a directory"


def test_image_dataset_not_prepared(tmp_path):
  proc = run_cli(
    "experiments.main",
    "--config=experiments/configs/wgan_gp_cifar10.py:smoke",
    f"--workdir={tmp_path / 'run'}",
    f"--config.dataset.data_dir={tmp_path / 'empty'}",
  )
  assert_one_line_error(proc, "'cifar10'", "not prepared", "tfds build cifar10")


def test_workdir_of_another_experiment_is_untouched(tmp_path):
  workdir = tmp_path / "run"
  trainer.train(wgan_gp_toy.get_config("smoke"), str(workdir))
  before = snapshot(workdir)
  proc = run_cli("experiments.main", TOY, f"--workdir={workdir}", "--config.gan.loss=minimax")
  assert_one_line_error(proc, "different config", "gan.loss")
  assert snapshot(workdir) == before


def test_non_finite_loss_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  original = models.make_family

  def poisoned(config, shape):
    family = original(config, shape)
    inner = family.train_step

    def train_step(state, batch):
      new_state, metrics = inner(state, batch)
      loss = jnp.where(new_state.step >= 5, jnp.nan, metrics["generator_loss"])
      return new_state, {**metrics, "generator_loss": loss}

    return dataclasses.replace(family, train_step=train_step)

  monkeypatch.setattr(models, "make_family", poisoned)
  config = wgan_gp_toy.get_config("smoke")
  config.checkpoint_every_steps = 2
  config.log_every_steps = 3
  workdir = tmp_path / "run"
  with pytest.raises(UserError) as err:
    trainer.train(config, str(workdir))
  message = str(err.value)
  assert "at step 5" in message and "generator_loss=nan" in message
  assert f"{workdir}/checkpoints/4 (step 4)" in message
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  logged = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert logged == [3]  # Steps 4 and 5 were checked, but no mean containing NaN was written.


@pytest.mark.parametrize(
  ("flags", "fragments"),
  [
    (["--config.vae.beta=-1"], ["vae.beta must be >= 0, got -1"]),
    # Points (shape (2,)) into the conv nets: an example shape they cannot take.
    (["--config.dataset.name=8gaussians"], ["needs H×W×C images", "multiples of 16", "(2,)"]),
  ],
)
def test_vae_cli_rejects(tmp_path, flags, fragments):
  workdir = tmp_path / "run"
  config = "--config=experiments/configs/beta_vae_dsprites.py:smoke"
  proc = run_cli("experiments.main", config, f"--workdir={workdir}", *flags)
  assert_one_line_error(proc, *fragments)
  assert not workdir.exists()  # Refused before the workdir is touched.
