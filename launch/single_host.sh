#!/usr/bin/env bash
# Train on this machine, one process, all of its devices.
#
#   launch/single_host.sh CONFIG WORKDIR [extra flags...]
#   launch/single_host.sh experiments/configs/wgan_gp_toy.py:smoke /tmp/run --config.seed=1
#
# Runs `python -m experiments.main --config=CONFIG --workdir=WORKDIR [extra flags]` from the
# current directory (relative paths are relative to it). Running it again resumes the run.
# Environment: PYTHON (default: python).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  awk 'NR == 1 { next } /^#/ { print; next } { exit }' "$0" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"

exec "${PYTHON:-python}" -m experiments.main --config="${config}" --workdir="${workdir}" "$@"
