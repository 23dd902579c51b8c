"""The example order computed per batch equals grain's shuffle → repeat → batch datasets."""

import grain
import numpy as np
import pytest

from gen_models.data import order
from gen_models.errors import UserError


@pytest.mark.parametrize(
  ("n", "b", "seed"),
  [(37, 8, 0), (37, 8, 2**32 - 2), (64, 64, 5), (10, 3, 123), (1, 4, 9), (1000, 64, 2**31)],
)
def test_batch_indices_equal_grains_shuffled_repeated_batches(n, b, seed):
  """Batches across several epochs (and straddling their boundaries), seeds that wrap past 2³²,
  one-example datasets, batches larger than the dataset."""
  ds = grain.MapDataset.range(n).shuffle(seed=seed).repeat().batch(b, drop_remainder=True)
  for i in [*range(12), 4 * n // b + 1, 1000]:
    got = order.batch_indices(n, b, seed, i)
    assert got.dtype == np.int64 and got.shape == (b,)
    np.testing.assert_array_equal(got, np.asarray(ds[i]))


def test_each_epoch_is_a_permutation_and_a_new_one():
  n, b, seed = 48, 8, 3
  stream = np.concatenate([order.batch_indices(n, b, seed, i) for i in range(3 * n // b)])
  epochs = stream.reshape(3, n)
  for e in epochs:
    np.testing.assert_array_equal(np.sort(e), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_seed_out_of_range_is_one_line():
  assert order.check_seed(2**32 - 1) == 2**32 - 1
  for bad in (-1, 2**32):
    with pytest.raises(UserError, match=r"seed must be in \[0, 2\*\*32\)"):
      order.check_seed(bad)


@pytest.mark.parametrize("max_index", [1, 255, 4_095, 4_096, 49_999, 65_536, 737_279, 12_345_678])
def test_vectorised_index_shuffle_equals_grains(max_index):
  """Both ways (grain's per element below 4,096, the numpy cipher from there), block sizes of
  16 to 24 bits, the datasets' sizes (CIFAR-10, dSprites), seeds at both ends of the 32-bit
  range: ``order.index_shuffle`` is grain's permutation, element by element."""
  from grain.experimental import index_shuffle

  rng = np.random.default_rng(max_index)
  index = rng.integers(0, max_index + 1, min(300, max_index + 1))  # Tiny sets walk long.
  for seed in (0, 1, 7, 2**31 + 5, 2**32 - 1):
    want = [index_shuffle(int(i), max_index, seed, 4) for i in index]
    np.testing.assert_array_equal(order.index_shuffle(index, max_index, seed), want)


def test_random_flips_are_a_function_of_seed_and_stream_position():
  """``dataset.random_flip``: global batch ``i`` is the unflipped batch with the examples at flat
  positions ``t = i·B + j`` mirrored where ``order.flips(seed, t)``; about half are; the rows of
  process 1 of 2 are the second half of the one-process batch, flips included (so resumes and
  device or process counts see the same images); a toy dataset refuses the option."""
  import tensorflow_datasets as tfds

  from experiments.configs import wgan_gp_toy
  from gen_models import data
  from gen_models.data import images

  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    make = lambda flip: images.TfdsImageDataset("cifar10", 8, 3, None, random_flip=flip)
    plain, flipped = make(False), make(True)
    two = [make(True), make(False)]
  f = order.flips(3, np.arange(10_000))
  assert 0.48 < f.mean() < 0.52
  np.testing.assert_array_equal(f[:40], order.flips(3, np.arange(40)))
  assert not np.array_equal(f[:64], order.flips(4, np.arange(64)))
  assert 0 < order.flips(3, np.arange(40)).sum() < 40  # The five batches below: some of each.
  for i in range(5):
    want = plain.batch(i).copy()
    flip = order.flips(3, i * 8 + np.arange(8))
    want[flip] = want[flip][:, :, ::-1]
    np.testing.assert_array_equal(flipped.batch(i), want)
    for ds in two:
      ds._rows.num_processes, ds._rows.process, ds._rows.local_batch_size = 2, 1, 4
    np.testing.assert_array_equal(two[0].batch(i), want[4:])
    np.testing.assert_array_equal(two[1].batch(i), plain.batch(i)[4:])
  config = wgan_gp_toy.get_config("smoke")
  config.dataset.random_flip = True
  with pytest.raises(UserError, match="dataset.random_flip needs an image dataset"):
    data.create(config, 8)
