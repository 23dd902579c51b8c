"""Populations: the grid, member i equals the run it stands for (every family), failures, resume,
outputs, device-side data and the ways the members' steps run."""

import json
import os

import chex
import jax
import numpy as np
import pytest
from test_trainer import SMOKE, smoke_config

from gen_models import data as data_lib
from gen_models import population, runs, trainer
from gen_models import workdir as workdir_lib
from gen_models.data import members as member_data
from gen_models.errors import UserError

# A hyperparameter each family reads as a value, swept over two values.
SWEEP = {
  "wgan_gp": "gan.gp_weight=1,10",
  "vae": "vae.beta=1,4",
  "realnvp": "optimizer.learning_rate=1e-3,3e-3",
}
# Adam's m̂/(√v̂ + ε) turns round-off in near-zero gradients into ±lr steps (test_trainer's
# one-and-eight-devices test says why: measured here, a WGAN critic bias 4e-5 apart after 6
# steps); ε = 1e-3 keeps the comparisons of every family at round-off.
EXTRA = {"optimizer.eps": 1e-3}


@pytest.fixture(params=sorted(SMOKE))
def family(request):
  return request.param


def pop_config(family, seeds=2, sweep=None, **overrides):
  c = smoke_config(family, **EXTRA, **overrides)
  c.population.seeds = seeds
  c.population.sweep = SWEEP[family] if sweep is None else sweep
  return c


def params_of(workdir, devices=None):
  _, _, state = runs.load_run(str(workdir), devices)
  return jax.device_get(state.params)


def member_params(workdir, i, devices=None):
  _, _, state = runs.load_run(str(workdir), devices)
  return jax.device_get(population.member_state(state, i).params)


TOY_SEEDS, TOY_SWEEP = 1, "gan.gp_weight=1,10"


def pop_toy(**overrides):
  return pop_config("wgan_gp", seeds=TOY_SEEDS, sweep=TOY_SWEEP, **overrides)


@pytest.fixture(scope="module")
def toy_population(tmp_path_factory):
  """A finished toy smoke population: λ = 1, 10 × seed 0 (6 steps, checkpoints every 3)."""
  workdir = tmp_path_factory.mktemp("toy_pop") / "run"
  trainer.train(pop_toy(), str(workdir))
  return workdir


def read_jsonl(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------------
# The grid.


def test_members_enumerate_the_grid_last_key_fastest_seeds_innermost():
  c = pop_config("wgan_gp", seeds=2, sweep="gan.gp_weight=0.1,1;optimizer.learning_rate=1e-4,3e-4")
  c.seed = 5
  ms = population.members(c)
  assert [m.index for m in ms] == list(range(8))
  assert [m.name for m in ms[:4]] == [
    "gp_weight=0.1,learning_rate=1e-4,seed=5",
    "gp_weight=0.1,learning_rate=1e-4,seed=6",
    "gp_weight=0.1,learning_rate=3e-4,seed=5",
    "gp_weight=0.1,learning_rate=3e-4,seed=6",
  ]
  assert ms[6].hparams == {"gan.gp_weight": 1.0, "optimizer.learning_rate": 3e-4}
  assert ms[6].seed == 5 and ms[7].seed == 6
  single = population.member_config(c, ms[7])
  assert (single.seed, single.gan.gp_weight, single.optimizer.learning_rate) == (6, 1.0, 3e-4)
  assert not population.is_population(single)


@pytest.mark.parametrize(
  "sweep, message",
  [
    ("gan.latent_dim=2,4", "cannot vary 'gan.latent_dim'"),
    ("batch_size=2,4", "keys that can vary: gan.gp_weight, optimizer.learning_rate"),
    ("gan.gp_weight=", "empty value"),
    ("gan.gp_weight=1,,2", "empty value"),
    ("gan.gp_weight=1;gan.gp_weight=2", "twice"),
    ("gan.gp_weight=ten", "not a finite number"),
    ("gan.gp_weight", "is not KEY=V1,V2"),
  ],
)
def test_bad_sweeps_are_one_line_errors(sweep, message):
  with pytest.raises(UserError, match=message) as e:
    population.check(pop_config("wgan_gp", seeds=1, sweep=sweep))
  assert "\n" not in str(e.value)


def test_a_bad_member_value_is_checked_by_its_family_and_named():
  with pytest.raises(UserError, match="population member beta=-1,seed=0: vae.beta must be >= 0"):
    population.check(pop_config("vae", seeds=1, sweep="vae.beta=4,-1"))


def test_bad_population_settings_are_errors():
  with pytest.raises(UserError, match="population.seeds must be >= 1"):
    population.check(pop_config("wgan_gp", seeds=0, sweep=""))
  with pytest.raises(UserError, match="population.chunk must be 0 or divide the 4 members"):
    population.check(_chunk(3))
  with pytest.raises(UserError, match="unknown population.execution"):
    c = pop_config("wgan_gp")
    c.population.execution = "pmap"
    population.check(c)
  with pytest.raises(UserError, match="out of range: this run has 4 member"):
    population.select(population.members(pop_config("wgan_gp")), 4)


def _chunk(n):
  c = pop_config("wgan_gp")
  c.population.chunk = n
  return c


# ----------------------------------------------------------------------------------------------
# Member i is the run it stands for.


def test_member_equals_its_single_run_on_one_and_eight_devices(tmp_path, family):
  """Population of 4 (2 values × 2 seeds) on 8 devices; member 3 (the second value, the second
  seed) against that config trained alone on 1 device: parameters and logged losses agree to
  round-off (different N, different device count, traced instead of constant values)."""
  devices = jax.devices()
  c = pop_config(family)
  c.population.execution = "vmap"  # Members over 4 device groups of 2 (the unrolled: below).
  trainer.train(c, str(tmp_path / "pop"), devices=devices)
  m = population.members(c)[3]
  trainer.train(population.member_config(c, m), str(tmp_path / "one"), devices=devices[:1])
  chex.assert_trees_all_close(
    member_params(tmp_path / "pop", 3),
    params_of(tmp_path / "one", devices[:1]),
    rtol=2e-5,
    atol=2e-6,
  )
  rows, single = read_jsonl(tmp_path / "pop"), read_jsonl(tmp_path / "one")
  mine = [r for r in rows if r.get("member") == 3]
  assert [r["step"] for r in mine] == [r["step"] for r in single]
  assert {r["member_name"] for r in mine} == {m.name}
  for a, b in zip(mine, single, strict=True):
    for key in b:
      if key.endswith("loss") or key.startswith("eval/"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["step"], key)


@pytest.fixture(scope="module")
def vae_unrolled(tmp_path_factory) -> str:
  """The VAE population of 4 with its members unrolled."""
  workdir = tmp_path_factory.mktemp("vae_unrolled")
  c = pop_config("vae")
  c.population.execution = "unroll"
  trainer.train(c, str(workdir))
  return workdir


@pytest.mark.parametrize("execution, chunk", [("vmap", 0), ("map", 2)])
def test_executions_compute_the_same_population(vae_unrolled, tmp_path, execution, chunk):
  c = pop_config("vae")
  c.population.execution, c.population.chunk = execution, chunk
  trainer.train(c, str(tmp_path / "other"))
  chex.assert_trees_all_close(
    params_of(vae_unrolled), params_of(tmp_path / "other"), rtol=2e-5, atol=2e-6
  )


def test_population_resume_is_bit_exact(toy_population, tmp_path):
  c = pop_toy(num_train_steps=2, checkpoint_every_steps=2)
  trainer.train(c, str(tmp_path / "part"))
  c.num_train_steps = 6
  trainer.train(c, str(tmp_path / "part"))
  chex.assert_trees_all_equal(params_of(toy_population), params_of(tmp_path / "part"))


def test_population_resumes_on_another_device_count(toy_population, tmp_path):
  """2 steps on 1 device (members replicated), then to step 6 on 8 (members over 2 groups of
  4): the 8-device run's parameters, to round-off."""
  c = pop_toy(num_train_steps=2, checkpoint_every_steps=2)
  trainer.train(c, str(tmp_path / "moved"), devices=jax.devices()[:1])
  c.num_train_steps = 6
  trainer.train(c, str(tmp_path / "moved"))
  chex.assert_trees_all_close(
    params_of(toy_population), params_of(tmp_path / "moved"), rtol=2e-5, atol=2e-6
  )


# ----------------------------------------------------------------------------------------------
# Failures.


def test_a_non_finite_member_is_frozen_and_the_others_train_on(toy_population, tmp_path, caplog):
  c = pop_config("wgan_gp", seeds=1, sweep="gan.gp_weight=1;optimizer.learning_rate=1e-4,1e38")
  trainer.train(c, str(tmp_path / "pop"))
  _, _, state = runs.load_run(str(tmp_path / "pop"))
  frozen_at = np.asarray(state.hparams[population.FROZEN])
  assert frozen_at[0] == 0 and frozen_at[1] >= 1
  bad = jax.device_get(population.member_state(state, 1).params)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(bad))  # Its last finite state.
  reports = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
  assert len(reports) == 1 and "gp_weight=1,learning_rate=1e38,seed=0" in reports[0]
  # Member 0 (λ = 1, the config's lr 1e-4, seed 0) trained on as the toy population's member 0.
  chex.assert_trees_all_close(
    member_params(tmp_path / "pop", 0), member_params(toy_population, 0), rtol=2e-5, atol=2e-6
  )


def test_the_run_fails_when_every_member_has(tmp_path):
  c = pop_config("wgan_gp", seeds=1, sweep="gan.gp_weight=1;optimizer.learning_rate=1e37,1e38")
  with pytest.raises(UserError, match="every member of the population went non-finite"):
    trainer.train(c, str(tmp_path / "pop"))


# ----------------------------------------------------------------------------------------------
# Outputs and data.


def test_population_outputs(tmp_path):
  c = pop_config("vae", seeds=1)
  c.population.execution = "vmap"
  trainer.train(c, str(tmp_path / "pop"))
  with open(workdir_lib.members_path(str(tmp_path / "pop"))) as f:
    record = json.load(f)
  assert [m["name"] for m in record["members"]] == ["beta=1,seed=0", "beta=4,seed=0"]
  assert record["members"][1]["hparams"] == {"vae.beta": 4.0}
  runs_dir = sorted(os.listdir(tmp_path / "pop" / "tensorboard"))
  assert "000_beta=1,seed=0" in runs_dir and "001_beta=4,seed=0" in runs_dir
  pngs = os.listdir(tmp_path / "pop" / "samples" / "001_beta=4,seed=0")
  assert any(p.startswith("samples_") for p in pngs)
  assert any(p.startswith("traversals_") for p in pngs)


def test_device_gathered_batches_equal_each_seeds_own_batches():
  c = smoke_config("vae")
  dataset = data_lib.create(c, c.batch_size)
  assert member_data.has_table(dataset)
  seeds = [0, 3, 0]
  steps = member_data.MemberSteps(dataset, seeds, 2, on_device=True)
  steps.step = 5
  idx = next(steps)
  table = jax.tree.map(jax.numpy.asarray, dataset.table())
  got = np.asarray(member_data.gather(table, idx, dataset.decode))
  assert got.shape == (3, 2, c.batch_size, 64, 64, 1)
  for i, s in enumerate(seeds):
    c.seed = s
    own = data_lib.StepIterator(data_lib.create(c, c.batch_size), 2, step=5)
    np.testing.assert_array_equal(got[i], next(own))


# ----------------------------------------------------------------------------------------------
# The commands on a population's workdir.


def test_sample_of_a_member_is_its_runs_sample(toy_population, tmp_path):
  from gen_models import sampling

  m = population.members(pop_toy())[1]
  workdir = str(toy_population)
  got, kind, step = sampling.draw_samples(workdir, 20, None, 8, member=1)
  assert (kind, step, got.shape) == ("points", 6, (20, 2))
  _, family, state = runs.load_run(str(toy_population))
  one = population.member_state(state, 1)
  want = sampling.sample_chunks(
    jax.jit(family.sample, static_argnums=2), one, jax.random.key(m.seed), 20, 8
  )
  np.testing.assert_array_equal(got, want)
  with pytest.raises(UserError, match=r"population of 2 members: choose one with --member=0\.\.1"):
    sampling.draw_samples(workdir, 20, None, 8)
  with pytest.raises(UserError, match="--member=2 is out of range: this run has 2 member"):
    sampling.draw_samples(workdir, 20, None, 8, member=2)


@pytest.mark.slow
def test_evaluate_writes_a_row_per_member(toy_population, tmp_path):
  from conftest import assert_one_line_error, run_cli

  real = tmp_path / "real.npy"
  np.save(real, np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32))
  out = tmp_path / "out.json"
  args = [f"--real={real}", f"--fake={toy_population}", "--metrics=fid,prdc", "--num_samples=64"]
  proc = run_cli("experiments.evaluate", *args, f"--output={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    rows = json.load(f)["members"]
  assert [(r["member"], r["name"], r["seed"]) for r in rows] == [
    (0, "gp_weight=1,seed=0", 0),
    (1, "gp_weight=10,seed=0", 0),
  ]
  assert rows[1]["hparams"] == {"gan.gp_weight": 10.0} and rows[0]["fid"] != rows[1]["fid"]
  [copy] = (toy_population / "results").glob("evaluate_step*.json")  # For experiments.report.
  assert json.loads(copy.read_text())["members"] == rows
  assert copy.name == f"evaluate_step{rows[0]['step']:08d}.json"
  report = run_cli("experiments.report", f"--workdir={toy_population}", f"--output={tmp_path}/r")
  assert report.returncode == 0, report.stderr[-3000:]
  assert f"| 10 | 1 | {rows[1]['fid']:.3g} |" in (tmp_path / "r" / "summary.md").read_text()
  bad = run_cli("experiments.evaluate", *args, f"--output={out}", "--member=7")
  assert_one_line_error(bad, "--member=7 is out of range")


def test_device_gathered_image_batches_keep_labels_and_each_seeds_flips():
  """CIFAR-shaped mock data with labels and ``random_flip``: the gathered batches (images,
  labels, mirrored examples) equal each seed's own batches."""
  import tensorflow_datasets as tfds

  from gen_models.data import images

  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    dataset = images.TfdsImageDataset("cifar10", 8, 3, None, labels=True, random_flip=True)
  seeds = [3, 5]
  steps = member_data.MemberSteps(dataset, seeds, 2, on_device=True)
  steps.step = 3  # Batches 6 and 7: across the first epoch boundary of 16 examples.
  data = next(steps)
  table = jax.tree.map(jax.numpy.asarray, dataset.table())
  got = jax.device_get(member_data.gather(table, data, dataset.decode))
  assert got["image"].shape == (2, 2, 8, 32, 32, 3) and data["flip"].any()
  for i, s in enumerate(seeds):
    own = next(data_lib.StepIterator(data_lib.reseeded(dataset, s), 2, step=3))
    np.testing.assert_array_equal(got["image"][i], own["image"])
    np.testing.assert_array_equal(got["label"][i], own["label"])
