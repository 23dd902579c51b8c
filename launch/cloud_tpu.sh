#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM (pod slice): the same command on all workers with
# --multihost, so jax.distributed.initialize() finds the coordinator from the TPU metadata.
#
#   TPU_NAME=my-tpu ZONE=us-central2-b launch/cloud_tpu.sh CONFIG WORKDIR [extra flags...]
#
# Run from your workstation. The repository and its environment must already be on every worker
# at REPO_DIR (default: gen_models, relative to the remote home), and WORKDIR must be a directory
# that all workers share (e.g. an NFS/Filestore or gcsfuse mount; plain gs:// paths are not
# supported by the trainer's workdir checks). CONFIG is a path on the workers.
# Environment: TPU_NAME, ZONE (required); PROJECT (default: gcloud's); REPO_DIR;
# PYTHON (default: python3; an absolute path or a name on the workers' PATH).
set -euo pipefail

if [[ $# -lt 2 || -z ${TPU_NAME:-} || -z ${ZONE:-} ]]; then
  awk 'NR == 1 { next } /^#/ { print; next } { exit }' "$0" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2

# The command each worker runs, every argument quoted for the remote shell.
remote="cd $(printf '%q' "${REPO_DIR:-gen_models}") && PYTHONPATH=\$PWD"
for arg in "${PYTHON:-python3}" -m experiments.main --config="${config}" --workdir="${workdir}" \
  --multihost "$@"; do
  remote+=" $(printf '%q' "${arg}")"
done

gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" ${PROJECT:+--project="${PROJECT}"} \
  --worker=all --command="${remote}"
