r"""Benchmark of the compiled train steps against their PyTorch eager peers (not a test).

    python -m experiments.bench.train [--configs=toy,cifar10] [--steps=N] [--warmup=N] \
        [--batch_size=B] [--conv_impls=subpixel,xla] [--critic_loops=scan,unrolled] [--rounds=R] \
        [--torch] [--torch_device=auto|cpu|cuda] [--layers] [--device_sweep=1,2,4,8] \
        [--peak_n=4096] [--output=bench_train.json]

**Steps.** For each config: the family's ``train_step`` jitted exactly as the trainer does (state
replicated, batch ``(n_critic, B, *shape)`` split over ``data`` on axis 1, state donated), with
the time of ``.lower(...).compile()``, then ``--warmup`` untimed steps and ``--steps`` timed
steps, for every ``--conv_impls`` × ``--critic_loops`` variant (``conv_impl``, and the n_critic
critic updates as a rolled ``lax.scan`` or unrolled: ``gan.unroll_critic``). With ``--torch``
(default on), the same nets and step in PyTorch eager (``experiments/bench/torch_peers.py``) on the
same batch shapes, on ``--torch_device`` (``auto``: CUDA when JAX's backend is a GPU; timed
between ``torch.cuda.synchronize`` calls there). ``gen_steps_per_s`` counts generator updates
(one per train step, after its ``n_critic`` critic updates); ``examples_per_s = n_critic · B ·
gen_steps_per_s``; ``ratio`` is a row's ``examples_per_s`` over the PyTorch peer's (> 1: faster
than PyTorch). With ``--rounds=R`` every step row is timed R times, round-robin over the rows
(PyTorch, each JAX variant, then again), each time in a fresh process: rows give the median
steps/s with its range, and ``ratio_range`` the spread of each round's ratio against the PyTorch
row of the same round, so a shared host's changing load falls on every row alike. Batches are
on the devices before timing, so the numbers are of the step alone, without the input
pipeline (``experiments.bench.input`` measures that).

* ``toy``: ``experiments/configs/wgan_gp_toy.py`` (MLP), batches of the real 2-D toy dataset.
* ``cifar10``: ``experiments/configs/wgan_gp_cifar10.py`` (DCGAN) on 32×32×3 standard-normal
  batches (no TFDS data needed).
* ``resnet``, ``resnet_bf16``: ``experiments/configs/wgan_gp_cifar10_resnet.py`` (the paper's
  ResNet nets, width 128, critic batch 64, generator batch 128, dequantised images), computing
  in float32 and in bfloat16 (``:bfloat16``; the PyTorch peer is float32 in both), on random
  8-bit images ``k/127.5 − 1``. Meant for accelerators: one CPU step takes seconds.
* ``vae``: ``experiments/configs/beta_vae_dsprites.py`` (disentanglement_lib's conv nets, β = 4,
  batch 64) on random binary 64×64×1 batches. One Adam step per train step, so
  ``n_critic`` is 1 and ``gen_steps_per_s`` counts VAE updates.
* ``flow``: ``experiments/configs/realnvp_toy.py`` (10 MLP couplings with ActNorm, batch 256) on
  the 2-D ``8gaussians_wide`` batches; one Adam step on the NLL per train step (``n_critic`` 1).
* ``realnvp_cifar10``, ``realnvp_cifar10_bf16``: ``experiments/configs/realnvp_cifar10.py`` (the
  paper's multi-scale flow with the reference code's s/t ResNets, 8 blocks of 64 and 128
  features, batch 64), its s/t nets computing in float32 and in bfloat16 (``:bfloat16``; the
  likelihood's arithmetic is float32 in both), on random 8-bit images; one Adam step on
  bits/dim per train step (``n_critic`` 1). No PyTorch peer (``NO_TORCH_PEER``: ``ratio`` is
  empty) and one ``conv_impl`` row (the config's ``auto``: its convs are all stride 1, where
  only ``gemm`` differs, ``auto``'s choice on CPU). Meant for accelerators: one CPU step takes
  many seconds.

**Layers** (``--layers``): forward + backward (gradients of ``Σ y²`` with respect to the input
and the kernel) of every stride-2 conv shape of the DCGAN and β-VAE nets and three stride-1
convs of the ResNet and RealNVP CIFAR-10 nets (``LAYERS``) at batch 64, for each conv
formulation of ``gen_models.nn.conv`` and ``torch.nn.Conv2d`` / ``ConvTranspose2d``;
``ratio`` = PyTorch's time over the row's.

**Device sweep** (``--device_sweep=1,2,4,8``): the JAX step of each config (its default
``conv_impl`` and critic loop, the config's global batch) on 1, 2, 4 and 8 devices, with
``speedup`` = examples/s over the 1-device row's and ``efficiency`` = speedup / devices. On CPU
these are fake devices (``--xla_force_host_platform_device_count=n`` in the worker): they share
the same cores, so the ideal there is a speedup of 1 (efficiency 1/n), and the sweep measures
what sharding costs (per-device dispatch, the all-reduce of the gradients, smaller per-device
matmuls), not how the step scales; on GPU or TPU counts above the real devices are skipped.
docs/BENCHMARKS.md says what each kind of number can and cannot show.

**FLOPs and peak.** Every step row has ``flops_per_step`` (XLA's cost analysis of the step as
its math is written: ``conv_impl=xla``, the critic loop unrolled; the same number for PyTorch's
row, which computes the same math), ``flops_per_s`` (that × steps/s) and ``percent_of_peak``:
on CPU against the best float32 ``--peak_n``³ matrix product measured in fresh processes before
and after the steps, on an H200 against the data sheet's dense peak at the step's precision
(bf16; TF32 for float32 steps, XLA's default there). ``bench/hardware.py`` has the helpers.

Every measurement runs in a fresh process (``--_worker``), one after another; each row records
the 1-minute load average, as the machines are shared, and the JSON the load averages before
and after the run. Prints tables and writes JSON with the
versions, backend and date. Needs ``pip install '.[bench]'`` for the PyTorch rows.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from experiments import cli
from experiments.bench import common, hardware, train_steps
from experiments.bench.train_steps import LAYER_BATCH, LAYERS
from gen_models.errors import UserError
from gen_models.nn.conv import IMPLS as CONV_IMPLS

# Configs without a PyTorch eager peer (bench/torch_peers.py has RealNVP on points only):
# their rows have no ratio.
NO_TORCH_PEER = ("realnvp_cifar10", "realnvp_cifar10_bf16")
# Configs whose nets have only stride-1 convs: one row, auto (only gemm, auto's choice on CPU,
# differs from XLA's convs there).
STRIDE_ONE = ("realnvp_cifar10", "realnvp_cifar10_bf16")
# Configs with one Adam step per train step (no critic loop).
NO_CRITIC_LOOP = ("vae", "flow", "realnvp_cifar10", "realnvp_cifar10_bf16")
LOOPS = ("scan", "unrolled")

_CONFIGS = flags.DEFINE_list(
  "configs", ["toy", "cifar10", "vae"], f"Any of {', '.join(common.CONFIGS)}."
)
_STEPS = flags.DEFINE_integer(
  "steps", None, "Timed steps (default: toy 200; cifar10 20, 3 on CPU)."
)
_WARMUP = flags.DEFINE_integer(
  "warmup", None, "Untimed steps after compiling (default: toy 10; cifar10 2, 1 on CPU)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch size (default: config's).")
_ROUNDS = flags.DEFINE_integer(
  "rounds",
  1,
  "Time every step row this many times, round-robin (PyTorch, then each JAX variant, again), "
  "each in a fresh process: rows report the median and the range, so a shared host's load "
  "falls on every row alike.",
)
_CONV_IMPLS = flags.DEFINE_list(
  "conv_impls", ["subpixel", "space_to_depth", "xla"], "conv_impl variants of conv configs."
)
_LOOPS = flags.DEFINE_list(
  "critic_loops", ["unrolled", "scan"], "Critic loop variants: scan and/or unrolled."
)
_TORCH = flags.DEFINE_bool("torch", True, "Time the PyTorch eager peers too.")
_TORCH_DEVICE = flags.DEFINE_enum(
  "torch_device",
  "auto",
  ["auto", "cpu", "cuda"],
  "Where the PyTorch peers run (auto: cuda when JAX's backend is a GPU, else cpu).",
)
_TORCH_THREADS = flags.DEFINE_integer(
  "torch_threads", None, "torch.set_num_threads for the peers (default: PyTorch's own)."
)
_LAYERS = flags.DEFINE_bool("layers", True, "Time every conv shape of the DCGAN and VAE nets too.")
_LAYER_REPEATS = flags.DEFINE_integer("layer_repeats", 5, "Timed repeats per layer (min taken).")
_SWEEP = flags.DEFINE_list(
  "device_sweep",
  ["1", "2", "4", "8"],
  "Device counts of the scaling sweep (fake devices on CPU); empty: no sweep.",
)
_PEAK_N = flags.DEFINE_integer(
  "peak_n", 4096, "Size n of the float32 n³ matrix product whose best rate is the peak."
)
_OUTPUT = flags.DEFINE_string("output", "bench_train.json", "Where to write the JSON results.")
_WORKER = flags.DEFINE_string("_worker", None, "Internal: one measurement (a JSON spec).")
_RESULT = flags.DEFINE_string("_result", None, "Internal: where the worker writes its JSON.")


def _rate(x: float) -> str:
  return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


STEP_COLUMNS = (
  ("config", str),
  ("framework", str),
  ("conv_impl", str),
  ("critic_loop", str),
  ("devices", str),
  ("batch", str),
  ("n_critic", str),
  ("compile_s", common.fixed(2)),
  ("gen_steps_per_s", _rate),
  ("examples_per_s", _rate),
  ("ratio", common.fixed(2)),
  ("ratio_range", lambda v: f"{v[0]:.2f}–{v[1]:.2f}"),
  ("flops_per_step", hardware.si),
  ("flops_per_s", hardware.si),
  ("percent_of_peak", common.fixed(1)),
  common.LOAD_COLUMN,
)
SWEEP_COLUMNS = (
  ("config", str),
  ("devices", str),
  ("fake", str),
  ("batch", str),
  ("compile_s", common.fixed(2)),
  ("examples_per_s", _rate),
  ("speedup", common.fixed(2)),
  ("efficiency", common.fixed(2)),
  common.LOAD_COLUMN,
)
LAYER_COLUMNS = (
  ("layer", str),
  ("framework", str),
  ("conv_impl", str),
  ("ms", common.fixed(1)),
  ("ratio", common.fixed(2)),
  common.LOAD_COLUMN,
)


# ---------------------------------------------------------------------------------------------
# Workers (each in its own process).


def _jax_step(spec: dict) -> dict:
  """One row: compile time and throughput of the JAX train step."""
  from gen_models import devices as dev

  name = spec["config"]
  step_fn, state, pool, config, n_critic = train_steps.make_step(spec)
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, pool[0])
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  state, _, _ = train_steps.run_steps(compiled, state, pool, spec["warmup"])
  state, metrics, elapsed = train_steps.run_steps(compiled, state, pool, spec["steps"])
  if not all(np.isfinite(float(v)) for v in dev.to_host(metrics).values()):
    raise UserError(f"{name}: non-finite metrics after {spec['warmup'] + spec['steps']} steps")
  return {
    "compile_s": compile_s,
    "timed_s": elapsed,
    "n_critic": n_critic,
    "batch": config.batch_size,
    "conv_impl_resolved": _resolved(config.conv_impl),
    "program_flops": hardware.flops_of_lowered(lowered),
    **_model_flops(name, spec),
  }


def _model_flops(name: str, spec: dict) -> dict:
  """FLOPs of one train step of ``name`` as its math is written (``conv_impl=xla``: each
  convolution counted once, as flax computes it; the critic loop unrolled, as XLA's cost
  analysis counts a loop body once), by XLA's cost analysis on shape structs, and the dtype the
  nets compute in. The same count serves every row of a config, PyTorch's too."""
  from gen_models import models

  config = train_steps.config_for(name, {**spec, "conv_impl": "xla", "critic_loop": "unrolled"})
  shape = common.CONFIGS[name][1]
  family = models.make_family(config, shape)
  state = jax.eval_shape(family.init, jax.random.key(config.seed))
  batch = jax.ShapeDtypeStruct((family.batches_per_step, config.batch_size, *shape), np.float32)
  compute_dtype = "float32"
  for family_key in ("gan", "flow"):
    if family_key in config:
      compute_dtype = config[family_key].get("compute_dtype", "float32")
  return {
    "model_flops": hardware.flops(family.train_step, state, batch),
    "compute_dtype": compute_dtype,
  }


def _gemm_peak(spec: dict) -> dict:
  """The best rate of a jitted float32 ``n³`` matrix product (``experiments.bench.hardware``)."""
  return hardware.measure_gemm(spec["n"], spec["repeats"])


def _resolved(impl: str) -> str:
  from gen_models import nn as gnn

  return gnn.resolve_impl(impl)


def _torch_step(spec: dict) -> dict:
  """One row: throughput of the PyTorch eager peer of the same step."""
  import torch

  from experiments.bench import torch_peers

  sync = _torch_setup(spec)
  name, shape = spec["config"], common.CONFIGS[spec["config"]][1]
  config = train_steps.config_for(name, spec)
  torch_shape = shape if len(shape) == 1 else (shape[2], shape[0], shape[1])
  if config.model == "vae":
    peer, n_critic = torch_peers.BetaVAE(config, shape, seed=config.seed), 1
  elif config.model == "realnvp":
    peer, n_critic = torch_peers.RealNVP(config, shape, seed=config.seed), 1
  else:
    peer, n_critic = torch_peers.WGANGP(config, shape, seed=config.seed), config.gan.n_critic
  gen = torch.Generator().manual_seed(0)
  size = (n_critic, config.batch_size, *torch_shape)
  pool = [torch.randn(size, generator=gen, device="cpu") for _ in range(train_steps.POOL)]
  if config.model == "vae":
    pool = [(b > 1.28).float() for b in pool]  # Binary, about 10 % ones, as dSprites.
  if name.startswith("resnet"):  # 8-bit images, as the dequantisation expects.
    pool = [torch.randint(0, 256, size, generator=gen, device="cpu") / 127.5 - 1 for _ in pool]
  pool = [b.to(spec["torch_device"]) for b in pool]
  for i in range(spec["warmup"]):
    peer.step(pool[i % train_steps.POOL])
  sync()
  t0 = time.perf_counter()
  for i in range(spec["steps"]):
    metrics = peer.step(pool[i % train_steps.POOL])
  sync()
  elapsed = time.perf_counter() - t0
  if not all(np.isfinite(v) for v in metrics.values()):
    raise UserError(f"{name}: the PyTorch peer's losses are not finite")
  return {
    "compile_s": None,
    "timed_s": elapsed,
    "n_critic": n_critic,
    "batch": config.batch_size,
    "torch_version": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "torch_device": spec["torch_device"],
    "num_params": peer.num_params(),
    **_model_flops(name, spec),
  }


def _torch_setup(spec: dict):
  """Threads and default device of a PyTorch worker; returns its synchronisation function
  (``torch.cuda.synchronize`` on a GPU: kernels run asynchronously there)."""
  import torch

  if spec.get("torch_threads"):
    torch.set_num_threads(spec["torch_threads"])
  if spec["torch_device"] == "cuda":
    if not torch.cuda.is_available():
      raise UserError("--torch_device=cuda, but PyTorch sees no CUDA device")
    torch.set_default_device("cuda")
    return torch.cuda.synchronize
  return lambda: None


def _best_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def _jax_layers(spec: dict) -> dict:
  """Forward + backward milliseconds of every conv shape of :data:`LAYERS` with
  ``spec['conv_impl']``."""
  import jax.numpy as jnp

  from gen_models.nn.conv import conv2d, conv_transpose2d

  rng, out = np.random.default_rng(0), {}
  for net, kind, k, s, size, c_in, c_out in LAYERS:
    op = conv2d if kind == "conv" else conv_transpose2d
    x = jnp.asarray(rng.standard_normal((LAYER_BATCH, size, size, c_in)), jnp.float32)
    w = jnp.asarray(0.01 * rng.standard_normal((k, k, c_in, c_out)), jnp.float32)
    loss = lambda x, w, op=op, s=s: jnp.sum(jnp.square(op(x, w, (s, s), "SAME", spec["conv_impl"])))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax.block_until_ready(grads(x, w))
    out[_layer_name(net, kind, k, s, size, c_in, c_out)] = 1000 * _best_time(
      lambda g=grads, x=x, w=w: jax.block_until_ready(g(x, w)), spec["repeats"]
    )
  return {"ms": out}


def _torch_layers(spec: dict) -> dict:
  import torch

  sync = _torch_setup(spec)
  out = {}
  for net, kind, k, s, size, c_in, c_out in LAYERS:
    # The padding that gives XLA's SAME output sizes (H/s, 2H) for even H (odd k at stride 1).
    if kind == "conv":
      layer = torch.nn.Conv2d(c_in, c_out, k, stride=s, padding=(k - 1) // 2)
    else:
      pad, extra = (2, 1) if k == 5 else ((k - 2) // 2, 0)
      layer = torch.nn.ConvTranspose2d(c_in, c_out, k, 2, padding=pad, output_padding=extra)
    x = torch.randn(LAYER_BATCH, c_in, size, size)

    def fwd_bwd(layer=layer, x=x):
      x = x.detach().requires_grad_(True)
      layer.zero_grad(set_to_none=True)
      layer(x).square().sum().backward()
      sync()

    fwd_bwd()
    out[_layer_name(net, kind, k, s, size, c_in, c_out)] = 1000 * _best_time(
      fwd_bwd, spec["repeats"]
    )
  return {
    "ms": out,
    "torch_version": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "torch_device": spec["torch_device"],
  }


def _layer_name(net: str, kind: str, k: int, s: int, size: int, c_in: int, c_out: int) -> str:
  out = size // s if kind == "conv" else size * s
  return f"{net} {kind} {k}x{k}/{s} {size}²×{c_in} → {out}²×{c_out}"


WORKERS = {
  "jax_step": _jax_step,
  "torch_step": _torch_step,
  "jax_layers": _jax_layers,
  "torch_layers": _torch_layers,
  "gemm_peak": _gemm_peak,
}


def run_worker() -> None:
  spec = json.loads(_WORKER.value)
  common.write_worker_result(_RESULT.value, WORKERS[spec["worker"]](spec))


# ---------------------------------------------------------------------------------------------
# The parent: runs the workers one after another and compares.


def _spawn(spec: dict, tmp: str, env: dict | None = None) -> dict:
  """Runs one worker in a fresh ``python -m experiments.bench.train`` (``common.spawn``)."""
  label = " ".join(f"{k}={v}" for k, v in spec.items() if k not in ("steps", "warmup", "repeats"))
  return common.spawn("experiments.bench.train", [f"--_worker={json.dumps(spec)}"], label, tmp, env)


def _steps_warmup(name: str) -> tuple[int, int]:
  """Timed and warm-up steps of config ``name``: the flags, else its defaults on this backend."""
  defaults = common.CONFIGS[name][2]
  steps, warmup = defaults.get(jax.default_backend(), defaults["default"])
  return (
    _STEPS.value if _STEPS.value is not None else steps,
    _WARMUP.value if _WARMUP.value is not None else warmup,
  )


def _step_rows(name: str, tmp: str) -> list[dict]:
  steps, warmup = _steps_warmup(name)
  shared = {"config": name, "steps": steps, "warmup": warmup, "batch_size": _BATCH_SIZE.value}
  impls = (
    _CONV_IMPLS.value if len(common.CONFIGS[name][1]) == 3 and name not in STRIDE_ONE else ["-"]
  )
  loops = _LOOPS.value if name not in NO_CRITIC_LOOP else ["-"]
  specs = []
  if _TORCH.value and name not in NO_TORCH_PEER:
    specs.append({"worker": "torch_step", **shared, **_torch_spec()})
  for impl in impls:
    for loop in loops:
      impl_key = None if impl == "-" else impl
      specs.append({"worker": "jax_step", **shared, "conv_impl": impl_key, "critic_loop": loop})
  rounds = [[] for _ in specs]  # Per spec, each round's result: round-robin over the specs.
  for r in range(_ROUNDS.value):
    for spec, results in zip(specs, rounds, strict=True):
      if _ROUNDS.value > 1:
        print(f"{name}: round {r + 1}/{_ROUNDS.value}, {spec['worker']} {spec.get('conv_impl')}")
      results.append(_spawn({**spec, "devices": 1}, tmp))
  rows = []
  for spec, results in zip(specs, rounds, strict=True):
    result = results[0]
    torch_row = spec["worker"] == "torch_step"
    rates = [spec["steps"] / res["timed_s"] for res in results]
    rate = float(np.median(rates))
    rows.append(
      {
        "config": name,
        "framework": (
          f"torch {result['torch_version']} eager {result['torch_device']}" if torch_row else "jax"
        ),
        "conv_impl": "-" if torch_row or spec.get("conv_impl") is None else spec["conv_impl"],
        "critic_loop": "-" if torch_row else spec["critic_loop"],
        "devices": 1,
        "batch": result["batch"],
        "n_critic": result["n_critic"],
        "compile_s": result["compile_s"],
        "gen_steps_per_s": rate,
        "examples_per_s": result["n_critic"] * result["batch"] * rate,
        "ratio": None,
        "rounds": len(results),
        "gen_steps_per_s_range": [min(rates), max(rates)],
        "timed_steps": spec["steps"],
        "warmup_steps": spec["warmup"],
        "timed_s": float(np.median([res["timed_s"] for res in results])),
        "loadavg_1m": result["loadavg_1m"],
        "flops_per_step": result["model_flops"],
        "compute_dtype": result["compute_dtype"],
        **({"torch_threads": result["torch_threads"]} if torch_row else {}),
        **({} if torch_row else {"program_flops_per_step": result["program_flops"]}),
        "_rates": rates,
      }
    )
  rates = [r.pop("_rates") for r in rows]
  base = next((i for i, r in enumerate(rows) if r["framework"].startswith("torch")), None)
  if base is not None:
    for r, row_rates in zip(rows, rates, strict=True):
      r["ratio"] = r["examples_per_s"] / rows[base]["examples_per_s"]
      # Each round's ratio against the PyTorch row of the same round (timed minutes apart).
      per_round = [a / b for a, b in zip(row_rates, rates[base], strict=True)]
      r["ratio_range"] = [min(per_round), max(per_round)]
  return rows


def _torch_spec() -> dict:
  device = _TORCH_DEVICE.value
  if device == "auto":
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  return {"torch_threads": _TORCH_THREADS.value, "torch_device": device}


def _measure_peak(tmp: str) -> dict:
  """The float32 GEMM rate measured now, in a fresh process (with the load around it)."""
  return _spawn({"worker": "gemm_peak", "n": _PEAK_N.value, "repeats": 5}, tmp)


def _sweep_counts() -> list[tuple[int, bool]]:
  """``(devices, fake)`` of ``--device_sweep``: fake CPU devices, or real ones up to the count."""
  try:
    counts = [int(n) for n in _SWEEP.value]
  except ValueError:
    raise UserError(f"--device_sweep must be device counts, got {_SWEEP.value}") from None
  if any(n < 1 for n in counts):
    raise UserError(f"--device_sweep counts must be >= 1, got {_SWEEP.value}")
  if jax.default_backend() == "cpu":
    return [(n, True) for n in counts]
  return [(n, False) for n in counts if n <= len(jax.devices())]


def _sweep_rows(name: str, tmp: str) -> list[dict]:
  """The JAX step of ``name`` on each device count; speedup and efficiency vs the first row."""
  steps, warmup = _steps_warmup(name)
  rows = []
  for n, fake in _sweep_counts():
    spec = {"worker": "jax_step", "config": name, "steps": steps, "warmup": warmup}
    spec.update(batch_size=_BATCH_SIZE.value, conv_impl=None, critic_loop=None, devices=n)
    flags_env = os.environ.get("XLA_FLAGS", "")
    env = {"XLA_FLAGS": f"{flags_env} --xla_force_host_platform_device_count={n}"} if fake else {}
    row = {"config": name, "devices": n, "fake": fake, "timed_steps": steps}
    try:
      result = _spawn(spec, tmp, env)
    except UserError as e:  # Fake devices on few cores can abort in XLA:CPU's all-reduce.
      rows.append({**row, "error": str(e), "examples_per_s": None})
      continue
    rate = result["n_critic"] * result["batch"] * steps / result["timed_s"]
    row.update(batch=result["batch"], compile_s=result["compile_s"], examples_per_s=rate)
    rows.append({**row, "timed_s": result["timed_s"], "loadavg_1m": result["loadavg_1m"]})
  base = rows[0] if rows and rows[0]["examples_per_s"] else None  # The first count's row.
  for r in rows:
    if base and r["examples_per_s"]:
      r["speedup"] = r["examples_per_s"] / base["examples_per_s"]
      r["efficiency"] = r["speedup"] * base["devices"] / r["devices"]
  return rows


def _layer_rows(tmp: str) -> list[dict]:
  repeats = _LAYER_REPEATS.value
  runs = []
  if _TORCH.value:
    spec = {"worker": "torch_layers", "repeats": repeats, **_torch_spec()}
    runs.append(("torch", "-", _spawn(spec, tmp)))
  for impl in (*(i for i in CONV_IMPLS if i != "auto"), "auto"):  # auto last.
    spec = {"worker": "jax_layers", "conv_impl": impl, "repeats": repeats}
    runs.append(("jax", impl, _spawn(spec, tmp)))
  rows = []
  for spec in LAYERS:
    layer = _layer_name(*spec)
    torch_ms = runs[0][2]["ms"][layer] if _TORCH.value else None
    for framework, impl, result in runs:
      ms = result["ms"][layer]
      rows.append(
        {
          "layer": layer,
          "framework": framework,
          "conv_impl": impl,
          "ms": ms,
          "ratio": torch_ms / ms if torch_ms else None,
          "loadavg_1m": result["loadavg_1m"],
        }
      )
  return rows


def run() -> dict:
  common.check_names(_CONFIGS.value, common.CONFIGS, "configs")
  if (_STEPS.value is not None and _STEPS.value < 1) or (_WARMUP.value or 0) < 0:
    raise UserError("--steps must be >= 1 and --warmup >= 0")
  common.check_names(_CONV_IMPLS.value, CONV_IMPLS, "conv_impls")
  common.check_names(_LOOPS.value, LOOPS, "critic_loops")
  if _TORCH.value:
    try:
      import torch  # noqa: F401
    except ImportError:
      raise UserError("the PyTorch rows need: pip install '.[bench]' (or pass --notorch)") from None
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    gemms = [_measure_peak(tmp)]
    rows = [row for name in _CONFIGS.value for row in _step_rows(name, tmp)]
    gemms.append(_measure_peak(tmp))
    sweep = [row for name in _CONFIGS.value for row in _sweep_rows(name, tmp)]
    layers = _layer_rows(tmp) if _LAYERS.value else []
  info = common.header("experiments.bench.train")
  hardware.add_flop_rates(rows, info["backend"], info["device_kind"], gemms)
  return {
    **info,
    "loadavg_before": list(load_before),
    "loadavg_after": list(os.getloadavg()),
    "gemm_peak": gemms,
    "flops_definition": (
      "flops_per_step: XLA's cost analysis of the step as its math is written (conv_impl=xla, "
      "each convolution counted once), the same for every row of a config, PyTorch's too; "
      "program_flops_per_step: of the program the row ran (the sub-pixel forms compute some "
      "zero taps; a rolled critic loop's body is counted once); "
      "flops_per_s = flops_per_step x gen_steps_per_s; percent_of_peak against `peak` "
      "(CPU: the best float32 GEMM of gemm_peak, measured before and after the steps; "
      "GPU: the data sheet's dense peak, bf16 for bfloat16 steps, TF32 for float32 steps as "
      "XLA's default matmul precision there is TF32)"
    ),
    "ratio_definition": (
      "steps: examples_per_s / the PyTorch eager peer's (same config, batch, nets; with "
      "--rounds > 1 the medians over rounds, and ratio_range the min and max of each round's "
      "ratio); "
      "layers: PyTorch's milliseconds / the row's; device_sweep: speedup = examples/s over "
      "the 1-device row's, efficiency = speedup / devices"
    ),
    "rows": rows,
    "device_sweep": sweep,
    "layers": layers,
  }


def main(argv):
  common.start(argv)
  if _WORKER.value:
    cli.run_user_errors_as_exit(run_worker)  # The parent reports the error's line.
    return
  results = cli.run_user_errors_as_exit(run)
  print(
    f"jax {results['jax_version']}, {results['num_devices']} × {results['device_kind']}, "
    f"{results['date']}"
  )
  gemms = ", ".join(hardware.si(g["flops_per_s"]) for g in results["gemm_peak"])
  load = [f"{v:.1f}" for v in (*results["loadavg_before"], *results["loadavg_after"])]
  print(
    f"float32 GEMM (before, after the steps): {gemms} FLOP/s; load average (1, 5, 15 min) "
    f"before {' '.join(load[:3])}, after {' '.join(load[3:])}"
  )
  print(common.format_table(results["rows"], STEP_COLUMNS))
  if results["device_sweep"]:
    print(common.format_table(results["device_sweep"], SWEEP_COLUMNS))
  if results["layers"]:
    print(common.format_table(results["layers"], LAYER_COLUMNS))
  cli.run_user_errors_as_exit(lambda: common.write_results(_OUTPUT.value, results))


if __name__ == "__main__":
  app.run(main)
