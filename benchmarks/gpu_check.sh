#!/usr/bin/env bash
# One OPD update step at real Qwen3 shapes on one GPU: a random-init Qwen3-0.6B-shaped student (fp32 master
# weights under bf16 autocast, as train.py) and a Qwen3-4B-shaped teacher (bf16), vocabulary 151,936,
# batch 8, 1024-token responses after 256-token prompts. Per mode (fresh process each): median step time,
# teacher-score and student-update phases, peak CUDA memory above the step's start. Fits in ~8 minutes.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine; JSON into $OUT (or benchmarks/out)
#   bash benchmarks/gpu_check.sh --dry-run   # tiny shapes on CPU: checks the code path in a minute
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"

if [[ "${1:-}" == "--dry-run" ]]; then
  SHAPE=(--dry-run --device cpu)
else
  SHAPE=(--device cuda --dtype bfloat16 --student-shape qwen3-0.6b --teacher-shape qwen3-4b
         --vocab 151936 --batch 8 --seq 1024 --prompt-len 256 --warmup 1 --repeats 3)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT_DIR/versions.txt"

status=0
# Ours first: the naive recipes may run out of memory at this size (that is reported, not fatal).
for modes in "power_sampled full_kl_chunked" "naive_sampled full_kl_naive"; do
  name=${modes// /+}
  timeout 240 "$PY" benchmarks/step_bench.py "${SHAPE[@]}" --modes $modes --json "$OUT_DIR/gpu_$name.json" \
    2>&1 | tee "$OUT_DIR/gpu_$name.log" || status=1
done
exit $status
