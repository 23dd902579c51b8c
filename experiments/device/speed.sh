#!/usr/bin/env bash
# The prepared script for issue 19's GPU part (≈ 10 minutes on one H100/H200; run it in a session
# whose device time is not needed for the disentanglement study, which comes first):
#   1. where the paper ResNet WGAN-GP step's time goes, bfloat16 then float32
#      (experiments.bench.profile_step: per category, per kind of op, busy vs wall time);
#   2. the RealNVP CIFAR-10 step's rows, float32 and bfloat16 (experiments.bench.train), and its
#      bfloat16 profile;
#   3. the β-VAE and DCGAN steps under every GPU-relevant conv_impl, gemm included.
# Everything it writes goes under OUT (for the device tool: $OUT), with the log. Each stage has
# its own timeout, so one that hangs cannot take the others' time.
#
#   bash experiments/device/speed.sh OUT
#
# SMOKE=1 runs the same plumbing on small configs and tiny step counts (checked on the CPU).
set -uo pipefail
OUT=${1:?usage: bash experiments/device/speed.sh OUT}
. "$(dirname "$0")/env.sh"  # OUT/<this script>.log, the machine, the packages.

if [ "${SMOKE:-0}" = 1 ]; then
  PROFILES=(toy flow)
  PROFILE_STEPS=(--steps=1 --warmup=0)
  ROWS=(--configs=flow --steps=2 --warmup=1 --rounds=1)
  CONVS=(--configs=vae --conv_impls=gemm,auto --steps=2 --warmup=1 --nolayers)
else
  PROFILES=(resnet_bf16 resnet realnvp_cifar10_bf16)
  PROFILE_STEPS=(--steps=20 --warmup=5)
  ROWS=(--configs=realnvp_cifar10,realnvp_cifar10_bf16 --steps=30 --warmup=3)
  CONVS=(--configs=vae,cifar10 --conv_impls=subpixel,gemm,xla --steps=100 --warmup=10)
fi

stage=0
for config in "${PROFILES[@]}"; do
  stage=$((stage + 1))
  echo "== $stage. profile of the $config step"
  timeout 150 "$PYTHON" -m experiments.bench.profile_step --config="$config" "${PROFILE_STEPS[@]}" \
    --output="$OUT/profile_$config" || echo "profile_step $config: exit $?"
  gzip -f "$OUT/profile_$config/step.hlo.txt" 2>/dev/null || true
done

echo "== RealNVP CIFAR-10 rows (no PyTorch peer)"
timeout 180 "$PYTHON" -m experiments.bench.train "${ROWS[@]}" --nolayers --device_sweep= \
  --output="$OUT/bench_realnvp.json" || echo "bench.train realnvp: exit $?"

echo "== conv_impl on the GPU: β-VAE and DCGAN steps, and their layers"
timeout 180 "$PYTHON" -m experiments.bench.train "${CONVS[@]}" --critic_loops=unrolled \
  --device_sweep= --output="$OUT/bench_conv_impls.json" || echo "bench.train conv_impls: exit $?"
date -u
