"""The RealNVP image objective before and after 2026-12-07, side by side (issue 28).

Trains the same flow from the same start on the same batches twice, once minimising nats per
image (``flow.objective = "nats"``, the reference code's) and once bits/dim (``"bits_per_dim"``,
the objective before), and writes each run's per-step ``loss``, ``bits_per_dim``, the L2 term
(``l2 · Σ w²``, in the objective's units and in nats) and ``grad_norm`` (before clipping, and
whether the clipping at ``optimizer.clip_global_norm`` fired) to a JSON file.

    python -m experiments.realnvp_objective --config=experiments/configs/realnvp_cifar10.py:smoke \\
        --steps=200 --out=experiments/results/realnvp_objective_cifar10_smoke_cpu_2026-12-07.json

The batches are uniform random pixels (what ``tfds.testing.mock_data`` gives), so the numbers
show the objective's scale and the clipping, not what the flow learns on real images.
"""

from __future__ import annotations

import json
import math
import platform
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from gen_models.models import realnvp

config_flags.DEFINE_config_file("config", None, "A RealNVP image config.", lock_config=True)
flags.DEFINE_integer("steps", 200, "Train steps per objective.")
flags.DEFINE_string("out", "", "JSON file to write (nothing written when empty).")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def run(config, objective: str, batches: np.ndarray) -> dict[str, list[float]]:
  """``batches (steps, B, H, W, C)`` in ``[−1, 1]`` → per-step metrics of ``objective``."""
  with config.unlocked():
    config.flow.objective = objective
  shape = tuple(batches.shape[2:])
  family = realnvp.make_family(config, shape)
  state = jax.jit(family.init)(jax.random.key(config.seed))
  step = jax.jit(family.train_step)
  num_dims = math.prod(realnvp.bind(config, shape).flow.spec.shape)
  scale = 1.0 if objective == "nats" else 1.0 / (num_dims * math.log(2.0))
  out: dict[str, list[float]] = {}
  for i, batch in enumerate(batches):
    state, metrics = step(state, batch[None])
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    m["l2_term"] = config.flow.l2 * m["l2_penalty"]  # In the objective's units.
    m["l2_term_in_loss_share"] = m["l2_term"] / m["loss"]
    m["l2_term_nats_equivalent"] = m["l2_term"] / scale  # What it weighs against nats.
    if config.optimizer.clip_global_norm > 0:
      m["clipped"] = float(m["grad_norm"] > config.optimizer.clip_global_norm)
    for k, v in m.items():
      out.setdefault(k, []).append(v)
    if i % 50 == 0 or i == len(batches) - 1:
      print(
        f"{objective:>12} step {i + 1}: bits/dim {m['bits_per_dim']:.4f} "
        f"loss {m['loss']:.4f} l2 term {m['l2_term']:.4g} grad_norm {m.get('grad_norm', 0):.4g}"
      )
  return out


def main(argv):
  del argv
  c = FLAGS.config
  shape = (32, 32, 3 if c.dataset.name == "cifar10" else 1)
  rng = np.random.default_rng(c.seed)
  batches = rng.integers(0, 256, (FLAGS.steps, c.batch_size, *shape)) / 127.5 - 1.0
  start = time.time()
  runs = {o: run(c, o, batches.astype(np.float32)) for o in ("nats", "bits_per_dim")}
  summary = {
    o: {
      "first": {k: v[0] for k, v in r.items()},
      "last": {k: v[-1] for k, v in r.items()},
      "steps_clipped": int(sum(r.get("clipped", []))),
    }
    for o, r in runs.items()
  }
  result = {
    "what": "RealNVP image objective, nats per image (reference) vs bits/dim (before 2026-12-07)",
    "config": config_flags.get_config_filename(FLAGS["config"]),
    "dataset": c.dataset.name + " shape, uniform random pixels (mock data)",
    "steps": FLAGS.steps,
    "batch_size": c.batch_size,
    "l2": c.flow.l2,
    "l2_params": c.flow.l2_params,
    "clip_global_norm": c.optimizer.clip_global_norm,
    "jax": jax.__version__,
    "machine": platform.processor() or platform.machine(),
    "wall_s": round(time.time() - start, 1),
    "summary": summary,
    "curves": runs,
  }
  for o, s in summary.items():
    print(o, json.dumps(s["last"]), "steps clipped:", s["steps_clipped"])
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=1)
    print("wrote", FLAGS.out)


if __name__ == "__main__":
  app.run(main)
