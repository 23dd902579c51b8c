"""bench.hardware: FLOPs by XLA's cost analysis, the peaks, % of peak of benchmark rows."""

import jax
import jax.numpy as jnp
import pytest

from experiments.bench import hardware


def test_flops_of_a_matrix_product_and_a_conv_are_exact():
  a = jax.ShapeDtypeStruct((32, 48), jnp.float32)
  b = jax.ShapeDtypeStruct((48, 16), jnp.float32)
  assert hardware.flops(jnp.matmul, a, b) == 2 * 32 * 48 * 16
  # A 3×3 SAME conv, stride 1: 2 FLOPs per multiply-add, one per tap, input channel and output.
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  assert hardware.flops(conv, x, w) == 2 * 2 * 6 * 6 * 4 * 3 * 3 * 3


def test_measure_gemm_reports_its_flops():
  g = hardware.measure_gemm(n=64, repeats=2)
  assert g["flops"] == 2 * 64**3 and g["n"] == 64 and g["dtype"] == "float32"
  assert g["flops_per_s"] == pytest.approx(g["flops"] / g["best_s"])


def test_gpu_peaks_by_precision():
  assert hardware.gpu_peak("NVIDIA H200", "bfloat16") == ("bfloat16", 989e12)
  # float32 steps run their matmuls and convs in TF32 (XLA's default precision on the GPU).
  assert hardware.gpu_peak("NVIDIA H200", "float32") == ("tf32", 495e12)
  assert hardware.gpu_peak("NVIDIA A100", "float32") is None
  # The lent H100 is the SXM part (the H200's chip); the PCIe part has lower clocks.
  assert hardware.gpu_peak("NVIDIA H100 80GB HBM3", "bfloat16") == ("bfloat16", 989e12)
  assert hardware.gpu_peak("NVIDIA H100 PCIe", "float32") == ("tf32", 378e12)


def test_add_flop_rates():
  gemms = [{"n": 64, "flops_per_s": 50e9}, {"n": 64, "flops_per_s": 100e9}]
  rows = [
    {"flops_per_step": 2e9, "gen_steps_per_s": 10.0, "compute_dtype": "float32"},
    {"flops_per_step": None, "gen_steps_per_s": 10.0, "compute_dtype": "float32"},
  ]
  hardware.add_flop_rates(rows, "cpu", "cpu", gemms)
  assert rows[0]["flops_per_s"] == 20e9 and rows[0]["percent_of_peak"] == pytest.approx(20.0)
  assert rows[0]["peak_flops_per_s"] == 100e9  # The best of the measured GEMMs.
  assert rows[1]["flops_per_s"] is None and rows[1]["percent_of_peak"] is None
  gpu = [{"flops_per_step": 1e12, "gen_steps_per_s": 98.9, "compute_dtype": "bfloat16"}]
  hardware.add_flop_rates(gpu, "gpu", "NVIDIA H200", gemms)
  assert gpu[0]["percent_of_peak"] == pytest.approx(10.0)
  assert "bfloat16" in gpu[0]["peak"]
