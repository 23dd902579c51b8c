"""The FID Inception-v3: architecture, preprocessing, the extractor, weights and their converter.

No real weights are needed: ``random_variables`` stands in for them, and the PyTorch checkpoint
is written here in torch's own formats with stand-in classes (torch is not installed).
"""

import collections
import os
import pickle
import stat
import struct
import sys
import types
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli
from flax import traverse_util

from gen_models import UserError
from gen_models.metrics import inception as inc
from gen_models.metrics import torch_reader

# ------------------------------------------------------------------------------------------------
# The architecture, written out independently of the model code: (name, in, out, kh, kw) of every
# BasicConv2d, with the torchvision / pytorch-fid module names.


def _inception_a(name, cin, pool):
  return [
    (f"{name}.branch1x1", cin, 64, 1, 1),
    (f"{name}.branch5x5_1", cin, 48, 1, 1),
    (f"{name}.branch5x5_2", 48, 64, 5, 5),
    (f"{name}.branch3x3dbl_1", cin, 64, 1, 1),
    (f"{name}.branch3x3dbl_2", 64, 96, 3, 3),
    (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
    (f"{name}.branch_pool", cin, pool, 1, 1),
  ]


def _inception_c(name, c7):
  return [
    (f"{name}.branch1x1", 768, 192, 1, 1),
    (f"{name}.branch7x7_1", 768, c7, 1, 1),
    (f"{name}.branch7x7_2", c7, c7, 1, 7),
    (f"{name}.branch7x7_3", c7, 192, 7, 1),
    (f"{name}.branch7x7dbl_1", 768, c7, 1, 1),
    (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
    (f"{name}.branch7x7dbl_3", c7, c7, 1, 7),
    (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
    (f"{name}.branch7x7dbl_5", c7, 192, 1, 7),
    (f"{name}.branch_pool", 768, 192, 1, 1),
  ]


def _inception_e(name, cin):
  return [
    (f"{name}.branch1x1", cin, 320, 1, 1),
    (f"{name}.branch3x3_1", cin, 384, 1, 1),
    (f"{name}.branch3x3_2a", 384, 384, 1, 3),
    (f"{name}.branch3x3_2b", 384, 384, 3, 1),
    (f"{name}.branch3x3dbl_1", cin, 448, 1, 1),
    (f"{name}.branch3x3dbl_2", 448, 384, 3, 3),
    (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3),
    (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
    (f"{name}.branch_pool", cin, 192, 1, 1),
  ]


CONVS = [
  ("Conv2d_1a_3x3", 3, 32, 3, 3),
  ("Conv2d_2a_3x3", 32, 32, 3, 3),
  ("Conv2d_2b_3x3", 32, 64, 3, 3),
  ("Conv2d_3b_1x1", 64, 80, 1, 1),
  ("Conv2d_4a_3x3", 80, 192, 3, 3),
  *_inception_a("Mixed_5b", 192, 32),
  *_inception_a("Mixed_5c", 256, 64),
  *_inception_a("Mixed_5d", 288, 64),
  ("Mixed_6a.branch3x3", 288, 384, 3, 3),
  ("Mixed_6a.branch3x3dbl_1", 288, 64, 1, 1),
  ("Mixed_6a.branch3x3dbl_2", 64, 96, 3, 3),
  ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3),
  *_inception_c("Mixed_6b", 128),
  *_inception_c("Mixed_6c", 160),
  *_inception_c("Mixed_6d", 160),
  *_inception_c("Mixed_6e", 192),
  ("Mixed_7a.branch3x3_1", 768, 192, 1, 1),
  ("Mixed_7a.branch3x3_2", 192, 320, 3, 3),
  ("Mixed_7a.branch7x7x3_1", 768, 192, 1, 1),
  ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
  ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1),
  ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3),
  *_inception_e("Mixed_7b", 1280),
  *_inception_e("Mixed_7c", 2048),
]

# Conv kernels + batch-norm scale and bias, plus fc 2048 → 1008 with bias. The same count is
# torchvision's inception_v3(aux_logits=False) (23,834,568 with 1000 classes) + 8·2049.
FID_INCEPTION_PARAMS = 23_850_960
FID_INCEPTION_BN_STATS = 34_432  # running mean and variance of 17,216 channels


def test_parameter_count_is_that_of_the_fid_inception():
  from_table = sum(kh * kw * cin * cout + 2 * cout for _, cin, cout, kh, kw in CONVS)
  from_table += 2048 * 1008 + 1008
  assert len(CONVS) == 94
  assert from_table == FID_INCEPTION_PARAMS
  assert inc.num_params() == FID_INCEPTION_PARAMS
  shapes = inc.variable_shapes()
  stats = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("batch_stats/"))
  assert stats == FID_INCEPTION_BN_STATS == 2 * sum(cout for _, _, cout, _, _ in CONVS)
  assert FID_INCEPTION_PARAMS + FID_INCEPTION_BN_STATS == 23_885_392


def test_every_variable_has_the_torchvision_name_and_shape():
  expected = {"params/fc/kernel": (2048, 1008), "params/fc/bias": (1008,)}
  for name, cin, cout, kh, kw in CONVS:
    path = name.replace(".", "/")
    expected[f"params/{path}/conv/kernel"] = (kh, kw, cin, cout)
    for leaf in ("params/{}/bn/scale", "params/{}/bn/bias", "batch_stats/{}/bn/mean"):
      expected[leaf.format(path)] = (cout,)
    expected[f"batch_stats/{path}/bn/var"] = (cout,)
  assert inc.variable_shapes() == expected


def test_feature_map_sizes_at_299():
  """Strides and paddings: the spatial sizes of the torchvision Inception3 at 299×299."""
  x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
  variables = jax.eval_shape(inc.InceptionV3().init, jax.random.key(0), x)
  _, state = jax.eval_shape(
    lambda v, x: inc.InceptionV3().apply(v, x, capture_intermediates=True, mutable="intermediates"),
    variables,
    x,
  )
  got = {
    k[0]: v[0].shape
    for k, v in traverse_util.flatten_dict(state["intermediates"]).items()
    if len(k) == 2 and k[1] == "__call__"
  }
  assert got == {
    "Conv2d_1a_3x3": (1, 149, 149, 32),
    "Conv2d_2a_3x3": (1, 147, 147, 32),
    "Conv2d_2b_3x3": (1, 147, 147, 64),
    "Conv2d_3b_1x1": (1, 73, 73, 80),
    "Conv2d_4a_3x3": (1, 71, 71, 192),
    "Mixed_5b": (1, 35, 35, 256),
    "Mixed_5c": (1, 35, 35, 288),
    "Mixed_5d": (1, 35, 35, 288),
    "Mixed_6a": (1, 17, 17, 768),
    **{f"Mixed_6{c}": (1, 17, 17, 768) for c in "bcde"},
    "Mixed_7a": (1, 8, 8, 1280),
    "Mixed_7b": (1, 8, 8, 2048),
    "Mixed_7c": (1, 8, 8, 2048),
    "fc": (1, 1008),
  }


def _np_pool(x, reduce):
  """3×3, stride 1, padding 1 over (H, W) of ``(N, H, W, C)``, only pixels inside the image."""
  _, h, w, _ = x.shape
  out = np.empty_like(x)
  for i in range(h):
    for j in range(w):
      window = x[:, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
      out[:, i, j] = reduce(window, axis=(1, 2))
  return out


def test_pool_branches_have_the_fid_quirks():
  """A, C and E-7b average without the padding; E-7c max-pools (at 139×139, 7b/7c are 3×3)."""

  def run(variables, x):
    seen = {}

    def record(next_fun, args, kwargs, context):
      path = context.module.path
      if (
        context.method_name == "__call__" and path and (len(path) == 1 or path[-1] == "branch_pool")
      ):
        seen["/".join(path)] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      inc.InceptionV3().apply(variables, x)
    return seen

  x = np.random.default_rng(0).uniform(-1, 1, (1, 139, 139, 3)).astype(np.float32)
  seen = jax.device_get(jax.jit(run)(inc.random_variables(0), x))
  blocks = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"]
  for block in [*blocks, "Mixed_7b", "Mixed_7c"]:
    reduce = np.max if block == "Mixed_7c" else np.mean
    want = _np_pool(np.asarray(seen[block], np.float64), reduce)
    np.testing.assert_allclose(seen[f"{block}/branch_pool"], want, rtol=1e-5, atol=1e-6)
  assert seen["Mixed_7c"].shape[1:3] == (3, 3)


# ------------------------------------------------------------------------------------------------
# Preprocessing.


def _np_bilinear_axis(x, axis, out_size, coord_dtype):
  """torch ``F.interpolate(bilinear, align_corners=False)`` along one axis, in float64 except the
  source coordinates, computed in ``coord_dtype`` (torch's CPU kernel uses float32 for them)."""
  in_size = x.shape[axis]
  c = np.dtype(coord_dtype).type
  src = (np.arange(out_size, dtype=coord_dtype) + c(0.5)) * c(in_size / out_size) - c(0.5)
  src = np.maximum(src, c(0.0))
  i0 = np.minimum(np.floor(src).astype(int), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = (src - i0).astype(np.float64)
  shape = [1] * x.ndim
  shape[axis] = out_size
  lam = lam.reshape(shape)
  return np.take(x, i0, axis) * (1 - lam) + np.take(x, i1, axis) * lam


@pytest.mark.parametrize(
  ("h", "w"), [(32, 32), (28, 28), (2, 3), (512, 400), (40, 600), (299, 300), (598, 1196)]
)
def test_preprocess_is_torch_bilinear(h, w):
  """Up- and downsampling. Against float32 source coordinates, as torch computes them, the match
  is within 1e-5; against exact coordinates within what float32 coordinates allow (~4·size·2⁻²⁴;
  598 and 1196 are exact multiples of 299, so exact there). A wrong convention (align_corners,
  antialiasing, no clamping) is off by more than 1e-2."""
  images = np.random.default_rng(h * w).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
  got = (np.asarray(inc.preprocess(images), np.float64) + 1) / 2
  assert got.shape == (2, 299, 299, 3)
  x = images / 255.0
  for coord_dtype, atol in ((np.float32, 1e-5), (np.float64, 1e-6 + 4 * max(h, w) * 2.0**-24)):
    ref = _np_bilinear_axis(_np_bilinear_axis(x, 1, 299, coord_dtype), 2, 299, coord_dtype)
    np.testing.assert_allclose(got, ref, atol=atol, rtol=0)
  assert inc.preprocess(images).dtype == jnp.float32


def test_preprocess_at_299_does_not_resample_and_repeats_gray():
  images = np.random.default_rng(0).integers(0, 256, (2, 299, 299, 1), dtype=np.uint8)
  got = np.asarray(inc.preprocess(images))
  np.testing.assert_allclose(got, np.repeat(images / 255 * 2 - 1, 3, axis=-1), atol=1e-6)
  assert got.min() >= -1 and got.max() <= 1
  small = images[:, :40, :50]
  np.testing.assert_array_equal(inc.preprocess(small), inc.preprocess(np.repeat(small, 3, axis=-1)))


# ------------------------------------------------------------------------------------------------
# A torch checkpoint, written without torch. Stand-in classes pickle as the torch globals once
# fake ``torch`` / ``torch._utils`` modules are in ``sys.modules`` (pickle checks that a global
# can be found by its name); they are removed right after writing.


def _rebuild_tensor_v2(*args):
  raise AssertionError("never called: only pickled")


_rebuild_tensor_v2.__module__ = "torch._utils"


class _FakeStorageType:
  pass


def _storage_type(name):
  return type(name, (_FakeStorageType,), {"__module__": "torch", "__qualname__": name})


FloatStorage = _storage_type("FloatStorage")
LongStorage = _storage_type("LongStorage")
_STORAGE_TYPES = {np.dtype(np.float32): FloatStorage, np.dtype(np.int64): LongStorage}


class _Storage:
  def __init__(self, key, data):
    self.key, self.data = key, np.ascontiguousarray(data).reshape(-1)
    self.view = None  # legacy format only: (view_key, offset, numel)


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def __reduce__(self):
    args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
    return _rebuild_tensor_v2, args


class _TorchPickler(pickle.Pickler):
  def __init__(self, f, legacy):
    super().__init__(f, protocol=2)
    self.legacy = legacy

  def persistent_id(self, obj):
    if not isinstance(obj, _Storage):
      return None
    pid = ("storage", _STORAGE_TYPES[obj.data.dtype], obj.key, "cpu", obj.data.size)
    return (*pid, obj.view) if self.legacy else pid


def _install_fake_torch(monkeypatch):
  torch = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  torch._utils = utils
  for cls in _STORAGE_TYPES.values():
    setattr(torch, cls.__qualname__, cls)
  monkeypatch.setitem(sys.modules, "torch", torch)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)


@pytest.fixture
def fake_torch(monkeypatch):
  _install_fake_torch(monkeypatch)


def _contiguous(arrays):
  """``{name: array}`` → ``{name: _Tensor}``, one contiguous storage per tensor."""
  out = collections.OrderedDict()
  for i, (name, a) in enumerate(arrays.items()):
    a = np.asarray(a)
    stride = tuple(int(np.prod(a.shape[d + 1 :])) for d in range(a.ndim))
    out[name] = _Tensor(_Storage(str(i), a), 0, tuple(a.shape), stride)
  return out


def write_torch_checkpoint(path, tensors, legacy=False):
  """``torch.save(state_dict)`` of ``{name: _Tensor}``, zip (≥ 1.6) or legacy format."""
  storages = {t.storage.key: t.storage for t in tensors.values()}
  if legacy:
    with open(path, "wb") as f:
      pickle.dump(torch_reader.LEGACY_MAGIC_NUMBER, f, protocol=2)
      pickle.dump(torch_reader.LEGACY_PROTOCOL_VERSION, f, protocol=2)
      pickle.dump({"protocol_version": 1001, "little_endian": True}, f, protocol=2)
      _TorchPickler(f, legacy=True).dump(tensors)
      pickle.dump(sorted(storages), f, protocol=2)
      for key in sorted(storages):
        f.write(struct.pack("<q", storages[key].data.size))
        f.write(storages[key].data.astype(storages[key].data.dtype.newbyteorder("<")).tobytes())
    return
  with open(path + ".pkl", "wb") as f:
    _TorchPickler(f, legacy=False).dump(tensors)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.write(path + ".pkl", "archive/data.pkl")
    zf.writestr("archive/byteorder", "little")
    for key, s in storages.items():
      zf.writestr(f"archive/data/{key}", s.data.tobytes())
    zf.writestr("archive/version", "3\n")
  os.unlink(path + ".pkl")


def torch_state_dict(variables):
  """pytorch-fid names and layouts (OIHW kernels, (1008, 2048) fc) of Flax ``variables``."""
  p, s = variables["params"], variables["batch_stats"]
  out = {}
  for name, *_ in CONVS:
    path = name.split(".")
    param = p
    stat = s
    for part in path:
      param, stat = param[part], stat[part]
    out[f"{name}.conv.weight"] = np.transpose(param["conv"]["kernel"], (3, 2, 0, 1))
    out[f"{name}.bn.weight"] = param["bn"]["scale"]
    out[f"{name}.bn.bias"] = param["bn"]["bias"]
    out[f"{name}.bn.running_mean"] = stat["bn"]["mean"]
    out[f"{name}.bn.running_var"] = stat["bn"]["var"]
    out[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  out["fc.weight"] = np.asarray(p["fc"]["kernel"]).T
  out["fc.bias"] = p["fc"]["bias"]
  return out


@pytest.fixture(scope="module")
def variables():
  return inc.random_variables(7)


@pytest.fixture(scope="module")
def converted(variables, tmp_path_factory):
  """(.pth of ``variables`` in torch zip format, the .npz the CLI made of it)."""
  directory = tmp_path_factory.mktemp("weights")
  pth, npz = str(directory / "fid.pth"), str(directory / "sub" / "fid.npz")
  with pytest.MonkeyPatch.context() as mp:
    _install_fake_torch(mp)
    write_torch_checkpoint(pth, _contiguous(torch_state_dict(variables)))
  proc = run_cli("experiments.convert_inception_weights", f"--input={pth}", f"--output={npz}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "23,850,960" in proc.stdout and "warning: input sha256" in proc.stdout
  return pth, npz


def test_converted_weights_equal_the_original(variables, converted):
  loaded = traverse_util.flatten_dict(inc.load_variables(converted[1]), sep="/")
  original = traverse_util.flatten_dict(variables, sep="/")
  assert loaded.keys() == original.keys()
  for key, value in original.items():
    assert loaded[key].dtype == np.float32
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_weights_file_gets_the_umask_permissions_not_mkstemps(variables, converted, tmp_path):
  mask = os.umask(0o022)
  os.umask(mask)
  assert stat.S_IMODE(os.stat(converted[1]).st_mode) == 0o666 & ~mask  # The CLI's output.
  fc = {"params": {"fc": variables["params"]["fc"]}}
  for umask, mode in ((0o027, 0o640), (0o002, 0o664)):
    old = os.umask(umask)
    try:
      inc.save_variables(str(tmp_path / f"{umask}.npz"), fc)
    finally:
      os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / f"{umask}.npz").st_mode) == mode


def _np_basic_conv(x, torch_state, name, stride, padding):
  """torch semantics of ``name`` (Conv2d OIHW cross-correlation, zero padding; BatchNorm2d eval
  with eps 0.001; ReLU) on NHWC ``x``, in float64."""
  w = torch_state[f"{name}.conv.weight"].astype(np.float64)
  (ph, pw), (_, _, kh, kw) = padding, w.shape
  xp = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  h, wd = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
  y = 0.0
  for a in range(kh):
    for b in range(kw):
      patch = xp[:, a : a + stride * h : stride, b : b + stride * wd : stride]
      y = y + np.einsum("nhwi,oi->nhwo", patch, w[:, :, a, b])
  bn = {k: torch_state[f"{name}.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
  y = (y - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
  return np.maximum(y, 0.0)


@pytest.mark.parametrize(
  ("name", "features", "kernel", "stride", "padding", "x_shape"),
  [
    ("Conv2d_1a_3x3", 32, (3, 3), 2, (0, 0), (2, 11, 10, 3)),
    ("Mixed_6b.branch7x7_2", 128, (1, 7), 1, (0, 3), (1, 5, 9, 128)),
    ("Mixed_7b.branch3x3_2b", 384, (3, 1), 1, (1, 0), (1, 4, 3, 384)),
  ],
)
def test_converted_layers_compute_what_torch_computes(
  variables, name, features, kernel, stride, padding, x_shape
):
  """Through the converter: torch layout and semantics in, the same numbers out."""
  torch_state = torch_state_dict(variables)
  converted = inc.variables_from_torch(torch_state, "test")
  sub = {}
  for collection in ("params", "batch_stats"):
    tree = converted[collection]
    for part in name.split("."):
      tree = tree[part]
    sub[collection] = tree
  x = np.random.default_rng(0).uniform(-1, 1, x_shape).astype(np.float32)
  layer = inc.BasicConv2d(features, kernel, strides=stride, padding=padding)
  got = layer.apply(sub, x)
  want = _np_basic_conv(x, torch_state, name, stride, padding)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reader_strided_tensors_offsets_and_dtypes(tmp_path, fake_torch, legacy):
  flat = np.arange(24, dtype=np.float32) * 1.5
  shared = _Storage("s", flat)
  ints = _Storage("i", np.array([5, -3, 7], np.int64))
  tensors = collections.OrderedDict(
    transposed=_Tensor(shared, 2, (3, 4), (1, 3)),  # non-contiguous, offset 2
    rows=_Tensor(shared, 5, (2, 2), (8, 1)),  # same storage, gaps between rows
    broadcast=_Tensor(shared, 23, (2, 3), (0, 0)),  # stride 0
    scalar=_Tensor(ints, 2, (), ()),
    empty=_Tensor(shared, 0, (0, 4), (4, 1)),
  )
  path = str(tmp_path / "t.pth")
  write_torch_checkpoint(path, tensors, legacy=legacy)
  got = torch_reader.read_torch_state_dict(path)
  assert list(got) == list(tensors)
  np.testing.assert_array_equal(got["transposed"], flat[2:14].reshape(4, 3).T)
  np.testing.assert_array_equal(got["rows"], [[flat[5], flat[6]], [flat[13], flat[14]]])
  np.testing.assert_array_equal(got["broadcast"], np.full((2, 3), flat[23]))
  assert got["scalar"].dtype == np.int64 and got["scalar"].shape == () and got["scalar"] == 7
  assert got["empty"].shape == (0, 4)
  assert all(a.flags.c_contiguous and a.flags.writeable for a in got.values())


def test_reader_legacy_storage_views(tmp_path, fake_torch):
  root = _Storage("r", np.arange(10, dtype=np.float32))
  view = _Storage("r", root.data)
  view.view = ("v", 4, 5)  # elements 4..8 of storage r
  tensors = {"whole": _Tensor(root, 0, (10,), (1,)), "part": _Tensor(view, 1, (2, 2), (2, 1))}
  path = str(tmp_path / "t.pth")
  write_torch_checkpoint(path, tensors, legacy=True)
  got = torch_reader.read_torch_state_dict(path)
  np.testing.assert_array_equal(got["part"], [[5, 6], [7, 8]])
  np.testing.assert_array_equal(got["whole"], np.arange(10))


def test_reader_refuses_tensors_outside_their_storage(tmp_path, fake_torch):
  storage = _Storage("0", np.zeros(6, np.float32))
  path = str(tmp_path / "t.pth")
  write_torch_checkpoint(path, {"w": _Tensor(storage, 1, (2, 3), (3, 1))})
  with pytest.raises(UserError, match="tensor w reads beyond the end of its storage"):
    torch_reader.read_torch_state_dict(path)


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reader_refuses_other_globals(tmp_path, legacy):
  marker = tmp_path / "pwned"
  payload = collections.OrderedDict(w=_Exploit(str(marker)))
  path = str(tmp_path / "evil.pth")
  if legacy:
    with open(path, "wb") as f:
      for obj in (torch_reader.LEGACY_MAGIC_NUMBER, 1001, {}, payload):
        pickle.dump(obj, f, protocol=2)
  else:
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
  with pytest.raises(UserError) as e:
    torch_reader.read_torch_state_dict(path)
  assert f"refusing to load the global {os.system.__module__}.system" in str(e.value)
  assert not marker.exists()


@pytest.mark.parametrize(
  ("content", "message"),
  [
    (b"not a checkpoint at all", "is not a PyTorch checkpoint"),
    (None, "is a zip archive but not a PyTorch checkpoint"),
  ],
)
def test_reader_refuses_non_checkpoints(tmp_path, content, message):
  path = str(tmp_path / "x.pth")
  if content is None:
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("readme.txt", "hello")
  else:
    with open(path, "wb") as f:
      f.write(content)
  with pytest.raises(UserError, match=message):
    torch_reader.read_torch_state_dict(path)


def test_torch_names_are_checked(variables):
  state = torch_state_dict(variables)
  extra = {**state, "AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1), np.float32)}
  with pytest.raises(UserError, match="unexpected tensor AuxLogits.conv0.conv.weight"):
    inc.variables_from_torch(extra, "x.pth")
  missing = {k: v for k, v in state.items() if k != "Mixed_6c.branch7x7_2.bn.running_var"}
  with pytest.raises(UserError, match="no tensor for Inception variable batch_stats/Mixed_6c/"):
    inc.variables_from_torch(missing, "x.pth")
  wrong = {**state, "fc.weight": np.zeros((1000, 2048), np.float32)}
  with pytest.raises(UserError, match=r"tensor fc.weight has the wrong shape \(1000, 2048\)"):
    inc.variables_from_torch(wrong, "x.pth")


def test_load_variables_checks_keys_and_shapes(variables, tmp_path):
  flat = traverse_util.flatten_dict(variables, sep="/")
  with pytest.raises(UserError, match="unexpected variable params/extra"):
    inc.check_variables({**flat, "params/extra": np.zeros(1)}, "w.npz")
  key = "params/Mixed_7c/branch_pool/conv/kernel"
  with pytest.raises(UserError, match=f"variable {key} has shape \\(1, 1, 2048, 191\\)"):
    inc.check_variables({**flat, key: np.zeros((1, 1, 2048, 191), np.float32)}, "w.npz")
  path = str(tmp_path / "partial.npz")
  inc.save_variables(path, {"params": {"fc": variables["params"]["fc"]}})
  with pytest.raises(UserError, match="missing Inception variable batch_stats/Conv2d_1a_3x3"):
    inc.load_variables(path)
  (tmp_path / "bad.npz").write_bytes(b"garbage")
  with pytest.raises(UserError, match="cannot read Inception weights"):
    inc.load_variables(str(tmp_path / "bad.npz"))


def test_weights_location(monkeypatch, tmp_path):
  monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  default = str(tmp_path / "cache" / "gen_models" / "inception_v3_fid.npz")
  assert inc.default_weights_path() == default
  with pytest.raises(UserError) as e:
    inc.resolve_weights(None, flag="--inception_weights")
  message = str(e.value)
  assert "\n" not in message
  assert inc.TORCH_WEIGHTS_URL in message
  assert (
    "python -m experiments.convert_inception_weights "
    f"--input=pt_inception-2015-12-05-6726825d.pth --output={default}"
  ) in message
  assert "--inception_weights=PATH" in message and "$GEN_MODELS_INCEPTION_WEIGHTS" in message
  other = tmp_path / "w.npz"
  other.write_bytes(b"")
  monkeypatch.setenv(inc.WEIGHTS_ENV, str(other))
  assert inc.default_weights_path() == inc.resolve_weights(None) == str(other)
  with pytest.raises(UserError, match="not found at /nonexistent/w.npz"):
    inc.resolve_weights("/nonexistent/w.npz")


def test_cli_missing_input_is_one_line_error(tmp_path):
  proc = run_cli(
    "experiments.convert_inception_weights",
    f"--input={tmp_path}/nope.pth",
    f"--output={tmp_path}/w.npz",
  )
  assert_one_line_error(proc, "nope.pth does not exist")
  assert not (tmp_path / "w.npz").exists()


# ------------------------------------------------------------------------------------------------
# The extractor. One shared compiled extractor (8 devices) with the converted weights; others
# with the original weights and other batch sizes / device counts must agree with it.

N = 5


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(1).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def extractor(converted):
  return inc.InceptionExtractor(inc.load_variables(converted[1]), batch_size=8)


@pytest.fixture(scope="module")
def reference(extractor, images):
  return extractor(images)


def test_outputs_shapes_determinism_and_one_compile(extractor, images, reference, variables):
  features, logits = reference
  fc = torch_state_dict(variables)
  # The published IS code's logits: pool3 @ W, without the fc bias.
  np.testing.assert_allclose(
    logits, features @ fc["fc.weight"].T.astype(np.float64), rtol=1e-4, atol=1e-4
  )
  assert extractor.batch_size == 8 and extractor.mesh.devices.size == 8
  assert features.shape == (N, 2048) and logits.shape == (N, 1008)
  assert features.dtype == logits.dtype == np.float32
  assert np.all(np.isfinite(features)) and np.all(np.isfinite(logits))
  assert np.all(features >= 0)  # the mean of ReLU outputs
  assert np.std(features) > 0.01 and np.std(logits) > 0.01  # random weights, not degenerate
  traces = extractor.num_traces  # (32, 32, 3) is compiled: `reference` ran
  again = extractor(images)
  calls = []
  more = np.concatenate([images, images[::-1], images[:1]])  # 11 images: two batches
  f11, _ = extractor(more, progress=lambda done, total: calls.append((done, total)))
  assert calls == [(8, 11), (11, 11)]
  np.testing.assert_array_equal(again[0], features)
  np.testing.assert_array_equal(again[1], logits)
  np.testing.assert_allclose(f11[:N], features, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(f11[N : 2 * N], features[::-1], rtol=1e-5, atol=1e-6)
  assert extractor(images[:0])[0].shape == (0, 2048)
  assert extractor.num_traces == traces  # N = 5, 11, 0: no new compilation


@pytest.mark.parametrize(("batch_size", "num_devices"), [(2, 1), (8, 2)])
def test_independent_of_batch_size_and_devices(
  variables, images, reference, batch_size, num_devices
):
  extractor = inc.InceptionExtractor(variables, batch_size, jax.devices()[:num_devices])
  features, logits = extractor(images)
  assert extractor.num_traces == 1  # batch size 2: three batches, the last one padded
  np.testing.assert_allclose(features, reference[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits, reference[1], rtol=1e-5, atol=1e-5)


def test_grayscale_is_three_equal_channels(extractor, images, reference):
  gray = images[..., :1]
  traces = extractor.num_traces  # (32, 32, 3) is compiled: `reference` ran
  got = extractor(gray[:3])
  want = extractor(np.repeat(gray[:3], 3, axis=-1))
  extractor(gray)
  assert extractor.num_traces == traces + 1  # one per new (H, W, C), not per N
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])


def test_extractor_refuses_bad_images(extractor):
  with pytest.raises(UserError, match="uint8 images of shape"):
    extractor(np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(UserError, match="uint8 images of shape"):
    extractor(np.zeros((2, 32, 32, 4), np.uint8))


def test_inception_score_uses_the_unbiased_logits(variables, reference):
  """IS of the extractor's logits = IS recomputed in float64 from pool3 and the fc kernel alone
  (the published code's logits; the bias is never added). Compared as log IS = mean KL, since
  random weights give IS close to 1."""
  from gen_models.metrics.inception_score import inception_score

  features, logits = reference
  fc = torch_state_dict(variables)
  pool3_w = features.astype(np.float64) @ fc["fc.weight"].T.astype(np.float64)
  ours = inception_score(logits=logits, splits=1)[0]
  recomputed = inception_score(logits=pool3_w, splits=1)[0]
  assert np.log(recomputed) > 1e-6  # Not degenerate: the KL term is measurable.
  # 1e-4: the fc bias would move log IS by 2e-3 here (measured), so this tells them apart.
  np.testing.assert_allclose(np.log(ours), np.log(recomputed), rtol=1e-4)
