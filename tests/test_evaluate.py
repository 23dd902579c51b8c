"""experiments.evaluate and the trainer's eval.metrics: the library's numbers, clear errors."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from experiments.configs import wgan_gp_toy
from gen_models import config as config_lib
from gen_models import data, outputs, trainer
from gen_models.errors import UserError
from gen_models.metrics import evaluate, extractors, fid, kid, prdc
from gen_models.metrics import inception_score as is_lib
from gen_models.sampling import sample_chunks


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
  d = tmp_path_factory.mktemp("arrays")
  rng = np.random.default_rng(0)
  real = rng.standard_normal((400, 12)).astype(np.float32)
  fake = (rng.standard_normal((300, 12)) * 1.2 + 0.1).astype(np.float32)
  logits = rng.standard_normal((300, 10)) * 2
  np.save(d / "real.npy", real)
  np.savez(d / "fake.npz", features=fake, logits=logits)
  return d, real, fake, logits


def _run(*args):
  proc = run_cli("experiments.evaluate", *args)
  return proc


def test_cli_values_equal_the_library_functions(arrays):
  d, real, fake, logits = arrays
  out = d / "out.json"
  proc = _run(
    f"--real={d / 'real.npy'}",
    f"--fake={d / 'fake.npz'}",
    "--metrics=fid,is,kid,prdc",
    "--kid_subsets=7",
    "--kid_subset_size=50",
    f"--output={out}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(out.read_text())
  assert got["fid"] == fid.fid(real, fake)
  assert (got["is_mean"], got["is_std"]) == is_lib.inception_score(logits=logits)
  assert (got["kid_mean"], got["kid_std"]) == kid.kid(real, fake, 7, 50, seed=0)
  expected = prdc.prdc(real, fake)
  assert {k: got[k] for k in expected} == expected
  assert got["num_real"] == 400 and got["num_fake"] == 300
  assert got["nearest_k_precision_recall"] == 3 and got["nearest_k_density_coverage"] == 5


def test_cli_nearest_k_ties_and_saved_statistics(arrays):
  d, real, fake, _ = arrays
  out, stats = d / "out2.json", d / "real_stats.npz"
  proc = _run(
    f"--real={d / 'real.npy'}",
    f"--fake={d / 'fake.npz'}",
    "--metrics=prdc,fid",
    "--nearest_k=4",
    "--ties=<",
    f"--save_real_stats={stats}",
    f"--output={out}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(out.read_text())
  assert {k: got[k] for k in ("precision", "recall", "density", "coverage")} == prdc.prdc(
    real, fake, 4, 4, ties="<"
  )
  assert got["nearest_k_precision_recall"] == got["nearest_k_density_coverage"] == 4
  # FID from the saved statistics equals FID from the features.
  out3 = d / "out3.json"
  proc = _run(f"--real={stats}", f"--fake={d / 'fake.npz'}", "--metrics=fid", f"--output={out3}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(out3.read_text())["fid"] == pytest.approx(got["fid"], rel=1e-12)


@pytest.mark.parametrize(
  "case, fragments",
  [
    ("missing", ["does not exist"]),
    ("unknown_metric", ["unknown metric 'fidd'"]),
    ("no_logits", ["IS needs class logits"]),
    ("float_images", ["images must be uint8"]),
    ("dims", ["differ in dimension: 12 vs 5"]),
    ("weights", ["Inception weights not found", "pytorch-fid", "convert_inception_weights"]),
    ("stats_prdc", ["PRDC needs real features"]),
    ("big_k", ["nearest_k=400 needs more"]),
    ("not_a_run", ["no run in"]),
    ("truncated_zip", ["cannot read", "BadZipFile"]),
    ("channels_first", ["channels last"]),
    ("bad_logits", ["logits must be (N=10, C)"]),
    ("nan", ["NaN or infinite"]),
    ("kid_flags", ["--kid_subset_size >= 2"]),
  ],
)
def test_cli_bad_input_is_one_line(arrays, tmp_path, case, fragments):
  d, real, _, _ = arrays
  np.save(tmp_path / "float_images.npy", np.zeros((4, 8, 8, 3), np.float32))
  np.save(tmp_path / "five.npy", np.zeros((10, 5), np.float32))
  np.save(tmp_path / "images.npy", np.zeros((4, 8, 8, 3), np.uint8))
  fid.save_stats(str(tmp_path / "stats.npz"), fid.feature_stats(real))
  (tmp_path / "truncated.npz").write_bytes((d / "fake.npz").read_bytes()[:2000])
  np.save(tmp_path / "nchw.npy", np.zeros((4, 3, 8, 8), np.uint8))
  np.savez(tmp_path / "bad_logits.npz", features=np.zeros((10, 12)), logits=np.zeros((9, 4)))
  np.save(tmp_path / "nan.npy", np.full((10, 12), np.nan, np.float32))
  real_npy, fake_npz = str(d / "real.npy"), str(d / "fake.npz")
  args = {
    "missing": [f"--real={tmp_path / 'nope.npy'}", f"--fake={fake_npz}"],
    "unknown_metric": [f"--real={real_npy}", f"--fake={fake_npz}", "--metrics=fid,fidd"],
    "no_logits": [f"--real={real_npy}", f"--fake={real_npy}", "--metrics=is"],
    "float_images": [f"--real={tmp_path / 'float_images.npy'}", f"--fake={fake_npz}"],
    "dims": [f"--real={real_npy}", f"--fake={tmp_path / 'five.npy'}"],
    "weights": [f"--real={tmp_path / 'images.npy'}", f"--fake={tmp_path / 'images.npy'}"],
    "stats_prdc": [f"--real={tmp_path / 'stats.npz'}", f"--fake={fake_npz}", "--metrics=prdc"],
    "big_k": [f"--real={real_npy}", f"--fake={fake_npz}", "--metrics=prdc", "--nearest_k=400"],
    "not_a_run": [f"--real={real_npy}", f"--fake={tmp_path}"],
    "truncated_zip": [f"--real={real_npy}", f"--fake={tmp_path / 'truncated.npz'}"],
    "channels_first": [f"--real={tmp_path / 'nchw.npy'}", f"--fake={fake_npz}"],
    "bad_logits": [f"--real={real_npy}", f"--fake={tmp_path / 'bad_logits.npz'}"],
    "nan": [f"--real={tmp_path / 'nan.npy'}", f"--fake={fake_npz}"],
    "kid_flags": [f"--real={real_npy}", f"--fake={fake_npz}", "--kid_subset_size=1"],
  }[case]
  env = {"GEN_MODELS_INCEPTION_WEIGHTS": str(tmp_path / "absent.npz")}
  proc = run_cli("experiments.evaluate", *args, f"--output={tmp_path / 'o.json'}", env=env)
  assert_one_line_error(proc, *fragments)
  assert not (tmp_path / "o.json").exists()


def _toy_config(**overrides):
  config = wgan_gp_toy.get_config("smoke")
  for key, value in overrides.items():
    config_lib.set_path(config, key, value)
  return config


def test_trainer_logs_the_same_metrics_as_evaluate_compute(tmp_path):
  config = _toy_config(**{"eval.metrics": "fid,kid,prdc", "eval.num_samples": 300})
  workdir = str(tmp_path / "run")
  devices = jax.devices()[:1]
  last = trainer.train(config, workdir, devices=devices)
  for key in ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage"):
    assert np.isfinite(last[f"eval/{key}"]), key
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  assert logged[-1]["eval/fid"] == last["eval/fid"]

  # Recompute from the checkpoint with the documented sample key: same numbers.
  cfg, family, state = trainer.load_run(workdir, devices)
  n = cfg.eval.num_samples
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), outputs.SAMPLE_STREAM), 1)
  fake = sample_chunks(
    jax.jit(family.sample, static_argnums=2), state, key, n, min(n, cfg.batch_size)
  )
  real = data.create(cfg, cfg.batch_size).reference(n)
  expected = evaluate.compute(
    evaluate.Features(features=real.astype(np.float32)),
    evaluate.Features(features=fake.astype(np.float32)),
    ("fid", "kid", "prdc"),
    seed=cfg.seed,
  )
  for key in ("fid", "kid_mean", "precision", "recall", "density", "coverage"):
    assert last[f"eval/{key}"] == pytest.approx(expected[key], rel=1e-6), key


def test_trainer_refuses_metrics_it_cannot_compute_before_touching_the_workdir(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match="needs class logits"):
    trainer.train(_toy_config(**{"eval.metrics": "fid,is"}), str(workdir))
  with pytest.raises(UserError, match="unknown metric"):
    trainer.train(_toy_config(**{"eval.metrics": "fud"}), str(workdir))
  with pytest.raises(UserError, match="need eval.num_samples >= 6"):
    trainer.train(_toy_config(**{"eval.metrics": "prdc", "eval.num_samples": 5}), str(workdir))
  with pytest.raises(UserError, match="eval.nearest_k must be >= 0"):
    trainer.train(_toy_config(**{"eval.metrics": "fid", "eval.nearest_k": -1}), str(workdir))
  assert not workdir.exists()


def test_extractors_identity_and_user_function():
  x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
  features, logits = extractors.identity(x)
  assert features.shape == (2, 12) and features.dtype == np.float32 and logits is None
  f = extractors.from_function(lambda s: (s.reshape(len(s), -1)[:, :2], s.reshape(len(s), -1)))
  features, logits = f(x)
  np.testing.assert_array_equal(features, [[0, 1], [12, 13]])
  assert logits.shape == (2, 12)
  with pytest.raises(UserError, match="unknown extractor"):
    extractors.for_samples("vgg", "images")
  with pytest.raises(UserError, match="needs images"):
    extractors.for_samples("inception", "points")


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
  from gen_models.metrics import inception

  path = str(tmp_path_factory.mktemp("inception") / "random.npz")
  inception.save_variables(path, inception.random_variables(0))
  return path


def test_cli_runs_images_through_inception(tmp_path, random_inception):
  from gen_models.metrics import inception

  rng = np.random.default_rng(0)
  real = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  fake = rng.integers(0, 256, (5, 32, 32, 1), dtype=np.uint8)  # grayscale is repeated to RGB
  np.save(tmp_path / "real.npy", real)
  np.savez(tmp_path / "fake.npz", images=fake)
  out = tmp_path / "out.json"
  proc = _run(
    f"--real={tmp_path / 'real.npy'}",
    f"--fake={tmp_path / 'fake.npz'}",
    "--metrics=fid,is",
    f"--inception_weights={random_inception}",
    "--batch_size=4",
    f"--output={out}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(out.read_text())
  extract = inception.InceptionExtractor(inception.load_variables(random_inception), 4)
  real_features, _ = extract(real)
  fake_features, fake_logits = extract(fake)
  assert got["fid"] == pytest.approx(fid.fid(real_features, fake_features), rel=1e-4)
  expected_is = is_lib.inception_score(logits=fake_logits, splits=5)
  assert got["is_mean"] == pytest.approx(expected_is[0], rel=1e-5)


@pytest.mark.slow
def test_trainer_computes_image_metrics_with_inception(tmp_path, random_inception):
  import tensorflow_datasets as tfds

  from experiments.configs import wgan_gp_cifar10

  config = wgan_gp_cifar10.get_config("smoke")
  config_lib.set_path(config, "eval.metrics", "fid,is,kid,prdc")
  config_lib.set_path(config, "eval.num_samples", 12)
  config_lib.set_path(config, "eval.inception_weights", random_inception)
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    last = trainer.train(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  for key in ("fid", "is_mean", "kid_mean", "precision", "recall", "density", "coverage"):
    assert np.isfinite(last[f"eval/{key}"]), key
  assert 1.0 <= last["eval/is_mean"] <= 1008.0


def test_cli_draws_samples_from_a_workdir(tmp_path):
  from gen_models.sampling import draw_samples

  workdir = str(tmp_path / "run")
  trainer.train(_toy_config(), workdir, devices=jax.devices()[:1])
  real = np.random.default_rng(0).standard_normal((150, 2)).astype(np.float32)
  np.save(tmp_path / "real.npy", real)
  out = tmp_path / "out.json"
  proc = _run(
    f"--real={tmp_path / 'real.npy'}",
    f"--fake={workdir}",
    "--metrics=fid,prdc",
    "--num_samples=120",
    "--seed=3",
    f"--output={out}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(out.read_text())
  fake, kind, step = draw_samples(workdir, 120, 3, 100)
  assert kind == "points" and got["num_fake"] == 120
  assert got["fid"] == pytest.approx(fid.fid(real, fake), rel=1e-6)
  assert got["precision"] == prdc.prdc(real, fake)["precision"]
  # A copy in the workdir for experiments.report, at the checkpoint's step.
  with open(os.path.join(workdir, "results", f"evaluate_step{step:08d}.json")) as f:
    assert json.load(f) == got and got["step"] == step
