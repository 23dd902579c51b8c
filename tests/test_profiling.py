"""experiments/bench/profiling.py and the profile_step command: FLOPs of HLO convolutions and matrix
products against XLA's cost analysis, the per-step totals against hand counts."""

import os
import types

import jax
import jax.numpy as jnp
import pytest
from conftest import assert_one_line_error, run_cli
from jax import lax
from test_bench_common import run_bench

from experiments.bench import profiling


def _hlo(fn, *args) -> tuple[str, float]:
  """The unoptimised HLO text of ``jax.jit(fn)`` and XLA's cost analysis of its FLOPs."""
  lowered = jax.jit(fn).lower(*args)
  return lowered.compiler_ir("hlo").as_hlo_text(), lowered.cost_analysis()["flops"]


CONVS = [
  # (input NHWC, kernel HWIO, strides, padding, lhs_dilation, rhs_dilation, feature groups)
  ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), "SAME", (1, 1), (1, 1), 1),
  ((2, 16, 16, 8), (5, 5, 8, 6), (2, 2), ((2, 2), (1, 2)), (1, 1), (1, 1), 1),
  ((1, 7, 5, 4), (4, 4, 4, 2), (1, 1), ((2, 2), (2, 2)), (2, 2), (1, 1), 1),  # transposed
  ((3, 10, 10, 4), (3, 2, 4, 5), (1, 2), ((0, 0), (3, 1)), (1, 1), (2, 3), 1),
  ((2, 8, 8, 6), (3, 3, 2, 9), (1, 1), "VALID", (1, 1), (1, 1), 3),  # grouped
]


@pytest.mark.parametrize("case", CONVS)
def test_convolution_flops_match_xla_cost_analysis(case):
  x_shape, w_shape, strides, padding, lhs_dil, rhs_dil, groups = case

  def conv(x, w):
    return lax.conv_general_dilated(
      x, w, strides, padding, lhs_dil, rhs_dil, ("NHWC", "HWIO", "NHWC"), groups
    )

  x, w = jnp.ones(x_shape), jnp.ones(w_shape)
  text, expected = _hlo(conv, x, w)
  convs = [op for op in profiling.parse_hlo(text).values() if op.category == "convolution"]
  assert len(convs) == 1
  assert convs[0].flops == expected


def test_convolution_flops_count_only_taps_that_read_the_input():
  """1-D by hand: input 4, kernel 3, stride 1, pads (2, 2) → 6 outputs reading 1, 2, 3, 3, 2, 1
  inputs: 12 taps; with batch 2, 5 output and 7 input features, 2·2·5·7·12 FLOPs."""
  attributes = "window={size=3 pad=2_2}, dim_labels=b0f_0io->b0f"
  assert profiling.conv_flops([2, 4, 7], [3, 7, 5], [2, 6, 5], attributes) == 2 * 2 * 5 * 7 * 12


def test_matrix_product_flops_match_xla_cost_analysis():
  a, b = jnp.ones((3, 5, 7)), jnp.ones((3, 7, 11))
  text, expected = _hlo(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), a, b)
  dots = [op for op in profiling.parse_hlo(text).values() if op.category == "matmul"]
  assert [op.flops for op in dots] == [expected] == [2 * 3 * 5 * 7 * 11]


_GEMM_CONFIG = (
  'custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":'
  '{"dot_dimension_numbers":'
  '{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}'
)


def test_categories_of_fusions_and_custom_calls():
  text = """HloModule m, is_scheduled=true

%fused_mul (p0: f32[8], p1: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  %p1 = f32[8]{0} parameter(1)
  ROOT %multiply.1 = f32[8]{0} multiply(%p0, %p1)
}

%fused_sum (p0.1: f32[8]) -> f32[] {
  %p0.1 = f32[8]{0} parameter(0)
  %c = f32[] constant(0)
  ROOT %reduce.1 = f32[] reduce(%p0.1, %c), dimensions={0}, to_apply=%add
}

%fused_t (p0.2: f32[4,2]) -> f32[2,4] {
  %p0.2 = f32[4,2]{1,0} parameter(0)
  ROOT %transpose.1 = f32[2,4]{1,0} transpose(%p0.2), dimensions={1,0}
}

ENTRY %main (a: f32[8], b: f32[4,2], x: f32[16,32], y: f32[32,8]) -> f32[] {
  %a = f32[8]{0} parameter(0)
  %b = f32[4,2]{1,0} parameter(1)
  %x = f32[16,32]{1,0} parameter(2)
  %y = f32[32,8]{1,0} parameter(3)
  %loop_fusion = f32[8]{0} fusion(%a, %a), kind=kLoop, calls=%fused_mul
  %input_fusion = f32[] fusion(%loop_fusion), kind=kInput, calls=%fused_sum
  %copy_fusion = f32[2,4]{1,0} fusion(%b), kind=kLoop, calls=%fused_t
  %gemm = (f32[16,8]{1,0}, s8[64]{0}) custom-call(%x, %y), CUBLAS_GEMM
  %all = f32[8]{0} all-reduce(%loop_fusion), replica_groups={}, to_apply=%add
  ROOT %r = f32[] copy(%input_fusion)
}
""".replace("CUBLAS_GEMM", _GEMM_CONFIG)
  ops = profiling.parse_hlo(text)
  assert profiling.module_name(text) == "m"
  assert ops["loop_fusion"].category == "elementwise fusion"
  assert ops["input_fusion"].category == "reduction fusion"
  assert ops["copy_fusion"].category == "copy/transpose"
  assert ops["gemm"].category == "matmul" and ops["gemm"].flops == 2 * 16 * 8 * 32
  assert ops["all"].category == "collective"
  assert "multiply.1" not in ops  # Inside a fusion: never an op of the profile.


def _event(name, start, duration, **stats):
  return types.SimpleNamespace(
    name=name, start_ns=start, duration_ns=duration, stats=list(stats.items())
  )


def test_events_come_from_the_device_planes_and_their_module():
  host = types.SimpleNamespace(
    name="/host:CPU",
    lines=[types.SimpleNamespace(name="t", events=[_event("f", 0, 5, hlo_op="f", hlo_module="m")])],
  )
  stream = types.SimpleNamespace(
    name="Stream #1",
    events=[
      _event("k1", 10, 4, hlo_op="f", hlo_module="m"),
      _event("k2", 20, 3, hlo_op="g", hlo_module="other"),
      _event("k3", 30, 2),
    ],
  )
  gpu = types.SimpleNamespace(name="/device:GPU:0", lines=[stream])
  assert profiling.op_events([host, gpu], "m") == [("f", 10, 4)]
  assert profiling.op_events([host], "m") == [("f", 0, 5)]
  assert profiling.op_events([gpu], None) == [("f", 10, 4), ("g", 20, 3)]


def test_summary_totals_per_step():
  ops = {
    "conv": profiling.Op("conv", "convolution", 1e9, ""),
    "add": profiling.Op("add", "elementwise fusion", None, ""),
    "loop": profiling.Op("loop", "control flow", None, ""),
  }
  # Two steps; conv and add overlap by 2 ns in the first; the while loop encloses both.
  events = [("loop", 0, 100), ("conv", 0, 10), ("add", 8, 4), ("conv", 50, 10), ("add", 70, 6)]
  s = profiling.summarize(ops, events, steps=2, wall_s=200e-9)
  assert s["op_s_per_step"] == pytest.approx(15e-9)  # (10 + 4 + 10 + 6) / 2
  assert s["busy_s_per_step"] == pytest.approx(14e-9)  # (12 + 10 + 6) / 2
  assert s["busy_fraction"] == pytest.approx(14 / 100)
  assert s["ops_per_step"] == 2
  conv, add = s["categories"]
  assert conv["category"] == "convolution" and conv["share"] == pytest.approx(20 / 30)
  assert conv["flops_per_step"] == 1e9 and conv["flops_per_s"] == pytest.approx(1e9 / 10e-9)
  assert add["flops_per_s"] is None
  assert [r["op"] for r in s["top_ops"]] == ["conv", "add"]
  assert [(r["category"], r["count_per_step"]) for r in s["kinds"]] == [
    ("convolution", 1),
    ("elementwise fusion", 1),
  ]


def test_profile_step_command_on_the_toy_step(tmp_path):
  out = tmp_path / "profile"
  result = run_bench(
    out / "profile.json",
    "experiments.bench.profile_step",
    "--config=toy",
    "--steps=1",
    "--warmup=0",
    f"--output={out}",
  )
  assert os.path.getsize(out / "step.hlo.txt") > 0
  shares = {r["category"]: r["share"] for r in result["categories"]}
  assert sum(shares.values()) == pytest.approx(1.0)
  assert max(shares, key=shares.get) == "matmul"  # An MLP's step.
  matmul = next(r for r in result["categories"] if r["category"] == "matmul")
  # Its matrix products are nearly all of the step's FLOPs (the rest: elementwise ops).
  assert 0.9 < matmul["flops_per_step"] / result["program_flops_per_step"] <= 1.0
  assert 0 < result["busy_s_per_step"] <= result["op_s_per_step"]


def test_profile_step_bad_input_is_one_line(tmp_path):
  assert_one_line_error(run_cli("experiments.bench.profile_step", "--config=toy"), "--output")
  proc = run_cli("experiments.bench.profile_step", "--steps=0", f"--output={tmp_path}")
  assert_one_line_error(proc, "--steps")
