#!/usr/bin/env bash
# "Batch Normalization enables higher learning rates" (section 3.3) at CPU scale: Inception and
# BN-Baseline (the same network without and with BN, nothing else changed) over a geometric grid
# of optim.lr from the paper's 0.0015 up, x3 a step, every seed, through the same `bnrepro-train`
# path as the ImageNet runs (the synthetic data's scale: 10 classes, 64 px, width 1/4, batch 32).
# Then `bnrepro-report --lr-stability`: final top-1 against LR with the diverged runs marked and
# each network's largest stable LR over seeds (results/lr_stability/), and `--covariate-shift` on
# the runs at 0.0015 (the monitor's percentiles of a late module's ReLU input, as Figure 1(b, c);
# results/covariate_shift/).
#
#   scripts/lr_stability.sh           # results/lr_stability: 3 seeds, ~35 min on 2 quiet cores
#   SEEDS=0 MAX_IMAGES=64 EVAL_EVERY=32 LRS="0.0015 50" RESULTS=/tmp/lr scripts/lr_stability.sh data.synthetic.train_per_class=16
#
# Each run ends diverged (the suite stops it: exit status 3, a result here), trained, or not
# above chance. For each network and seed the grid is climbed until STOP_AFTER runs in a row
# failed to train (diverged or not above chance): the LRs above are not run (recorded as
# skipped), so the grid costs little past where each network stops training. A run that fails
# otherwise (any other exit status) is reported and the others go on; exit status 1 then.
# Running it again resumes or skips finished runs (each run folder resumes from its checkpoint).
#
# Env: SEEDS (default 0,1,2), NETWORKS (default "inception bn_baseline"), LRS (space-separated,
# default 0.0015 x 3^k up to 9.8415), STOP_AFTER (default 2), MAX_IMAGES (per run, default 9600
# = 300 paper steps), EVAL_EVERY (1600), MONITOR (the module whose nonlinearity inputs are
# recorded, default blocks.5b.branch1x1: a late inception module), MONITOR_EVERY (320), OUT (run
# folders), RESULTS (the LR report), SHIFT (the covariate-shift report), BIN (venv bin).
# Arguments: extra Hydra overrides for every run. Writes <RESULTS>/lr_stability_run.json: the
# command, its wall time and commit, each run's network, seed, LR, exit status, seconds, outcome.
set -euo pipefail
SEEDS=${SEEDS:-0,1,2}
NETWORKS=${NETWORKS:-inception bn_baseline}
LRS=${LRS:-0.0015 0.0045 0.0135 0.0405 0.1215 0.3645 1.0935 3.2805 9.8415}
STOP_AFTER=${STOP_AFTER:-2}
MAX_IMAGES=${MAX_IMAGES:-9600}
EVAL_EVERY=${EVAL_EVERY:-1600}
MONITOR=${MONITOR:-blocks.5b.branch1x1}
MONITOR_EVERY=${MONITOR_EVERY:-320}
OUT=${OUT:-outputs/lr_stability}
RESULTS=${RESULTS:-results/lr_stability}
SHIFT=${SHIFT:-results/covariate_shift}
BIN=${BIN:-$(dirname "$(command -v python)")}
source "$(dirname "$0")/run_lib.sh"
check_seeds lr_stability "$SEEDS"
case "$STOP_AFTER" in '' | *[!0-9]*) echo "lr_stability: STOP_AFTER must be a whole number" >&2; exit 2 ;; esac

# The outcome of one finished run, as the report decides it (lr_stability.run_outcomes).
outcome() {
  "$BIN/python" -c 'import sys
from bnrepro.figures.lr_stability import run_outcomes
from bnrepro.figures.runs import load_runs
print(run_outcomes(load_runs([sys.argv[1]]))["outcome"].iloc[0].replace(" ", "_"))' "$1"
}

mkdir -p "$OUT/logs" "$RESULTS" "$SHIFT"
start=$(date +%s)
for network in $NETWORKS; do
  for seed in ${SEEDS//,/ }; do
    failed_in_a_row=0
    for lr in $LRS; do
      name="${network}_lr${lr}_seed${seed}"
      fields="network=$network seed=$seed lr=$lr"
      if [ "$failed_in_a_row" -ge "$STOP_AFTER" ]; then
        RUNS+=("$fields exit_status=0 seconds=0 outcome=skipped")
        continue
      fi
      train_run "$OUT/logs/$name.log" "$fields" "experiment=$network" "seed=$seed" \
        "optim.lr=$lr" "run_name=$name" trainer.max_images="$MAX_IMAGES" \
        trainer.eval_every_images="$EVAL_EVERY" trainer.ckpt_every_images="$MAX_IMAGES" \
        "trainer.monitor.layers=[$MONITOR]" trainer.monitor.every_images="$MONITOR_EVERY" \
        runtime.progress=false out_dir="$OUT" "$@"
      case "$STATUS" in
        0) result=$(outcome "$OUT/$name") || { result=unknown; FAILED=$((FAILED + 1)); } ;;
        3) result=diverged ;;
        *) result=failed; FAILED=$((FAILED + 1)) ;;
      esac
      RUNS[-1]="${RUNS[-1]} outcome=$result"
      echo "  -> $result"
      case "$result" in
        diverged | not_above_chance) failed_in_a_row=$((failed_in_a_row + 1)) ;;
        *) failed_in_a_row=0 ;;
      esac
    done
  done
done

# A report that fails is counted too, and the record is still written.
"$BIN/bnrepro-report" "$OUT" --out "$RESULTS" --lr-stability \
  --title "LR stability, CPU proxy: synthetic 10 classes, 64 px, width 1/4, $MAX_IMAGES images per run, seeds $SEEDS" \
  || { echo "lr_stability: the LR report failed" >&2; FAILED=$((FAILED + 1)); }
smallest=${LRS%% *}
"$BIN/bnrepro-report" "$OUT" --out "$SHIFT" --covariate-shift --where "optim.lr=$smallest" \
  --title "Covariate shift runs (optim.lr=$smallest), CPU proxy, seeds $SEEDS" \
  || { echo "lr_stability: the covariate-shift report failed" >&2; FAILED=$((FAILED + 1)); }
wall=$(($(date +%s) - start))
write_record "$RESULTS/lr_stability_run.json" "$wall" \
  "SEEDS=$SEEDS NETWORKS='$NETWORKS' LRS='$LRS' STOP_AFTER=$STOP_AFTER MAX_IMAGES=$MAX_IMAGES EVAL_EVERY=$EVAL_EVERY MONITOR=$MONITOR MONITOR_EVERY=$MONITOR_EVERY OUT=$OUT RESULTS=$RESULTS SHIFT=$SHIFT scripts/lr_stability.sh $*" \
  0,3
cp "$RESULTS/lr_stability_run.json" "$SHIFT/lr_stability_run.json"
echo "LR stability done in $wall s ($FAILED failed runs); reports in $RESULTS and $SHIFT"
[ "$FAILED" -eq 0 ]
