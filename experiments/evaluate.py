r"""Sample-quality metrics of generated samples against real ones, written to JSON.

    python -m experiments.evaluate --real=REAL --fake=FAKE --metrics=fid,is,kid,prdc \
        [--nearest_k=K] --output=OUT.json

REAL and FAKE are each one of
- a ``.npy`` array: features ``(N, D)`` (used as they are) or uint8 images ``(N, H, W, C)`` (run
  through the FID Inception-v3; weights from ``--inception_weights`` or the cache path);
- a ``.npz`` with ``features`` (and optionally ``logits``, for IS), or ``images``, or FID
  statistics ``mu``/``sigma`` (FID only; ``--save_real_stats`` writes such a file);
- a workdir: ``--num_samples`` samples are drawn from its latest checkpoint (as
  ``experiments.sample`` does, with ``--seed``).

A population's workdir as FAKE is evaluated member by member (every member, or ``--member``):
the JSON then holds ``members``, a row per member with its ``member`` index, ``name``, ``seed``,
``hparams`` and the metrics.

When FAKE is a workdir, the JSON also holds the checkpoint's ``step`` (each row's, for a
population) and a copy goes to ``FAKE/results/evaluate_step<step>.json`` for
``experiments.report``.

The JSON holds ``fid``, ``is_mean``, ``is_std``, ``kid_mean``, ``kid_std``, ``precision``,
``recall``, ``density``, ``coverage`` (those requested), the sample counts and the k's. Argument
order is ``(real, fake)``: precision/density measure fidelity, recall/coverage diversity.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from experiments import cli
from gen_models import logs
from gen_models import workdir as workdir_lib
from gen_models.errors import UserError
from gen_models.metrics import evaluate, extractors
from gen_models.metrics import fid as fid_lib
from gen_models.sampling import draw_samples

_REAL = flags.DEFINE_string("real", None, "Real samples: .npy, .npz or a workdir.")
_FAKE = flags.DEFINE_string("fake", None, "Generated samples: .npy, .npz or a workdir.")
_METRICS = flags.DEFINE_string(
  "metrics", "fid,kid,prdc", f"Comma-separated, from: {', '.join(evaluate.METRICS)}."
)
_NEAREST_K = flags.DEFINE_integer(
  "nearest_k", None, "k for precision/recall/density/coverage (default: 3 for P/R, 5 for D/C)."
)
_TIES = flags.DEFINE_enum(
  "ties", "<=", ["<=", "<"], "Is a point at exactly the k-NN radius inside the ball (<=) or not."
)
_OUTPUT = flags.DEFINE_string("output", None, "Output JSON file.")
_EXTRACTOR = flags.DEFINE_enum(
  "extractor", "auto", list(extractors.NAMES), "auto: Inception for images, identity otherwise."
)
_WEIGHTS = flags.DEFINE_string(
  "inception_weights", None, "Inception .npz (default: $GEN_MODELS_INCEPTION_WEIGHTS or cache)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "Images per Inception / sampling call.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 10_000, "Samples drawn from a workdir.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the KID subsets and of workdir sampling.")
_KID_SUBSETS = flags.DEFINE_integer("kid_subsets", 100, "KID: number of random subsets.")
_KID_SUBSET_SIZE = flags.DEFINE_integer("kid_subset_size", 1000, "KID: subset size.")
_MEMBER = flags.DEFINE_integer("member", None, "A population workdir's member (default: all).")
_SAVE_REAL_STATS = flags.DEFINE_string(
  "save_real_stats", None, "Also write the real features' FID statistics to this .npz."
)
flags.mark_flags_as_required(["real", "fake", "output"])


def _arrays_of(path: str) -> dict[str, np.ndarray]:
  try:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
      return {"array": loaded}
    with loaded as f:  # An .npz (whatever the file is called).
      return {k: f[k] for k in f.files}
  except Exception as e:  # Truncated zips, bad CRCs, object arrays: all one line.
    raise UserError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def load_side(
  path: str, which: str, progress, member: int | None = None
) -> tuple[np.ndarray | None, dict, str]:
  """``(samples or None, extra arrays, kind)`` of one input; kind: images, features or stats.
  ``member``: a population workdir's member to sample; a workdir's extra is its checkpoint's
  ``{"step": step}``."""
  if os.path.isdir(path):
    samples, kind, step = draw_samples(
      path, _NUM_SAMPLES.value, _SEED.value, _BATCH_SIZE.value, member
    )
    who = f" member {member}" if member is not None else ""
    logs.info(f"{which}: {len(samples)} samples from {path}{who} at step {step}")
    return samples, {"step": step}, "images" if kind == "images" else "features"
  if not os.path.exists(path):
    raise UserError(f"--{which}={path} does not exist")
  if not path.endswith((".npy", ".npz")):
    raise UserError(f"--{which} must be a .npy, a .npz or a workdir, got {path}")
  arrays = _arrays_of(path)
  if "mu" in arrays and "sigma" in arrays:
    return None, {"stats": fid_lib.load_stats(path)}, "stats"
  if "array" in arrays:
    x, extra = arrays["array"], {}
  elif "features" in arrays:
    x, extra = arrays["features"], {k: v for k, v in arrays.items() if k == "logits"}
  elif "images" in arrays:
    x, extra = arrays["images"], {}
  elif len(arrays) == 1:
    x, extra = next(iter(arrays.values())), {}
  else:
    raise UserError(f"{path}: expected arrays 'features' [+ 'logits'], 'images' or 'mu'+'sigma'")
  if "logits" in extra and (extra["logits"].ndim != 2 or len(extra["logits"]) != len(x)):
    raise UserError(f"{path}: logits must be (N={len(x)}, C), got {extra['logits'].shape}")
  if x.ndim == 4 and x.dtype == np.uint8:
    if x.shape[-1] not in (1, 3):
      raise UserError(
        f"{path}: images must be (N, H, W, C) with C = 1 or 3 (channels last), got {x.shape}"
      )
    return x, extra, "images"
  if x.ndim == 4:
    raise UserError(f"{path}: images must be uint8 in [0, 255], got {x.dtype}")
  if x.ndim == 2 and x.shape[1] > 0 and np.issubdtype(x.dtype, np.number):
    if not np.all(np.isfinite(x)):
      raise UserError(f"{path}: the features hold NaN or infinite values")
    return x, extra, "features"
  raise UserError(
    f"{path}: expected (N, D) numeric features or (N, H, W, C) uint8 images, got {x.dtype} "
    f"{x.shape}"
  )


def features_of(
  path: str, which: str, progress, made: dict, member: int | None = None, steps=None
) -> evaluate.Features:
  """One side's features; ``made`` keeps the extractor per kind, so that real and fake images
  share one loaded and compiled Inception. A workdir's checkpoint step is appended to
  ``steps`` (a list), if given."""
  samples, extra, kind = load_side(path, which, progress, member)
  if steps is not None and "step" in extra:
    steps.append(extra["step"])
  if kind == "stats":
    return evaluate.Features(stats=extra["stats"])
  if len(samples) < 2:
    raise UserError(f"--{which} has {len(samples)} samples; at least 2 are needed")
  if kind not in made:
    made[kind] = extractors.for_samples(
      _EXTRACTOR.value, kind, _WEIGHTS.value, _BATCH_SIZE.value, flag="--inception_weights"
    )
  extract = made[kind]
  features, logits = extract(samples, progress=lambda d, t: progress(f"{which} features", d, t))
  if logits is None:
    logits = extra.get("logits")
  return evaluate.Features(features=features, logits=logits)


def run() -> dict:
  metrics = evaluate.parse_metrics(_METRICS.value)
  if not metrics:
    raise UserError("--metrics is empty")
  output = os.path.abspath(_OUTPUT.value)
  if not os.path.isdir(os.path.dirname(output)):
    raise UserError(f"output directory {os.path.dirname(output)} does not exist")
  if _NEAREST_K.value is not None and _NEAREST_K.value < 1:
    raise UserError(f"--nearest_k must be >= 1, got {_NEAREST_K.value}")
  if _KID_SUBSETS.value < 1 or _KID_SUBSET_SIZE.value < 2:
    raise UserError("--kid_subsets must be >= 1 and --kid_subset_size >= 2")
  progress = logs.ProgressBar()
  made: dict = {}
  real = features_of(_REAL.value, "real", progress, made)
  members = cli.workdir_members(_FAKE.value, _MEMBER.value)
  steps: list[int] = []  # The fake workdir's checkpoint step (once per member).
  if members is None:
    fake = features_of(_FAKE.value, "fake", progress, made, steps=steps)
  if _SAVE_REAL_STATS.value:
    if real.features is None:
      raise UserError("--save_real_stats needs real features, not statistics")
    try:
      fid_lib.save_stats(_SAVE_REAL_STATS.value, fid_lib.feature_stats(real.features))
    except OSError as e:
      raise UserError(f"cannot write {_SAVE_REAL_STATS.value}: {e.strerror or e}") from None
  compute = lambda fake: evaluate.compute(
    real,
    fake,
    metrics,
    nearest_k=_NEAREST_K.value,
    ties=_TIES.value,
    kid_subsets=_KID_SUBSETS.value,
    kid_subset_size=_KID_SUBSET_SIZE.value,
    seed=_SEED.value,
    progress=progress,
  )
  if members is None:
    results = compute(fake)
    if steps:
      results["step"] = steps[0]
  else:
    rows = []
    for m in members:
      row = compute(features_of(_FAKE.value, "fake", progress, made, m.index, steps))
      rows.append({**cli.member_row(m), **row, "step": steps[-1]})
    results = {"members": rows}
  results["ties"] = _TIES.value
  cli.write_json(output, results, sort_keys=True)
  if steps:  # FAKE is a workdir: a copy in it for experiments.report.
    workdir_lib.write_results(_FAKE.value, "evaluate", max(steps), results)
  return results


main = cli.results_main(run, width=28, output=_OUTPUT)


if __name__ == "__main__":
  app.run(main)
