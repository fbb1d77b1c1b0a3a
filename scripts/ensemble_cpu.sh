#!/usr/bin/env bash
# Figure 4 at CPU scale, and the head-BN comparison it needs (issue 21): the six ensemble members
# of configs/experiment/bn_x30_ensemble.yaml through the same `bnrepro-train` and
# `bnrepro-ensemble` paths as the ImageNet runs (only the data and size differ: the synthetic
# data's defaults, 10 classes, 64 px, width 1/4, 16,000 images = 500 paper steps per run), then
# the two readings of section 4.2.3's "per-activation BN in the last hidden layers" against no
# such BN, three seeds each, on BN-x30 with nothing else changed.
#
#   scripts/ensemble_cpu.sh           # results/ensemble_cpu: ~30 min on a quiet 2-core CPU
#   MAX_IMAGES=96 SEEDS=0,1 CROPS="1 10" RESULTS=/tmp/e OUT=/tmp/e/runs \
#     TRAIN_ARGS="model.width_mult=0.125 trainer.eval_every_images=48 trainer.ckpt_every_images=48" \
#     scripts/ensemble_cpu.sh data.synthetic.train_per_class=16 data.synthetic.val_per_class=4 \
#     data.synthetic.min_side=36 data.synthetic.max_side=56 data.train_crop=32 \
#     data.eval_resize=36 data.eval_crop=32 data.batch_size=16 data.root=/tmp/e/data   # a smoke run
#
# Writes under RESULTS: crops<C>/results.json|md|probs.npz (the members and their ensemble at C
# crops, moving averages and Algorithm 2, paired tests), readings/<reading>/results.json|md (each
# seed of a reading at 1 crop), ensemble_cpu_run.json (the command, each step's exit status and
# seconds) and README.md, rendered from those files by scripts/ensemble_cpu_readme.py (so every
# number and claim in it is the JSON's: tests/test_results.py checks it).
# Unattended: each run is its own process with its own log (<OUT>/logs/); a failed run is
# reported and the others go on; running it again resumes or skips finished runs. Exit status 0
# if every step succeeded, else 1.
#
# Env: MAX_IMAGES (per training run, default the synthetic scale's 16000), SEEDS (the readings',
# comma-separated, default 0,1,2), CROPS (space-separated, default "1 10 144"), OUT (run
# folders), RESULTS, BIN (venv bin), TRAIN_ARGS (overrides for the training runs only).
# Arguments: Hydra overrides for every training and evaluation run (data.*: both read the data).
set -euo pipefail
MAX_IMAGES=${MAX_IMAGES:-16000}
SEEDS=${SEEDS:-0,1,2}
CROPS=${CROPS:-1 10 144}
OUT=${OUT:-outputs/ensemble_cpu}
RESULTS=${RESULTS:-results/ensemble_cpu}
BIN=${BIN:-$(dirname "$(command -v python)")}
case "$SEEDS" in '' | *[!0-9,]*) echo "ensemble_cpu: SEEDS must be like 0,1,2, got '$SEEDS'" >&2; exit 2 ;; esac
# The readings (name: overrides of BN-x30): no BN before the classifier, BN on the pooled
# features (model.head_bn), per-activation BN in the last two inception modules (5a, 5b).
READINGS=("none:" "pooled:model.head_bn=true" "per_activation:model.per_activation_bn=2")

mkdir -p "$OUT/logs" "$RESULTS"
start=$(date +%s)
steps=()  # "name exit_status seconds"
failed=0
step() {  # step NAME LOG COMMAND...: run one step, record its exit status and time
  local name=$1 log=$2 t0 status=0
  shift 2
  t0=$(date +%s)
  "$@" >"$log" 2>&1 || status=$?
  local seconds=$(($(date +%s) - t0))
  echo "$name: exit $status in ${seconds} s (log: $log)"
  [ "$status" -eq 0 ] || failed=$((failed + 1))
  steps+=("$name $status $seconds")
}
# shellcheck disable=SC2206  # TRAIN_ARGS: words on purpose
train=("$BIN/bnrepro-train" trainer.max_images="$MAX_IMAGES" runtime.progress=false ${TRAIN_ARGS:-})
evaluate=("$BIN/bnrepro-ensemble" runtime.progress=false)

for member in 0 1 2 3 4 5; do
  step "train member $member" "$OUT/logs/member$member.log" "${train[@]}" \
    experiment=bn_x30_ensemble member="$member" out_dir="$OUT/members" "$@"
done
for crops in $CROPS; do
  step "ensemble $crops crops" "$OUT/logs/ensemble_crops$crops.log" "${evaluate[@]}" \
    checkpoints="$OUT/members" crops="$crops" save_probs=true out_dir="$OUT" \
    results_dir="$RESULTS/crops$crops" "$@"
done
for spec in "${READINGS[@]}"; do
  reading=${spec%%:*}
  overrides=${spec#*:}
  for seed in ${SEEDS//,/ }; do
    step "train $reading seed $seed" "$OUT/logs/${reading}_seed$seed.log" "${train[@]}" \
      experiment=bn_x30 experiment_name="bn_x30_$reading" seed="$seed" \
      out_dir="$OUT/readings/$reading" $overrides "$@"
  done
  step "evaluate $reading" "$OUT/logs/evaluate_$reading.log" "${evaluate[@]}" \
    checkpoints="$OUT/readings/$reading" crops=1 out_dir="$OUT" \
    results_dir="$RESULTS/readings/$reading" "$@"
done

wall=$(($(date +%s) - start))
"$BIN/python" - "$RESULTS/ensemble_cpu_run.json" "$wall" \
  "MAX_IMAGES=$MAX_IMAGES SEEDS=$SEEDS CROPS='$CROPS' OUT=$OUT RESULTS=$RESULTS ${TRAIN_ARGS:+TRAIN_ARGS='$TRAIN_ARGS' }scripts/ensemble_cpu.sh $*" \
  "$(git rev-parse HEAD 2>/dev/null || echo unknown)" "${steps[@]}" <<'PY'
import datetime, json, sys

path, wall, command, commit, *steps = sys.argv[1:]
rows = []
for step in steps:
    *name, status, seconds = step.split()
    rows.append({"step": " ".join(name), "exit_status": int(status), "seconds": int(seconds)})
run = {"command": command, "commit": commit, "date": datetime.date.today().isoformat(),
       "wall_seconds": int(wall), "failed_steps": sum(r["exit_status"] != 0 for r in rows),
       "steps": rows}
open(path, "w").write(json.dumps(run, indent=2) + "\n")
PY
"$BIN/python" "$(dirname "$0")/ensemble_cpu_readme.py" "$RESULTS"
echo "ensemble_cpu done in $wall s ($failed failed steps); README in $RESULTS/README.md"
[ "$failed" -eq 0 ]
