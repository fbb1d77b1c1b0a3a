#!/usr/bin/env bash
# Submit the whole paper to SLURM: the five variants of Figures 2-3 (paper section 4.2), the six
# BN-x30 ensemble members as one array job (section 4.2.3), and the 144-crop ensemble, which starts
# only when every member has succeeded (--dependency=afterok). Run it from the repository with the
# project's environment active (sbatch exports it to the jobs).
#
#   scripts/submit_paper.sh data=imagenet data.root=/datasets/imagenet
#   PARTITION=gpu GPUS=8 NODES=2 scripts/submit_paper.sh data=imagenet data.root=/datasets/imagenet
#
# Each training job runs its experiment's own budget (trainer.max_images in configs/experiment/*.yaml,
# covering its curve in Figure 2; results/README.md). See what each will do and cost first:
#   bnrepro-plan -m experiment=inception,bn_baseline,bn_x5,bn_x30,bn_x5_sigmoid data=imagenet plan.gpus=8
#
# Arguments: Hydra overrides for every job (training and ensemble): the data, typically.
# Env (defaults in brackets):
#   OUT_DIR [outputs]     run folders <OUT_DIR>/<experiment>_seed<seed>, the ensemble's results in
#                         <OUT_DIR>/ensemble/<time>, job logs in <OUT_DIR>/slurm-logs
#   PARTITION []          sbatch --partition (empty: the cluster's default)
#   NODES [1]             nodes per training job
#   GPUS [8]              GPUs per node, one task each; 0 = CPU jobs with TASKS tasks per node
#   TASKS [1]             tasks per node when GPUS=0
#   CPUS [8]              CPUs per task (data-loading workers)
#   TIME [3-00:00:00]     time limit per training job; longer runs requeue themselves on USR2
#   SIGNAL_S [120]        USR2 this many seconds before the time limit
#   SBATCH_ARGS []        more sbatch options for every job, e.g. "--account=me --qos=high"
#   TRAIN_ARGS []         overrides for the training jobs only, e.g. "logger=wandb"
#   ENSEMBLE_ARGS []      overrides for the ensemble job only
# Prints one line per job: <what> <job id>.
set -euo pipefail
SLURM_DIR=$(cd "$(dirname "$0")/../slurm" && pwd)
OUT_DIR=${OUT_DIR:-outputs}
GPUS=${GPUS:-8}
VARIANTS="inception bn_baseline bn_x5 bn_x30 bn_x5_sigmoid"

command -v sbatch >/dev/null || { echo "submit_paper: sbatch not found: run this on a SLURM login node" >&2; exit 1; }
command -v bnrepro-train >/dev/null || { echo "submit_paper: bnrepro-train not on PATH: activate the project's environment" >&2; exit 1; }
case "$GPUS" in '' | *[!0-9]*) echo "submit_paper: GPUS must be a whole number, got '$GPUS'" >&2; exit 1 ;; esac
mkdir -p "$OUT_DIR/slurm-logs"

common=(--parsable --output="$OUT_DIR/slurm-logs/%x-%j.out")
[ -n "${PARTITION:-}" ] && common+=(--partition="$PARTITION")
read -r -a extra <<<"${SBATCH_ARGS:-}"
common+=("${extra[@]}")
if [ "$GPUS" -gt 0 ]; then
  tasks=$GPUS ensemble_gpus=1  # one process per GPU; the ensemble evaluates on one GPU
else
  tasks=${TASKS:-1} ensemble_gpus=0
fi
train=("${common[@]}" --nodes="${NODES:-1}" --ntasks-per-node="$tasks" --gpus-per-node="$GPUS"
  --cpus-per-task="${CPUS:-8}" --time="${TIME:-3-00:00:00}" --signal="B:USR2@${SIGNAL_S:-120}")
read -r -a train_args <<<"${TRAIN_ARGS:-}"
read -r -a ensemble_args <<<"${ENSEMBLE_ARGS:-}"

job_id() { echo "${1%%;*}"; }  # --parsable prints <id> or <id>;<cluster>

for variant in $VARIANTS; do
  id=$(sbatch "${train[@]}" --job-name="bnrepro-$variant" "$SLURM_DIR/train.sbatch" \
    experiment="$variant" out_dir="$OUT_DIR" "$@" "${train_args[@]}")
  echo "$variant $(job_id "$id")"
done

members=$(job_id "$(sbatch "${train[@]}" --array=0-5 --output="$OUT_DIR/slurm-logs/%x-%A_%a.out" \
  "$SLURM_DIR/ensemble_members.sbatch" out_dir="$OUT_DIR" "$@" "${train_args[@]}")")
echo "bn_x30_ensemble_members $members"

id=$(sbatch "${common[@]}" --dependency="afterok:$members" --kill-on-invalid-dep=yes \
  --gpus-per-node="$ensemble_gpus" --cpus-per-task="${CPUS:-8}" "$SLURM_DIR/ensemble.sbatch" \
  checkpoints="$OUT_DIR/bn_x30_ensemble_member*" out_dir="$OUT_DIR" "$@" "${ensemble_args[@]}")
echo "ensemble $(job_id "$id")"
