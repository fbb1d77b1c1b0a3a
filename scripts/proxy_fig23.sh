#!/usr/bin/env bash
# Figures 2 and 3 at CPU scale, with seeds: every experiment x every seed through the same
# `bnrepro-train` path as the ImageNet runs; only the data and size differ (the synthetic data's
# defaults: 10 classes, 64 px crops, BN-Inception at width 1/4, per-rank batch 32 as the paper).
# Then bnrepro-report draws Figure 2 (val top-1 vs paper steps, seed mean and min-max band) and the
# Figure 3 table (steps to reach the Inception runs' best accuracy, max and final accuracy, mean
# and spread over seeds), beside the paper's numbers.
#
#   scripts/proxy_fig23.sh              # results/proxy: 3 seeds, about an hour on 2 CPU cores
#   SEEDS=0 MAX_IMAGES=640 EVAL_EVERY=320 RESULTS=/tmp/p scripts/proxy_fig23.sh data.synthetic.train_per_class=16
#
# Unattended: each run is its own process with its own log (<OUT>/logs/), so a run that fails
# (or diverges: exit status 3) is reported and the others go on; the report covers every run that
# logged an evaluation, and shows a diverged run as "diverged". inception_x5 expects to diverge
# (trainer.expect_divergence) and exits 0 whether or not it does. Running it again resumes or skips finished runs
# (a run folder resumes from its checkpoint). Exit status 0 if every run succeeded, else 1.
# The paper's divergence control, `inception_x5` (Inception at BN-x5's LR 0.0075, section 4.2.2),
# runs when configs/experiment/inception_x5.yaml exists.
#
# Env: SEEDS (comma-separated, default 0,1,2), EXPERIMENTS (space-separated, default all of the
# above), MAX_IMAGES (per run), EVAL_EVERY, OUT (run folders), RESULTS (report folder), BIN (venv
# bin). Arguments: extra Hydra overrides for every run. Writes <RESULTS>/proxy_run.json: the command,
# its wall time and commit, each run's experiment, seed, exit status and seconds (run_lib.sh).
set -euo pipefail
SEEDS=${SEEDS:-0,1,2}
MAX_IMAGES=${MAX_IMAGES:-48000}
EVAL_EVERY=${EVAL_EVERY:-3200}
OUT=${OUT:-outputs/proxy}
RESULTS=${RESULTS:-results/proxy}
BIN=${BIN:-$(dirname "$(command -v python)")}
GIVEN_EXPERIMENTS=${EXPERIMENTS:-}  # recorded in proxy_run.json's command when given
if [ -z "${EXPERIMENTS:-}" ]; then
  EXPERIMENTS="inception bn_baseline bn_x5 bn_x30 bn_x5_sigmoid inception_sigmoid"
  CONFIGS=$(cd "$(dirname "$0")/../configs" && pwd)
  if [ -f "$CONFIGS/experiment/inception_x5.yaml" ]; then EXPERIMENTS="$EXPERIMENTS inception_x5"; fi
fi
source "$(dirname "$0")/run_lib.sh"
check_seeds proxy_fig23 "$SEEDS"

mkdir -p "$OUT/logs" "$RESULTS"
start=$(date +%s)
for experiment in $EXPERIMENTS; do
  for seed in ${SEEDS//,/ }; do
    train_run "$OUT/logs/${experiment}_seed${seed}.log" "experiment=$experiment seed=$seed" \
      "experiment=$experiment" "seed=$seed" \
      trainer.max_images="$MAX_IMAGES" trainer.eval_every_images="$EVAL_EVERY" \
      trainer.ckpt_every_images="$MAX_IMAGES" runtime.progress=false out_dir="$OUT" "$@"
    [ "$STATUS" -eq 0 ] || FAILED=$((FAILED + 1))
  done
done

"$BIN/bnrepro-report" "$OUT" --out "$RESULTS" \
  --title "CPU proxy: synthetic 10 classes, 64 px, width 1/4, $MAX_IMAGES images per run, seeds $SEEDS"
wall=$(($(date +%s) - start))
write_record "$RESULTS/proxy_run.json" "$wall" \
  "SEEDS=$SEEDS MAX_IMAGES=$MAX_IMAGES EVAL_EVERY=$EVAL_EVERY ${GIVEN_EXPERIMENTS:+EXPERIMENTS='$GIVEN_EXPERIMENTS' }OUT=$OUT RESULTS=$RESULTS scripts/proxy_fig23.sh $*"
echo "proxy done in $wall s ($FAILED failed runs); report in $RESULTS"
[ "$FAILED" -eq 0 ]
