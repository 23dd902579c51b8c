"""Every config file trains in its ``:smoke`` variant (images from ``tfds.testing.mock_data``)."""

import glob
import importlib
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import REPO

from gen_models import trainer

CONFIGS = sorted(
  os.path.basename(p)[:-3]
  for p in glob.glob(os.path.join(REPO, "experiments", "configs", "*.py"))
  if not os.path.basename(p).startswith(("_", "common"))
)


def test_config_list_is_complete():
  assert CONFIGS == [
    "annealed_vae_dsprites",
    "beta_vae_dsprites",
    "beta_vae_dsprites_higgins",
    "realnvp_cifar10",
    "realnvp_mnist",
    "realnvp_toy",
    "vae_dsprites",
    "wgan_gp_cifar10",
    "wgan_gp_cifar10_resnet",
    "wgan_gp_mnist",
    "wgan_gp_toy",
  ]


def _smoke(name: str, arg: str, tmp_path):
  config = importlib.import_module(f"experiments.configs.{name}").get_config(arg)
  workdir = tmp_path / name
  if config.dataset.name in ("mnist", "cifar10"):
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
      final = trainer.train(config, str(workdir))
  else:
    final = trainer.train(config, str(workdir))
  assert all(np.isfinite(v) for v in final.values()), final
  steps = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] == config.num_train_steps
  assert os.listdir(workdir / "samples")
  assert str(config.num_train_steps) in os.listdir(workdir / "checkpoints")
  return config, final


@pytest.mark.parametrize("arg", ["smoke", "smoke,25gaussians", "smoke,swissroll"])
def test_toy_smoke(arg, tmp_path):
  config, final = _smoke("wgan_gp_toy", arg, tmp_path)
  assert {"eval/w1", "eval/w1_noise_floor", "eval/w1_ratio"} <= set(final)


@pytest.mark.slow
@pytest.mark.parametrize(
  ("name", "arg"),
  [
    ("wgan_gp_cifar10", "smoke"),
    ("wgan_gp_mnist", "smoke"),
    ("wgan_gp_cifar10_resnet", "smoke"),  # :conditional,smoke: tests/test_wgan_gp_resnet.py.
  ],
)
def test_image_smoke(name, arg, tmp_path):
  config, final = _smoke(name, arg, tmp_path)
  assert config.gan.architecture == ("resnet" if name.endswith("resnet") else "dcgan")
  assert ("classifier_loss" in final) == config.gan.conditional
  _, family, state = trainer.load_run(str(tmp_path / name))
  channels = 3 if "cifar10" in name else 1
  x = np.asarray(family.sample(state, __import__("jax").random.key(0), 2))
  assert x.shape == (2, 32, 32, channels)
  assert np.all(np.abs(x) <= 1.0)


@pytest.mark.parametrize("name", CONFIGS)
def test_full_config_is_valid(name):
  """The non-smoke configs validate (their long runs are not executed in tests)."""
  from gen_models import config as config_lib

  config = config_lib.validate(importlib.import_module(f"experiments.configs.{name}").get_config())
  assert config.num_train_steps >= 1000


@pytest.mark.parametrize(
  ("name", "objective", "beta"),
  [
    ("beta_vae_dsprites", "beta", 4.0),
    ("vae_dsprites", "beta", 1.0),
    ("annealed_vae_dsprites", "capacity", 1.0),
  ],
)
def test_vae_smoke(name, objective, beta, tmp_path):
  """The papers' conv nets on the dSprites smoke grid; the full configs' settings are checked."""
  config, final = _smoke(name, "smoke", tmp_path)
  assert config.dataset.name == "dsprites_procedural_smoke"
  assert {"elbo", "reconstruction", "kl", "eval/elbo"} <= set(final)
  if objective == "capacity":  # C(t) at the last logged step t = 2 (of T = 4): 12.5 nats.
    assert final["capacity"] == 12.5
  full = importlib.import_module(f"experiments.configs.{name}").get_config()
  assert (full.vae.objective, full.vae.beta, full.vae.architecture) == (objective, beta, "conv")
  assert (full.vae.latent_dim, full.batch_size, full.optimizer.learning_rate) == (10, 64, 1e-4)
  assert (full.vae.init, full.optimizer.name) == ("glorot_uniform", "adam")
  assert full.dataset.name == "dsprites_procedural" and full.num_train_steps == 300_000
  if objective == "capacity":
    assert (full.vae.c_max, full.vae.gamma, full.vae.capacity_steps) == (25.0, 1000.0, 100_000)


def test_higgins_vae_smoke(tmp_path):
  """Higgins et al. 2017's fully connected dSprites model with Adagrad on the smoke grid."""
  config, final = _smoke("beta_vae_dsprites_higgins", "smoke", tmp_path)
  assert config.dataset.name == "dsprites_procedural_smoke"
  assert {"elbo", "reconstruction", "kl", "eval/elbo"} <= set(final)
  _, _, state = trainer.load_run(str(tmp_path / "beta_vae_dsprites_higgins"))
  assert state.params["encoder"]["Dense_0"]["kernel"].shape == (64 * 64, 1200)
  full = importlib.import_module("experiments.configs.beta_vae_dsprites_higgins").get_config()
  assert (full.vae.architecture, full.vae.init, full.vae.beta, full.vae.latent_dim) == (
    "fc",
    "glorot_uniform",
    4.0,
    10,
  )
  assert (full.vae.objective, full.vae.likelihood) == ("beta", "bernoulli")
  opt = full.optimizer
  assert (opt.name, opt.learning_rate, opt.initial_accumulator_value, opt.eps) == (
    "adagrad",
    1e-2,
    0.1,
    0.0,
  )
  assert full.dataset.name == "dsprites_procedural" and full.batch_size == 64


@pytest.mark.parametrize("arg", ["smoke,checkerboard", "smoke,two_moons"])
def test_realnvp_toy_smoke(arg, tmp_path):
  config, final = _smoke("realnvp_toy", arg, tmp_path)
  assert {"nll", "eval/nll", "eval/true_nll", "eval/nll_gap"} <= set(final)
  assert final["eval/nll_gap"] == final["eval/nll"] - final["eval/true_nll"]


@pytest.mark.slow
@pytest.mark.parametrize(
  ("name", "arg"),
  [("realnvp_cifar10", "smoke"), ("realnvp_mnist", "smoke")],
)
def test_realnvp_image_smoke(name, arg, tmp_path):
  """The paper's multi-scale flow (tiny nets) on mock images: bits/dim logged, samples are
  images in [−1, 1] of the dataset's 32×32 (MNIST's 2-pixel border padded back). ``:bfloat16``
  changes only ``flow.compute_dtype`` (test_realnvp_bfloat16_argument), whose train step,
  likelihood, dtypes and inverse test_realnvp checks: its own 80-s smoke here added no check."""
  config, final = _smoke(name, arg, tmp_path)
  assert config.flow.compute_dtype == "float32"
  assert {"bits_per_dim", "eval/bits_per_dim", "eval/nll"} <= set(final)
  d = 28 * 28 if name.endswith("mnist") else 32 * 32 * 3
  assert final["eval/bits_per_dim"] == pytest.approx(final["eval/nll"] / (d * np.log(2)))
  _, family, state = trainer.load_run(str(tmp_path / name))
  x = np.asarray(family.sample(state, __import__("jax").random.key(0), 2))
  assert x.shape == (2, 32, 32, 3 if name.endswith("cifar10") else 1)
  assert np.all(np.abs(x) <= 1.0)
  full = importlib.import_module(f"experiments.configs.{name}").get_config()
  assert (full.batch_size, full.optimizer.learning_rate, full.flow.l2) == (64, 1e-3, 5e-5)
  assert (full.flow.resnet_blocks, full.flow.resnet_features, full.flow.num_scales) == (8, 64, 2)


@pytest.mark.parametrize("name", ["realnvp_cifar10", "realnvp_mnist"])
def test_realnvp_bfloat16_argument(name):
  """``:bfloat16`` sets only ``flow.compute_dtype``, alone and with ``smoke``."""
  from gen_models import config as config_lib

  module = importlib.import_module(f"experiments.configs.{name}")
  for arg, plain in (("bfloat16", None), ("bfloat16,smoke", "smoke"), ("smoke,bfloat16", "smoke")):
    config = config_lib.validate(module.get_config(arg))
    assert config.flow.compute_dtype == "bfloat16"
    want = config_lib.validate(module.get_config(plain))
    want.flow.compute_dtype = "bfloat16"
    assert config == want, arg
