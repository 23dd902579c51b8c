"""FID, IS, KID, precision/recall/density/coverage against independent references."""

import math

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from gen_models.errors import UserError
from gen_models.metrics import fid as fid_lib
from gen_models.metrics import inception_score as is_lib
from gen_models.metrics import kid as kid_lib
from gen_models.metrics import knn, prdc

# ----------------------------------------------------------------------------------------- FID


def scipy_reference_fid(x: np.ndarray, y: np.ndarray) -> float:
  """The formula of the reference implementations: ``sqrtm`` of the product, real part."""
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def _features(seed: int, n: int, d: int, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  mix = rng.standard_normal((d, d)) / np.sqrt(d)
  return (rng.standard_normal((n, d)) @ mix * scale + offset).astype(np.float32)


@pytest.mark.parametrize("d", [8, 64, 256])
def test_fid_equals_the_scipy_sqrtm_reference(d):
  x = _features(0, 4 * d, d)
  y = _features(1, 3 * d, d, scale=1.3, offset=0.2)
  ours = fid_lib.fid(x, y)
  ref = scipy_reference_fid(x.astype(np.float64), y.astype(np.float64))
  assert ours == pytest.approx(ref, rel=1e-6)
  assert fid_lib.fid(y, x) == pytest.approx(ours, rel=1e-9)


def test_fid_closed_form_for_commuting_covariances_including_singular_ones():
  # Diagonal covariances commute: FID = |μ1 − μ2|² + Σ (√a − √b)², also when some a, b are 0,
  # where sqrtm(Σ1Σ2) is singular (the reference needs its ε patch there).
  a = np.array([4.0, 1.0, 0.0, 2.5, 0.0])
  b = np.array([1.0, 0.0, 0.0, 2.5, 9.0])
  m1, m2 = np.array([0.0, 1, 2, 3, 4]), np.array([1.0, 1, 0, 3, 4])
  s1 = fid_lib.FeatureStats(10, m1, np.diag(a))
  s2 = fid_lib.FeatureStats(10, m2, np.diag(b))
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert fid_lib.frechet_distance(s1, s2) == pytest.approx(expected, rel=1e-12)
  # Rotating both by one orthogonal matrix changes nothing. (Zero eigenvalues now carry round-off
  # ε ~ 1e-16, and √ε ~ 1e-8 each: any method's accuracy on singular covariances.)
  q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 5)))
  r1 = fid_lib.FeatureStats(10, q @ m1, q @ np.diag(a) @ q.T)
  r2 = fid_lib.FeatureStats(10, q @ m2, q @ np.diag(b) @ q.T)
  assert fid_lib.frechet_distance(r1, r2) == pytest.approx(expected, rel=1e-7)


def test_fid_of_a_set_with_itself_is_zero_even_when_rank_deficient():
  x = _features(3, 20, 64)  # N < D: singular covariance, 44 zero eigenvalues
  scale = np.trace(fid_lib.feature_stats(x).cov)
  assert abs(fid_lib.fid(x, x)) < 1e-7 * scale


@settings(max_examples=25, deadline=None)
@given(
  cuts=st.lists(st.integers(1, 199), max_size=6, unique=True),
  seed=st.integers(0, 1000),
)
def test_streaming_statistics_equal_one_pass_numpy(cuts, seed):
  x = _features(seed, 200, 7, scale=3.0, offset=1e3)  # a large offset tests the stability
  acc = fid_lib.StatsAccumulator()
  bounds = [0, *sorted(cuts), 200]
  for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
    acc.update(x[lo:hi])
  stats = acc.result()
  x64 = x.astype(np.float64)
  assert stats.n == 200
  np.testing.assert_allclose(stats.mean, x64.mean(0), rtol=1e-13)
  np.testing.assert_allclose(stats.cov, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-9)


def test_stats_npz_round_trip_and_bad_files(tmp_path):
  stats = fid_lib.feature_stats(_features(0, 50, 6))
  path = str(tmp_path / "stats.npz")
  fid_lib.save_stats(path, stats)
  back = fid_lib.load_stats(path)
  assert back.n == 50
  np.testing.assert_array_equal(back.mean, stats.mean)
  np.testing.assert_array_equal(back.cov, stats.cov)
  other = str(tmp_path / "features.npz")
  np.savez(other, features=np.zeros((3, 2)))
  with pytest.raises(UserError, match="cannot read feature statistics"):
    fid_lib.load_stats(other)


# ------------------------------------------------------------------------------------------ IS


def naive_inception_score(p: np.ndarray, splits: int) -> tuple[float, float]:
  n = len(p)
  scores = []
  for i in range(splits):
    part = p[i * n // splits : (i + 1) * n // splits]
    py = part.mean(0)
    kl = [
      sum(pi * math.log(pi / q) for pi, q in zip(row, py, strict=True) if pi > 0) for row in part
    ]
    scores.append(math.exp(sum(kl) / len(kl)))
  return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_of_uniform_predictions_is_one():
  mean, std = is_lib.inception_score(probs=np.full((100, 7), 1 / 7))
  assert mean == pytest.approx(1.0, abs=1e-12)
  assert std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("classes", [2, 10, 1008])
def test_inception_score_of_confident_even_predictions_is_the_class_count(classes):
  probs = np.eye(classes)[np.arange(10 * classes) % classes]  # every split holds every class
  mean, std = is_lib.inception_score(probs=probs)
  assert mean == pytest.approx(classes, rel=1e-12)
  assert std == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(
  n=st.integers(10, 60), c=st.integers(2, 6), splits=st.integers(1, 10), seed=st.integers(0, 99)
)
def test_inception_score_equals_the_naive_formula(n, c, splits, seed):
  logits = np.random.default_rng(seed).standard_normal((n, c)) * 3
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  expected = naive_inception_score(p, splits)
  got = is_lib.inception_score(logits=logits, splits=splits)
  np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(is_lib.inception_score(probs=p, splits=splits), got, rtol=1e-10)


# ----------------------------------------------------------------------------------------- KID


def brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  m, d = x.shape
  k = lambda a, b: (float(a @ b) / d + 1) ** 3
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return xx + yy - 2 * xy


def test_kid_on_whole_sets_equals_the_brute_force_u_statistic():
  x, y = _features(0, 25, 5), _features(1, 25, 5, offset=0.3)
  mean, std = kid_lib.kid(x, y, num_subsets=3, subset_size=1000)  # a permutation of all rows
  assert mean == pytest.approx(brute_force_mmd2(x.astype(float), y.astype(float)), rel=1e-10)
  assert std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("same", [True, False])
def test_kid_is_unbiased_against_the_gaussian_closed_form(same):
  # Zero-mean Gaussians: population MMD² = 3 ||Σ1 − Σ2||²_F / d² (odd moments vanish).
  d, m, reps = 4, 100, 400
  c1 = np.eye(d)
  c2 = c1 if same else np.diag([1.6, 1.0, 1.0, 0.5])
  truth = 3 * np.sum((c1 - c2) ** 2) / d**2
  rng = np.random.default_rng(0)
  unbiased, biased = [], []
  for _ in range(reps):
    x = rng.multivariate_normal(np.zeros(d), c1, m)
    y = rng.multivariate_normal(np.zeros(d), c2, m)
    unbiased.append(kid_lib.mmd2_unbiased(x, y))
    kxx, kyy = kid_lib.polynomial_kernel(x, x), kid_lib.polynomial_kernel(y, y)
    biased.append(kxx.mean() + kyy.mean() - 2 * kid_lib.polynomial_kernel(x, y).mean())
  stderr = np.std(unbiased) / np.sqrt(reps)
  assert abs(np.mean(unbiased) - truth) < 4 * stderr, (np.mean(unbiased), truth, stderr)
  # The test has the power to see a bias of O(1/m): the V-statistic fails it.
  assert abs(np.mean(biased) - truth) > 10 * np.std(biased) / np.sqrt(reps)


def test_kid_subsets_are_seeded():
  x, y = _features(0, 300, 6), _features(1, 300, 6, scale=1.2)
  a = kid_lib.kid(x, y, num_subsets=5, subset_size=50, seed=1)
  assert a == kid_lib.kid(x, y, num_subsets=5, subset_size=50, seed=1)
  assert a != kid_lib.kid(x, y, num_subsets=5, subset_size=50, seed=2)


# ---------------------------------------------------------------------------------------- PRDC


def brute_force_prdc(real, fake, k_pr, k_dc, ties):
  """The definitions on float64 N × M distance matrices (the ``prdc`` reference code's shape)."""
  inside = np.less_equal if ties == "<=" else np.less
  real, fake = real.astype(np.float64), fake.astype(np.float64)
  d_rr = np.sort(cdist(real, real), axis=1)  # column 0 is the point itself
  d_ff = np.sort(cdist(fake, fake), axis=1)
  d_rf = cdist(real, fake)
  return {
    "precision": inside(d_rf, d_rr[:, [k_pr]]).any(0).mean(),
    "recall": inside(d_rf, d_ff[:, k_pr][None, :]).any(1).mean(),
    "density": inside(d_rf, d_rr[:, [k_dc]]).sum(0).mean() / k_dc,
    "coverage": inside(d_rf.min(1), d_rr[:, k_dc]).mean(),
  }


@pytest.mark.parametrize("block", [32, 100, 512])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prdc_equals_the_brute_force_definitions(block, seed):
  rng = np.random.default_rng(seed)
  real = rng.standard_normal((300, 16)).astype(np.float32)
  fake = (rng.standard_normal((230, 16)) * 1.2 + 0.3).astype(np.float32)
  got = prdc.prdc(real, fake, block=block)
  # Counts are exact; 1e-12 only absorbs the order of the final float division.
  assert got == pytest.approx(brute_force_prdc(real, fake, 3, 5, "<="), rel=1e-12, abs=0)


@pytest.mark.parametrize("ties", ["<", "<="])
@pytest.mark.parametrize("block", [16, 64])
def test_prdc_tie_rules_on_integer_features_with_many_exact_ties(ties, block):
  rng = np.random.default_rng(4)
  real = rng.integers(0, 3, (150, 4)).astype(np.float32)
  fake = rng.integers(0, 4, (120, 4)).astype(np.float32)
  got = prdc.prdc(real, fake, 2, 4, ties=ties, block=block, center=False)
  assert got == pytest.approx(brute_force_prdc(real, fake, 2, 4, ties), rel=1e-12, abs=0)


def test_the_two_tie_rules_differ_on_duplicates():
  x = np.repeat(np.random.default_rng(0).standard_normal((40, 3)), 6, axis=0)  # radii are 0
  closed = prdc.prdc(x, x, ties="<=")
  assert closed["precision"] == closed["recall"] == closed["coverage"] == 1.0
  opened = prdc.prdc(x, x, ties="<")
  assert opened["precision"] == opened["recall"] == opened["coverage"] == 0.0


def test_identical_sets_score_one_with_closed_balls():
  x = _features(5, 400, 10)
  got = prdc.prdc(x, x.copy())
  assert got["precision"] == got["recall"] == got["coverage"] == 1.0


def test_swapping_the_arguments_swaps_precision_and_recall():
  real, fake = _features(0, 200, 8), _features(1, 260, 8, scale=1.5)
  p, r = prdc.precision_recall(real, fake)
  assert (r, p) == prdc.precision_recall(fake, real)
  assert p != r  # a scaled-up fake set: fewer fakes are realistic than reals are covered


def test_identical_gaussians_give_known_coverage_and_density():
  # E[coverage] = 1 − C(N−1, k)/C(N+M−1, k) (≈ 1 − 2⁻ᵏ), E[density] = 1 (Naeem et al. 2020).
  n, k = 2000, 5
  expected = 1 - math.comb(n - 1, k) / math.comb(2 * n - 1, k)
  cov, dens = [], []
  for seed in range(4):
    rng = np.random.default_rng(seed)
    real, fake = rng.standard_normal((2, n, 8)).astype(np.float32)
    d, c = prdc.density_coverage(real, fake, nearest_k=k)
    dens.append(d)
    cov.append(c)
  assert np.mean(cov) == pytest.approx(expected, abs=0.006)
  assert np.mean(dens) == pytest.approx(1.0, abs=0.03)


def test_kth_neighbour_radii_with_duplicates_and_all_k():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((90, 5)).astype(np.float32)
  x[10] = x[11]  # a duplicate is a neighbour at distance 0 (up to float32 round-off)
  radii = knn.kth_neighbour_sq_distances(x, [1, 2, 7], block=32)
  d = np.sort(cdist(x.astype(np.float64), x.astype(np.float64)) ** 2, axis=1)
  for k, r in radii.items():
    np.testing.assert_allclose(r, d[:, k], rtol=2e-5, atol=1e-5)
  assert radii[1][10] < 1e-6 * np.sum(x[10] ** 2) and radii[1][11] < 1e-6 * np.sum(x[10] ** 2)


def test_prdc_rejects_bad_shapes_and_k():
  with pytest.raises(ValueError, match="nearest_k"):
    prdc.prdc(np.zeros((5, 2)), np.zeros((5, 2)), 5, 5)
  with pytest.raises(ValueError, match="need"):
    prdc.prdc(np.zeros((5, 2)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match="ties"):
    prdc.prdc(np.zeros((9, 2)), np.zeros((9, 2)), ties="<<")
