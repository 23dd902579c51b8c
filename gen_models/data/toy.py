"""Two-dimensional toy distributions of Gulrajani et al. 2017 (WGAN-GP), Sec. 5.1 / App. C.

* ``8gaussians``: 8 modes at radius 2 on the unit-circle directions k·π/4, std 0.02, the whole
  set scaled by 1/1.414 (radius ≈ 1.414, std ≈ 0.0141).
* ``25gaussians``: modes on the 5×5 grid {-4,-2,0,2,4}², std 0.05, scaled by 1/2.828.
* ``swissroll``: t = 1.5π(1 + 2u), u ~ U[0, 1); the point (t cos t, t sin t) plus N(0, 0.25²)
  noise per coordinate, scaled by 1/7.5.

Batches are pure functions of (seed, stream, batch index): ``numpy.random.Generator`` seeded by
``SeedSequence([seed, stream, index])``. Stream 0 is training data, stream 1 held-out data.
"""

from __future__ import annotations

import math

import numpy as np

from gen_models import devices

TRAIN_STREAM, REFERENCE_STREAM = 0, 1


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
  angles = rng.integers(0, 8, size=n) * (math.pi / 4)
  centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  return (centers + 0.02 * rng.standard_normal((n, 2))) / 1.414


def _twenty_five_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
  centers = 2.0 * (rng.integers(0, 5, size=(n, 2)) - 2)
  return (centers + 0.05 * rng.standard_normal((n, 2))) / 2.828


def _swiss_roll(rng: np.random.Generator, n: int) -> np.ndarray:
  t = 1.5 * math.pi * (1.0 + 2.0 * rng.random(n))
  x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
  return (x + 0.25 * rng.standard_normal((n, 2))) / 7.5


DISTRIBUTIONS = {
  "8gaussians": _eight_gaussians,
  "25gaussians": _twenty_five_gaussians,
  "swissroll": _swiss_roll,
}


def sample(name: str, n: int, seed: int, stream: int, index: int) -> np.ndarray:
  """``n`` points ``(n, 2)`` float32, a pure function of ``(name, n, seed, stream, index)``."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, stream, index]))
  return DISTRIBUTIONS[name](rng, n).astype(np.float32)


class ToyDataset:
  """An endless stream of toy batches; see the module docstring."""

  kind = "points"
  shape = (2,)
  value_range = None  # Points have no pixel range (see ``gen_models.data.Dataset``).

  def __init__(self, name: str, global_batch_size: int, seed: int):
    self.name = name
    self.global_batch_size = global_batch_size
    self.seed = seed

  def batch(self, index: int) -> np.ndarray:
    full = sample(self.name, self.global_batch_size, self.seed, TRAIN_STREAM, index)
    return full[devices.process_rows(self.global_batch_size)]

  def reference(self, n: int) -> np.ndarray:
    return sample(self.name, n, self.seed, REFERENCE_STREAM, 0)
