"""Compiling for accelerators this host does not have (gen_models/aot.py): targets, the optimised
program's counts, and a toy WGAN-GP step compiled for a TPU slice and for 2 H100s, checked against
what can be counted by hand. The compile tests need libtpu and the CUDA plugin
(``pip install -e '.[test,tpu,gpu-compile]'``, which .ci/run installs)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench import train_steps
from gen_models import aot, models, platform
from gen_models import config as config_lib
from gen_models import nn as gnn
from gen_models import population as pop
from gen_models.errors import UserError

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

_NO_TPU = not aot.compiler_installed("tpu")
_NO_CUDA = not aot.compiler_installed("gpu")
needs_tpu = pytest.mark.skipif(
  _NO_TPU, reason="libtpu is not installed (pip install -e '.[tpu]'; no wheel for this platform)"
)
needs_gpu = pytest.mark.skipif(
  _NO_CUDA,
  reason="the CUDA plugin is not installed (pip install -e '.[gpu-compile]'; no wheel here)",
)


def test_parse_target():
  t = aot.parse_target("tpu:v5e:2x2")
  assert (t.platform, t.chip.name, t.topology, t.hosts) == ("tpu", "v5e", "v5e:2x2", 1)
  t = aot.parse_target("gpu:h100x8x2")
  assert (t.platform, t.chip.name, t.topology, t.hosts) == ("gpu", "h100", "2x1x8", 2)
  assert aot.parse_target("gpu:h200").topology == "1x1x1"
  for bad in ("tpu:v9:2x2", "tpu:v5e", "gpu:h100x", "gpu:b300", "cpu:x", "h100"):
    with pytest.raises(UserError, match="unknown target"):
      aot.parse_target(bad)


_HLO = """HloModule m, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %e = f32[8]{0} exponential(%p)
}

%body (t: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[8]{0} get-tuple-element(%t), index=1
  %f = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused
  %ar = f32[8]{0} all-reduce-start(%f), replica_groups={}, to_apply=%add
  %ard = f32[8]{0} all-reduce-done(%ar)
  %g = (f32[8]{0}, u8[0]{0}) custom-call(%ard), custom_call_target="__cublas$gemm"
  %g0 = f32[8]{0} get-tuple-element(%g), index=0
  ROOT %r = (s32[], f32[8]{0}) tuple(%i, %g0)
}

%cond (t: (s32[], f32[8])) -> pred[] {
  %t = (s32[], f32[8]{0}) parameter(0)
  %n = s32[] constant(3)
  %i = s32[] get-tuple-element(%t), index=0
  ROOT %c = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8]{0} parameter(0)
  %z = s32[] constant(0)
  %t = (s32[], f32[8]{0}) tuple(%z, %x)
  %w = (s32[], f32[8]{0}) while(%t), condition=%cond, body=%body, backend_config={TRIPS}
  %y = f32[8]{0} get-tuple-element(%w), index=1
  %ag = f32[16]{0} all-gather(%y), dimensions={0}
  ROOT %o = f32[8]{0} slice(%ag), slice={[0:8]}
}
"""


@pytest.mark.parametrize("trips", ['{"known_trip_count":{"n":"3"}}', "{}"])
def test_program_stats_counts_loops_by_trip_count(trips):
  """GPU programs annotate the trip count; TPU programs leave it to the condition (i < 3)."""
  s = aot.program_stats(_HLO.replace("{TRIPS}", trips))
  assert s["collectives"] == {
    "all-reduce": {"count": 3, "bytes": 3 * 32},
    "all-gather": {"count": 1, "bytes": 64},
  }
  assert s["kernels"] == {"fusion": 3, "cublas": 3, "collective": 4, "other": 4, "total": 14}
  # Fusion reads 32 and writes 32 bytes, the gemm reads 32 and writes 32 (+ 0) bytes, the
  # condition's compare reads 8 and writes 1, 3 times each; the slice reads 64 and writes 32.
  assert s["kernel_bytes"] == 3 * (64 + 64 + 9) + 96


def test_auto_follows_the_target_not_the_host():
  assert jax.default_backend() == "cpu"
  layer = dict(in_channels=32, out_channels=32, kernel_size=(4, 4), strides=(2, 2))
  assert gnn.resolve_impl("auto", **layer) == "gemm"  # This CPU host.
  with platform.target("tpu"):
    assert gnn.resolve_impl("auto", **layer) == "xla"
    with platform.target("cuda"):
      assert gnn.resolve_impl("auto", **layer) == "subpixel"
    assert platform.current() == "tpu"
  assert platform.current() == "cpu"
  c = config_lib.validate(train_steps.config_for("vae", {}))
  c.population.seeds = 2
  assert pop.execution(c) == "unroll"  # Image model on CPU.
  with platform.target("gpu"):
    assert pop.execution(c) == "vmap"


def _toy():
  c = train_steps.config_for("toy", {})
  c.batch_size, c.gan.mlp_width = 32, 32  # The smoke config's sizes.
  c.gan.unroll_critic = False  # A scan: a smaller program, its loop counted by its trip count.
  return config_lib.validate(c)


def _nbytes(tree) -> int:
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _check_toy_row(row, devices: int):
  config, shape = _toy(), (2,)
  k = 5  # n_critic: five critic gradients per step.
  grads = aot.gradient_bytes(config, shape)
  # Critic 2→32→32→32→1, generator 2→32→32→32→2: weights + biases, float32.
  assert grads == {
    "critic": 4 * (2 * 32 + 32 * 32 * 2 + 32 + 3 * 32 + 1),
    "generator": 4 * (2 * 32 + 32 * 32 * 2 + 64 + 3 * 32 + 2),
  }
  state = jax.eval_shape(models.make_family(config, shape).init, jax.random.key(0))
  state_bytes = _nbytes(state)
  batch_bytes = k * 32 * 2 * 4 // devices
  assert row["devices"] == devices and row["examples_per_step"] == k * 32
  assert row["fits"] and row["total_bytes"] < 16 * 2**20
  # The state is donated: every output buffer of the state aliases its argument.
  assert row["alias_bytes"] >= state_bytes
  # The critic's gradients are all-reduced once per critic step, the generator's once (its
  # noise is split over `data` like a batch, devices.shard_like_batch); the rest is scalar
  # metrics.
  ar = row["collectives"]["all-reduce"]
  assert set(row["collectives"]) == {"all-reduce"}
  assert 0 <= ar["bytes"] - k * grads["critic"] - grads["generator"] <= 4 * 64
  return state_bytes, batch_bytes, len(jax.tree.leaves(state))


@needs_tpu
def test_toy_step_compiles_for_a_tpu_slice():
  row = aot.compile_step(_toy(), (2,), aot.parse_target("tpu:v5e:2x2"), cpu_flops=True)
  state_bytes, batch_bytes, leaves = _check_toy_row(row, devices=4)
  # Data parallel: each chip computes a quarter of the whole step (XLA:CPU's count), plus the
  # optimiser updates of the replicated state (1.11× here). With the generator's noise not split
  # over `data`, its whole update ran on every chip: 2.07×.
  assert row["flops_per_device"] * 4 / row["step_flops_cpu"] == pytest.approx(1.0, abs=0.15)
  # TPU layouts pad arrays to (8, 128) tiles (4 KiB of float32): at most one tile per array.
  assert state_bytes + batch_bytes <= row["argument_bytes"]
  assert row["argument_bytes"] <= state_bytes + batch_bytes + 4096 * (leaves + 1)
  assert row["collectives"]["all-reduce"]["count"] == 6  # One per critic step, one generator's.
  assert row["flops_source"] == "tpu cost analysis" and row["flops_per_device"] > 0
  assert row["kernels"]["fusion"] > 0 and row["projected_examples_per_s"] > 0


@needs_gpu
def test_toy_step_compiles_for_two_h100s():
  row = aot.compile_step(_toy(), (2,), aot.parse_target("gpu:h100x2"))
  state_bytes, batch_bytes, _ = _check_toy_row(row, devices=2)
  assert row["argument_bytes"] == state_bytes + batch_bytes  # No padding on a GPU.
  assert row["kernels"].get("cudnn", 0) == 0  # An MLP: no convolutions.
  assert row["kernels"]["gemm_fusion"] > 0 and row["launch_floor_s"] > 0


@needs_gpu
def test_gpu_kernels_of_one_conv_counted_by_hand():
  """A conv and its filter gradient are two cuDNN calls; the rest fuses into few kernels."""
  devices = aot.target_devices(aot.parse_target("gpu:h100"))
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  x = jax.ShapeDtypeStruct((8, 16, 16, 8), jnp.float32, sharding=rep)
  w = jax.ShapeDtypeStruct((3, 3, 8, 16), jnp.float32, sharding=rep)

  def loss(w, x):
    y = jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.sum(jnp.tanh(y))

  compiled = jax.jit(jax.grad(loss)).lower(w, x).compile()
  stats = aot.program_stats(compiled.as_text())
  assert stats["kernels"]["cudnn"] == 2 and stats["convolutions"] == 2
  assert stats["collectives"] == {}
  mem = compiled.memory_analysis()
  assert mem.argument_size_in_bytes == 4 * (8 * 16 * 16 * 8 + 3 * 3 * 8 * 16)
  assert mem.output_size_in_bytes == 4 * 3 * 3 * 8 * 16


def test_calibrate_recovers_the_constants_from_half_the_rows():
  chip = aot.CHIPS["h200"]
  rows = [
    {"config": c, "kernels": {"total": k}, "flops_per_device": f, "bytes_per_device": 0.0,
     "collective_s": 0.0, "compute_dtype": "float32"}
    for c, k, f in (("a", 300, 1e9), ("b", 100, 2e12), ("c", 50, 1e10), ("d", 900, 5e11))
  ]  # fmt: skip
  truth = {r["config"]: aot.model_step_s(r, chip, 2e-6, 0.25) for r in rows}
  result = aot.calibrate(rows, truth, ["a", "b"], chip)
  assert result["launch_s"] == pytest.approx(2e-6, rel=0.05)
  assert result["efficiency"] == pytest.approx(0.25, rel=0.05)
  held = {r["config"]: r for r in result["rows"] if r["held_out"]}
  assert set(held) == {"c", "d"} and all(
    r["ratio"] == pytest.approx(1, rel=0.05) for r in held.values()
  )
  with pytest.raises(UserError, match="at most half"):
    aot.calibrate(rows, truth, ["a", "b", "c"], chip)


def test_compile_command_bad_target_is_one_line(tmp_path):
  import subprocess
  import sys

  proc = subprocess.run(
    [sys.executable, "-m", "experiments.bench.compile", "--configs=toy", "--targets=tpu:v9:2x2",
     f"--output={tmp_path}/x.json"],
    capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown target 'tpu:v9:2x2'")
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("devices", [4, 8])
def test_vae_population_over_members_sends_only_its_gradients(devices):
  """4 β-VAE members vmapped on a ``members × data`` mesh (this host's 8 CPU devices: the SPMD
  partitioner is the accelerators'): one member per device sends nothing; 2 devices a member
  all-reduce that member's gradient once. Without ``devices.split_over_members`` the partitioner
  gathered the grouped convolutions' operands: 63 all-gathers (123 MB) on 4 × 2."""
  c = config_lib.validate(train_steps.config_for("vae", {}))
  c.batch_size, c.conv_impl = 16, "xla"
  c.population.seeds, c.population.execution = 4, "vmap"
  shape = train_steps.CONFIGS["vae"][1]
  step = aot.build_step(c, shape, jax.devices()[:devices])
  assert dict(step.in_shardings[0].mesh.shape) == {"members": 4, "data": devices // 4}
  compiled = jax.jit(
    step.fn, in_shardings=step.in_shardings, out_shardings=step.out_shardings, donate_argnums=0
  )
  stats = aot.program_stats(compiled.lower(step.state, step.batch).compile().as_text())
  assert stats["convolutions"] > 0
  if devices == 4:
    assert stats["collectives"] == {}
  else:
    grads = sum(aot.gradient_bytes(c, shape).values())
    assert set(stats["collectives"]) == {"all-reduce"}
    assert 0 <= stats["collectives"]["all-reduce"]["bytes"] - grads <= 4 * 64
