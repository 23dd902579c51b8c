"""Reads a PyTorch ``state_dict`` checkpoint (``.pth``) into numpy arrays, without torch.

Used once, to convert published weights (``experiments/convert_inception_weights.py``); the
project never reads pickles at run time. Two on-disk formats exist:

- **zip** (``torch.save`` since PyTorch 1.6): a zip archive with ``<prefix>/data.pkl``, a pickle
  of the ``OrderedDict`` of tensors, and one raw little-endian file ``<prefix>/data/<key>`` per
  storage (``<prefix>/byteorder`` may say ``big``).
- **legacy** (PyTorch 0.4 – 1.5, e.g. files from 2019): consecutive pickles ``MAGIC_NUMBER``,
  ``PROTOCOL_VERSION``, ``sys_info``, the object, the list of storage keys; then for each key an
  int64 element count followed by the raw storage bytes.

In both, a tensor is pickled as ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size,
stride, requires_grad, backward_hooks[, metadata])`` and a storage as the persistent id
``("storage", torch.FloatStorage, key, location, numel)`` (legacy: plus ``view_metadata``).

The unpickler is restricted: :meth:`_RestrictedUnpickler.find_class` resolves only
``collections.OrderedDict``, the two tensor-rebuild functions (replaced by local stand-ins that
record the arguments) and the ``torch.*Storage`` type names (mapped to numpy dtypes); any other
global, e.g. ``os.system``, is refused before anything is called. Tensors are rebuilt with
``numpy.lib.stride_tricks.as_strided`` after a bounds check, and copied.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from gen_models.errors import UserError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

STORAGE_DTYPES: dict[str, np.dtype] = {
  "FloatStorage": np.dtype(np.float32),
  "DoubleStorage": np.dtype(np.float64),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """What ``torch.FloatStorage`` & co. unpickle to: just the element type."""

  name: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  """A storage named by a persistent id; ``view_offset`` elements into the stored one."""

  key: str
  dtype: np.dtype
  numel: int
  view_offset: int = 0


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  """The arguments of ``_rebuild_tensor_v2``; materialized once the storages are read."""

  storage: _StorageRef
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused) -> _TensorRef:
  del unused  # requires_grad, backward_hooks, metadata: irrelevant for arrays.
  if not isinstance(storage, _StorageRef):
    raise pickle.UnpicklingError("a tensor without a storage")
  try:
    return _TensorRef(
      storage, _index(storage_offset), tuple(map(_index, size)), tuple(map(_index, stride))
    )
  except TypeError:
    raise pickle.UnpicklingError("a tensor with a non-integer size, stride or offset") from None


def _rebuild_parameter(data, *unused) -> _TensorRef:
  del unused  # requires_grad, backward_hooks.
  if not isinstance(data, _TensorRef):
    raise pickle.UnpicklingError("a parameter that is not a tensor")
  return data


def _index(x: Any) -> int:
  if type(x) is not int or x < 0:
    raise TypeError(x)
  return x


def _text(x: Any) -> str:
  return x.decode("ascii") if isinstance(x, bytes) else str(x)


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles state dicts only; records the storages that persistent ids name."""

  def __init__(self, file, legacy: bool):
    super().__init__(file)
    self.legacy = legacy
    self.storages: dict[str, _StorageRef] = {}  # key → the whole stored storage

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name, STORAGE_DTYPES[name])
    raise pickle.UnpicklingError(
      f"refusing to load the global {module}.{name} (only tensors in an OrderedDict are allowed)"
    )

  def persistent_load(self, pid: Any) -> _StorageRef:
    if not isinstance(pid, tuple) or not pid or _text(pid[0]) != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
    fields = pid[1:]
    if len(fields) != (5 if self.legacy else 4):
      raise pickle.UnpicklingError(f"malformed storage id {str(pid)[:80]}")
    storage_type, key, _location, numel = fields[:4]
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
    try:
      root = _StorageRef(_text(key), storage_type.dtype, _index(numel))
    except TypeError:
      raise pickle.UnpicklingError(f"malformed storage id {str(pid)[:80]}") from None
    if self.storages.setdefault(root.key, root) != root:
      raise pickle.UnpicklingError(f"storage {root.key} is named with two types or sizes")
    view = fields[4] if self.legacy else None
    if view is None:
      return root
    try:
      _, offset, view_numel = view
      offset, view_numel = _index(offset), _index(view_numel)
    except (TypeError, ValueError):
      raise pickle.UnpicklingError(f"malformed storage view {str(view)[:80]}") from None
    if offset + view_numel > root.numel:
      raise pickle.UnpicklingError(f"storage view beyond storage {root.key}")
    return _StorageRef(root.key, root.dtype, view_numel, offset)


def _materialize(t: _TensorRef, flat: np.ndarray, name: str) -> np.ndarray:
  """The tensor ``t`` as a new C-contiguous array; ``flat`` is its whole stored storage."""
  try:  # Checked again here: a pickle can overwrite attributes after construction (BUILD).
    view_start, view_numel = _index(t.storage.view_offset), _index(t.storage.numel)
    start = view_start + _index(t.offset)
    size, stride = tuple(map(_index, t.size)), tuple(map(_index, t.stride))
  except (TypeError, AttributeError):
    raise UserError(f"tensor {name} has a malformed size, stride or offset") from None
  if len(size) != len(stride):
    raise UserError(f"tensor {name}: size {size} and stride {stride} differ in length")
  if 0 in size:
    return np.zeros(size, flat.dtype)
  last = start + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
  if last >= view_start + view_numel or last >= flat.size:
    raise UserError(f"tensor {name} reads beyond the end of its storage {t.storage.key}")
  strides = [s * flat.itemsize for s in stride]
  view = np.lib.stride_tricks.as_strided(flat[start:], size, strides, writeable=False)
  return np.array(view, copy=True, order="C")


def _storage_array(data: bytes, ref: _StorageRef, byteorder: str) -> np.ndarray:
  nbytes = ref.numel * ref.dtype.itemsize
  if len(data) < nbytes:
    raise UserError(f"storage {ref.key} is truncated ({len(data)} of {nbytes} bytes)")
  dtype = ref.dtype.newbyteorder(byteorder) if ref.dtype.itemsize > 1 else ref.dtype
  return np.frombuffer(data, dtype, ref.numel).astype(ref.dtype)


def _collect(obj: Any, storages: Callable[[_StorageRef], np.ndarray]) -> dict[str, np.ndarray]:
  if not isinstance(obj, dict):
    raise UserError(f"the checkpoint holds a {type(obj).__name__}, not a state dict")
  out = {}
  for name, value in obj.items():
    if not isinstance(name, str) or not isinstance(value, _TensorRef):
      raise UserError(f"the state dict entry {str(name)[:80]} is not a named tensor")
    out[name] = _materialize(value, storages(value.storage), name)
  return out


def _read_zip(path: str) -> dict[str, np.ndarray]:
  with zipfile.ZipFile(path) as zf:
    pickles = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise UserError(f"{path} is a zip archive but not a PyTorch checkpoint (no <dir>/data.pkl)")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "<"
    if f"{prefix}byteorder" in zf.namelist():
      byteorder = {b"little": "<", b"big": ">"}.get(zf.read(f"{prefix}byteorder").strip())
      if byteorder is None:
        raise UserError(f"{path}: unknown byteorder record")
    with zf.open(pickles[0]) as f:
      unpickler = _RestrictedUnpickler(f, legacy=False)
      obj = unpickler.load()
    cache: dict[str, np.ndarray] = {}

    def storage(ref: _StorageRef) -> np.ndarray:
      if ref.key not in cache:
        name = f"{prefix}data/{ref.key}"
        try:
          data = zf.read(name)
        except KeyError:
          raise UserError(f"{path}: storage record {name} is missing") from None
        cache[ref.key] = _storage_array(data, unpickler.storages[ref.key], byteorder)
      return cache[ref.key]

    return _collect(obj, storage)


def _read_legacy(path: str) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:

    def load(legacy: bool = True) -> tuple[Any, _RestrictedUnpickler]:
      unpickler = _RestrictedUnpickler(f, legacy=legacy)
      return unpickler.load(), unpickler

    try:
      magic, _ = load()
    except Exception:  # Any garbage: whatever the pickle module makes of it.
      magic = None
    if magic != LEGACY_MAGIC_NUMBER:
      raise UserError(
        f"{path} is not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file)"
      )
    version, _ = load()
    if version != LEGACY_PROTOCOL_VERSION:
      raise UserError(f"{path}: unsupported legacy torch.save protocol version {version!r}")
    sys_info, _ = load()
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    byteorder = "<" if little else ">"
    obj, unpickler = load()
    keys, _ = load()
    if not isinstance(keys, list) or set(map(_text, keys)) != set(unpickler.storages):
      raise UserError(f"{path}: the storage key list does not match the tensors")
    arrays = {}
    for key in map(_text, keys):
      ref = unpickler.storages[key]
      header = f.read(8)
      if len(header) != 8:
        raise UserError(f"{path}: storage {key} is truncated")
      (numel,) = struct.unpack("<q" if little else ">q", header)
      if numel != ref.numel:
        raise UserError(f"{path}: storage {key} has {numel} elements, expected {ref.numel}")
      arrays[key] = _storage_array(f.read(numel * ref.dtype.itemsize), ref, byteorder)
  return _collect(obj, lambda ref: arrays[ref.key])


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """``{name: array}`` of a PyTorch ``state_dict`` file (zip or legacy format), no torch needed.

  Arrays keep the checkpoint's dtype (``float32`` for ``FloatStorage``) in native byte order and
  the tensors' logical (row-major) layout, whatever their strides in the file. Every failure —
  missing file, not a checkpoint, a refused global, a tensor outside its storage — raises a
  one-line :class:`UserError`.
  """
  if not os.path.isfile(path):
    raise UserError(f"checkpoint {path} does not exist")
  try:
    if zipfile.is_zipfile(path):
      return _read_zip(path)
    return _read_legacy(path)
  except UserError:
    raise
  except pickle.UnpicklingError as e:
    raise UserError(f"cannot read {path}: {e}") from None
  except Exception as e:  # Malformed input surfaces as many types (EOFError, TypeError, ...).
    raise UserError(f"cannot read {path}: {type(e).__name__}: {e}") from None
