#!/usr/bin/env bash
# One prepared script for a lent accelerator (≈ 10 minutes), the most valuable runs first:
#   1. the population benchmark of the β-VAE (members/s at N = 1, 6, 18, 36);
#   2. the disentanglement study: the β grid × SEEDS sized to TRAIN_MINUTES
#      (python -m experiments.study_dsprites: measure, train, metrics of every member, report);
#   3. the metrics benchmark of a 36-member population (where the time goes on this machine).
# Everything it writes goes under OUT (for the device tool: $OUT), with the logs.
#
#   bash experiments/device/study.sh OUT [TRAIN_MINUTES=4]
#
# SMOKE=1 runs the same plumbing with the smoke configs and tiny sizes (checked on the CPU).
set -uo pipefail
OUT=${1:?usage: bash experiments/device/study.sh OUT [TRAIN_MINUTES]}
MINUTES=${2:-4}
SEEDS=${SEEDS:-3}
. "$(dirname "$0")/env.sh"  # OUT/<this script>.log, the machine, the packages.

if [ "${SMOKE:-0}" = 1 ]; then
  BENCH=(--configs=vae --population=1,2 --executions=vmap --steps=2)
  CONFIG=experiments/configs/beta_vae_dsprites.py:smoke
  SWEEP=vae.beta=1,4 SEEDS=1
  STUDY=(--measure=4 --eval_flags="--num_train=40 --num_eval=20")
  METRICS=(--config=beta_vae_dsprites:smoke --members=2 --num_train=40 --num_eval=20)
else
  BENCH=(--configs=vae --population=1,6,18,36 --executions=vmap)
  CONFIG=experiments/configs/beta_vae_dsprites.py
  SWEEP=vae.beta=1,2,4,6,8,16
  STUDY=(--measure=300)
  METRICS=(--members=36)
fi

echo "== 1/3 population benchmark"
timeout 180 "$PYTHON" -m experiments.bench.population "${BENCH[@]}" \
  --output="$OUT/bench_population_vae.json" || echo "bench.population: exit $?"

echo "== 2/3 the study ($SWEEP × $SEEDS seeds, $MINUTES min of training)"
timeout $(((${MINUTES%.*} + 5) * 60)) "$PYTHON" -m experiments.study_dsprites --out="$OUT/study" \
  --minutes="$MINUTES" --config="$CONFIG" --sweep="$SWEEP" --seeds="$SEEDS" "${STUDY[@]}" \
  || echo "study: exit $?"
rm -rf "$OUT/study/measure/checkpoints" "$OUT/study/run/checkpoints"  # Too large to bring back.

echo "== 3/3 metrics benchmark"
timeout 240 "$PYTHON" -m experiments.bench.disentanglement "${METRICS[@]}" \
  --output="$OUT/bench_disentanglement.json" || echo "bench.disentanglement: exit $?"
date -u
