"""MNIST and CIFAR-10 from their original archive formats, and the labelled-batch interface.

Small archives are written here byte by byte in the original formats (gzipped IDX with its magic
numbers; the CIFAR-10 binary tar.gz), converted by ``prepare_data`` and read back through the
project's dataset classes. The expected example order is TFDS's, computed independently: each
split sorted by the 128-bit md5 of ``split_name + str(index)``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile

import numpy as np
import pytest
from conftest import run_cli

from gen_models import UserError, config, data
from gen_models.data import archives, images

MNIST_SIZES = {"train": 12, "test": 5}
CIFAR_BATCHES = {"train": (3, 1, 2, 4, 2), "test": (5,)}  # Records per batch file.


def _tfds_order(split: str, n: int) -> np.ndarray:
  """The order of keys 0..n-1 in a shuffled TFDS split: by md5(split + str(key)) ascending."""
  digest = [int(hashlib.md5((split + str(i)).encode()).hexdigest(), 16) for i in range(n)]
  return np.argsort(digest, kind="stable")


def _idx(magic: int, array: np.ndarray) -> bytes:
  """IDX bytes: big-endian magic, big-endian int32 dimensions, then the uint8 data."""
  dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def _write_gz(path, payload: bytes) -> None:
  with gzip.open(path, "wb") as f:
    f.write(payload)


def _mnist_arrays(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  rng = np.random.default_rng(seed)
  return {
    split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n))
    for split, n in MNIST_SIZES.items()
  }


def _write_mnist(folder, arrays) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  for split, (images_file, labels_file) in archives.MNIST_FILES.items():
    imgs, labels = arrays[split]
    _write_gz(folder / images_file, _idx(0x803, imgs))
    _write_gz(folder / labels_file, _idx(0x801, labels))


def _cifar_record(label: int, image: np.ndarray) -> bytes:
  """One record: the label byte, then the R, G and B planes, each row-major 32 × 32."""
  planes = [bytes(image[r, c, ch] for r in range(32) for c in range(32)) for ch in range(3)]
  return bytes([label]) + b"".join(planes)


def _cifar_arrays(seed: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  rng = np.random.default_rng(seed)
  return {
    split: (rng.integers(0, 256, (sum(k), 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, sum(k)))
    for split, k in CIFAR_BATCHES.items()
  }


def _write_cifar(path, arrays, drop: str = "", truncate: str = "") -> None:
  """``cifar-10-binary.tar.gz``; ``drop`` leaves a batch file out, ``truncate`` cuts one short."""
  with tarfile.open(path, "w:gz") as tar:
    for split, counts in CIFAR_BATCHES.items():
      imgs, labels = arrays[split]
      start = 0
      for file, count in zip(archives.CIFAR10_FILES[split], counts, strict=True):
        rows = range(start, start + count)
        payload = b"".join(_cifar_record(int(labels[i]), imgs[i]) for i in rows)
        start += count
        if file == drop:
          continue
        if file == truncate:
          payload = payload[:-100]
        info = tarfile.TarInfo(f"cifar-10-batches-bin/{file}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))


def _config(name: str, data_dir: str, labels: bool = True):
  c = config.base_config()
  c.dataset.name, c.dataset.data_dir, c.dataset.labels = name, data_dir, labels
  return c


def _model_space(imgs: np.ndarray, pad: int) -> np.ndarray:
  x = imgs.astype(np.float32) / 127.5 - 1.0
  return np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Both datasets converted into one data dir: MNIST by the CLI, CIFAR-10 in-process."""
  root = tmp_path_factory.mktemp("prepare")
  mnist, cifar = _mnist_arrays(), _cifar_arrays()
  _write_mnist(root / "mnist", mnist)
  _write_cifar(root / "cifar-10-binary.tar.gz", cifar)
  data_dir = root / "tfds"
  proc = run_cli(
    "experiments.prepare_data", "mnist", f"--source={root / 'mnist'}", f"--data_dir={data_dir}"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "gen_models_mnist/1.0.0" in proc.stdout
  path = archives.prepare_cifar10(str(root / "cifar-10-binary.tar.gz"), str(data_dir))
  assert path.endswith("gen_models_cifar10/1.0.0")
  return {"dir": str(data_dir), "root": root, "mnist": mnist, "cifar10": cifar}


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_prepared_splits_hold_tfds_build_examples_in_its_order(prepared, name):
  import tensorflow_datasets as tfds

  for split, (imgs, labels) in prepared[name].items():
    source = tfds.data_source(f"gen_models_{name}", split=split, data_dir=prepared["dir"])
    order = _tfds_order(split, len(imgs))
    assert len(source) == len(imgs) and not np.array_equal(order, np.arange(len(imgs)))
    got = source.__getitems__(list(range(len(source))))
    want = imgs[order] if imgs.ndim == 4 else imgs[order][..., None]
    np.testing.assert_array_equal(np.stack([r["image"] for r in got]), want)
    np.testing.assert_array_equal([int(r["label"]) for r in got], labels[order])


@pytest.mark.parametrize(("name", "pad"), [("mnist", 2), ("cifar10", 0)])
def test_datasets_read_prepared_images_with_labels(prepared, name, pad):
  imgs, labels = prepared[name]["train"]
  if imgs.ndim == 3:
    imgs = imgs[..., None]
  n = len(imgs)
  ds = data.create(_config(name, prepared["dir"]), 4)
  assert ds.num_classes == 10 and data.num_classes(_config(name, "")) == 10
  want = _model_space(imgs, pad)
  seen = []
  for i in range(n // 4):  # One epoch: every training example once, with its own label.
    batch = ds.batch(i)
    assert batch["image"].shape == (4, *ds.shape) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    for image, label in zip(batch["image"], batch["label"], strict=True):
      (k,) = np.flatnonzero((want == image).all(axis=(1, 2, 3)))
      assert label == labels[k]
      seen.append(k)
  assert sorted(seen) == list(range(n))
  # The held-out reference: the test split's first examples in TFDS order, images only.
  test_imgs = prepared[name]["test"][0]
  test_imgs = test_imgs if test_imgs.ndim == 4 else test_imgs[..., None]
  order = _tfds_order("test", len(test_imgs))
  np.testing.assert_array_equal(ds.reference(3), _model_space(test_imgs[order[:3]], pad))
  # Steps stack dict batches leafwise; without labels a batch is the same images alone.
  step = next(data.StepIterator(ds, 2, step=1))
  assert set(step) == {"image", "label"}
  for key in step:
    np.testing.assert_array_equal(step[key], np.stack([ds.batch(2)[key], ds.batch(3)[key]]))
  plain = data.create(_config(name, prepared["dir"], labels=False), 4)
  assert plain.num_classes is None
  np.testing.assert_array_equal(plain.batch(1), ds.batch(1)["image"])


@pytest.mark.parametrize(("name", "pad"), [("mnist", 2), ("cifar10", 0)])
def test_in_memory_batches_equal_reading_each_record_through_grain(prepared, name, pad):
  """The training split read into memory once gives the same arrays (values, dtypes), in the
  same order, as reading every record through ``MapDataset.source(source).shuffle(seed)
  .repeat().map(...).batch(B)`` — over three epochs (a new permutation each)."""
  import grain
  import tensorflow_datasets as tfds

  source = tfds.data_source(f"gen_models_{name}", split="train", data_dir=prepared["dir"])

  def record(r):
    x = np.asarray(r["image"], np.float32) / 127.5 - 1.0
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)
    return {"image": x, "label": np.asarray(r["label"], np.int32)}

  reference = (
    grain.MapDataset.source(source)
    .shuffle(seed=7)
    .repeat()
    .map(record)
    .batch(4, drop_remainder=True)
  )
  config = _config(name, prepared["dir"])
  config.seed = 7
  ds = data.create(config, 4)
  for i in range(3 * (len(source) // 4) + 1):
    got, want = ds.batch(i), reference[i]
    for key in ("image", "label"):
      assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape
      np.testing.assert_array_equal(got[key], want[key])


def test_cifar10_record_layout_is_channel_major():
  r, g = np.full(1024, 10, np.uint8), np.full(1024, 20, np.uint8)
  b = (np.arange(1024) % 251).astype(np.uint8)  # Pixel (row, col) of the B plane: 32·row + col.
  raw = bytes([7]) + r.tobytes() + g.tobytes() + b.tobytes() + bytes([3]) + bytes(3072)
  imgs, labels = archives.decode_cifar10(raw, "x.bin")
  assert imgs.shape == (2, 32, 32, 3) and list(labels) == [7, 3]
  assert imgs[0, 5, 9, 0] == 10 and imgs[0, 5, 9, 1] == 20 and imgs[0, 5, 9, 2] == 32 * 5 + 9
  assert imgs[0, 31, 31, 2] == 1023 % 251 and not imgs[1].any()


def test_labels_under_mock_data_and_the_not_prepared_error(tmp_path):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.create(_config("cifar10", ""), 4)
    batch = next(data.StepIterator(ds, 3))
    assert batch["image"].shape == (3, 4, 32, 32, 3) and batch["label"].shape == (3, 4)
    assert batch["label"].dtype == np.int32
    assert 0 <= batch["label"].min() <= batch["label"].max() < 10
    assert ds.reference(2).shape == (2, 32, 32, 3)
  with pytest.raises(UserError) as e:
    data.create(_config("mnist", str(tmp_path / "empty")), 4)
  message = str(e.value)
  assert "\n" not in message and "not prepared" in message
  first = message.index("python -m experiments.prepare_data mnist --source=")
  assert first < message.index("tfds build mnist")


def _mnist_case(folder, kind: str) -> None:
  arrays = _mnist_arrays()
  _write_mnist(folder, arrays)
  images_file, labels_file = archives.MNIST_FILES["test"]
  imgs, labels = arrays["test"]
  if kind == "missing":
    (folder / labels_file).unlink()
  elif kind == "magic":  # A labels file where the images file belongs.
    _write_gz(folder / images_file, _idx(0x801, labels))
  elif kind == "truncated":
    _write_gz(folder / images_file, _idx(0x803, imgs)[:-5])
  elif kind == "not_gzip":
    (folder / images_file).write_bytes(_idx(0x803, imgs))
  elif kind == "count":
    _write_gz(folder / labels_file, _idx(0x801, labels[:-1]))


@pytest.mark.parametrize(
  ("kind", "fragment"),
  [
    ("missing", "t10k-labels-idx1-ubyte.gz does not exist"),
    ("magic", "IDX magic number 0x00000801, expected 0x00000803"),
    ("truncated", "truncated or corrupt"),
    ("not_gzip", "cannot read"),
    ("count", "has 5 images but t10k-labels-idx1-ubyte.gz 4"),
  ],
)
def test_prepare_mnist_rejects(tmp_path, kind, fragment):
  _mnist_case(tmp_path / "src", kind)
  with pytest.raises(UserError, match=re.escape(fragment)) as e:
    archives.prepare_mnist(str(tmp_path / "src"), str(tmp_path / "d"))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
  ("kind", "fragment"),
  [
    ("missing", "does not exist"),
    ("no_batch", "no file cifar-10-batches-bin/data_batch_4.bin"),
    ("truncated", "test_batch.bin: 15265 bytes is not a whole number of 3073-byte records"),
    ("not_tar", "cannot read"),
  ],
)
def test_prepare_cifar10_rejects(tmp_path, kind, fragment):
  source = tmp_path / "cifar-10-binary.tar.gz"
  if kind == "no_batch":
    _write_cifar(source, _cifar_arrays(), drop="data_batch_4.bin")
  elif kind == "truncated":
    _write_cifar(source, _cifar_arrays(), truncate="test_batch.bin")
  elif kind == "not_tar":
    _write_gz(source, b"not a tar archive at all")
  with pytest.raises(UserError, match=re.escape(fragment)) as e:
    archives.prepare_cifar10(str(source), str(tmp_path / "d"))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "d").exists()


def test_prepared_copies_are_never_overwritten(prepared):
  with pytest.raises(UserError, match="already exists"):
    archives.prepare_mnist(str(prepared["root"] / "mnist"), prepared["dir"])
  assert archives.prepared_name("cifar10") == images.PREPARED_PREFIX + "cifar10"


def test_a_prepared_copy_without_the_split_is_a_one_line_error(prepared):
  c = _config("mnist", prepared["dir"])
  c.dataset.split = "validation"
  with pytest.raises(UserError, match="gen_models_mnist split 'validation'") as e:
    data.create(c, 4)
  assert "\n" not in str(e.value) and "prepare_data mnist" in str(e.value)
