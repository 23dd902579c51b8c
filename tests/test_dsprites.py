"""dSprites: the procedural renderer, the dataset contract, the npz → array_record round trip."""

from __future__ import annotations

import math
import re

import jax
import ml_collections
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from gen_models import UserError, data
from gen_models.data import dsprites, images

SMOKE = "dsprites_procedural_smoke"


def _config(name: str, data_dir: str = "", seed: int = 0) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = seed
  c.dataset = ml_collections.ConfigDict(
    {"name": name, "data_dir": data_dir, "split": "train", "eval_split": "test"}
  )
  return c


def _values(shape, scale=1.0, theta=0.0, x=0.5, y=0.5) -> np.ndarray:
  return np.array([[shape, scale, theta, x, y]], np.float64)


def test_factor_grid_is_the_original_one():
  ds = dsprites.ProceduralDSprites("dsprites_procedural", 64, seed=0)
  assert ds.factor_sizes == (3, 6, 40, 32, 32) and ds.num_factors == 5
  assert ds.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
  assert ds.num_examples == 737_280
  assert ds.kind == "images" and ds.shape == (64, 64, 1) and ds.value_range == (0.0, 1.0)
  # posY varies fastest: example 1 is posY class 1, example 32 posX class 1.
  np.testing.assert_array_equal(
    ds.factors_of([1, 32, 737_279]), [[0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [2, 5, 39, 31, 31]]
  )
  values = ds.factor_values([[2, 5, 39, 31, 0]])
  np.testing.assert_array_equal(values, [[3.0, 1.0, 2 * math.pi, 1.0, 0.0]])
  smoke = dsprites.ProceduralDSprites(SMOKE, 64, seed=0)
  assert smoke.factor_sizes == (3, 2, 4, 4, 4) and smoke.num_examples == 384


def test_window_rendering_equals_testing_every_pixel():
  ds = dsprites.ProceduralDSprites("dsprites_procedural", 64, seed=0)
  rng = np.random.default_rng(0)
  factors = ds.sample_factors(3000, rng)
  # Also every extreme position and scale, where windows cross the canvas edge.
  corners = np.array(
    [[s, 5, o, x, y] for s in range(3) for o in (0, 5, 14) for x in (0, 31) for y in (0, 31)]
  )
  values = ds.factor_values(np.concatenate([factors, corners]))
  fast, slow = dsprites.render(values), dsprites.render(values, window=False)
  np.testing.assert_array_equal(fast, slow)
  # Nothing touches the canvas border: every sprite is whole.
  assert not slow[:, [0, -1], :].any() and not slow[:, :, [0, -1]].any()
  assert slow.reshape(len(values), -1).any(axis=1).all()


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.0])
@pytest.mark.parametrize(("x", "y"), [(0.0, 0.0), (0.3, 0.9), (1.0, 0.5)])
def test_axis_aligned_square_is_the_exact_pixel_rectangle(scale, x, y):
  image = dsprites.render(_values(1, scale, 0.0, x, y))[0]
  centres = (np.arange(64) + 0.5) / 64
  half = 0.16 * scale
  cols = np.abs(centres - (0.25 + 0.5 * x)) <= half
  rows = np.abs(centres - (0.25 + 0.5 * y)) <= half
  np.testing.assert_array_equal(image, rows[:, None] & cols[None, :])


@pytest.mark.parametrize("shape", [2, 3])
@pytest.mark.parametrize("theta", [0.0, 0.3, 1.9, 4.0])
def test_rotation_is_counter_clockwise_about_the_sprite_centre(shape, theta):
  # At pos (0.5, 0.5) the sprite centre is the canvas centre, so turning the orientation by π/2
  # turns the image by 90° counter-clockwise (np.rot90), pixel for pixel.
  a = dsprites.render(_values(shape, 1.0, theta))[0]
  b = dsprites.render(_values(shape, 1.0, theta + math.pi / 2))[0]
  np.testing.assert_array_equal(np.rot90(a), b)
  assert a.sum() > 100


def test_shapes_and_sizes():
  square, ellipse, heart = (dsprites.render(_values(s))[0] for s in (1, 2, 3))
  assert abs(square.sum() - (0.32 * 64) ** 2) < 2 * 0.32 * 64 + 1  # Area ± one pixel row/column.
  assert abs(ellipse.sum() - math.pi * 0.2 * 0.1 * 64**2) < 0.02 * 64**2 * 0.4
  rows, cols = np.nonzero(ellipse)
  centres = (np.arange(64) + 0.5) / 64
  wide, high = (np.sum(np.abs(centres - 0.5) <= a) for a in (0.2, 0.1))
  assert (wide, high) == (26, 12)  # Semi-axes 12.8 and 6.4 px about the canvas centre.
  assert (cols.max() - cols.min() + 1, rows.max() - rows.min() + 1) == (wide, high)
  rows, cols = np.nonzero(heart)
  assert cols.max() - cols.min() + 1 == 22  # 0.34 · 64 = 21.8 px wide.
  middle = (rows.min() + rows.max() + 1) // 2
  assert heart[:middle].sum() > 1.25 * heart[middle:].sum()  # Lobes up, point down.
  np.testing.assert_array_equal(heart, heart[:, ::-1])  # Mirror-symmetric.
  small = dsprites.render(_values(1, 0.5))[0]
  assert abs(small.sum() - (0.16 * 64) ** 2) < 2 * 0.16 * 64 + 1


def test_orientation_class_39_draws_class_0():
  ds = dsprites.ProceduralDSprites("dsprites_procedural", 64, seed=0)
  factors = ds.sample_factors(200, np.random.default_rng(1))
  first, last = factors.copy(), factors.copy()
  first[:, 2], last[:, 2] = 0, 39
  np.testing.assert_array_equal(ds.observations(first), ds.observations(last))


def test_ground_truth_interface():
  ds = dsprites.ProceduralDSprites(SMOKE, 64, seed=0)
  rng = np.random.default_rng(0)
  factors = ds.sample_factors(5000, rng)
  assert factors.shape == (5000, 5) and factors.dtype == np.int64
  for j, size in enumerate(ds.factor_sizes):  # Every class of every factor, nothing else.
    assert set(np.unique(factors[:, j])) == set(range(size))
  np.testing.assert_array_equal(ds.factors_of(ds.index_of(factors)), factors)
  obs = ds.observations(factors[:50])
  assert obs.shape == (50, 64, 64, 1) and obs.dtype == np.float32
  assert set(np.unique(obs)) == {0.0, 1.0}
  np.testing.assert_array_equal(obs, ds.images(ds.index_of(factors[:50])))
  with pytest.raises(ValueError, match="out of range"):
    ds.observations(np.array([[0, 2, 0, 0, 0]]))
  with pytest.raises(ValueError, match=r"\(n, 5\)"):
    ds.observations(np.zeros((3, 4), np.int64))
  assert data.has_ground_truth(ds)
  assert not data.has_ground_truth(data.create(_config("8gaussians"), 8))


def test_batches_are_a_seeded_shuffle_of_the_grid():
  ds = dsprites.ProceduralDSprites(SMOKE, 64, seed=3)
  epoch = np.concatenate([ds._rows(i) for i in range(6)])  # 384 / 64 = 6 batches per epoch.
  np.testing.assert_array_equal(np.sort(epoch), np.arange(384))
  np.testing.assert_array_equal(ds.batch(2), ds.images(ds._rows(2)))
  again = dsprites.ProceduralDSprites(SMOKE, 64, seed=3)
  np.testing.assert_array_equal(again.batch(7), ds.batch(7))
  other = dsprites.ProceduralDSprites(SMOKE, 64, seed=4)
  assert not np.array_equal(other.batch(0), ds.batch(0))
  ref = ds.reference(100)
  assert ref.shape == (100, 64, 64, 1)
  np.testing.assert_array_equal(ref, again.reference(100))
  assert len(np.unique(dsprites._reference_indices(384, 384, seed=3))) == 384  # All distinct.


def test_rendered_images_are_kept_and_equal_a_fresh_render():
  """Images are rendered once and kept as packed bits: batches of the first epoch, the same
  batches again (from memory) and observations with repeated factors all equal a fresh render."""
  ds = dsprites.ProceduralDSprites(SMOKE, 64, seed=3)
  fresh = lambda f: dsprites.render(ds.factor_values(f))[..., None].astype(np.float32)
  assert not ds._rendered.any()
  first = [ds.batch(i) for i in range(6)]  # One epoch of the 384-image grid.
  assert ds._rendered.all()
  for i, b in enumerate(first):
    assert b.dtype == np.float32 and b.shape == (64, 64, 64, 1)
    np.testing.assert_array_equal(b, fresh(ds.factors_of(ds._rows(i))))
    np.testing.assert_array_equal(ds.batch(i), b)
  np.testing.assert_array_equal(ds.batch(6), fresh(ds.factors_of(ds._rows(6))))  # Epoch 2.
  f = ds.sample_factors(50, np.random.default_rng(0))
  f[1] = f[0]  # A repeated observation.
  np.testing.assert_array_equal(ds.observations(f), fresh(f))


def test_batch_rows_do_not_depend_on_the_process_count(monkeypatch):
  single = [dsprites.ProceduralDSprites(SMOKE, 32, seed=1).batch(i) for i in range(3)]
  parts = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for p in range(2):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    ds = dsprites.ProceduralDSprites(SMOKE, 32, seed=1)
    parts.append([ds.batch(i) for i in range(3)])
  for i in range(3):
    assert parts[0][i].shape == (16, 64, 64, 1)
    np.testing.assert_array_equal(np.concatenate([parts[0][i], parts[1][i]]), single[i])


def test_registry_without_opening_the_data():
  for name in dsprites.DATASETS:
    c = _config(name, data_dir="/nonexistent")
    assert data.example_shape(c) == (64, 64, 1)
    assert data.value_range(c) == (0.0, 1.0)
  assert data.value_range(_config("cifar10")) == (-1.0, 1.0)
  assert data.value_range(_config("8gaussians")) is None
  assert images.TfdsImageDataset.value_range == (-1.0, 1.0)
  ds = data.create(_config(SMOKE), 64)
  assert ds.name == SMOKE and ds.batch(0).shape == (64, 64, 64, 1)
  with pytest.raises(UserError, match="dsprites_procedural"):
    data.example_shape(_config("dsprite"))


def test_to_uint8_value_ranges():
  np.testing.assert_array_equal(images.to_uint8(np.array([0.0, 0.5, 1.0])), [128, 191, 255])
  np.testing.assert_array_equal(images.to_uint8(np.array([-1.0, 0.0, 1.0])), [0, 128, 255])
  x = np.array([0.0, 1.0, 0.25, 2.0, -1.0], np.float32)
  np.testing.assert_array_equal(images.to_uint8(x, (0.0, 1.0)), [0, 255, 64, 255, 0])


def test_unprepared_dsprites_says_both_ways(tmp_path):
  with pytest.raises(UserError) as e:
    data.create(_config("dsprites", str(tmp_path / "empty")), 64)
  message = str(e.value)
  assert "\n" not in message
  for fragment in (
    "not prepared",
    "experiments.prepare_data dsprites --source=",
    "dsprites_procedural",
  ):
    assert fragment in message


def test_training_on_unprepared_dsprites_is_one_line(tmp_path):
  config = tmp_path / "vae_dsprites.py"
  config.write_text(
    "from gen_models.models import vae\n"
    "def get_config():\n"
    "  c = vae.default_config()\n"
    "  c.dataset.name = 'dsprites'\n"
    "  return c\n"
  )
  proc = run_cli(
    "experiments.main",
    f"--config={config}",
    f"--workdir={tmp_path / 'run'}",
    f"--config.dataset.data_dir={tmp_path / 'empty'}",
  )
  assert_one_line_error(
    proc, "'dsprites' is not prepared", "prepare_data dsprites --source=", "dsprites_procedural"
  )
  assert not (tmp_path / "run").exists()


def _write_npz(path, order=None, colours=1):
  """A small npz in the original layout: the smoke grid, rendered, with a pickled metadata entry
  that must never be loaded."""
  smoke = dsprites.ProceduralDSprites(SMOKE, 64, seed=0)
  n = smoke.num_examples
  classes = smoke.factors_of(np.arange(n))
  values = smoke.factor_values(classes)
  imgs = smoke.images(np.arange(n))[..., 0].astype(np.uint8)
  colour = (np.arange(n) % colours)[:, None]
  classes6 = np.concatenate([colour, classes], axis=1)
  values6 = np.concatenate([np.ones((n, 1)), values], axis=1)
  if order is not None:
    imgs, classes6, values6 = imgs[order], classes6[order], values6[order]
  metadata = np.array({"latents_sizes": [1, 3, 2, 4, 4, 4]}, dtype=object)
  np.savez_compressed(
    path, imgs=imgs, latents_classes=classes6, latents_values=values6, metadata=metadata
  )
  return smoke


def test_prepare_then_read_equals_the_rendered_grid(tmp_path):
  source, data_dir = tmp_path / "small.npz", tmp_path / "tfds"
  smoke = _write_npz(source)
  proc = run_cli(
    "experiments.prepare_data", "dsprites", f"--source={source}", f"--data_dir={data_dir}"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "gen_models_dsprites/1.0.0" in proc.stdout
  ds = data.create(_config("dsprites", str(data_dir), seed=0), 64)
  assert isinstance(ds, dsprites.DSprites)
  assert ds.factor_sizes == smoke.factor_sizes and ds.num_examples == 384
  assert ds.kind == "images" and ds.shape == (64, 64, 1) and ds.value_range == (0.0, 1.0)
  np.testing.assert_array_equal(ds.factor_values(np.zeros((1, 5), np.int64)), [[1, 0.5, 0, 0, 0]])
  factors = ds.sample_factors(40, np.random.default_rng(0))
  np.testing.assert_array_equal(ds.observations(factors), smoke.observations(factors))
  # Same seed, same shuffle: the file's batches are the procedural smoke grid's batches.
  for i in (0, 5, 6):
    np.testing.assert_array_equal(ds.batch(i), smoke.batch(i))
  np.testing.assert_array_equal(ds.reference(30), smoke.reference(30))
  assert ds.batch(0).dtype == np.float32
  with pytest.raises(UserError, match="already exists"):  # Never overwritten.
    dsprites.prepare(str(source), str(data_dir))


@pytest.mark.parametrize(
  ("kind", "fragment"),
  [
    ("shuffled", "in the original order (posY varying fastest)"),
    ("two_colours", "one colour"),
    ("not_npz", "cannot read"),
    ("no_imgs", "not a dSprites npz (no imgs"),
  ],
)
def test_prepare_rejects(tmp_path, kind, fragment):
  source = tmp_path / "bad.npz"
  if kind == "shuffled":
    _write_npz(source, order=np.random.default_rng(0).permutation(384))
  elif kind == "two_colours":
    _write_npz(source, colours=2)
  elif kind == "not_npz":
    source.write_bytes(b"PK\x03\x04 truncated")
  else:
    np.savez(source, images=np.zeros((2, 64, 64), np.uint8))
  with pytest.raises(UserError, match=re.escape(fragment)) as e:
    dsprites.prepare(str(source), str(tmp_path / "d"))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "d").exists()


def test_prepare_data_cli_errors_are_one_line(tmp_path):
  proc = run_cli(
    "experiments.prepare_data",
    "dsprites",
    f"--source={tmp_path / 'no.npz'}",
    f"--data_dir={tmp_path}",
  )
  assert_one_line_error(proc, "does not exist")
  proc = run_cli("experiments.prepare_data", "svhn", "--source=x", f"--data_dir={tmp_path}")
  assert_one_line_error(proc, "subcommand", "dsprites")
  proc = run_cli("experiments.prepare_data", "dsprites", f"--data_dir={tmp_path}")
  assert_one_line_error(proc, "source")
