"""``experiments.evaluate_disentanglement``: equals the library on a trained VAE; bad input."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from gen_models import data, population, runs, trainer
from gen_models.metrics import disentanglement as dis
from gen_models.models import vae

MODULE = "experiments.evaluate_disentanglement"
SMALL = ("--num_train=40", "--num_eval=20", "--batch_size=64")
FAST = ("beta_vae", "factor_vae", "mig", "sap")  # DCI's 1,600 trees add seconds, not coverage.


def _vae_smoke_config():
  c = vae.default_config()
  c.dataset.name = "dsprites_procedural_smoke"
  c.vae.architecture = "mlp"  # The CLI only needs some encoder; the conv nets compile slowly.
  c.vae.mlp_width = 32
  c.vae.mlp_depth = 1
  c.vae.latent_dim = 4
  c.batch_size = 8
  c.num_train_steps = 2
  c.log_every_steps = 1
  c.eval_every_steps = 2
  c.sample_every_steps = 2
  c.checkpoint_every_steps = 2
  c.eval.num_samples = 16
  c.eval.num_image_samples = 16
  return c


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vae") / "run"
  trainer.train(_vae_smoke_config(), str(workdir), devices=jax.devices()[:1])
  return workdir


def test_cli_equals_the_library(vae_run, tmp_path):
  output = tmp_path / "scores.json"
  proc = run_cli(
    MODULE,
    f"--workdir={vae_run}",
    f"--output={output}",
    "--seed=3",
    f"--metrics={','.join(FAST)}",
    *SMALL,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(output.read_text())
  config, family, state = trainer.load_run(str(vae_run), jax.local_devices()[:1])
  dataset = data.create(config, config.batch_size)
  encode = dis.batched_encoder(family.encode, state, 64)
  codes = encode(dataset.observations(np.zeros((3, 5), np.int64)))
  assert codes.shape == (3, 4)
  want = dis.evaluate(encode, dataset, FAST, seed=3, num_train=40, num_eval=20, max_batch=64)
  assert len(want) == 7
  assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-12)
  assert (
    got["step"] == 2 and got["dataset"] == "dsprites_procedural_smoke" and got["metric_seed"] == 3
  )
  assert all(0.0 <= v <= 1.0 for k, v in want.items() if k != "factor_vae/num_active_dims")
  assert list((vae_run / "tensorboard").glob("events.*"))


def test_padding_does_not_change_codes(vae_run):
  config, family, state = trainer.load_run(str(vae_run), jax.local_devices()[:1])
  x = data.create(config, 8).reference(10)
  a = dis.batched_encoder(family.encode, state, 4)(x)  # Blocks of 4, 4, 2 + 2 padding rows.
  b = np.asarray(family.encode(state, x))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  ("flags", "fragments"),
  [
    (["--metrics=mig,irs"], ["--metrics", "irs", "beta_vae"]),
    (["--workers=0"], ["--workers", ">= 1"]),
    (["--dci_trees=xgboost"], ["--dci_trees", "numpy|sklearn"]),
    (["--dataset=8gaussians"], ["'8gaussians'", "no ground-truth factors", "dsprites_procedural"]),
    (["--dataset=dsprites", "--data_dir=/nonexistent"], ["not prepared", "prepare_data dsprites"]),
  ],
)
def test_cli_rejects(vae_run, tmp_path, flags, fragments):
  proc = run_cli(MODULE, f"--workdir={vae_run}", f"--output={tmp_path / 'o.json'}", *flags)
  assert_one_line_error(proc, *fragments)
  assert not (tmp_path / "o.json").exists()


def test_no_run(tmp_path):
  proc = run_cli(MODULE, f"--workdir={tmp_path}", f"--output={tmp_path / 'o.json'}")
  assert_one_line_error(proc, "no run in")


@pytest.fixture(scope="module")
def vae_population(tmp_path_factory):
  """The study's pipeline in small: a β × seed population of the smoke VAE, trained 2 steps."""
  c = _vae_smoke_config()
  c.population.sweep = "vae.beta=1,4"
  c.population.seeds = 2
  workdir = tmp_path_factory.mktemp("pop") / "run"
  trainer.train(c, str(workdir), devices=jax.devices()[:1])
  return workdir


def test_population_metrics_then_report(vae_population, tmp_path):
  """Population → every member's metrics (each as its run alone) → the report of the grid."""
  proc = run_cli(MODULE, f"--workdir={vae_population}", "--seed=3", "--metrics=mig,sap", *SMALL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "encode" in proc.stderr and "classifiers" in proc.stderr and "ETA" in proc.stderr
  (copy,) = (vae_population / "results").glob("disentanglement_step*.json")
  rows = json.loads(copy.read_text())["members"]
  assert [(r["name"], r["seed"], r["metric_seed"]) for r in rows] == [
    ("beta=1,seed=0", 0, 3),
    ("beta=1,seed=1", 1, 3),
    ("beta=4,seed=0", 0, 3),
    ("beta=4,seed=1", 1, 3),
  ]
  config, family, state, members = runs.load_members(str(vae_population), jax.devices()[:1])
  dataset = data.create(config, config.batch_size)
  for m, row in zip(members, rows, strict=True):
    encode = dis.batched_encoder(family.encode, population.member_state(state, m.index), 64)
    want = dis.evaluate(encode, dataset, ("mig", "sap"), seed=3, num_train=40, num_eval=20)
    assert {k: row[k] for k in want} == pytest.approx(want, abs=1e-12)
  # One member again: its row is replaced, the others kept, the old file renamed aside.
  proc = run_cli(
    MODULE, f"--workdir={vae_population}", "--member=2", "--seed=3", "--metrics=mig,sap", *SMALL
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = json.loads(copy.read_text())["members"]
  assert [r["name"] for r in again] == [r["name"] for r in rows]
  scores = lambda r: {k: v for k, v in r.items() if "/" in k}
  assert scores(again[2]) == pytest.approx(scores(rows[2]), abs=1e-12)
  assert again[2]["hparams"] == rows[2]["hparams"] and len(list(copy.parent.iterdir())) == 2
  out = tmp_path / "report"
  proc = run_cli("experiments.report", f"--workdir={vae_population}", f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = (out / "summary.md").read_text()
  assert "mig/mig" in summary and "vae.beta" in summary
  assert (out / "mig_mig.png").stat().st_size > 1000
