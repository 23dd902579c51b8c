r"""Benchmark of the evaluation metrics against reference implementations (not a test).

    python -m experiments.bench.metrics [--metrics=prdc,fid] [--sizes=10000,50000] [--k=5] \
        [--fid_n=10000] [--accelerator] [--output=bench_metrics.json]

Side by side in one run, on the same synthetic features:

* ``prdc``: :func:`gen_models.metrics.prdc.prdc` against the ``prdc`` package
  (``compute_prdc``, Naeem et al.'s reference code, ``pip install prdc``) on N real × N fake
  features, for each of ``--sizes``. Ours is called with ``ties="<"`` (the package's open balls)
  and one k for all four metrics, so both compute the same numbers. The package holds three
  N × N float32 distance matrices, so it is run only up to ``--reference_max_n`` (at 50,000 they
  alone would take 30 GB). Our time is of the first call in a fresh process, JIT compilation
  included; ``warm_s`` is a second call in the same process (up to ``--warm_max_n``).
* ``frechet_distance``: :func:`gen_models.metrics.fid.frechet_distance` against the formula of
  the common reference implementations, ``tr sqrtm(Σ₁Σ₂)`` by ``scipy.linalg.sqrtm`` (real
  part), given the same means and covariances (computed once, from ``--fid_n`` features of each
  set, and loaded by both).
* ``fid_from_features``: FID end to end from the features: :func:`gen_models.metrics.fid.fid`
  against ``np.mean``/``np.cov(rowvar=False)`` in float64 and the same ``sqrtm`` formula.

Every measurement runs in a fresh subprocess of this module (``--_worker=NAME``), which makes its
inputs itself and reports ``peak_rss_mb``: its ``ru_maxrss`` at the end, the whole process's peak
resident memory in MB (10⁶ bytes) — interpreter, libraries (ours imports JAX and Flax) and the
input arrays (``inputs_mb``) included. No subtraction: what a user would see. Under
``--accelerator`` it is host memory only.

The features imitate Inception pool3 activations of dimension ``--dim``: non-negative and
correlated, ``max(z · W + 0.3 + ε, 0)`` with a standard-normal latent z of dimension 64, a mixing
W with a decaying spectrum (per-coordinate std 0.6) and full-rank noise ε of std 0.1, float32,
generated in chunks of rows each from its own seed (no float64 N × D array; the first rows do not
depend on N). The fakes have W perturbed by 20 % and z shrunk by 10 % (less diverse), so that
none of the metrics is at its trivial value. A SHA-256 of the arrays shows both methods saw the
same data.

``seconds`` is wall time; ``cpu_s`` the process's CPU time over the same span (all threads), less
sensitive to other processes on the cores; ``loadavg_1m`` the machine's 1-minute load average
around the row (the higher of before and after), to show such sharing. ``ratio`` is the
reference's seconds over the row's seconds (how many times faster than the reference; 1 on the
reference's row; ``cpu_ratio`` in the JSON is the same for CPU time). Targets (from the issue;
a 2-core CPU) are checked and printed after the table. Prints a table and writes the rows, with
the JAX version, backend, device kind, CPU count and date, as JSON. JAX runs on the CPU unless
``--accelerator``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import tempfile
import time
from importlib import metadata

import numpy as np
from absl import app, flags

from experiments.bench import common

# No gen_models (nor experiments.cli) import at module level: it imports JAX and Flax, which the
# reference workers must not load (their memory would count). See _error and main.

METRICS = ("prdc", "fid")
LATENT = 64  # Dimension of the latent z behind the synthetic features.
GEN_CHUNK = 4096  # Rows generated at a time, each chunk from its own seed.
# Targets of the issue, by N. The prdc package took 23 s and 1.6 GB at N = 10,000 on a 2-core CPU.
PRDC_TARGETS = {
  10_000: {"min_ratio": 4.0, "max_rss_mb": 1000.0},
  50_000: {"max_seconds": 300.0, "max_rss_mb": 2000.0},
}
FRECHET_MIN_RATIO = 5.0
FID_MAX_REL_DIFF = 1e-6

_METRICS = flags.DEFINE_list("metrics", list(METRICS), f"Any of {', '.join(METRICS)}.")
_SIZES = flags.DEFINE_list("sizes", ["10000", "50000"], "N (real and fake each) for prdc.")
_REFERENCE_MAX_N = flags.DEFINE_integer(
  "reference_max_n", 10_000, "Largest N at which the prdc package is run (it needs ~12·N² bytes)."
)
_WARM_MAX_N = flags.DEFINE_integer(
  "warm_max_n", 10_000, "Largest N at which ours is called a second time (warm_s)."
)
_K = flags.DEFINE_integer("k", 5, "nearest_k of all four PRDC metrics.")
_FID_N = flags.DEFINE_integer("fid_n", 10_000, "Features of each set for FID.")
_DIM = flags.DEFINE_integer("dim", 2048, "Feature dimension.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic features.")
_ACCELERATOR = flags.DEFINE_bool(
  "accelerator", False, "Let JAX use its default backend (else JAX_PLATFORMS=cpu)."
)
_OUTPUT = flags.DEFINE_string("output", "bench_metrics.json", "Where to write the JSON results.")
# Internal: one measurement in this process (the parent runs each one so); prints or writes JSON.
_WORKER = flags.DEFINE_string("_worker", None, "Internal: run one measurement (see WORKERS).")
_N = flags.DEFINE_integer("_n", None, "Internal: N of the worker's feature sets.")
_STATS = flags.DEFINE_string("_stats", None, "Internal: folder of real.npz and fake.npz stats.")
_RESULT = flags.DEFINE_string("_result", None, "Internal: the worker's JSON (default: stdout).")


def _error(message: str) -> Exception:
  """A :class:`gen_models.errors.UserError`, imported only when needed (see the imports)."""
  from gen_models.errors import UserError

  return UserError(message)


# ---------------------------------------------------------------------------------------------
# Synthetic features (numpy only: the reference workers must not import JAX).


def _mixing(seed: int, dim: int, fake: bool) -> np.ndarray:
  """``W`` (LATENT, dim) float32: decaying factor scales, per-coordinate std 0.6 of ``z · W``."""
  rng = np.random.default_rng([seed, 0])
  scale = np.exp(-np.arange(LATENT) / 24.0)
  scale *= 0.6 / np.sqrt(np.sum(scale**2))
  mix = rng.standard_normal((LATENT, dim)) * scale[:, None]
  if fake:  # Drawn after W, so W is the same for both sets.
    mix += rng.standard_normal((LATENT, dim)) * (0.2 * 0.6 / np.sqrt(LATENT))
  return mix.astype(np.float32)


def features(n: int, fake: bool, dim: int, seed: int) -> np.ndarray:
  """``n`` synthetic Inception-like features (n, dim) float32, deterministic in the arguments."""
  mix = _mixing(seed, dim, fake)
  out = np.empty((n, dim), np.float32)
  for c, start in enumerate(range(0, n, GEN_CHUNK)):
    rows = min(GEN_CHUNK, n - start)
    rng = np.random.default_rng([seed, 1 + int(fake), c])
    z = rng.standard_normal((rows, LATENT), dtype=np.float32)
    if fake:
      z *= 0.9
    x = z @ mix
    x += 0.3
    x += 0.1 * rng.standard_normal((rows, dim), dtype=np.float32)
    np.maximum(x, 0.0, out=out[start : start + rows])
  return out


def _feature_pair(n: int) -> tuple[np.ndarray, np.ndarray, str]:
  real = features(n, False, _DIM.value, _SEED.value)
  fake = features(n, True, _DIM.value, _SEED.value)
  digest = hashlib.sha256(real.data)
  digest.update(fake.data)
  return real, fake, digest.hexdigest()[:16]


def reference_frechet(mu1, sigma1, mu2, sigma2) -> float:
  """The common reference formula: ``‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr Re sqrtm(Σ₁Σ₂)``."""
  import scipy.linalg

  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.all(np.isfinite(covmean)):
    raise _error("scipy.linalg.sqrtm(sigma1 @ sigma2) is not finite")
  diff = mu1 - mu2
  trace = np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean.real)
  return float(diff @ diff + trace)


# ---------------------------------------------------------------------------------------------
# Workers: each is one measurement in a fresh process; returns seconds and values.


class _Timer:
  """Wall seconds and CPU seconds (all threads of this process) of a ``with`` block.

  CPU seconds are less sensitive than wall seconds to other processes sharing the cores.
  """

  def __enter__(self) -> _Timer:
    self._wall, self._cpu = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc) -> None:
    self.seconds = time.perf_counter() - self._wall
    self.cpu_s = time.process_time() - self._cpu

  def result(self, values: dict, **extra) -> dict:
    return {"seconds": self.seconds, "cpu_s": self.cpu_s, "values": values, **extra}


def _prdc_ours(n: int) -> dict:
  from gen_models.metrics import prdc

  real, fake, sha = _feature_pair(n)
  k = _K.value
  with _Timer() as first:  # JIT compilation included.
    values = prdc.prdc(real, fake, k, k, ties="<")
  warm_s = None
  if n <= _WARM_MAX_N.value:
    with _Timer() as warm:
      again = prdc.prdc(real, fake, k, k, ties="<")
    warm_s = warm.seconds
    if again != values:
      raise _error(f"prdc: a second call gave {again}, the first {values}")
  return first.result(values, warm_s=warm_s, data_sha256=sha)


def _prdc_package(n: int) -> dict:
  from prdc import compute_prdc

  real, fake, sha = _feature_pair(n)
  with _Timer() as t, contextlib.redirect_stdout(io.StringIO()):  # It prints the set sizes.
    values = compute_prdc(real_features=real, fake_features=fake, nearest_k=_K.value)
  return t.result({name: float(v) for name, v in values.items()}, data_sha256=sha)


def _fid_stats(n: int) -> dict:
  """Not a measurement: the statistics both Fréchet-distance workers load."""
  from gen_models.metrics import fid

  real, fake, sha = _feature_pair(n)
  for name, x in (("real", real), ("fake", fake)):
    fid.save_stats(os.path.join(_STATS.value, f"{name}.npz"), fid.feature_stats(x))
  return {"data_sha256": sha}


def _frechet_ours(n: int) -> dict:
  from gen_models.metrics import fid

  s1, s2 = (fid.load_stats(os.path.join(_STATS.value, f"{s}.npz")) for s in ("real", "fake"))
  with _Timer() as t:
    value = fid.frechet_distance(s1, s2)
  return t.result({"fid": value})


def _frechet_reference(n: int) -> dict:
  stats = []
  for name in ("real", "fake"):
    with np.load(os.path.join(_STATS.value, f"{name}.npz")) as f:
      stats += [f["mu"], f["sigma"]]
  with _Timer() as t:
    value = reference_frechet(*stats)
  return t.result({"fid": value})


def _fid_ours(n: int) -> dict:
  from gen_models.metrics import fid

  real, fake, sha = _feature_pair(n)
  with _Timer() as t:
    value = fid.fid(real, fake)
  return t.result({"fid": value}, data_sha256=sha)


def _fid_reference(n: int) -> dict:
  real, fake, sha = _feature_pair(n)
  with _Timer() as t:
    stats = []
    for x in (real, fake):
      x = x.astype(np.float64)
      stats += [x.mean(axis=0), np.cov(x, rowvar=False)]
    value = reference_frechet(*stats)
  return t.result({"fid": value}, data_sha256=sha)


WORKERS = {
  "prdc_ours": _prdc_ours,
  "prdc_package": _prdc_package,
  "fid_stats": _fid_stats,
  "frechet_ours": _frechet_ours,
  "frechet_reference": _frechet_reference,
  "fid_ours": _fid_ours,
  "fid_reference": _fid_reference,
}


def run_worker() -> None:
  if _WORKER.value not in WORKERS or _N.value is None:
    raise _error(f"--_worker must be one of {', '.join(WORKERS)}, with --_n")
  result = WORKERS[_WORKER.value](_N.value)
  # ru_maxrss is in KiB on Linux.
  result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
  if _RESULT.value:
    common.write_worker_result(_RESULT.value, result)
  else:
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The parent: runs the workers one after another and compares.


def _spawn(name: str, n: int, tmp: str) -> dict:
  """Runs worker ``name`` in a fresh ``python -m experiments.bench.metrics``; returns its JSON."""
  args = [f"--_worker={name}", f"--_n={n}", f"--_stats={tmp}", f"--k={_K.value}"]
  args += [f"--dim={_DIM.value}", f"--seed={_SEED.value}", f"--warm_max_n={_WARM_MAX_N.value}"]
  return common.spawn("experiments.bench.metrics", args, f"{name} n={n}", tmp)


def _row(metric: str, n: int, method: str, result: dict, inputs_mb: float) -> dict:
  return {
    "metric": metric,
    "n": n,
    "method": method,
    "seconds": result["seconds"],
    "cpu_s": result["cpu_s"],
    "warm_s": result.get("warm_s"),
    "peak_rss_mb": result["peak_rss_mb"],
    "inputs_mb": inputs_mb,
    "ratio": None,
    "cpu_ratio": None,
    "values": result["values"],
    "agreement": None,
    "data_sha256": result.get("data_sha256"),
    "loadavg_1m": result["loadavg_1m"],
  }


def _compare(ours: dict, ref: dict, tolerance: float, relative: bool, units: dict) -> dict:
  """Differences of ``ours``'s values from ``ref``'s; ``units`` gives net flips per value."""
  diffs = {name: abs(v - ref["values"][name]) for name, v in ours["values"].items()}
  if relative:
    diffs = {name: d / abs(ref["values"][name]) for name, d in diffs.items()}
  worst = max(diffs.values())
  out = {
    "kind": "max relative difference" if relative else "max absolute difference",
    "diffs": diffs,
    "max": worst,
    "tolerance": tolerance,
    "within": worst <= tolerance,
  }
  if units:  # A difference of m/N in a fraction of N points: at least m points flipped.
    out["net_flips"] = {name: round(diffs[name] * units[name]) for name in diffs}
  if ours.get("data_sha256") != ref.get("data_sha256"):
    raise _error(f"{ours['metric']}: the two methods saw different data")
  return out


def _prdc_rows(n: int, tmp: str, targets: list) -> list[dict]:
  inputs_mb = 2 * n * _DIM.value * 4 / 1e6
  rows = []
  ref = None
  if n <= _REFERENCE_MAX_N.value:
    version = _version("prdc")
    if version is None:
      raise _error("the prdc package is not installed: pip install -e '.[bench]'")
    ref = _row("prdc", n, f"prdc {version}", _spawn("prdc_package", n, tmp), inputs_mb)
    ref["ratio"] = 1.0
    rows.append(ref)
  ours = _row("prdc", n, "ours", _spawn("prdc_ours", n, tmp), inputs_mb)
  rows.append(ours)
  goal = PRDC_TARGETS.get(n, {})
  if ref is not None:
    ours["ratio"] = ref["seconds"] / ours["seconds"]
    ours["cpu_ratio"] = ref["cpu_s"] / ours["cpu_s"]
    k = _K.value
    units = {"precision": n, "recall": n, "coverage": n, "density": k * n}
    ours["agreement"] = _compare(ours, ref, 2.0 / n, relative=False, units=units)
    targets.append(_target(f"prdc n={n}: |ours − prdc| ≤ 2/N", ours["agreement"]["max"], 2 / n))
    if "min_ratio" in goal:
      targets.append(
        _target(f"prdc n={n}: speed ratio (JIT included) ≥", ours["ratio"], goal["min_ratio"], True)
      )
  if "max_seconds" in goal:
    targets.append(_target(f"prdc n={n}: seconds <", ours["seconds"], goal["max_seconds"]))
  if "max_rss_mb" in goal:
    targets.append(_target(f"prdc n={n}: peak RSS MB ≤", ours["peak_rss_mb"], goal["max_rss_mb"]))
  return rows


def _fid_rows(n: int, tmp: str, targets: list) -> list[dict]:
  d = _DIM.value
  rows = []
  _spawn("fid_stats", n, tmp)
  stats_mb, features_mb = 2 * (d * d + d) * 8 / 1e6, 2 * n * d * 4 / 1e6
  for metric, inputs_mb in (("frechet_distance", stats_mb), ("fid_from_features", features_mb)):
    prefix = "frechet" if metric == "frechet_distance" else "fid"
    ref = _row(metric, n, "scipy sqrtm", _spawn(f"{prefix}_reference", n, tmp), inputs_mb)
    ours = _row(metric, n, "ours", _spawn(f"{prefix}_ours", n, tmp), inputs_mb)
    ref["ratio"] = 1.0
    ours["ratio"] = ref["seconds"] / ours["seconds"]
    ours["cpu_ratio"] = ref["cpu_s"] / ours["cpu_s"]
    ours["agreement"] = _compare(ours, ref, FID_MAX_REL_DIFF, relative=True, units={})
    rows += [ref, ours]
    rel = ours["agreement"]["max"]
    targets.append(_target(f"{metric}: |ours − ref| / ref ≤", rel, FID_MAX_REL_DIFF))
  frechet = rows[1]["ratio"]
  targets.append(_target("frechet_distance: speed ratio ≥", frechet, FRECHET_MIN_RATIO, True))
  return rows


def _version(package: str) -> str | None:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def _target(what: str, measured: float, bound: float, at_least: bool = False) -> dict:
  ok = measured >= bound if at_least else measured <= bound
  return {"target": what, "bound": bound, "measured": measured, "met": bool(ok)}


def _num(x: float) -> str:
  return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def _values(v: dict) -> str:
  if "fid" in v:
    return f"{v['fid']:.6f}"
  return " ".join(f"{name[0].upper()}={v[name]:.4f}" for name in sorted(v))


def _agreement(a: dict) -> str:
  tol = "2/N" if a["kind"].startswith("max absolute") else f"{a['tolerance']:g}"
  sign = "rel" if a["kind"].startswith("max relative") else "abs"
  return f"{sign} {a['max']:.2g} ≤ {tol}: {'yes' if a['within'] else 'NO'}"


COLUMNS = (
  ("metric", str),
  ("n", str),
  ("method", str),
  ("seconds", _num),
  ("cpu_s", _num),
  ("warm_s", _num),
  ("peak_rss_mb", "{:.0f}".format),
  ("inputs_mb", "{:.0f}".format),
  ("ratio", "{:.2f}".format),
  ("values", _values),
  ("agreement", _agreement),
  ("loadavg_1m", "{:.1f}".format),
)


def format_targets(targets: list[dict]) -> str:
  lines = []
  for t in targets:
    measured = f"{t['measured']:.3g}"
    lines.append(f"{'met' if t['met'] else 'MISSED':>6}  {t['target']} {t['bound']:g}: {measured}")
  return "\n".join(lines)


def run() -> dict:
  common.check_names(_METRICS.value, METRICS, "metrics")
  try:
    sizes = [int(s) for s in _SIZES.value]
  except ValueError as e:
    raise _error(f"--sizes must be integers, got {_SIZES.value}") from e
  if any(n <= _K.value for n in sizes) or _FID_N.value < 2 or _K.value < 1:
    raise _error("need --k >= 1, every --sizes > --k and --fid_n >= 2")

  rows, targets = [], []
  with tempfile.TemporaryDirectory() as tmp:
    if "prdc" in _METRICS.value:
      for n in sizes:
        rows += _prdc_rows(n, tmp, targets)
    if "fid" in _METRICS.value:
      rows += _fid_rows(_FID_N.value, tmp, targets)
  return {
    **common.header("experiments.bench.metrics"),  # Imports JAX, after JAX_PLATFORMS is set.
    "versions": {p: _version(p) for p in ("numpy", "scipy", "scikit-learn", "prdc")},
    "k": _K.value,
    "dim": _DIM.value,
    "seed": _SEED.value,
    "ratio_definition": "reference seconds / this row's seconds (same data, separate processes)",
    "peak_rss_definition": (
      "ru_maxrss of the row's own fresh process at its end, MB = 1e6 bytes, inputs included"
    ),
    "ours_prdc_call": "prdc(real, fake, k, k, ties='<'); seconds: first call, JIT included",
    "rows": rows,
    "targets": targets,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _ACCELERATOR.value:
    os.environ["JAX_PLATFORMS"] = "cpu"  # Before JAX is imported; inherited by the workers.
  if _WORKER.value:
    run_worker()  # A failure is a traceback; the parent reports the exit code.
    return
  from experiments import cli

  cli.quiet_library_logs()
  results = cli.run_user_errors_as_exit(run)
  print(
    f"jax {results['jax_version']}, {results['num_devices']} × {results['device_kind']}, "
    f"{results['cpu_count']} CPUs, {results['date']}"
  )
  print(common.format_table(results["rows"], COLUMNS))
  print(format_targets(results["targets"]))
  cli.run_user_errors_as_exit(lambda: common.write_results(_OUTPUT.value, results))


if __name__ == "__main__":
  app.run(main)
