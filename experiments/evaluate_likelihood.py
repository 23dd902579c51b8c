r"""Exact log-likelihood of data under a trained flow (RealNVP), written to JSON.

    python -m experiments.evaluate_likelihood --workdir=DIR --data=FILE.npy \
        [--output=FILE.json] [--log_probs=FILE.npy] [--dequantization_samples=K]

FILE holds points ``(N, d)`` (float) for a flow on points, or images ``(N, H, W, C)`` for an image
flow: uint8, or numbers that are integers in ``[0, 256)``, of the flow's image shape (MNIST runs
accept the 28×28 originals as well as the padded 32×32). Images are dequantised ``K`` times
(seeded: ``--seed``) and each example's log-density is the mean over the ``K`` draws of
``log p(pixels + ε)`` on ``[0, 256)^D`` (a lower bound of the discrete log-probability).

Printed and written: ``nll_nats`` (mean negative log-likelihood per example) and
``bits_per_dim = nll_nats / (D ln 2)``, each with its standard error over the examples,
``num_examples``, ``num_dims``, ``dequantization_samples``, ``step``. ``--log_probs`` writes
every example's log-density (nats, float64). The evaluation is in evaluation mode (batch norm
with its running statistics), on this process's devices.

A population's run is evaluated member by member (every member, or ``--member=I``): the JSON
holds ``members``, a row per member with its ``member`` index, ``name``, ``seed``, ``hparams``
and the numbers above; ``--log_probs`` is then ``(members, N)``.

The results also go to ``DIR/results/likelihood_step<step>.json`` (with or without ``--output``)
for ``experiments.report``.
"""

from __future__ import annotations

import math
import os

import numpy as np
from absl import app, flags

from experiments import cli
from gen_models import workdir as workdir_lib
from gen_models.data import images
from gen_models.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained flow run.")
_DATA = flags.DEFINE_string("data", None, ".npy of points (N, d) or images (N, H, W, C).")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file of the results.")
_LOG_PROBS = flags.DEFINE_string("log_probs", None, "Optional .npy of every example's log p.")
_DEQUANT = flags.DEFINE_integer("dequantization_samples", 1, "Dequantisation draws per image.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Examples per compiled call.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the dequantisation noise.")
_MEMBER = flags.DEFINE_integer("member", None, "A population's member (default: every member).")
flags.mark_flags_as_required(["workdir", "data"])


def load_data(path: str) -> np.ndarray:
  """The ``.npy`` array at ``path`` (no pickle); a one-line error otherwise."""
  if not os.path.isfile(path):
    raise UserError(f"--data={path} does not exist")
  try:
    return np.load(path, allow_pickle=False)
  except Exception as e:  # Object arrays, truncated files, not an .npy at all: one line each.
    raise UserError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def check_data(x: np.ndarray, example_shape: tuple[int, ...], crop: int) -> np.ndarray:
  """``x`` as float32 model-space examples ``(N, *example_shape)``; one-line errors for a wrong
  shape, a non-finite point or image values outside ``[0, 256)`` (or not integers)."""
  if x.dtype.kind not in "iuf" or x.ndim < 2 or len(x) == 0:
    raise UserError(f"--data must be a non-empty numeric array, got {x.dtype} {x.shape}")
  if len(example_shape) == 1:
    if x.shape[1:] != tuple(example_shape):
      raise UserError(f"the run models points {tuple(example_shape)}; --data is {x.shape}")
    if not np.all(np.isfinite(x)):
      raise UserError("--data holds NaN or infinite values")
    return x.astype(np.float32)
  h, w, c = example_shape
  inner = (h - 2 * crop, w - 2 * crop, c)
  if x.shape[1:] not in (tuple(example_shape), inner):
    want = f"{tuple(example_shape)} or {inner}" if crop else f"{tuple(example_shape)}"
    raise UserError(f"the run models images (N, H, W, C) of {want}; --data is {x.shape}")
  if np.any(~np.isfinite(x)) or np.any(x < 0) or np.any(x >= 256) or np.any(x != np.floor(x)):
    raise UserError(
      f"image flows take integer pixel values in [0, 256); --data has values in "
      f"[{np.nanmin(x)}, {np.nanmax(x)}]" + ("" if np.all(x == np.floor(x)) else " (non-integers)")
    )
  # The datasets' model space, padded back to the run's shape if given uncropped.
  return images.to_model_space(x, crop if x.shape[1:] == inner else 0)


def log_likelihoods(bound, state, x: np.ndarray, *, draws: int, batch_size: int, seed: int):
  """Each example's log-density in nats, ``(N,)`` float64: ``log p(x)`` of points; of images the
  density of the dequantised pixels on ``[0, 256)^D`` (``−realnvp.pixel_nll``), averaged over
  ``draws`` dequantisations, chunk ``i`` of draw ``k`` keyed ``fold_in(fold_in(key(seed), k),
  i)``. ``bound``: ``realnvp.bind(config, example_shape)``; ``x``: model-space examples."""
  import jax

  from gen_models import devices as dev
  from gen_models.models import realnvp

  log_prob_fn, layers_fn = jax.jit(bound.log_prob), jax.jit(bound.layer_log_dets)
  key = jax.random.key(seed)
  total = np.zeros(len(x))
  for draw in range(draws):
    for i, start in enumerate(range(0, len(x), batch_size)):
      chunk = x[start : start + batch_size]
      chunk_key = jax.random.fold_in(jax.random.fold_in(key, draw), i)
      log_p = np.asarray(dev.to_host(log_prob_fn(state, chunk, chunk_key)), np.float64)
      if not np.all(np.isfinite(log_p)):
        realnvp.check_finite_log_dets(dev.to_host(layers_fn(state, chunk, chunk_key)))
        raise UserError("non-finite log-density (the latent is not finite)")
      total[start : start + len(chunk)] += log_p
  log_p = total / draws
  if bound.prep.image:
    log_p = -realnvp.pixel_nll(log_p, math.prod(bound.flow.spec.shape))
  return log_p


def summary(log_p: np.ndarray, num_dims: int) -> dict:
  """``nll_nats``, ``bits_per_dim`` (each with its standard error over the examples),
  ``num_examples`` and ``num_dims`` of per-example log-densities ``log_p`` (nats)."""
  from gen_models.models import realnvp

  nll = -log_p
  se = float(np.std(nll, ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
  return {
    "nll_nats": float(np.mean(nll)),
    "nll_nats_stderr": se,
    "bits_per_dim": realnvp.to_bits_per_dim(float(np.mean(nll)), num_dims),
    "bits_per_dim_stderr": realnvp.to_bits_per_dim(se, num_dims),
    "num_examples": len(nll),
    "num_dims": num_dims,
  }


def run() -> dict:
  import jax

  from gen_models import devices as dev
  from gen_models import population, runs
  from gen_models.models import realnvp

  if _DEQUANT.value < 1 or _BATCH_SIZE.value < 1:
    raise UserError("--dequantization_samples and --batch_size must be >= 1")
  for path in (_OUTPUT.value, _LOG_PROBS.value):
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
      raise UserError(f"output directory {os.path.dirname(os.path.abspath(path))} does not exist")
  if workdir_lib.is_run(_WORKDIR.value):
    model = workdir_lib.read_config(_WORKDIR.value).get("model")
    if model != "realnvp":
      raise UserError(f"{_WORKDIR.value} holds a {model!r} run, not a flow (model 'realnvp')")
  raw = load_data(_DATA.value)
  config, family, state, members = runs.load_members(_WORKDIR.value, jax.local_devices())
  chosen = runs.member_states(config, state, members, _MEMBER.value)
  from gen_models import data as data_lib

  example_shape = data_lib.example_shape(config)
  image = len(example_shape) == 3
  x = check_data(raw, example_shape, config.flow.crop if image else 0)
  bound = realnvp.bind(config, example_shape)
  rows = []
  for member, state in chosen:
    log_p = log_likelihoods(
      bound,
      state,
      x,
      draws=_DEQUANT.value if image else 1,
      batch_size=_BATCH_SIZE.value,
      seed=_SEED.value,
    )
    results = summary(log_p, math.prod(bound.flow.spec.shape))
    results.update(
      dequantization_samples=_DEQUANT.value if image else 1, step=int(dev.to_host(state.step))
    )
    if population.is_population(config):
      results = {**cli.member_row(member), **results}
    rows.append((results, log_p))
  if not population.is_population(config):
    results, log_p = rows[0]
  else:
    results = {"members": [r for r, _ in rows]}
    log_p = np.stack([lp for _, lp in rows])  # (members, N)
  if _OUTPUT.value:
    cli.write_json(_OUTPUT.value, results, sort_keys=True)
  workdir_lib.write_results(_WORKDIR.value, "likelihood", rows[0][0]["step"], results)
  if _LOG_PROBS.value:
    try:
      np.save(_LOG_PROBS.value, log_p)
    except OSError as e:
      raise UserError(f"cannot write {_LOG_PROBS.value}: {e.strerror or e}") from None
  return results


main = cli.results_main(run, width=22)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
