#!/usr/bin/env bash
# Train with N processes on this machine (loopback coordinator): a local rehearsal of a
# multi-host run, e.g. to test sharding and checkpointing across processes on CPU.
#
#   launch/multi_process.sh N CONFIG WORKDIR [extra flags...]
#   DEVICES_PER_PROCESS=1 launch/multi_process.sh 2 experiments/configs/wgan_gp_toy.py:smoke /tmp/mp
#
# Starts processes 0..N-1 of `python -m experiments.main` with
# --coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i, each with
# XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS (default 2) and
# JAX_PLATFORMS=cpu unless JAX_PLATFORMS is set. Output lines are prefixed with "[i] ".
# Waits for all; if one fails the others are stopped, and the exit status is non-zero.
# Environment: DEVICES_PER_PROCESS, PORT (default: a free one), PYTHON (default: python).
set -euo pipefail

if [[ $# -lt 3 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  awk 'NR == 1 { next } /^#/ { print; next } { exit }' "$0" >&2
  exit 2
fi
num=$1
config=$2
workdir=$3
shift 3
python=${PYTHON:-python}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
devices_flag=--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-2}
export XLA_FLAGS="${XLA_FLAGS:+${XLA_FLAGS} }${devices_flag}"  # The last occurrence wins.
free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
port=${PORT:-$("${python}" -c "${free_port}")}

pids=()
declare -A done_pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    [[ -n ${done_pids[${pid}]:-} ]] || kill "${pid}" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < num; i++)); do
  "${python}" -m experiments.main --config="${config}" --workdir="${workdir}" \
    --coordinator_address="127.0.0.1:${port}" --num_processes="${num}" --process_id="${i}" "$@" \
    > >(awk -v p="[${i}] " '{ print p $0; fflush() }') 2>&1 &
  pids+=($!)
done

# Poll so that the first failure stops the rest (they would otherwise wait on it).
failed=0
running=${num}
while ((running > 0)); do
  for i in "${!pids[@]}"; do
    pid=${pids[i]}
    [[ -n ${done_pids[${pid}]:-} ]] && continue
    kill -0 "${pid}" 2>/dev/null && continue
    rc=0
    wait "${pid}" || rc=$?
    done_pids[${pid}]=1
    running=$((running - 1))
    if ((rc != 0 && failed == 0)); then
      echo "process ${i} exited with status ${rc}; stopping the others" >&2
      failed=${rc}
      stop_all
    fi
  done
  if ((running > 0)); then
    sleep 1
  fi
done
wait  # Let the output filters finish.
exit "${failed}"
