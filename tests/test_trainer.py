"""The trainer: determinism, resume bit-exactness, device-count invariance, compile-once.

The family-level tests run for every family: WGAN-GP on the toy points, the VAE on the dSprites
smoke grid (an MLP pair: the conv pair trains in ``test_configs.py``), each with the same step
schedule (6 steps, checkpoints every 3, unless a test says otherwise).
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from conftest import REPO

from experiments.configs import beta_vae_dsprites, realnvp_toy, wgan_gp_toy
from gen_models import config as config_lib
from gen_models import models, trainer


def _vae_smoke():
  c = beta_vae_dsprites.get_config("smoke")
  c.vae.architecture = "mlp"
  c.vae.mlp_width = 32
  c.vae.mlp_depth = 1
  c.num_train_steps = 6
  c.log_every_steps = 2
  c.eval_every_steps = 6
  c.sample_every_steps = 6
  c.checkpoint_every_steps = 3
  return c


SMOKE = {
  "wgan_gp": lambda: wgan_gp_toy.get_config("smoke"),
  "vae": _vae_smoke,
  "realnvp": lambda: realnvp_toy.get_config("smoke"),  # ActNorm: the trainer's data_init runs.
}
# Parameters every step changes (a WGAN critic's last bias gets no gradient from its loss).
TRAINED = {"wgan_gp": ("generator",), "vae": ("encoder", "decoder"), "realnvp": ("flow",)}


@pytest.fixture(params=sorted(SMOKE))
def family(request):
  return request.param


def smoke_config(family="wgan_gp", **overrides):
  c = SMOKE[family]()
  for key, value in overrides.items():
    config_lib.set_path(c, key, value)
  return c


def toy_config(**overrides):
  return smoke_config("wgan_gp", **overrides)


def final_params(workdir, devices=None):
  _, _, state = trainer.load_run(workdir, devices)
  return jax.device_get(state.params), jax.device_get(state.opt_state), int(state.step)


def test_same_seed_gives_bit_identical_parameters(tmp_path, family):
  trainer.train(smoke_config(family), str(tmp_path / "a"))
  trainer.train(smoke_config(family), str(tmp_path / "b"))
  pa, oa, sa = final_params(tmp_path / "a")
  pb, ob, sb = final_params(tmp_path / "b")
  assert sa == sb == 6
  chex.assert_trees_all_equal(pa, pb)
  chex.assert_trees_all_equal(oa, ob)


def test_different_seed_gives_different_parameters(tmp_path, family):
  trainer.train(smoke_config(family), str(tmp_path / "a"))
  trainer.train(smoke_config(family, seed=1), str(tmp_path / "b"))
  pa, _, _ = final_params(tmp_path / "a")
  pb, _, _ = final_params(tmp_path / "b")
  diff = lambda x, y: float(np.max(np.abs(x - y)))
  for component in TRAINED[family]:  # Every leaf of every trained component differs.
    assert min(jax.tree.leaves(jax.tree.map(diff, pa[component], pb[component]))) > 0


def test_resume_is_bit_exact(tmp_path, family):
  config = lambda n: smoke_config(family, num_train_steps=n, checkpoint_every_steps=2)
  trainer.train(config(8), str(tmp_path / "full"))
  # Stop at step 4, then resume to step 8 with the same command (num_train_steps may change).
  trainer.train(config(4), str(tmp_path / "part"))
  assert final_params(tmp_path / "part")[2] == 4
  trainer.train(config(8), str(tmp_path / "part"))
  full, full_opt, full_step = final_params(tmp_path / "full")
  part, part_opt, part_step = final_params(tmp_path / "part")
  assert full_step == part_step == 8
  chex.assert_trees_all_equal(full, part)
  chex.assert_trees_all_equal(full_opt, part_opt)


def test_one_and_eight_devices_agree(tmp_path, family):
  # Adam's step is lr·m̂/(√v̂ + ε): with ε = 1e-8 a gradient that is a sum cancelling to ~1e-9
  # (the flow's last layers start at zero, so its first layers' first gradients nearly vanish)
  # gets a full ±lr step whose sign is decided by round-off (measured: a realnvp bias 2.7e-5
  # apart after 6 steps at lr 1e-3). ε = 1e-3 makes the step smooth in the gradient, so what is
  # compared is the computation's own invariance, to round-off, as for the other families.
  overrides = {"optimizer.eps": 1e-3} if family == "realnvp" else {}
  devices = jax.devices()
  assert len(devices) == 8
  trainer.train(smoke_config(family, **overrides), str(tmp_path / "one"), devices=devices[:1])
  trainer.train(smoke_config(family, **overrides), str(tmp_path / "eight"), devices=devices)
  one, _, _ = final_params(tmp_path / "one", devices[:1])
  eight, _, _ = final_params(tmp_path / "eight")
  # Same data, same noise (threefry is partitionable); only reduction order differs.
  logged = {}
  for name in ("one", "eight"):
    with open(tmp_path / name / "metrics.jsonl") as f:
      logged[name] = [json.loads(line) for line in f]
  assert [r["step"] for r in logged["one"]] == [r["step"] for r in logged["eight"]]
  for a, b in zip(logged["one"], logged["eight"], strict=True):
    for key in a:
      if key.endswith("loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
  chex.assert_trees_all_close(one, eight, rtol=2e-5, atol=2e-6)


def test_train_step_compiles_once(tmp_path, monkeypatch, family):
  original = models.make_family

  def traced_family(config, shape):
    family = original(config, shape)
    inner = family.train_step

    @chex.assert_max_traces(n=1)
    def train_step(state, batch):
      return inner(state, batch)

    return dataclasses.replace(family, train_step=train_step)

  monkeypatch.setattr(models, "make_family", traced_family)
  chex.clear_trace_counter()  # The counter is per decorated code location, shared by families.
  # Steps straddle logging, sampling, evaluation and checkpoint saves; the step must not retrace.
  trainer.train(smoke_config(family, num_train_steps=7), str(tmp_path / "run"))
  # A resumed run restores into the same shapes, dtypes and shardings: again one trace.
  chex.clear_trace_counter()
  trainer.train(smoke_config(family, num_train_steps=9), str(tmp_path / "run"))
  assert final_params(tmp_path / "run")[2] == 9


def test_outputs_of_a_run(tmp_path):
  workdir = tmp_path / "run"
  final = trainer.train(toy_config(), str(workdir))
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_lines = [x for x in lines if "critic_loss" in x]
  assert [x["step"] for x in train_lines] == [2, 4, 6]
  for key in ("generator_loss", "gradient_penalty", "wasserstein", "steps_per_sec"):
    assert all(np.isfinite(x[key]) for x in train_lines)
  evals = [x for x in lines if "eval/w1" in x]
  assert len(evals) == 1 and evals[0]["step"] == 6
  assert evals[0]["eval/w1_ratio"] == pytest.approx(
    evals[0]["eval/w1"] / evals[0]["eval/w1_noise_floor"]
  )
  assert final["eval/w1"] == evals[0]["eval/w1"]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert os.listdir(workdir / "samples") == ["samples_00000006.png"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"] == "wgan_gp" and saved["dataset"]["name"] == "8gaussians"


def test_vae_outputs_of_a_run(tmp_path):
  """ELBO, reconstruction, KL and KL per latent logged; sample, reconstruction and traversal
  PNGs in dSprites' [0, 1] → [0, 255]; ``encode`` and the workdir's samples from ``load_run``."""
  from PIL import Image

  from gen_models import sampling

  workdir = tmp_path / "run"
  final = trainer.train(smoke_config("vae"), str(workdir))
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_lines = [x for x in lines if "elbo" in x]
  assert [x["step"] for x in train_lines] == [2, 4, 6]
  for x in train_lines:
    per_dim = [x[f"kl_per_dim/{j}"] for j in range(10)]
    assert x["kl"] == pytest.approx(sum(per_dim), rel=1e-5)
    assert x["elbo"] == pytest.approx(-(x["reconstruction"] + x["kl"]), rel=1e-6)
    assert x["loss"] == pytest.approx(x["reconstruction"] + 4.0 * x["kl"], rel=1e-6)
  assert {"eval/elbo", "eval/reconstruction", "eval/kl"} <= set(final)
  names = sorted(os.listdir(workdir / "samples"))
  assert names == [f"{n}_00000006.png" for n in ("reconstructions", "samples", "traversals")]
  recon = np.asarray(Image.open(workdir / "samples" / names[0]))
  assert recon.shape == (4 * 65 + 1, 8 * 65 + 1, 3)  # 2 × 2 rows of 8 (16 images), 1-px gaps.
  assert set(np.unique(recon[1:65, 1:65])) <= {0, 255}  # Row 0: binary dSprites originals.
  traversals = np.asarray(Image.open(workdir / "samples" / names[2]))
  assert traversals.shape == (10 * 65 + 1, 9 * 65 + 1, 3)  # One row per latent, 9 steps.

  config, family, state = trainer.load_run(str(workdir))
  from gen_models import data

  dataset = data.create(config, 8)
  x = dataset.observations(dataset.sample_factors(5, np.random.default_rng(0)))
  codes = np.asarray(family.encode(state, x))
  assert codes.shape == (5, 10) and np.all(np.isfinite(codes))
  images, kind, step = sampling.draw_samples(str(workdir), 5, None, 4)
  assert kind == "images" and step == 6 and images.shape == (5, 64, 64, 1)
  assert images.dtype == np.uint8


def _checkpoint_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


@pytest.mark.slow
def test_sigkill_then_restart_reaches_the_same_parameters(tmp_path):
  """A run killed with SIGKILL mid-training and restarted ends bit-identical to an unkilled one."""
  overrides = {"num_train_steps": 60, "checkpoint_every_steps": 4, "log_every_steps": 4}
  flags = [f"--config.{k}={v}" for k, v in overrides.items()]
  config_flag = "--config=experiments/configs/wgan_gp_toy.py:smoke"
  killed = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "experiments.main", config_flag, f"--workdir={killed}", *flags]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and not any(s >= 8 for s in _checkpoint_steps(killed)):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = _checkpoint_steps(killed)
  assert steps and max(steps) < 60, f"kill came too late or too early: {steps}"
  restart = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert restart.returncode == 0, restart.stderr[-3000:]
  assert "restored checkpoint" in restart.stderr

  trainer.train(toy_config(**overrides), str(tmp_path / "clean"))
  clean, clean_opt, _ = final_params(tmp_path / "clean")
  resumed, resumed_opt, step = final_params(killed)
  assert step == 60
  chex.assert_trees_all_equal(clean, resumed)
  chex.assert_trees_all_equal(clean_opt, resumed_opt)


@pytest.mark.slow
def test_default_toy_run_reaches_the_noise_floor(tmp_path):
  """The README's default experiment: exact W1 within 2× of the two-real-sets noise floor.

  On one device, as the README command runs on a CPU machine. (Full-size nets on 8 fake CPU
  devices over 2 cores deadlock inside XLA:CPU's all-reduce rendezvous; see README.)
  """
  final = trainer.train(
    wgan_gp_toy.get_config(), str(tmp_path / "default"), devices=jax.devices()[:1]
  )
  assert final["eval/w1_noise_floor"] == pytest.approx(0.084, abs=0.01)
  assert final["eval/w1_ratio"] < 2.0, final


def test_unrolled_critic_loop_computes_the_same_step():
  from gen_models import data

  states = []
  for unroll in (False, True):
    c = config_lib.validate(toy_config(**{"gan.unroll_critic": unroll}))
    family = models.make_family(c, (2,))
    state = jax.jit(family.init)(jax.random.key(0))
    batch = next(data.StepIterator(data.create(c, c.batch_size), family.batches_per_step))
    state, _ = jax.jit(family.train_step)(state, batch)
    states.append(jax.device_get(state.params))
  chex.assert_trees_all_close(states[0], states[1], rtol=1e-5, atol=1e-6)
