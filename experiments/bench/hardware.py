r"""How close a step runs to the machine: FLOPs per step, achieved FLOP/s, % of the peak.

* FLOPs of a jitted function: XLA's cost analysis of the lowered program,
  ``jax.jit(fn).lower(*args).cost_analysis()["flops"]`` (shape structs from ``jax.eval_shape``
  suffice; nothing is compiled). A multiply-add counts as 2 FLOPs.
* The peak: on CPU a float32 matrix product measured in the same run (:func:`measure_gemm`,
  best of a few; what a well-shaped GEMM reaches through XLA on these cores under the load of the
  moment). On a GPU the vendor's dense peak at the precision the step computes in
  (:data:`GPU_PEAKS`): bfloat16 steps against the bf16 peak, float32 steps against the TF32 peak,
  because XLA's default matmul/conv precision for float32 on these GPUs is TF32
  (``jax.default_matmul_precision`` ``"default"``); ``"highest"`` would be the FP32 peak.
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import jax
import jax.numpy as jnp

# Dense (no sparsity) peaks in FLOP/s by GPU name and precision, from the vendor's data sheets
# (NVIDIA H200 SXM and H100 SXM, the same Hopper chip: 989 TFLOP/s bf16, 495 TF32, 67 FP32;
# H100 PCIe: 756, 378, 51). The first name contained in the device kind applies, so the PCIe
# part comes before the SXM part ("NVIDIA H100 80GB HBM3").
GPU_PEAKS = {
  "H200": {"bfloat16": 989e12, "tf32": 495e12, "float32": 67e12},
  "H100 PCIe": {"bfloat16": 756e12, "tf32": 378e12, "float32": 51e12},
  "H100": {"bfloat16": 989e12, "tf32": 495e12, "float32": 67e12},
}


def run_info() -> dict:
  """What every benchmark's JSON records of its run: the UTC date, the jax version, the
  backend, the first device's kind, the device count, the CPU count, Python, the machine."""
  return {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "jax_version": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "num_devices": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "machine": platform.machine(),
  }


def si(x: float) -> str:
  """``8.34e9`` → ``8.34G`` (the benchmarks' tables)."""
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
    if abs(x) >= scale:
      return f"{x / scale:.3g}{unit}"
  return f"{x:.3g}"


def flops(fn, *args) -> float | None:
  """FLOPs of one call of ``jax.jit(fn)(*args)`` by XLA's cost analysis (None if it gives none).

  ``args`` may be arrays or ``jax.ShapeDtypeStruct`` trees; nothing is compiled or run.
  """
  return flops_of_lowered(jax.jit(fn).lower(*args))


def flops_of_lowered(lowered) -> float | None:
  """FLOPs of a ``jax.stages.Lowered`` program by XLA's cost analysis (None if it gives none)."""
  analysis = lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # One dict per computation in older jax versions.
    analysis = analysis[0] if analysis else None
  value = (analysis or {}).get("flops")
  return float(value) if value is not None and value >= 0 else None


def measure_gemm(n: int = 4096, repeats: int = 5, dtype=jnp.float32) -> dict:
  """The best rate of a jitted ``(n, n) @ (n, n)`` product on the default device.

  Returns:
    ``{"n", "dtype", "flops", "best_s", "flops_per_s"}`` with ``flops = 2·n³``.
  """
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))  # Compile and warm up.
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - t0)
  total = 2.0 * n**3
  return {
    "n": n,
    "dtype": jnp.dtype(dtype).name,
    "flops": total,
    "best_s": best,
    "flops_per_s": total / best,
  }


def gpu_peak(device_kind: str, compute_dtype: str) -> tuple[str, float] | None:
  """``(precision, FLOP/s)`` of the dense peak that applies to a step computing in
  ``compute_dtype`` on a GPU named ``device_kind`` (None for a GPU not in :data:`GPU_PEAKS`).

  ``"bfloat16"`` → the bf16 peak; ``"float32"`` → the TF32 peak (XLA's default precision).
  """
  for name, peaks in GPU_PEAKS.items():
    if name in device_kind:
      precision = "bfloat16" if compute_dtype == "bfloat16" else "tf32"
      return precision, peaks[precision]
  return None


def percent_of_peak(flops_per_step: float | None, steps_per_s: float, peak: float | None):
  """``(achieved FLOP/s, % of peak)``; None where the FLOPs or the peak are unknown."""
  if flops_per_step is None:
    return None, None
  achieved = flops_per_step * steps_per_s
  return achieved, (100.0 * achieved / peak if peak else None)


def peak_of(row: dict, backend: str, device_kind: str, gemms: list[dict]) -> tuple[str, float]:
  """``(what, FLOP/s)``: the peak a benchmark row is measured against.

  On a GPU with a known data sheet the dense peak at the row's ``compute_dtype`` (float32 →
  TF32, XLA's default); elsewhere the best rate of ``gemms`` (:func:`measure_gemm` results,
  measured in the same run).
  """
  if backend == "gpu":
    known = gpu_peak(device_kind, row.get("compute_dtype", "float32"))
    if known:
      return f"{device_kind} dense {known[0]} (data sheet)", known[1]
  best = max(gemms, key=lambda g: g["flops_per_s"])
  return f"float32 {best['n']}³ GEMM measured in this run", best["flops_per_s"]


def add_flop_rates(rows: list[dict], backend: str, device_kind: str, gemms: list[dict]) -> None:
  """Adds to each row (``flops_per_step``, ``gen_steps_per_s``, ``compute_dtype``) its
  ``flops_per_s`` (FLOPs × steps/s), ``peak``, ``peak_flops_per_s`` and ``percent_of_peak``."""
  for r in rows:
    peak_name, peak = peak_of(r, backend, device_kind, gemms)
    achieved, percent = percent_of_peak(r["flops_per_step"], r["gen_steps_per_s"], peak)
    r.update(flops_per_s=achieved, peak=peak_name, peak_flops_per_s=peak)
    r["percent_of_peak"] = percent


def device_peak(n: int = 2048) -> tuple[str, float]:
  """``(what, FLOP/s)``: the peak of the default device that float32 rows are measured against
  (:func:`peak_of`: a known GPU's data sheet, else a float32 ``n³`` GEMM measured now), and
  prints it."""
  device_kind = str(jax.devices()[0].device_kind)
  note, peak = peak_of({}, jax.default_backend(), device_kind, [measure_gemm(n)])
  print(f"peak: {peak / 1e9:,.0f} GFLOP/s ({note})", flush=True)
  return note, peak
