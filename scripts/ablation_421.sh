#!/usr/bin/env bash
# Section 4.2.1's seven changes one at a time, at CPU scale: each added to BN-Baseline alone
# (configs/experiment/ablation/bn_baseline_plus_*.yaml) and each taken from BN-x5 alone
# (bn_x5_minus_*.yaml), beside the two bases, every seed, through the same `bnrepro-train` path
# as the ImageNet runs (the synthetic data's scale: 10 classes, 64 px, width 1/4, batch 32).
# Then `bnrepro-report --ablation bn_baseline,bn_x5`: steps to BN-Baseline's best and final top-1
# per configuration, with 95% t intervals over seeds and the seed-by-seed difference from its
# base (results/ablation_421/). The same configs run on ImageNet with data=imagenet.
#
#   scripts/ablation_421.sh                      # both directions, 3 seeds, ~45 min on 2 quiet cores
#   DIRECTIONS=plus scripts/ablation_421.sh      # only the changes added to BN-Baseline
#   SEEDS=0 MAX_IMAGES=64 EVAL_EVERY=32 RESULTS=/tmp/a scripts/ablation_421.sh data.synthetic.train_per_class=16
#
# Unattended: each run is its own process with its own log (<OUT>/logs/); a run that fails is
# reported and the others go on (exit status 1 at the end); running it again resumes or skips
# finished runs. Env: SEEDS (default 0,1,2), DIRECTIONS ("plus minus": which bases and their
# changes), MAX_IMAGES (per run, default 9600 = 300 paper steps), EVAL_EVERY (1600), OUT, RESULTS,
# BIN (venv bin). Arguments: extra Hydra overrides for every run. Writes
# <RESULTS>/ablation_run.json: the command, its wall time and commit, each run's exit status and
# seconds.
set -euo pipefail
SEEDS=${SEEDS:-0,1,2}
DIRECTIONS=${DIRECTIONS:-plus minus}
MAX_IMAGES=${MAX_IMAGES:-9600}
EVAL_EVERY=${EVAL_EVERY:-1600}
OUT=${OUT:-outputs/ablation_421}
RESULTS=${RESULTS:-results/ablation_421}
BIN=${BIN:-$(dirname "$(command -v python)")}
source "$(dirname "$0")/run_lib.sh"
check_seeds ablation_421 "$SEEDS"
CONFIGS=$(cd "$(dirname "$0")/../configs/experiment" && pwd)

experiments=()
bases=()
for direction in $DIRECTIONS; do
  case "$direction" in
    plus) base=bn_baseline ;;
    minus) base=bn_x5 ;;
    *) echo "ablation_421: DIRECTIONS takes plus and/or minus, got '$direction'" >&2; exit 2 ;;
  esac
  bases+=("$base")
  experiments+=("$base")
  for file in "$CONFIGS"/ablation/"${base}_${direction}"_*.yaml; do
    experiments+=("ablation/$(basename "$file" .yaml)")
  done
done

mkdir -p "$OUT/logs" "$RESULTS"
start=$(date +%s)
for experiment in "${experiments[@]}"; do
  for seed in ${SEEDS//,/ }; do
    train_run "$OUT/logs/${experiment#ablation/}_seed${seed}.log" "experiment=$experiment seed=$seed" \
      "experiment=$experiment" "seed=$seed" trainer.max_images="$MAX_IMAGES" \
      trainer.eval_every_images="$EVAL_EVERY" trainer.ckpt_every_images="$MAX_IMAGES" \
      runtime.progress=false out_dir="$OUT" "$@"
    [ "$STATUS" -eq 0 ] || FAILED=$((FAILED + 1))
  done
done

# A report that fails is counted too, and the record is still written.
base_list=$(IFS=,; echo "${bases[*]}")
"$BIN/bnrepro-report" "$OUT" --out "$RESULTS" --ablation "$base_list" \
  --title "Section 4.2.1 ablation, CPU proxy: synthetic 10 classes, 64 px, width 1/4, $MAX_IMAGES images per run, seeds $SEEDS" \
  || { echo "ablation_421: the report failed" >&2; FAILED=$((FAILED + 1)); }
wall=$(($(date +%s) - start))
write_record "$RESULTS/ablation_run.json" "$wall" \
  "SEEDS=$SEEDS DIRECTIONS='$DIRECTIONS' MAX_IMAGES=$MAX_IMAGES EVAL_EVERY=$EVAL_EVERY OUT=$OUT RESULTS=$RESULTS scripts/ablation_421.sh $*"
echo "ablation done in $wall s ($FAILED failed runs); report in $RESULTS"
[ "$FAILED" -eq 0 ]
