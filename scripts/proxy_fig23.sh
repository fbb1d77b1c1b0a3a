#!/usr/bin/env bash
# Figures 2 and 3 at CPU scale: all six experiments through the same `bnrepro-train` path as the
# ImageNet runs; only the data and size differ (the synthetic data's defaults: 10 classes,
# 64 px crops, BN-Inception at width 1/4, per-rank batch 32 as the paper). Then bnrepro-report
# draws Figure 2 (val top-1 vs paper steps) and the Figure 3 table (steps to reach the Inception
# run's best accuracy, max accuracy), beside the paper's numbers.
#
#   scripts/proxy_fig23.sh                              # the committed results/proxy (see results/proxy/README.md for its cost)
#   MAX_IMAGES=640 EVAL_EVERY=320 RESULTS=/tmp/p scripts/proxy_fig23.sh data.synthetic.train_per_class=16 ...
#
# Env: MAX_IMAGES (per run), EVAL_EVERY, OUT (run folders), RESULTS (report folder), BIN (venv bin).
# Arguments are extra Hydra overrides for every run.
set -euo pipefail
MAX_IMAGES=${MAX_IMAGES:-48000}
EVAL_EVERY=${EVAL_EVERY:-3200}
OUT=${OUT:-outputs/proxy}
RESULTS=${RESULTS:-results/proxy}
BIN=${BIN:-$(dirname "$(command -v python)")}
SWEEP="$OUT/sweep"
start=$(date +%s)

"$BIN/bnrepro-train" -m \
  experiment=inception,bn_baseline,bn_x5,bn_x30,bn_x5_sigmoid,inception_sigmoid \
  trainer.max_images="$MAX_IMAGES" trainer.eval_every_images="$EVAL_EVERY" \
  trainer.ckpt_every_images="$MAX_IMAGES" runtime.progress=false \
  out_dir="$OUT" hydra.sweep.dir="$SWEEP" "$@"

"$BIN/bnrepro-report" "$SWEEP" --out "$RESULTS" \
  --title "CPU proxy: synthetic 10 classes, 64 px, width 1/4, $MAX_IMAGES images per run"
echo "proxy done in $(( $(date +%s) - start )) s; report in $RESULTS"
