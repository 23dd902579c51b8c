"""``experiments.evaluate_likelihood``: a flow run's NLL of user data, and its one-line errors."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from experiments import evaluate_likelihood as el
from experiments.configs import realnvp_toy
from gen_models import trainer
from gen_models.data import toy
from gen_models.errors import UserError
from gen_models.models import realnvp


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("flow") / "run"
  trainer.train(realnvp_toy.get_config("smoke"), str(workdir))
  return workdir


@pytest.mark.slow
def test_points_nll_matches_the_model_and_errors_are_one_line(toy_run, tmp_path):
  points = toy.sample("8gaussians_wide", 50, seed=3, stream=1, index=0)
  np.save(tmp_path / "points.npy", points)
  out, per = tmp_path / "out.json", tmp_path / "log_p.npy"
  proc = run_cli(
    "experiments.evaluate_likelihood",
    f"--workdir={toy_run}",
    f"--data={tmp_path / 'points.npy'}",
    f"--output={out}",
    f"--log_probs={per}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  log_p = np.load(per)
  _, family, state = trainer.load_run(str(toy_run))
  config = realnvp_toy.get_config("smoke")
  want = np.asarray(realnvp.bind(config, (2,)).log_prob(state, points, jax.random.key(0)))
  np.testing.assert_allclose(log_p, want, rtol=1e-6)
  assert results["nll_nats"] == pytest.approx(-np.mean(log_p), rel=1e-12)
  assert results["nll_nats_stderr"] == pytest.approx(np.std(log_p, ddof=1) / math.sqrt(50))
  assert results["bits_per_dim"] == pytest.approx(results["nll_nats"] / (2 * math.log(2)))
  assert (results["num_examples"], results["num_dims"], results["step"]) == (50, 2, 6)
  assert json.loads((toy_run / "results" / "likelihood_step00000006.json").read_text()) == results

  np.save(tmp_path / "bad.npy", np.zeros((4, 3), np.float32))
  bad = run_cli(
    "experiments.evaluate_likelihood", f"--workdir={toy_run}", f"--data={tmp_path / 'bad.npy'}"
  )
  assert_one_line_error(bad, "the run models points (2,); --data is (4, 3)")
  gan = tmp_path / "gan"
  gan.mkdir()
  (gan / "config.json").write_text(json.dumps({"model": "wgan_gp"}))
  not_flow = run_cli(
    "experiments.evaluate_likelihood", f"--workdir={gan}", f"--data={tmp_path / 'bad.npy'}"
  )
  assert_one_line_error(not_flow, "holds a 'wgan_gp' run, not a flow")


@pytest.mark.parametrize(
  ("x", "fragment"),
  [
    (np.full((2, 4, 4, 1), 256.0), "integer pixel values in [0, 256)"),
    (np.full((2, 4, 4, 1), -1), "integer pixel values in [0, 256)"),
    (np.full((2, 4, 4, 1), 3.5), "(non-integers)"),
    (np.zeros((2, 4, 5, 1), np.uint8), "images (N, H, W, C) of (4, 4, 1)"),
    (np.zeros((2, 4), np.float32), "images (N, H, W, C)"),
  ],
)
def test_image_data_errors_are_one_line(x, fragment):
  with pytest.raises(UserError) as e:
    el.check_data(x, (4, 4, 1), crop=0)
  assert fragment in str(e.value) and "\n" not in str(e.value)


def test_image_data_to_model_space_and_crop():
  """uint8 pixels p → p/127.5 − 1, the datasets' space; MNIST's 28×28 originals are padded
  back to the run's 32×32 with −1 (pixel 0), which the flow crops again."""
  x = np.arange(2 * 2 * 2 * 1, dtype=np.uint8).reshape(2, 2, 2, 1) * 30
  np.testing.assert_allclose(el.check_data(x, (2, 2, 1), crop=0), x / 127.5 - 1.0, rtol=1e-6)
  padded = el.check_data(x, (4, 4, 1), crop=1)
  assert padded.shape == (2, 4, 4, 1) and np.all(padded[:, 0] == -1.0)
  np.testing.assert_array_equal(realnvp.to_pixels(padded, crop=1), x.astype(np.float32))
