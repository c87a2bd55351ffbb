#!/usr/bin/env bash
# One OPD update step at real Qwen3 shapes on one GPU: a random-init Qwen3-0.6B-shaped student (fp32 master
# weights under bf16 autocast, as train.py) and a Qwen3-4B-shaped teacher (bf16), vocabulary 151,936,
# batch 8, 1024-token responses after 256-token prompts (the paper's Table 4 setting).
#   1. --check: on one batch (2 × 512), our paths against the naive recipes (loss, gradient error) in bf16;
#   2. per mode, in a fresh process: median step time, teacher-score and student-update phases, and peak
#      CUDA memory above the step's start, and the same above body_floor (the decoder bodies alone); and
#      matmul_floor (the bodies and the vocabulary matmuls, no softmax). Ours first: the naive recipes may
#      run out of memory (reported).
#   3. report.md: both groups in one table, with the ratios.
#   4. PARTS=rollout: the rollout engines (benchmarks/rollout_bench.py) at the training shape (Qwen3-0.6B-shaped
#      student, 4B teacher, batch 32, ≤ 1024 new tokens of mean length ~400, the whole step per engine) and at
#      the evaluation shape (batch 64, ≤ 4096 tokens, sampling only): rollout_train.json, rollout_eval.json.
# PARTS=step takes about 4 minutes on an H200 (timeouts: ≤ 8); PARTS=rollout is not yet measured (timeouts:
# ≤ 9). One part per device session fits its 15 minutes.
#
#   PARTS=step bash benchmarks/gpu_check.sh     # on the GPU machine; files into $OUT (or benchmarks/out)
#   PARTS=rollout bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --dry-run      # tiny shapes on CPU, every part: checks the code paths (~2 min)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/run.log"
: >"$LOG"

PARTS=${PARTS:-step rollout}
if [[ "${1:-}" == "--dry-run" ]]; then
  SHAPE=(--dry-run --device cpu --threads 1)
  CHECK=(--dry-run --device cpu --threads 1 --dtype bfloat16)
  ROLL_MODELS=(--shape tiny --teacher-shape tiny --device cpu --dtype bfloat16 --prompt-len 16)
  ROLL_TRAIN=("${ROLL_MODELS[@]}" --batch-sizes 4 --max-new-tokens 24 --mean-length 8 --repeats 1 --step)
  ROLL_EVAL=("${ROLL_MODELS[@]}" --batch-sizes 8 --max-new-tokens 48 --mean-length 16 --warmup 0 --repeats 1)
else
  ROLL_MODELS=(--shape qwen3-0.6b --teacher-shape qwen3-4b --device cuda --dtype bfloat16 --prompt-len 256)
  ROLL_TRAIN=("${ROLL_MODELS[@]}" --batch-sizes 32 --max-new-tokens 1024 --mean-length 400 --repeats 1 --step)
  ROLL_EVAL=("${ROLL_MODELS[@]}" --batch-sizes 64 --max-new-tokens 4096 --mean-length 1200 --warmup 0 --repeats 1)
  MODELS=(--device cuda --dtype bfloat16 --student-shape qwen3-0.6b --teacher-shape qwen3-4b --vocab 151936)
  SHAPE=("${MODELS[@]}" --batch 8 --seq 1024 --prompt-len 256 --warmup 1 --repeats 3)
  CHECK=("${MODELS[@]}" --batch 2 --seq 512 --prompt-len 64)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"

status=0
if [[ " $PARTS " == *" step "* ]]; then
  timeout 100 "$PY" benchmarks/step_bench.py "${CHECK[@]}" --check --json "$OUT_DIR/check.json" 2>&1 | tee -a "$LOG" \
    || status=1
  timeout 200 "$PY" benchmarks/step_bench.py "${SHAPE[@]}" --modes power_sampled full_kl_chunked body_floor matmul_floor \
    --json "$OUT_DIR/ours.json" 2>&1 | tee -a "$LOG" || status=1
  timeout 180 "$PY" benchmarks/step_bench.py "${SHAPE[@]}" --modes naive_sampled full_kl_naive \
    --json "$OUT_DIR/naive.json" 2>&1 | tee -a "$LOG" || status=1
  "$PY" benchmarks/step_bench.py --merge "$OUT_DIR/ours.json" "$OUT_DIR/naive.json" --json "$OUT_DIR/gpu.json" \
    2>&1 | tee "$OUT_DIR/report.md" || status=1
fi
if [[ " $PARTS " == *" rollout "* ]]; then
  # the engines alternate within a part; its table prints when the part ends
  timeout 270 "$PY" benchmarks/rollout_bench.py "${ROLL_TRAIN[@]}" --engines continuous,generate \
    --json "$OUT_DIR/rollout_train.json" 2>&1 | grep -v Warning | tee -a "$LOG" "$OUT_DIR/rollout.md" || status=1
  timeout 270 "$PY" benchmarks/rollout_bench.py "${ROLL_EVAL[@]}" --engines continuous,generate \
    --json "$OUT_DIR/rollout_eval.json" 2>&1 | grep -v Warning | tee -a "$LOG" "$OUT_DIR/rollout.md" || status=1
fi
exit $status
