"""``gen_models.metrics.disentanglement_runner``: many encoders at once give each the numbers of
``disentanglement.evaluate`` alone; the device encoder; bad codes."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_bench_common import run_bench
from test_disentanglement import IdentityData, mixed_encoder, true_encoder

from gen_models import data, models, population
from gen_models.errors import UserError
from gen_models.metrics import disentanglement as dis
from gen_models.metrics import disentanglement_runner as runner
from gen_models.models import vae

SIZES = {"num_train": 300, "num_eval": 200}
ENCODERS = (
  mixed_encoder,
  lambda x: np.tanh(mixed_encoder(x)) * 3.0,
  lambda x: np.concatenate([true_encoder(x), mixed_encoder(x)[:, :1] ** 2], axis=1),
)


def numpy_codes(encoders, data_):
  """``codes_of`` of numpy encoders of ``data_.observations``; records the factors asked for."""
  asked = []

  def codes_of(factors, progress=None):
    asked.append(factors)
    obs = data_.observations(factors)
    return np.stack([e(obs) for e in encoders])

  return codes_of, asked


@pytest.mark.parametrize("seed", [0, 5])
def test_members_equal_each_encoder_alone(seed):
  d = IdentityData()
  codes_of, asked = numpy_codes(ENCODERS, d)
  got, seconds = runner.evaluate_members(codes_of, d, seed=seed, workers=2, **SIZES)
  for encoder, row in zip(ENCODERS, got, strict=True):
    assert row == dis.evaluate(encoder, d, seed=seed, **SIZES)  # Bit for bit.
  (factors,) = asked  # One call, every distinct factor vector once, in grid order.
  keys = np.ravel_multi_index(tuple(factors.T), d.factor_sizes)
  assert np.all(np.diff(keys) > 0)
  assert seconds["observations"] == len(factors) < seconds["drawn"]
  assert seconds["total"] >= seconds["encode"] + seconds["classifiers"]


def test_one_worker_threads_and_processes_agree_and_metric_subsets_keep_their_values():
  d = IdentityData()
  codes_of, _ = numpy_codes(ENCODERS[:1], d)
  a, _ = runner.evaluate_members(codes_of, d, seed=1, workers=1, **SIZES)
  b, _ = runner.evaluate_members(codes_of, d, seed=1, workers=3, processes=False, **SIZES)
  p, _ = runner.evaluate_members(codes_of, d, seed=1, workers=2, processes=True, **SIZES)
  c, _ = runner.evaluate_members(codes_of, d, ("sap", "mig"), seed=1, **SIZES)
  assert a == b == p
  assert c[0] == {k: v for k, v in a[0].items() if k.startswith(("sap/", "mig/"))}


def test_dci_trees_reach_the_classifiers():
  d = IdentityData()
  codes_of, _ = numpy_codes(ENCODERS[:1], d)
  sizes = {"num_train": 100, "num_eval": 50}
  (got,), _ = runner.evaluate_members(
    codes_of, d, ("dci",), seed=4, workers=2, processes=True, dci_trees="sklearn", **sizes
  )
  assert got == dis.evaluate(ENCODERS[0], d, ("dci",), seed=4, dci_trees="sklearn", **sizes)


def test_unique_factors_rebuild_every_draw():
  d = IdentityData()
  draws = dis.draw(d, seed=2, num_train=50, num_eval=40)
  factors, inverse = runner.unique_factors(draws, d.factor_sizes)
  assert len(np.unique(factors, axis=0)) == len(factors)
  for dr in draws:
    for name, f in dr.factors.items():
      np.testing.assert_array_equal(factors[inverse[(dr.metric, name)]], f)


def test_bad_codes_are_one_line_errors():
  d = IdentityData()
  with pytest.raises(UserError, match=r"members \[1\]"):
    runner.evaluate_members(
      lambda f, p=None: np.stack([mixed_encoder(d.observations(f))] * 2) * [[[1.0]], [[np.nan]]],
      d,
      ("mig",),
      **SIZES,
    )
  with pytest.raises(UserError, match="codes_of must return codes"):
    runner.evaluate_members(lambda f, p=None: np.zeros((3, 2)), d, ("mig",), **SIZES)
  with pytest.raises(UserError, match="unknown metrics"):
    runner.evaluate_members(lambda f, p=None: None, d, ("irs",))


@pytest.fixture(scope="module")
def smoke_population():
  """A 3-member population state of a small MLP VAE on the smoke grid, untrained."""
  c = vae.default_config()
  c.dataset.name = "dsprites_procedural_smoke"
  c.vae.architecture = "mlp"
  c.vae.mlp_width = 32
  c.vae.mlp_depth = 1
  c.vae.latent_dim = 4
  c.population.seeds = 3
  members = population.members(c)
  family = models.make_family(c, data.example_shape(c))
  state = jax.jit(population.init(family.init, members))()
  return family, state, data.create(c, 8), len(members)


@pytest.mark.parametrize("vmap", [False, True])
def test_jax_codes_equal_each_member_alone(smoke_population, vmap):
  family, state, dataset, n = smoke_population
  sizes = {"num_train": 120, "num_eval": 60}  # 4 × distinct ≥ 384: the table path.
  codes_of = runner.jax_codes(family.encode, state, dataset, n, batch_size=50, vmap=vmap)
  bars = []
  got, seconds = runner.evaluate_members(
    codes_of,
    dataset,
    ("mig", "factor_vae", "sap"),
    seed=4,
    progress=lambda *a: bars.append(a),
    **sizes,
  )
  assert seconds["observations"] == 384 and ("encode", 384, 384) in bars
  assert bars[-1][0] == "classifiers" and bars[-1][1] == bars[-1][2]
  for m in range(n):
    encode = dis.batched_encoder(family.encode, population.member_state(state, m), 64)
    want = dis.evaluate(encode, dataset, ("mig", "factor_vae", "sap"), seed=4, **sizes)
    assert got[m] == pytest.approx(want, abs=1e-12)


def test_jax_codes_host_path_and_single_run(smoke_population):
  family, state, dataset, n = smoke_population
  factors = dataset.sample_factors(30, np.random.default_rng(0))  # 4 × 30 < 384: the host path.
  stacked = runner.jax_codes(family.encode, state, dataset, n, batch_size=16)(factors)
  one = population.member_state(state, 2)
  alone = runner.jax_codes(family.encode, one, dataset, None, batch_size=7)(factors)
  want = np.asarray(family.encode(one, dataset.observations(factors)))
  assert stacked.shape == (n, 30, 4) and alone.shape == (1, 30, 4)
  np.testing.assert_allclose(alone[0], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stacked[2], want, rtol=1e-5, atol=1e-6)


def test_bench_disentanglement_writes_its_table(tmp_path):
  """The benchmark's plumbing on the smoke grid: a row per population size, phases that add up."""
  out = tmp_path / "bench.json"
  results = run_bench(
    out,
    "experiments.bench.disentanglement",
    "--config=beta_vae_dsprites:smoke",
    "--members=1",
    "--num_train=40",
    "--num_eval=20",
    "--metrics=mig,sap",
    "--batch_size=128",
    f"--output={out}",
  )
  (row,) = results["rows"]
  assert row["members"] == 1 and row["distinct_observations"] <= 384
  parts = row["draw_s"] + row["observations_s"] + row["encoder_s"] + row["classifiers_s"]
  assert parts == pytest.approx(row["total_s"], rel=0.05)
  assert row["encoder_flops_per_image"] > 1e6 and row["percent_of_peak"] > 0
