"""The 2-D sample figure: critic contours behind real and generated points, W1 ratio in title."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from experiments.configs import wgan_gp_toy
from gen_models import data as data_lib
from gen_models import outputs as outputs_lib
from gen_models import pictures
from gen_models.models import wgan_gp


def _points(seed: int, n: int, scale: float = 1.0) -> np.ndarray:
  return scale * np.random.default_rng(seed).standard_normal((n, 2))


def test_toy_plot_draws_the_critic_on_a_grid_over_the_view():
  real, fake = _points(0, 200), _points(1, 200, 3.0)
  fake[0] = np.nan  # Non-finite points are dropped, not drawn.
  calls = []

  def critic(points):
    calls.append(points)
    return points[:, 0] - points[:, 1]

  plain = pictures.toy_plot(real, fake, title="t")
  with_critic = pictures.toy_plot(real, fake, title="t", critic=critic, resolution=30)
  assert plain.dtype == np.uint8 and plain.ndim == 3 and plain.shape[2] == 3
  assert with_critic.shape[2] == 3 and with_critic.shape[0] == plain.shape[0]
  (points,) = calls
  extent = 1.4 * np.max(np.abs(real))
  assert points.shape == (900, 2) and points.dtype == np.float32
  np.testing.assert_allclose([points.min(), points.max()], [-extent, extent], rtol=1e-6)
  # The contours fill the axes with grey levels; without them the axes are white.
  grey = lambda im: np.mean((im.min(axis=2) == im.max(axis=2)) & (im[..., 0] < 230))
  assert grey(with_critic) > grey(plain) + 0.2


def test_toy_plot_handles_a_constant_critic_and_all_points_outside():
  real = _points(2, 50)
  out = pictures.toy_plot(real, real + 100.0, title="t", critic=lambda p: np.zeros(len(p)))
  assert out.ndim == 3


@pytest.fixture(scope="module")
def toy():
  """``(config, dataset, family, state)`` of the toy smoke config at initialisation."""
  config = wgan_gp_toy.get_config("smoke")
  dataset = data_lib.create(config, config.batch_size)
  family = wgan_gp.make_family(config, dataset.shape)
  return config, dataset, family, jax.jit(family.init)(jax.random.key(0))


def test_wgan_gp_critic_values_is_the_critic_output(toy):
  config, _, family, state = toy
  points = _points(3, 7).astype(np.float32)
  got = family.critic_values(state, points)
  _, critic = wgan_gp.make_networks(config.gan, (2,))
  want = critic.apply({"params": state.params["critic"]}, points)
  assert got.shape == (7,)
  np.testing.assert_allclose(got, want[:, 0], rtol=1e-6)


class _Writer:
  def __init__(self):
    self.images = []

  def image(self, step, name, array, member=None):
    self.images.append((step, name, array))


def test_trainer_title_ratio_equals_the_evaluated_w1_ratio(toy, monkeypatch):
  """The sample figure's title has the ratio that ``eval/w1_ratio`` logs at the same step."""
  drawn = []
  real_plot = pictures.toy_plot

  def spy(real, fake, *, title, critic=None, **kwargs):
    drawn.append((title, critic(np.zeros((3, 2), np.float32))))
    return real_plot(real, fake, title=title, critic=critic, **kwargs)

  monkeypatch.setattr(outputs_lib, "toy_plot", spy)
  config, dataset, family, state = toy
  writer = _Writer()
  outputs = outputs_lib.Outputs(config, family, dataset, writer, jax.random.key(0), None)
  outputs.write_samples(6, state)
  ((title, values),) = drawn
  assert values.shape == (3,)
  ratio = float(re.fullmatch(r"step 6: W1 / noise floor = (\S+)", title).group(1))
  assert ratio == pytest.approx(outputs.evaluate(6, state)["eval/w1_ratio"], abs=0.005)
  ((step, name, array),) = writer.images
  assert (step, name) == (6, "samples") and array.dtype == np.uint8 and array.shape[1] >= 500
