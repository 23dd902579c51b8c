r"""Compile a train step for accelerators this host does not have, and read what the compiler says.

XLA's TPU and GPU compilers run without the chip: ``libtpu`` (``pip install 'jax[tpu]'``) and the
CUDA plugin (``jax-cuda13-plugin`` + ``jax-cuda13-pjrt``, no NVIDIA wheels, no driver, with
``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1``) give compile-only devices through
``jax.experimental.topologies.get_topology_desc``. ``jax.jit(step).lower(abstract state,
abstract batch).compile()`` then gives, per device:

* ``memory_analysis()``: argument, output, aliased (donated) and temporary bytes;
* ``cost_analysis()`` (TPU only; None on the GPU path): FLOPs and bytes accessed;
* the optimised program (``as_text()``): collectives, and on a GPU its kernels — fusions and
  cuBLAS / cuDNN / Triton custom calls.

From those, per step and device: a **roofline floor** ``max(FLOPs / peak, bytes / bandwidth)``
with the chip's data-sheet peaks (:data:`CHIPS`), on a GPU a **launch floor** ``kernels ×
launch_s``, a **collective time** ``bytes / interconnect bandwidth``, and a **projected**
examples/s. A projection is a floor from the compiler's counts and a data sheet, not a timing.

A step is traced inside ``platform.target(target.platform)``, so ``auto`` choices (conv forms,
population execution) are the target's, not this host's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_models import devices as dev
from gen_models import platform
from gen_models.errors import UserError

GiB = 2**30


class DoesNotFit(UserError):
  """The target's compiler refused the step for lack of device memory (the TPU compiler does)."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator's data-sheet facts.

  Attributes:
    name: short name (``v5e``, ``h100``).
    platform: ``tpu`` or ``gpu``.
    memory_bytes: device memory.
    peak_flops: dense FLOP/s by compute dtype (``bfloat16``; ``float32`` = what XLA's default
      precision runs a float32 matmul at: TF32 on these GPUs, one bf16 pass on a TPU's MXU).
    hbm_bytes_per_s: device memory bandwidth.
    link_bytes_per_s: all-reduce bandwidth per chip within a slice / node (one direction).
    scaleout_bytes_per_s: per chip between hosts where that differs (GPU nodes), else None.
    source: the data sheet.
    gpu: GPUs: the facts of :func:`_gpu_config` beyond memory and bandwidth (SMs, clock, L2,
      shared memory per SM, compute capability, device name).
  """

  name: str
  platform: str
  memory_bytes: int
  peak_flops: dict
  hbm_bytes_per_s: float
  link_bytes_per_s: float
  source: str
  scaleout_bytes_per_s: float | None = None
  gpu: dict | None = None

  @property
  def target_config(self) -> str:
    """GPUs: the ``GpuTargetConfigProto`` text handed to XLA; "" for a TPU."""
    if self.gpu is None:
      return ""
    return _gpu_config(memory=self.memory_bytes, bandwidth=self.hbm_bytes_per_s, **self.gpu)


def _gpu_config(
  *, sms: int, clock_ghz: float, memory: int, bandwidth: float, l2: int, smem_core: int,
  major: int, minor: int, kind: str
) -> str:  # fmt: skip
  """A ``GpuTargetConfigProto`` in text form from a GPU's published facts (CUDA's per-SM limits
  for the compute capability; the deviceless compiler reads only ``gpu_device_info``,
  ``platform_name``, ``dnn_version_info`` and ``device_description_str``)."""
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {smem_core}
  threads_per_core_limit: 2048
  core_count: {sms}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(bandwidth)}
  l2_cache_size: {l2}
  clock_rate_ghz: {clock_ghz}
  device_memory_size: {memory}
  shared_memory_per_block_optin: {smem_core - 1024}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{kind}"
"""


_NV_LINK = "NVLink 4: 900 GB/s bidirectional per GPU, 450 GB/s each way"
CHIPS = {
  "v5e": Chip(
    "v5e",
    "tpu",
    16 * GiB,
    {"bfloat16": 197e12, "float32": 197e12},
    819e9,
    200e9,
    "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, ICI 1,600 Gbps",
  ),
  "v4": Chip(
    "v4",
    "tpu",
    32 * GiB,
    {"bfloat16": 275e12, "float32": 275e12},
    1200e9,
    300e9,
    "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s, ICI 2,400 Gbps",
  ),
  "v5p": Chip(
    "v5p",
    "tpu",
    95 * 10**9,
    {"bfloat16": 459e12, "float32": 459e12},
    2765e9,
    600e9,
    "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB HBM2e at 2,765 GB/s, ICI 4,800 Gbps",
  ),
  "v6e": Chip(
    "v6e",
    "tpu",
    32 * GiB,
    {"bfloat16": 918e12, "float32": 918e12},
    1640e9,
    448e9,
    "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM at 1,640 GB/s, ICI 3,584 Gbps",
  ),
  "h100": Chip(
    "h100",
    "gpu",
    85_520_809_984,
    {"bfloat16": 989e12, "float32": 495e12},
    3.35e12,
    450e9,
    "NVIDIA H100 SXM5 data sheet: 989 TFLOP/s bf16 and 495 TF32 dense, 80 GB HBM3 at 3.35 TB/s, "
    f"{_NV_LINK}; DGX H100: 8× ConnectX-7 400 Gb/s (50 GB/s per GPU) between nodes",
    scaleout_bytes_per_s=50e9,
    gpu=dict(
      sms=132,
      clock_ghz=1.98,
      l2=50 * 2**20,
      smem_core=233472,
      major=9,
      minor=0,
      kind="NVIDIA H100 80GB HBM3",
    ),
  ),
  "h200": Chip(
    "h200",
    "gpu",
    150_754_820_096,
    {"bfloat16": 989e12, "float32": 495e12},
    4.8e12,
    450e9,
    "NVIDIA H200 SXM data sheet: 989 TFLOP/s bf16 and 495 TF32 dense, 141 GB HBM3e at 4.8 TB/s, "
    f"{_NV_LINK}; 400 Gb/s (50 GB/s) per GPU between nodes",
    scaleout_bytes_per_s=50e9,
    gpu=dict(
      sms=132,
      clock_ghz=1.98,
      l2=50 * 2**20,
      smem_core=233472,
      major=9,
      minor=0,
      kind="NVIDIA H200",
    ),
  ),
  "a100": Chip(
    "a100",
    "gpu",
    85_899_345_920,
    {"bfloat16": 312e12, "float32": 156e12},
    2.039e12,
    300e9,
    "NVIDIA A100 SXM4 80GB data sheet: 312 TFLOP/s bf16 and 156 TF32 dense, 80 GB HBM2e at "
    "2,039 GB/s, NVLink 3: 600 GB/s bidirectional; 200 Gb/s (25 GB/s) per GPU between DGX nodes",
    scaleout_bytes_per_s=25e9,
    gpu=dict(
      sms=108,
      clock_ghz=1.41,
      l2=40 * 2**20,
      smem_core=167936,
      major=8,
      minor=0,
      kind="NVIDIA A100-SXM4-80GB",
    ),
  ),
}
# Per kernel on a GPU (seconds): fitted, with a compute efficiency of 25 % of the peak, on the
# toy, β-VAE and ResNet rows of experiments/results/bench_train_all_h200_2026-11-26.json (H200,
# 2026-11-26; 3 of 6 rows; docs/BENCHMARKS.md, "Before you rent accelerators"). The projections
# use it with the peak itself, so they stay floors.
GPU_LAUNCH_S = 3.3e-6
SCALING_CHIPS = (8, 16, 64, 256)  # Chip counts of the projected weak scaling (project()).


@dataclasses.dataclass(frozen=True)
class Target:
  """A compile target: ``tpu:<topology>`` (``tpu:v5e:2x2``) or ``gpu:<chip>[x<n>][x<hosts>]``
  (``gpu:h100``, ``gpu:h100x8``: 8 GPUs on one host, ``gpu:h100x8x2``: 2 hosts of 8)."""

  spec: str
  chip: Chip
  topology: str
  hosts: int = 1

  @property
  def platform(self) -> str:
    return self.chip.platform


def parse_target(spec: str) -> Target:
  """``"tpu:v5e:2x2"`` / ``"gpu:h100x8"`` → :class:`Target`; a :class:`UserError` otherwise."""
  kind, _, rest = spec.strip().partition(":")
  tpus = ", ".join(c for c, v in CHIPS.items() if v.platform == "tpu")
  gpus = ", ".join(c for c, v in CHIPS.items() if v.platform == "gpu")
  known = f"known: tpu:<{tpus}>:<topology> (tpu:v5e:2x2), gpu:<{gpus}>[x<gpus>[x<hosts>]]"
  if kind == "tpu":
    chip, _, shape = rest.partition(":")
    if chip not in CHIPS or CHIPS[chip].platform != "tpu" or not re.fullmatch(r"\d+(x\d+)+", shape):
      raise UserError(f"unknown target {spec!r}; {known}")
    return Target(spec, CHIPS[chip], rest)
  m = re.fullmatch(r"([a-z0-9]+?)(?:x(\d+))?(?:x(\d+))?", rest)
  if kind != "gpu" or not m or m.group(1) not in CHIPS or CHIPS[m.group(1)].platform != "gpu":
    raise UserError(f"unknown target {spec!r}; {known}")
  gpus, hosts = int(m.group(2) or 1), int(m.group(3) or 1)
  if gpus < 1 or hosts < 1:
    raise UserError(f"unknown target {spec!r}; {known}")
  return Target(spec, CHIPS[m.group(1)], f"{hosts}x1x{gpus}", hosts)


def compiler_installed(platform_name: str) -> bool:
  """Whether the compiler for ``tpu`` (libtpu) or ``gpu`` (the CUDA 13 plugin) is installed."""
  if platform_name == "tpu":
    return importlib.util.find_spec("libtpu") is not None
  try:
    return importlib.util.find_spec("jax_plugins.xla_cuda13") is not None
  except ModuleNotFoundError:  # No jax_plugins package at all.
    return False


def target_devices(target: Target) -> list:
  """The target's compile-only devices (a one-line :class:`UserError` if the compiler is not
  installed or rejects the topology)."""
  from jax.experimental import topologies

  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # Never ask a metadata server.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # No chip to lock: compile only.
  try:
    if target.platform == "tpu":
      dims = [int(d) for d in target.topology.partition(":")[2].split("x")]
      extra = {}
      if math.prod(dims) < 4:  # One host of fewer chips than the default 2x2x1 per host.
        extra["chips_per_host_bounds"] = (dims + [1, 1])[:3]
      topo = topologies.get_topology_desc(platform="tpu", topology_name=target.topology, **extra)
    else:
      os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
      topo = topologies.get_topology_desc(
        "cuda", "cuda", topology=target.topology, target_config=target.chip.target_config
      )
  except Exception as e:  # The plugin is missing, or rejects the topology.
    line = " ".join(str(e).split())[:300]
    if not compiler_installed(target.platform):
      extra = "tpu" if target.platform == "tpu" else "gpu-compile"
      line += f" (its compiler is not installed: pip install -e '.[{extra}]')"
    raise UserError(f"cannot make devices for target {target.spec!r}: {line}") from None
  return list(topo.devices)


# ----------------------------------------------------------------------------------------------
# Reading the optimised program.

_DTYPE_BYTES = {
  "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
  "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
  "s4": 1, "u4": 1, "token": 0,
}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*\))?\s*->.*\{\s*$")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_NO_KERNEL = {
  "parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "conditional",
  "call", "after-all", "partition-id", "replica-id", "add-dependency", "opt-barrier",
  "copy-start", "copy-done", "send-done", "recv-done", "iota",
}  # fmt: skip


def shape_bytes(type_text: str) -> int:
  """Bytes of an HLO type (``f32[64,128]{1,0}`` or a tuple of them)."""
  total = 0
  for dtype, dims in _ARRAY.findall(type_text):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


@dataclasses.dataclass
class _Instr:
  name: str
  type: str
  opcode: str
  rest: str


def _computations(hlo: str) -> tuple[dict[str, list[_Instr]], str]:
  """``{computation name: instructions}`` and the entry computation's name."""
  comps: dict[str, list[_Instr]] = {}
  entry, current = "", None
  for line in hlo.splitlines():
    m = _COMP.match(line)
    if m and not line.startswith(" "):
      current = m.group(2)
      comps[current] = []
      if m.group(1):
        entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    if current is None:
      continue
    m = _INSTR.match(line)
    if m:
      comps[current].append(_Instr(m.group(1), m.group(2), m.group(3), m.group(4)))
  return comps, entry


def _trip_count(rest: str, condition: list[_Instr]) -> int:
  """A while loop's trip count: XLA's ``known_trip_count`` (GPU), else the bound ``N`` of a
  condition ``counter < constant(N)`` (the TPU program omits the annotation; a ``scan`` counts
  from 0 by 1), else 1."""
  m = re.search(r'known_trip_count"?\s*[:=]\s*\{\s*"?n"?\s*[:=]\s*"?(\d+)', rest)
  if m:
    return int(m.group(1))
  consts = {i.name: i.rest for i in condition if i.opcode == "constant"}
  for ins in condition:
    if ins.opcode == "compare" and "direction=LT" in ins.rest:
      for name in re.findall(r"%([\w.\-]+)", ins.rest.split(")", 1)[0]):
        c = re.match(r"\s*(\d+)\)", consts.get(name, ""))
        if c:
          return int(c.group(1))
  return 1


def _executions(comps: dict[str, list[_Instr]], entry: str) -> dict[str, int]:
  """How many times each control-flow computation runs per call of the entry computation:
  while bodies × their known trip count, called computations and conditional branches (each
  counted as if taken). Fused and reducer computations are not listed."""
  runs: Counter = Counter({entry: 1})
  order = [entry]
  for comp in order:
    for ins in comps.get(comp, []):
      called: list[tuple[str, int]] = []
      if ins.opcode == "while":
        cond = re.search(r"condition=%?([\w.\-]+)", ins.rest)
        trips = _trip_count(ins.rest, comps.get(cond.group(1), []) if cond else [])
        for key in ("body", "condition"):
          m = re.search(rf"{key}=%?([\w.\-]+)", ins.rest)
          if m:
            called.append((m.group(1), trips))
      elif ins.opcode == "call":
        m = re.search(r"to_apply=%?([\w.\-]+)", ins.rest)
        if m:
          called.append((m.group(1), 1))
      elif ins.opcode == "conditional":
        m = re.search(r"branch_computations=\{([^}]*)\}", ins.rest)
        for name in m.group(1).split(",") if m else []:
          called.append((name.strip().lstrip("%"), 1))
      for name, times in called:
        if name in comps:
          if name not in runs:
            order.append(name)
          runs[name] += runs[comp] * times
  return dict(runs)


def program_stats(hlo: str) -> dict:
  """Per call of an optimised HLO module (``compiled.as_text()``), loops counted by their trip
  counts:

  * ``collectives``: ``{kind: {"count", "bytes"}}`` — an async ``*-start`` counts once; bytes
    are the result's (for an all-reduce: the bytes reduced; for an all-gather: the gathered
    result);
  * ``kernels``: ``{"fusion", "gemm_fusion" (Triton matmuls), "cublas", "cudnn", "triton",
    "custom_other", "collective", "other", "total"}`` — the launches of a GPU program (on a
    TPU: its fusions and ops);
  * ``kernel_bytes``: bytes read and written by those kernels (operands + results; a
    memory-traffic estimate where the compiler gives none);
  * ``convolutions``: convolutions, fused or not.
  """
  comps, entry = _computations(hlo)
  runs = _executions(comps, entry)
  coll: dict[str, dict[str, int]] = {}
  kernels: Counter = Counter()
  traffic = 0
  for comp, times in runs.items():
    types = {ins.name: ins.type for ins in comps[comp]}
    for ins in comps[comp]:
      op = ins.opcode
      base = op[: -len("-start")] if op.endswith("-start") else op
      if op.endswith("-done") or op in _NO_KERNEL:
        continue
      if base in COLLECTIVES:
        size = shape_bytes(ins.type)
        if op.endswith("-start") and ins.type.startswith("("):
          parts = _ARRAY.findall(ins.type)  # (operands..., results...): the results' half.
          size = shape_bytes(" ".join(f"{d}[{s}]" for d, s in parts[len(parts) // 2 :]))
        c = coll.setdefault(base, {"count": 0, "bytes": 0})
        c["count"] += times
        c["bytes"] += times * size
        kernels["collective"] += times
        continue
      if op == "fusion":
        how = re.search(r'"fusion_backend_config":\{"kind":"([^"]+)"', ins.rest)
        how = how.group(1).lower() if how else ""
        kind = "gemm_fusion" if "gemm" in how else "cudnn" if "cudnn" in how else "fusion"
      elif op == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', ins.rest)
        t = target.group(1).lower() if target else ""
        kind = next((k for k in ("cublas", "cudnn", "triton") if k in t), "custom_other")
      else:
        kind = "other"
      kernels[kind] += times
      operands = re.findall(r"%([\w.\-]+)", ins.rest.split(")", 1)[0])
      read = sum(shape_bytes(types.get(o, "")) for o in operands)
      traffic += times * (shape_bytes(ins.type) + read)
  kernels["total"] = sum(kernels.values())
  conv = len(re.findall(r"\bconvolution\(|__cudnn\$conv", hlo))
  return {
    "collectives": coll,
    "kernels": dict(kernels),
    "kernel_bytes": traffic,
    "convolutions": conv,
  }


# ----------------------------------------------------------------------------------------------
# Compiling a step.


@dataclasses.dataclass
class Step:
  """A train step ready to lower: ``fn(state, batch)`` with abstract (shape-only, sharded)
  arguments, on ``mesh``; ``examples`` = examples consumed per call (all members)."""

  fn: Callable
  state: object
  batch: object
  in_shardings: tuple
  out_shardings: tuple
  examples: int
  members: int
  execution: str


def _abstract(tree, sharding):
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


def build_step(config: ml_collections.ConfigDict, example_shape: Sequence[int], devices) -> Step:
  """``config``'s train step as the trainer jits it, on ``devices``, with abstract arguments:
  a single run (state replicated, batch ``(n_critic, B, *shape)`` split over ``data``) or, when
  ``config`` sets a population, the members' step (state ``(N, …)``, batch ``(N, n_critic, B,
  *shape)``) on the ``members × data`` mesh the trainer would build. Call it inside
  ``platform.target(...)`` so ``auto`` resolves for the target.

  Raises:
    UserError: the batch does not divide the devices, or a bad population setting.
  """
  from gen_models import models
  from gen_models import population as pop

  family = models.make_family(config, tuple(example_shape))
  k, b = family.batches_per_step, int(config.batch_size)
  if pop.is_population(config):
    members = pop.check(config)
    n = len(members)
    execution = pop.execution(config)
    mesh = pop.make_mesh(config, members, devices)
    dev.check_batch_size(b, mesh)
    state_sharding = dev.member_sharding(mesh)
    state = _abstract(jax.eval_shape(pop.init(family.init, members)), state_sharding)
    fn = pop.population_step(family.train_step, n, execution, int(config.population.chunk))
    fn = dev.under_mesh(fn, mesh)
    batch_sharding, lead = dev.batch_sharding(mesh, 2), (n, k, b)
  else:
    n, execution = 1, "-"
    mesh = dev.make_mesh(devices)
    dev.check_batch_size(b, mesh)
    state_sharding = dev.replicated(mesh)
    state = _abstract(jax.eval_shape(family.init, jax.random.key(0)), state_sharding)
    fn, batch_sharding = dev.under_mesh(family.train_step, mesh), dev.batch_sharding(mesh, 1)
    lead = (k, b)
  batch = jax.ShapeDtypeStruct((*lead, *example_shape), jnp.float32, sharding=batch_sharding)
  return Step(
    fn, state, batch, (state_sharding, batch_sharding), (state_sharding, state_sharding),
    n * k * b, n, execution,
  )  # fmt: skip


def step_flops(config, example_shape, target_platform: str) -> float | None:
  """FLOPs of one whole step (all devices) by XLA's cost analysis of the step lowered for this
  host's CPU, traced with ``target_platform``'s ``auto`` choices (the same math as the target's
  program; the GPU compiler gives no cost analysis)."""
  with platform.target(target_platform):
    step = build_step(config, example_shape, jax.devices("cpu")[:1])
    plain = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype)
    lowered = jax.jit(step.fn).lower(*[jax.tree.map(plain, a) for a in (step.state, step.batch)])
  analysis = lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  value = (analysis or {}).get("flops")
  return float(value) if value is not None and value >= 0 else None


def compute_dtype(config) -> str:
  """``bfloat16`` if the config computes in it, else ``float32``."""
  for key in ("dtype", "compute_dtype"):
    for node in (config, *[v for v in config.values() if isinstance(v, ml_collections.ConfigDict)]):
      if key in node and "bfloat16" in str(node[key]):
        return "bfloat16"
  return "float32"


def compile_step(
  config, example_shape, target: Target, devices=None, cpu_flops: bool | None = None
) -> dict:
  """Compiles ``config``'s step for ``target`` and returns one result row (JSON-ready): compile
  seconds, per-device memory and whether it fits, FLOPs and bytes per device, collectives,
  kernels, the floors and the projected examples/s (:func:`project`).

  ``cpu_flops``: also take the whole step's FLOPs from the CPU lowering (default: on GPU, where
  the compiler gives none).
  """
  devices = target_devices(target) if devices is None else devices
  n_dev = len(devices)
  t0 = time.perf_counter()
  with platform.target(target.platform):
    step = build_step(config, example_shape, devices)
    lowered = jax.jit(
      step.fn, in_shardings=step.in_shardings, out_shardings=step.out_shardings, donate_argnums=0
    ).lower(step.state, step.batch)
  try:
    compiled = lowered.compile()
  except Exception as e:
    line = " ".join(str(e).split())[:300]
    if "RESOURCE_EXHAUSTED" in line or "out of memory" in line.lower():
      raise DoesNotFit(f"{target.spec}: the step does not fit: {line}") from None
    raise UserError(f"{target.spec}: the compiler rejected the step: {line}") from None
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  arg, out, alias, temp = (
    int(getattr(mem, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "alias", "temp")
  )
  total = arg + out - alias + temp
  cost = compiled.cost_analysis() if target.platform == "tpu" else None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  stats = program_stats(compiled.as_text())
  row = {
    "target": target.spec,
    "platform": target.platform,
    "chip": target.chip.name,
    "devices": n_dev,
    "hosts": len({d.process_index for d in devices}),
    "members": step.members,
    "execution": step.execution,
    "batch_size": int(config.batch_size),
    "examples_per_step": step.examples,
    "compute_dtype": compute_dtype(config),
    "compile_s": round(seconds, 2),
    "argument_bytes": arg,
    "output_bytes": out,
    "alias_bytes": alias,
    "temp_bytes": temp,
    "total_bytes": total,
    "memory_bytes": target.chip.memory_bytes,
    "fits": total <= target.chip.memory_bytes,
    "flops_per_device": None,
    "bytes_per_device": None,
    "flops_source": None,
    **stats,
  }
  if cost and cost.get("flops", -1) >= 0:
    row.update(flops_per_device=float(cost["flops"]), flops_source="tpu cost analysis")
    row["bytes_per_device"] = float(cost.get("bytes accessed", 0)) or None
  if cpu_flops or (cpu_flops is None and row["flops_per_device"] is None):
    whole = step_flops(config, example_shape, target.platform)
    row["step_flops_cpu"] = whole
    if row["flops_per_device"] is None and whole is not None:
      row.update(flops_per_device=whole / n_dev, flops_source="cpu cost analysis / devices")
  if row["bytes_per_device"] is None:
    row["bytes_per_device"] = float(stats["kernel_bytes"])
  row.update(project(row, target.chip))
  return row


def project(row: dict, chip: Chip, launch_s: float = GPU_LAUNCH_S) -> dict:
  """The floors of one compiled step and the projected examples/s (a projection: a lower bound
  on the step's time from counts and data sheets, not a timing).

  * roofline: ``max(flops / peak[compute dtype], bytes / HBM bandwidth)`` per device;
  * launch (GPU): ``kernels × launch_s`` — a GPU runs one kernel after another;
  * collectives: ``bytes / link bandwidth`` (an all-reduce of ``b`` bytes over ``n`` chips moves
    ``2 (n − 1) / n · b`` per chip in a ring: the factor is applied);
  * projected step: the roofline and launch floors added (kernels launch back to back, each
    at least ``launch_s``), plus the collectives (not overlapped);
  * projected scaling to :data:`SCALING_CHIPS` chips at the same batch per chip: the same
    per-chip floors plus a ring all-reduce of the compiled all-reduce bytes over ``n`` chips
    (``efficiency`` = time without it / time with it).
  """
  peak = chip.peak_flops[row.get("compute_dtype", "float32")]
  flops, nbytes = row.get("flops_per_device"), row.get("bytes_per_device") or 0.0
  compute_s = flops / peak if flops else None
  memory_s = nbytes / chip.hbm_bytes_per_s
  roofline = max(compute_s or 0.0, memory_s)
  launch = row["kernels"].get("total", 0) * launch_s if chip.platform == "gpu" else 0.0
  n = row["devices"]
  link = chip.link_bytes_per_s
  if row.get("hosts", 1) > 1 and chip.scaleout_bytes_per_s:
    link = chip.scaleout_bytes_per_s
  coll_s = 0.0
  for kind, c in row["collectives"].items():
    factor = 2 * (n - 1) / n if kind == "all-reduce" else (n - 1) / n
    coll_s += factor * c["bytes"] / link
  step_s = roofline + launch + coll_s
  # Weak scaling (same batch per chip) to n chips: the same per-chip work, the all-reduce's ring
  # over n chips; GPUs past one 8-GPU node go over the node's network.
  allreduce = row["collectives"].get("all-reduce", {}).get("bytes", 0)
  scaling = {}
  for m in SCALING_CHIPS:
    bw = chip.link_bytes_per_s
    if chip.platform == "gpu" and m > 8 and chip.scaleout_bytes_per_s:
      bw = chip.scaleout_bytes_per_s
    t = roofline + launch + 2 * (m - 1) / m * allreduce / bw
    scaling[str(m)] = {"step_s": t, "efficiency": (roofline + launch) / t if t > 0 else None}
  return {
    "peak_flops": peak,
    "compute_floor_s": compute_s,
    "memory_floor_s": memory_s,
    "roofline_floor_s": roofline,
    "launch_floor_s": launch,
    "collective_s": coll_s,
    "projected_step_s": step_s,
    "projected_examples_per_s": row["examples_per_step"] / step_s if step_s > 0 else None,
    "projected_scaling": scaling,
  }


def examples_shape_of(config) -> tuple[int, ...]:
  from gen_models import data as data_lib

  return tuple(data_lib.example_shape(config))


def check_fits(row: dict) -> None:
  """A :class:`UserError` naming the shortfall if the compiled step does not fit the chip."""
  if not row["fits"]:
    raise UserError(
      f"{row['target']}: the step needs {row['total_bytes'] / GiB:.2f} GiB per device "
      f"(batch {row['batch_size']}, {row['members']} member(s)), the chip has "
      f"{row['memory_bytes'] / GiB:.2f} GiB"
    )


def gradient_bytes(config, example_shape) -> dict[str, int]:
  """``{component: bytes}`` of the trainable parameters of ``config``'s model: what a
  data-parallel step must all-reduce per gradient of that component, in the parameters' dtypes
  (a WGAN-GP step takes ``n_critic`` critic gradients and one generator gradient)."""
  from gen_models import models

  family = models.make_family(config, tuple(example_shape))
  state = jax.eval_shape(family.init, jax.random.key(0))
  return {
    name: int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(p)))
    for name, p in state.params.items()
  }


# ----------------------------------------------------------------------------------------------
# Calibration against measured steps.


def model_step_s(row: dict, chip: Chip, launch_s: float, efficiency: float) -> float:
  """A GPU step's time by the two-constant model: ``kernels × launch_s + max(flops /
  (efficiency × peak), bytes / HBM bandwidth)`` (+ collectives, as :func:`project`)."""
  peak = chip.peak_flops[row.get("compute_dtype", "float32")]
  compute = (row.get("flops_per_device") or 0.0) / (efficiency * peak)
  memory = (row.get("bytes_per_device") or 0.0) / chip.hbm_bytes_per_s
  return row["kernels"].get("total", 0) * launch_s + max(compute, memory) + row["collective_s"]


def calibrate(rows: list[dict], measured_s: dict, fit: Sequence[str], chip: Chip) -> dict:
  """Fits ``launch_s`` and ``efficiency`` of :func:`model_step_s` to the measured step seconds of
  the ``fit`` configs only (least squares of log ratios over a grid), then predicts every row.

  Args:
    rows: compiled rows (``config`` key) for ``chip``.
    measured_s: ``{config: measured seconds per step}``.
    fit: the configs whose measurements may be used (at most half of ``measured_s``).

  Returns:
    ``{"launch_s", "efficiency", "fit", "rows": [{config, measured_s, predicted_s, ratio,
    held_out}]}``; ratio = predicted / measured.
  """
  if len(fit) > len(measured_s) // 2:
    raise UserError(f"fit on at most half of the {len(measured_s)} measured rows, got {len(fit)}")
  by = {r["config"]: r for r in rows if r["config"] in measured_s}
  best = None
  for launch_s in np.geomspace(0.2e-6, 20e-6, 121):
    for eff in np.geomspace(0.02, 1.0, 121):
      err = sum(
        math.log(model_step_s(by[c], chip, launch_s, eff) / measured_s[c]) ** 2 for c in fit
      )
      if best is None or err < best[0]:
        best = (err, float(launch_s), float(eff))
  _, launch_s, eff = best
  out = []
  for c, r in by.items():
    pred = model_step_s(r, chip, launch_s, eff)
    out.append(
      {
        "config": c,
        "kernels": r["kernels"].get("total"),
        "gflop": (r.get("flops_per_device") or 0) / 1e9,
        "measured_s": measured_s[c],
        "predicted_s": pred,
        "ratio": pred / measured_s[c],
        "held_out": c not in fit,
      }
    )
  return {"launch_s": launch_s, "efficiency": eff, "fit": list(fit), "rows": out}


def compile_layer(op: Callable, x_shape, w_shape, strides, impl: str, target: Target, device):
  """Forward + backward (gradients of ``Σ y²`` with respect to input and kernel) of one conv
  ``op(x, w, strides, "SAME", impl)`` compiled for one ``device`` of ``target``, traced for the
  target: ``{"impl", "flops", "bytes", "temp_bytes", "convolutions", "kernels", "floor_s"}``
  (FLOPs and bytes from the TPU's cost analysis; None on a GPU)."""
  mesh = jax.sharding.Mesh(np.asarray([device]), ("d",))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  x = jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32, sharding=rep)
  w = jax.ShapeDtypeStruct(tuple(w_shape), jnp.float32, sharding=rep)
  loss = lambda x, w: jnp.sum(jnp.square(op(x, w, strides, "SAME", impl)))
  with platform.target(target.platform):
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile()
  cost = compiled.cost_analysis() if target.platform == "tpu" else None
  stats = program_stats(compiled.as_text())
  flops = float(cost["flops"]) if cost else None
  nbytes = float(cost["bytes accessed"]) if cost else float(stats["kernel_bytes"])
  peak = target.chip.peak_flops["float32"]
  return {
    "impl": impl,
    "flops": flops,
    "bytes": nbytes,
    "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
    "convolutions": stats["convolutions"],
    "kernels": stats["kernels"].get("total"),
    "floor_s": max((flops or 0.0) / peak, nbytes / target.chip.hbm_bytes_per_s),
  }
