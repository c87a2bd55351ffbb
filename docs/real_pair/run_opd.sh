#!/usr/bin/env bash
# The real-pair study of README "Diagnostics": SmolLM2-135M-Instruct teacher, its first 8 layers as student.
# Diagnose before training, then a short on-policy distillation run with power and with log_ratio, plotted
# side by side. Run from the repository root after scripts/install.sh; writes under $WORK (default /tmp/realpair)
# and copies the small outputs (metrics, figures) into docs/real_pair/.
set -euo pipefail
WORK=${WORK:-/tmp/realpair}
DATA=${DATA:-../shared/data}
P=.venv/bin/poweropd
mkdir -p "$WORK"
[ -d "$WORK/smol8" ] || $P prune --model smollm2-135m-instruct --keep-layers 0-7 --output-dir "$WORK/smol8"
[ -f docs/real_pair/summary.json ] || $P diagnose --teacher smollm2-135m-instruct --student "$WORK/smol8" \
  --data "$DATA/gsm8k_test.jsonl" --num-prompts 32 --max-new-tokens 128 --alphas 0.1,1,10,100 --output-dir docs/real_pair
for reward in power log_ratio; do
  rm -rf "$WORK/opd_$reward"
  OMP_NUM_THREADS=1 $P train --student "$WORK/smol8" --teacher smollm2-135m-instruct --data "$DATA/gsm8k_train.jsonl" \
    --reward $reward --alpha 1 --max-steps ${STEPS:-12} --batch-size 8 --max-new-tokens 64 --lr 1e-5 \
    --save-every 0 --positions-every 4 --no-progress --output-dir "$WORK/opd_$reward" &
done
wait
$P plot "$WORK/opd_power" "$WORK/opd_log_ratio" --output-dir docs/real_pair/opd
for reward in power log_ratio; do
  mkdir -p docs/real_pair/opd/$reward
  cp "$WORK/opd_$reward"/{metrics.jsonl,positions.jsonl,config.yaml} docs/real_pair/opd/$reward/
done
