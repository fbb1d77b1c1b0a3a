#!/usr/bin/env bash
# CI helper: the SLURM tests (pytest -m slurm) against a real one-node cluster on this machine.
# Starts it (scripts/local_slurm.sh), runs the tests, and stops it again if it started it, also
# when the tests fail. A missing cluster fails the tests here instead of skipping them.
#   .ci/slurm.sh                 # extra arguments go to pytest, e.g. .ci/slurm.sh -x -k requeue
set -euo pipefail
cd "$(dirname "$0")/.."
if scripts/local_slurm.sh status >/dev/null 2>&1; then
  echo "slurm: using the cluster that is already running"
else
  scripts/local_slurm.sh start
  trap 'scripts/local_slurm.sh stop' EXIT
fi
export BNREPRO_REQUIRE_SLURM=1 WANDB_MODE=disabled
.venv/bin/pytest -m slurm "$@"
