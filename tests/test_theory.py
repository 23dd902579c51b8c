"""The GAN-theory experiments: their mathematics against closed forms, and each command's files.

The commands run in ``--quick`` mode (seconds); ``docs/THEORY.md`` has the full runs' numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from experiments.theory import common
from gen_models import divergences
from gen_models.errors import UserError
from gen_models.theory import disjoint_supports, optimal_discriminator, w1_landscape

LOG4 = math.log(4.0)


# ----------------------------------------------------------------------------------------------
# Library.


def test_mixture_density_integrates_to_one_and_matches_scipy():
  import scipy.stats

  m = optimal_discriminator.REAL
  x = np.linspace(-10, 10, 20001)
  want = sum(
    w * scipy.stats.norm.pdf(x, mu, s) for w, mu, s in zip(m.weights, m.means, m.stds, strict=True)
  )
  np.testing.assert_allclose(np.exp(m.log_pdf(x)), want, rtol=1e-12, atol=1e-300)
  assert np.sum(want) * (x[1] - x[0]) == pytest.approx(1.0, abs=1e-9)


def test_optimal_discriminator_value_is_minus_log4_plus_2_jsd():
  """V(D*) on the grid, computed from D*'s logit log p − log q, equals −log 4 + 2·jsd_grid."""
  x = np.linspace(-12, 12, 6001)  # Wide: the mass outside is < 1e-14.
  dx = x[1] - x[0]
  lp = optimal_discriminator.REAL.log_pdf(x)
  lq = optimal_discriminator.GENERATED.log_pdf(x)
  v_star = optimal_discriminator.objective_on_grid(lp - lq, lp, lq, dx)
  np.testing.assert_allclose(v_star, -LOG4 + 2 * divergences.jsd_grid(lp, lq, dx), rtol=1e-12)
  # Any other discriminator does worse; D = ½ everywhere gives exactly −log 4.
  assert optimal_discriminator.objective_on_grid(np.zeros_like(x), lp, lq, dx) == pytest.approx(
    -LOG4, rel=1e-9
  )
  for shift in (-1.0, 0.3, 2.0):
    assert optimal_discriminator.objective_on_grid(lp - lq + shift, lp, lq, dx) < v_star


def test_disjoint_supports_closed_form_and_histograms():
  exact = disjoint_supports.closed_form(np.array([-0.5, 0.0, 0.25]))
  assert exact["kl"].tolist() == [math.inf, 0.0, math.inf]
  np.testing.assert_array_equal(exact["jsd"], [math.log(2), 0.0, math.log(2)])
  np.testing.assert_array_equal(exact["w1"], [0.5, 0.0, 0.25])
  rng = np.random.default_rng(0)
  pts = disjoint_supports.segment_samples(rng, 0.3, 500)
  hist = disjoint_supports.histogram(pts, 0.01, 10, x_max=1.0)
  assert hist.shape == (201, 10) and hist.sum() == pytest.approx(1.0)
  assert np.all(hist[130] > 0) and hist.sum(axis=1)[130] == pytest.approx(1.0)  # x = 0.30.
  with pytest.raises(ValueError, match="outside"):
    disjoint_supports.histogram(pts + 5.0, 0.01, 10, x_max=1.0)


@settings(max_examples=30, deadline=None)
@given(theta=st.floats(-1.0, 1.0).filter(lambda t: abs(t) >= 0.01), seed=st.integers(0, 1000))
def test_disjoint_supports_sample_estimates(theta, seed):
  """From samples: JSD = log 2 and KL = ∞ once the segments are in different cells; the exact
  W1 of the samples is at least |θ| (every unit of mass crosses the gap) and at most |θ| plus
  the 1-D W1 of the vertical coordinates (move across, then along)."""
  results = disjoint_supports.run(thetas=np.array([theta]), num_samples=40, seed=seed)
  assert results["jsd_samples"][0] == pytest.approx(math.log(2), rel=1e-12)
  assert results["kl_samples"][0] == math.inf
  rng = np.random.default_rng(seed)
  p = disjoint_supports.segment_samples(rng, 0.0, 40)
  q = disjoint_supports.segment_samples(rng, theta, 40)
  w1 = results["w1_samples"][0]
  assert w1 == divergences.wasserstein1(p, q)  # The same samples as the run.
  assert abs(theta) * (1 - 1e-12) <= w1 <= abs(theta) + divergences.wasserstein1(p[:, 1], q[:, 1])


def test_w1_landscape_matches_the_closed_form_and_mixtures():
  a = np.linspace(-3, 3, 25)
  for b in (-2.0, -1.0, 0.0, 0.5):
    got = [divergences.wasserstein1([x, b], w1_landscape.TARGET) for x in a]
    np.testing.assert_allclose(got, w1_landscape.closed_form(a, b), rtol=1e-12, atol=1e-15)
  # Mixture of δ₀ and δ₂ with t = ½: mass ½ at 0 and ½ at 2 against ½ at −1 and ½ at 1 → 1.
  assert w1_landscape.mixture_w1([0.0, 0.0], [2.0, 2.0], 0.5) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="multiple of 1/4"):
    w1_landscape.mixture_w1([0.0, 0.0], [2.0, 2.0], 0.3)


# ----------------------------------------------------------------------------------------------
# Commands (quick mode).


def _check_outputs(directory, name):
  with Image.open(directory / f"{name}.png") as im:
    assert im.mode in ("RGB", "RGBA") and im.size[0] >= 800
  with open(directory / f"{name}.json") as f:
    return json.load(f)


def test_optimal_discriminator_command(tmp_path):
  proc = run_cli("experiments.theory.optimal_discriminator", f"--output_dir={tmp_path}", "--quick")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = _check_outputs(tmp_path, "optimal_discriminator")
  assert results["v_closed_form"] == pytest.approx(-LOG4 + 2 * results["jsd"], rel=1e-12)
  assert results["v_optimal"] == pytest.approx(results["v_closed_form"], abs=1e-6)
  assert results["gap"] >= -1e-9  # No discriminator beats D*.
  assert f"v_closed_form: {results['v_closed_form']:.6g}" in proc.stdout


def test_disjoint_supports_command(tmp_path):
  proc = run_cli("experiments.theory.disjoint_supports", f"--output_dir={tmp_path}", "--quick")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = _check_outputs(tmp_path, "disjoint_supports")
  assert results["theta"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
  assert results["summary"]["kl_samples_infinite_for_all_theta_ne_0"] is True
  assert results["summary"]["max_abs_jsd_minus_log2_for_theta_ne_0"] < 1e-12


def test_w1_landscape_command(tmp_path):
  proc = run_cli("experiments.theory.w1_landscape", f"--output_dir={tmp_path}", "--quick")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = _check_outputs(tmp_path, "w1_landscape")["summary"]
  with np.load(tmp_path / "w1_landscape_arrays.npz") as arrays:
    assert arrays["w1"].shape == (21, 21) and arrays["a"].shape == (21,)
  assert summary["minima"] == [[-1.0, 1.0], [1.0, -1.0]]
  assert summary["w1_at_midpoint_0_0"] == 1.0
  assert summary["max_abs_library_minus_closed_form"] < 1e-12
  assert summary["mixture_path_max_w1"] == 0.0


def test_commands_bad_flags_are_one_line_errors(tmp_path):
  proc = run_cli(
    "experiments.theory.disjoint_supports", f"--output_dir={tmp_path}", "--cell_width=0"
  )
  assert_one_line_error(proc, "--cell_width must be > 0")
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(UserError, match="cannot create --output_dir"):
    common.output_dir(str(blocker / "sub"))


@pytest.mark.slow
def test_vanishing_gradients_command(tmp_path):
  """About a minute on the shared 2-core CPU, nearly all of it XLA compilation."""
  proc = run_cli("experiments.theory.vanishing_gradients", f"--output_dir={tmp_path}", "--quick")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = _check_outputs(tmp_path, "vanishing_gradients")
  assert results["iterations"] == [0, 10, 20]
  for snap in results["snapshots"]:
    curves = {k: np.asarray(v) for k, v in snap["curves"].items()}
    assert curves["minimax"].shape == curves["wgan_gp"].shape == (2, 3)
    assert np.all(np.isfinite(curves["non_saturating"])) and np.all(curves["minimax"] > 0)
    assert np.all((curves["mean_d_fake"] > 0) & (curves["mean_d_fake"] < 1))
