"""Disentanglement metrics: brute-force references, calibration, invariances, bad input."""

from __future__ import annotations

import collections
import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import mutual_info_score

from gen_models import UserError
from gen_models.data import dsprites, toy
from gen_models.metrics import disentanglement as dis

SIZES = (3, 2, 2, 4, 2)  # Every factor fits 20 bins; 5 factors: chance is 0.2; few classes
# keep DCI's trees (one per class and stage) cheap.


class IdentityData:
  """Observations are the factor values themselves, ``(n, K)`` floats (disentanglement_lib's
  ``IdentityObservationsData``); values are spread unevenly to catch index/value mix-ups."""

  def __init__(self, sizes=SIZES):
    self.factor_sizes = tuple(sizes)
    self.num_factors = len(sizes)
    self.factor_names = tuple(f"f{k}" for k in range(len(sizes)))
    self._values = [np.linspace(-1.0, 2.0 * (k + 1), s) for k, s in enumerate(sizes)]

  def sample_factors(self, n, rng):
    return rng.integers(0, self.factor_sizes, size=(n, self.num_factors))

  def observations(self, factors):
    return np.stack([v[factors[:, k]] for k, v in enumerate(self._values)], axis=1)


def true_encoder(x):
  return np.asarray(x, np.float64)


def constant_encoder(x):
  return np.zeros((len(x), 10))


def noise_encoder():
  rng = np.random.default_rng(123)
  return lambda x: rng.standard_normal((len(x), 10))


def mixed_encoder(x):
  """A deterministic, partly entangled code (d = 6) of the factor values."""
  w = np.array(
    [
      [1.0, 0.0, 0.0, 0.0, 0.0, 0.3],
      [0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
      [0.0, 0.2, 1.0, 0.0, 0.0, 0.0],
      [0.0, 0.0, 0.0, 1.0, 0.5, 0.0],
      [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    ]
  )
  # The last term makes every code depend a little on every factor, so that no two codes split
  # the points the same way (trees would choose between such ties by feature order).
  g = np.random.default_rng(0).normal(size=(5, 6))
  return x @ w + 0.3 * np.sin(3.0 * x @ w[:, ::-1]) + 0.05 * np.sin(7.0 * x @ g)


def run_metric(name, encode, data, seed, **sizes):
  """One metric of ``encode`` on ``data``: its draws from ``default_rng(seed)`` (``seed`` an int
  or a Generator) with ``sizes``, then its scoring."""
  draws = dis.DRAW[name](data, np.random.default_rng(seed), **sizes)
  return dis.score(draws, dis.encode_draws(encode, data, draws, 1024)).run()


SMALL = {
  "beta_vae": functools.partial(run_metric, "beta_vae", batch_size=32, num_train=300, num_eval=300),
  "factor_vae": functools.partial(
    run_metric,
    "factor_vae",
    batch_size=32,
    num_train=300,
    num_eval=300,
    num_variance_estimate=1000,
  ),
  "mig": functools.partial(run_metric, "mig", num_train=2000),
  "dci": functools.partial(run_metric, "dci", num_train=200, num_test=200),
  "sap": functools.partial(run_metric, "sap", num_train=500, num_test=500),
}


# ---------------------------------------------------------------------------------------------
# MIG against brute force.


def brute_force_mig(codes, factors, num_bins):
  n, d = codes.shape
  binned = []
  for j in range(d):  # Equal-width bins between min and max; the max in the last bin.
    lo, hi = codes[:, j].min(), codes[:, j].max()
    if lo == hi:
      binned.append([0] * n)
      continue
    width = (hi - lo) / num_bins
    binned.append([min(int((c - lo) // width), num_bins - 1) for c in codes[:, j]])

  def mi(a, b):
    pa, pb, pab = (
      collections.Counter(a),
      collections.Counter(b),
      collections.Counter(zip(a, b, strict=True)),
    )
    return sum(c / n * math.log(c * n / (pa[x] * pb[y])) for (x, y), c in pab.items())

  def h(a):
    return -sum(c / n * math.log(c / n) for c in collections.Counter(a).values())

  gaps = []
  for k in range(factors.shape[1]):
    f = factors[:, k].tolist()
    m = sorted(mi(binned[j], f) for j in range(d))
    gaps.append((m[-1] - m[-2]) / h(f))
  return sum(gaps) / len(gaps)


@settings(max_examples=40, deadline=None)
@given(
  seed=st.integers(0, 2**32 - 1),
  n=st.integers(5, 60),
  d=st.integers(2, 4),
  k=st.integers(1, 3),
  levels=st.integers(2, 6),
)
def test_mig_equals_brute_force_on_small_integer_data(seed, n, d, k, levels):
  rng = np.random.default_rng(seed)
  factors = rng.integers(0, levels, size=(n, k))
  factors[:2, :] = [[0] * k, [1] * k]  # Every factor takes at least 2 values.
  codes = rng.integers(0, 5, size=(n, d)).astype(np.float64)  # Integers in 0..4.
  codes[:, 0] = factors[:, 0] * 2.0  # An informative code.
  # With num_bins = max - min + 1 ... or 4, integer codes fall on bin boundaries: both cases.
  for num_bins in (4, 5, 20):
    np.testing.assert_allclose(
      dis.mig(codes, factors, num_bins), brute_force_mig(codes, factors, num_bins), atol=1e-12
    )


def test_mutual_information_and_entropy_match_sklearn():
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, 7, 500), rng.integers(0, 3, 500)
  b[:250] = a[:250] % 3
  np.testing.assert_allclose(dis.mutual_information(a, b), mutual_info_score(a, b), rtol=1e-12)
  np.testing.assert_allclose(dis.entropy(a), mutual_info_score(a, a), rtol=1e-12)
  assert dis.entropy(np.array([4, 4, 9, 9])) == pytest.approx(math.log(2))


def test_discretize_is_histogram_binning():
  x = np.array([[0.0, 5.0], [1.0, 5.0], [0.5, 5.0], [0.9999, 5.0], [0.25, 5.0]])
  # Bins [0, .25), [.25, .5), [.5, .75), [.75, 1]; a constant column spans [c − ½, c + ½] (numpy's
  # histogram rule) and lands in the bin starting at c.
  np.testing.assert_array_equal(dis.discretize(x, 4), [[1, 3], [4, 3], [3, 3], [4, 3], [2, 3]])


def test_mig_of_a_copy_of_each_factor():
  # Codes = factors exactly, plus a constant dimension: every factor has one perfect code and
  # the runner-up shares no information in this balanced design, so MIG is exactly 1.
  factors = np.stack(np.meshgrid(np.arange(3), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
  codes = np.concatenate([factors, np.zeros((12, 1))], axis=1).astype(np.float64)
  assert dis.mig(codes, factors) == pytest.approx(1.0, abs=1e-12)
  # Two copies of a factor: a gap of 0 for it.
  twice = np.concatenate([factors, factors[:, :1]], axis=1).astype(np.float64)
  assert dis.mig(twice, factors) == pytest.approx(0.5, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# DCI and SAP formulas.


def test_dci_from_importance_closed_forms():
  d, c = dis.dci_from_importance(np.eye(4))
  assert d == pytest.approx(1.0, abs=1e-8) and c == pytest.approx(1.0, abs=1e-8)
  assert dis.dci_from_importance(np.ones((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-12)
  assert dis.dci_from_importance(np.zeros((3, 2))) == pytest.approx((0.0, 0.0), abs=1e-12)
  # R = [[1, 1], [0, 2]]: code 0 splits evenly (0), code 1 is pure (1), each weighs 1/2: D = 1/2.
  # Factor 0 is pure (1, weight 1/4); factor 1 splits 1:2 (1 − H₂(1/3), weight 3/4).
  h = -(1 / 3 * math.log2(1 / 3) + 2 / 3 * math.log2(2 / 3))
  d, c = dis.dci_from_importance(np.array([[1.0, 1.0], [0.0, 2.0]]))
  assert d == pytest.approx(0.5, abs=1e-8)
  assert c == pytest.approx(0.25 + 0.75 * (1 - h), abs=1e-8)


def test_sap_continuous_matrix_is_squared_correlation():
  rng = np.random.default_rng(0)
  factors = rng.integers(0, 5, size=(300, 3))
  codes = np.concatenate([factors + rng.normal(size=(300, 3)), np.ones((300, 1))], axis=1)
  s = dis.sap_matrix(codes, factors, continuous_factors=True)
  for j in range(3):
    for k in range(3):
      assert s[j, k] == pytest.approx(np.corrcoef(codes[:, j], factors[:, k])[0, 1] ** 2)
  np.testing.assert_array_equal(s[3], 0.0)  # A constant code scores 0, not NaN.
  top = np.sort(s, axis=0)
  assert dis.sap(codes, factors, continuous_factors=True) == pytest.approx(
    np.mean(top[-1] - top[-2])
  )


# ---------------------------------------------------------------------------------------------
# Calibration on identity data.


@pytest.mark.parametrize("metric", sorted(SMALL))
def test_true_factor_encoder_scores_high(metric):
  out = SMALL[metric](true_encoder, IdentityData(), 0)
  if metric in ("beta_vae", "factor_vae"):
    assert out["eval_accuracy"] == 1.0 and out["train_accuracy"] == 1.0
  elif metric == "mig":
    assert out["mig"] >= 0.97
  elif metric == "dci":
    assert min(out.values()) >= 0.9, out
    assert out["informativeness_test"] == 1.0
  else:
    # Discrete SAP cannot reach 1 (see sap's docstring); the continuous score of the same codes:
    codes, factors = dis.sample_codes(true_encoder, IdentityData(), 500, 0)
    assert dis.sap(codes, factors, continuous_factors=True) >= 0.95
    assert out["sap"] > 0.2


def test_discrete_sap_of_binary_factors_is_the_accuracy_gap():
  # With binary factors a 1-D SVM separates the true code perfectly; every other code is chance.
  data = IdentityData((2, 2, 2, 2))
  out = run_metric("sap", true_encoder, data, 0, num_train=2000, num_test=2000)
  assert abs(out["sap"] - 0.5) < 0.05


@pytest.mark.parametrize("metric", sorted(SMALL))
def test_constant_encoder_scores_chance_or_zero(metric):
  out = SMALL[metric](constant_encoder, IdentityData(), 0)
  if metric == "beta_vae":  # One class predicted for every point: its frequency, about 1/5.
    assert abs(out["eval_accuracy"] - 0.2) < 0.08
  elif metric == "factor_vae":  # Every dimension pruned.
    assert out == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
  elif metric == "mig":
    assert out["mig"] == 0.0
  elif metric == "dci":
    assert out["disentanglement"] == pytest.approx(0, abs=1e-9)
    assert out["completeness"] == pytest.approx(0, abs=1e-9)
  else:
    assert out["sap"] == 0.0


@pytest.mark.parametrize("metric", sorted(SMALL))
def test_noise_encoder_scores_chance_or_near_zero(metric):
  out = SMALL[metric](noise_encoder(), IdentityData(), 0)
  if metric in ("beta_vae", "factor_vae"):
    assert abs(out["eval_accuracy"] - 0.2) < 0.08, out
  elif metric == "mig":
    assert out["mig"] < 0.03
  elif metric == "dci":
    assert out["disentanglement"] < 0.25 and out["completeness"] < 0.25, out
    assert out["informativeness_test"] < 0.4
  else:
    assert out["sap"] < 0.05


# ---------------------------------------------------------------------------------------------
# Invariances.


@pytest.mark.parametrize("metric", sorted(SMALL))
def test_permuting_latents_changes_nothing(metric):
  perm = np.array([3, 0, 5, 1, 4, 2])
  base = SMALL[metric](mixed_encoder, IdentityData(), 7)
  permuted = SMALL[metric](lambda x: mixed_encoder(x)[:, perm], IdentityData(), 7)
  # Trees choose between splits of exactly equal gain by the order in which they visit features
  # (scikit-learn's splitter), so permuted codes can grow slightly different trees: DCI moved by
  # 0.005 here. The scores of a given importance matrix are exactly invariant (next test).
  assert permuted == pytest.approx(base, abs=0.02 if metric == "dci" else 1e-12)


def test_dci_scores_ignore_the_order_of_codes_and_factors():
  r = np.random.default_rng(0).random((6, 4)) ** 3
  d, c = dis.dci_from_importance(r)
  assert dis.dci_from_importance(r[[3, 0, 5, 1, 4, 2]][:, [2, 0, 3, 1]]) == pytest.approx(
    (d, c), abs=1e-14
  )
  # Scale-free but for disentanglement_lib's +1e-11 on every entry.
  assert dis.dci_from_importance(7.5 * r) == pytest.approx((d, c), abs=1e-9)


@pytest.mark.parametrize("metric", ["factor_vae", "mig", "dci"])
def test_rescaling_latents_changes_nothing(metric):
  # Powers of two keep every float exact; β-VAE (regularised logistic regression) and discrete
  # SAP (regularised SVM) depend on the latents' scale, as in disentanglement_lib.
  scale = np.array([4.0, 0.5, 1.0, -2.0, 8.0, -0.25])
  if metric == "dci":
    scale = np.abs(scale)  # Trees see the same splits; mirrored codes can break ties otherwise.
  base = SMALL[metric](mixed_encoder, IdentityData(), 3)
  scaled = SMALL[metric](lambda x: mixed_encoder(x) * scale, IdentityData(), 3)
  assert scaled == pytest.approx(base, abs=1e-12)


def test_continuous_sap_ignores_rescaling():
  codes, factors = dis.sample_codes(mixed_encoder, IdentityData(), 500, 0)
  scale = np.array([3.0, -0.1, 7.0, 1.0, -2.0, 0.5])
  a = dis.sap(codes, factors, continuous_factors=True)
  assert dis.sap(codes * scale, factors, continuous_factors=True) == pytest.approx(a, rel=1e-9)


def test_same_seed_same_scores_and_generator_accepted():
  a = dis.evaluate(
    mixed_encoder, IdentityData(), ("beta_vae", "mig"), seed=5, num_train=200, num_eval=100
  )
  b = dis.evaluate(
    mixed_encoder, IdentityData(), ("beta_vae", "mig"), seed=5, num_train=200, num_eval=100
  )
  assert a == b and set(a) == {"beta_vae/train_accuracy", "beta_vae/eval_accuracy", "mig/mig"}
  g = run_metric("mig", mixed_encoder, IdentityData(), np.random.default_rng(1), num_train=300)
  assert g == run_metric("mig", mixed_encoder, IdentityData(), 1, num_train=300)
  codes, factors = dis.sample_codes(mixed_encoder, IdentityData(), 50, np.random.default_rng(1))
  again = dis.sample_codes(mixed_encoder, IdentityData(), 50, 1)
  np.testing.assert_array_equal(codes, again[0])
  np.testing.assert_array_equal(factors, again[1])


def test_on_procedural_dsprites_with_a_moment_encoder():
  # An encoder of image moments (area, centroid) recovers scale and position on the smoke grid.
  data = dsprites.ProceduralDSprites("dsprites_procedural_smoke", 64, seed=0)

  def moments(x):
    x = x[..., 0]
    area = x.sum(axis=(1, 2))
    rows, cols = np.arange(64)[None, :, None], np.arange(64)[None, None, :]
    return np.stack(
      [area, (x * cols).sum(axis=(1, 2)) / area, (x * rows).sum(axis=(1, 2)) / area], axis=1
    )

  codes, factors = dis.sample_codes(moments, data, 600, 0, max_batch=256)
  mi = [[dis.mutual_information(b, f) for f in factors.T] for b in dis.discretize(codes, 20).T]
  assert np.argmax(mi[1]) == 3 and np.argmax(mi[2]) == 4  # Centroid x → pos_x, y → pos_y.
  assert dis.mig(codes, factors) > 0.3


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_a_factor_with_one_value_is_an_error():
  factors = np.array([[0, 1], [0, 0], [0, 1]])
  codes = np.random.default_rng(0).normal(size=(3, 2))
  with pytest.raises(UserError, match="factor 0 has a single value"):
    dis.mig(codes, factors)
  with pytest.raises(UserError, match="factor 0 has a single value"):
    dis.dci(codes, factors, codes, factors)
  with pytest.raises(UserError, match="factor 0 has a single value"):
    dis.sap(codes, factors, codes, factors)
  with pytest.raises(UserError, match="factor 'f1' has 1 value"):
    dis.evaluate(true_encoder, IdentityData((3, 1, 2)), ("mig",), num_train=50)


def test_dataset_without_ground_truth_is_a_one_line_error():
  points = toy.ToyDataset("8gaussians", 8, seed=0)
  for name in dis.METRICS:
    with pytest.raises(UserError, match="'8gaussians' has no ground-truth factors") as e:
      dis.evaluate(true_encoder, points, (name,), num_train=50, num_eval=50)
    assert "\n" not in str(e.value), name


def test_bad_codes_are_errors():
  data = IdentityData()
  with pytest.raises(UserError, match=r"codes \(B=50, d\)"):
    run_metric("mig", lambda x: x[:, 0], data, 0, num_train=50)
  with pytest.raises(UserError, match="NaN or infinite"):
    run_metric("mig", lambda x: x * np.nan, data, 0, num_train=50)
  with pytest.raises(UserError, match="at least 2 code dimensions"):
    dis.mig(np.arange(6.0)[:, None], np.array([[0], [1]] * 3))
  good = np.random.default_rng(0).normal(size=(20, 2)), np.arange(20)[:, None] % 2
  with pytest.raises(UserError, match="dci test codes must be finite"):
    dis.dci(*good, np.full((3, 2), np.nan), np.zeros((3, 1), np.int64))
  with pytest.raises(UserError, match="sap test factors must be integer"):
    dis.sap(*good, np.zeros((3, 2)), np.zeros((3, 1)))
  with pytest.raises(UserError, match="unknown metrics"):
    dis.evaluate(true_encoder, data, ("mig", "irs"))
  with pytest.raises(UserError, match="dci trees must be one of numpy, sklearn"):
    dis.dci(*good, *good, trees="xgboost")


# ---------------------------------------------------------------------------------------------
# DCI with scikit-learn's own trees.

# As tests/test_boosting.py: where numpy's exp is not the C library's, a split tied to rounding
# can flip and move the importances by about 1e-4 (1e-3 allowed there); D and C follow them.
DCI_TREES_ATOL = 1e-3


def test_dci_with_sklearn_trees_gives_the_same_scores():
  ours = dis.evaluate(mixed_encoder, IdentityData(), ("dci",), seed=2, num_train=200, num_eval=200)
  theirs = dis.evaluate(
    mixed_encoder,
    IdentityData(),
    ("dci",),
    seed=2,
    num_train=200,
    num_eval=200,
    dci_trees="sklearn",
  )
  assert theirs == pytest.approx(ours, abs=DCI_TREES_ATOL)
