#!/usr/bin/env bash
# The disentanglement study on one machine, sized to a time budget (docs/REPRODUCING.md):
# Locatello et al. 2019's β-VAE grid on dSprites as one population — measure its steps/s, train
# it for as many steps as the budget allows (at most the config's 300k), evaluate every member
# with the five metrics at disentanglement_lib's sizes, and write the report.
#
#   bash experiments/study_dsprites.sh OUT_DIR [TRAIN_MINUTES=8]
#
# Environment (defaults in brackets):
#   CONFIG   [experiments/configs/beta_vae_dsprites.py]  e.g. …/annealed_vae_dsprites.py
#   SWEEP    [vae.beta=1,2,4,6,8,16]                     e.g. vae.c_max=5,10,25,50,75,100
#   SEEDS    [3]            seeds per setting (members = settings × SEEDS)
#   MEASURE  [300]          steps of the measuring run (compile excluded from its rate)
#   EVAL     []             extra flags of evaluate_disentanglement, e.g. "--num_train=40"
#   EXTRA    []             extra training flags, e.g. "--config.dataset.name=dsprites …"
#   PYTHON   [python3]      the interpreter (on a lent GPU machine: the image's, with jax)
# Writes OUT_DIR/run (the population's workdir), OUT_DIR/plan.json (the measured rate and the
# steps chosen), OUT_DIR/run/results/disentanglement_step*.json and OUT_DIR/report/.
set -euo pipefail
OUT=${1:?usage: bash experiments/study_dsprites.sh OUT_DIR [TRAIN_MINUTES]}
MINUTES=${2:-8}
CONFIG=${CONFIG:-experiments/configs/beta_vae_dsprites.py}
SWEEP=${SWEEP:-vae.beta=1,2,4,6,8,16}
SEEDS=${SEEDS:-3}
MEASURE=${MEASURE:-300}
EVAL=${EVAL:-}
EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
POP=(--config.population.sweep="$SWEEP" --config.population.seeds="$SEEDS")

echo "== 1/4 measure: $MEASURE steps of the population ($SWEEP × $SEEDS seeds)" >&2
rm -rf "$OUT/measure"
# shellcheck disable=SC2086
"$PYTHON" -m experiments.main --config="$CONFIG" --workdir="$OUT/measure" "${POP[@]}" \
  --config.num_train_steps="$MEASURE" --config.log_every_steps=$(((MEASURE + 2) / 3)) \
  --config.eval_every_steps=1000000000 --config.sample_every_steps=1000000000 \
  --config.checkpoint_every_steps=1000000000 $EXTRA

"$PYTHON" - "$OUT" "$MINUTES" "$CONFIG" <<'EOF'
import importlib.util, json, sys
out, minutes, config = sys.argv[1], float(sys.argv[2]), sys.argv[3]
path, _, arg = config.partition(":")
spec = importlib.util.spec_from_file_location("study_config", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
target = int(module.get_config(arg or None).num_train_steps)  # The config's own (300k).
rows = [json.loads(l) for l in open(f"{out}/measure/metrics.jsonl")]
rates = [r["steps_per_sec"] for r in rows if "steps_per_sec" in r and r.get("member", 0) == 0]
rate = rates[-1]  # The last interval: compile excluded.
steps = max(1, min(target, int(0.9 * minutes * 60 * rate)))
plan = {"steps_per_sec": rate, "minutes": minutes, "steps": steps, "published_steps": target,
        "members": len(json.load(open(f"{out}/measure/members.json"))["members"])}
json.dump(plan, open(f"{out}/plan.json", "w"), indent=2)
print(f"{plan['members']} members at {rate:.1f} steps/s: {steps} steps fit in {minutes:g} min "
      f"({100 * steps / target:.1f}% of {target})", file=sys.stderr)
EOF
STEPS=$("$PYTHON" -c "import json; print(json.load(open('$OUT/plan.json'))['steps'])")

echo "== 2/4 train: $STEPS steps (SIGTERM after the budget leaves a resumable checkpoint)" >&2
set +e
# shellcheck disable=SC2086
timeout -s TERM $((${MINUTES%.*} * 60 + 120)) "$PYTHON" -m experiments.main --config="$CONFIG" \
  --workdir="$OUT/run" "${POP[@]}" --config.num_train_steps="$STEPS" $EXTRA
code=$?
set -e
if [ "$code" -ne 0 ] && [ "$code" -ne 75 ]; then echo "training failed ($code)" >&2; exit "$code"; fi

echo "== 3/4 metrics of every member" >&2
# shellcheck disable=SC2086
"$PYTHON" -m experiments.evaluate_disentanglement --workdir="$OUT/run" $EVAL

echo "== 4/4 report" >&2
"$PYTHON" -m experiments.report --workdir="$OUT/run" --output="$OUT/report"
