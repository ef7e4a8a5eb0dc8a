#!/usr/bin/env bash
# The GPU box check, on a Linux machine with an NVIDIA GPU and its driver (nvidia-smi), from a checkout of edgectl:
#
#     bash bench/gpu_box.sh [--clients 8]
#
# Sets up (cached after the first run): the project's .venv (scripts/setup.sh), llama-cpp-python rebuilt with CUDA
# when its build cannot offload, and the CUDA vLLM venv (scripts/setup.sh vllm with EDGECTL_VLLM_PACKAGE=vllm) in
# ~/.cache/edgectl/vllm-cuda-venv. Then bench/gpu_box.py builds SmolLM2 as GPTQ W4A16 and GGUF Q4_K_M, serves each
# through a real agent (CUDA vLLM; llama.cpp with every layer on the GPU) and prints the figures and one verdict line
# per target. Cold: about 20-30 minutes (the CUDA compile of llama.cpp and the vLLM wheels); warm: a few minutes.
# Not run by the project yet: no GPU machine was lent to the session that wrote it (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_box.sh: no NVIDIA GPU here (nvidia-smi -L failed): run it on the GPU box" >&2
  exit 2
fi
nvidia-smi -L
export EDGECTL_VLLM_VENV=${EDGECTL_VLLM_VENV:-$HOME/.cache/edgectl/vllm-cuda-venv}
export EDGECTL_VLLM_PACKAGE=${EDGECTL_VLLM_PACKAGE:-vllm}
export CMAKE_ARGS=${CMAKE_ARGS:--DGGML_CUDA=on}  # a fresh llama-cpp-python compile gets CUDA
bash scripts/setup.sh vllm
if ! .venv/bin/python -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())"; then
  version=$(.venv/bin/python -c "from importlib.metadata import version; print(version('llama-cpp-python'))")
  echo "gpu_box.sh: rebuilding llama-cpp-python $version with CUDA (~10 min)" >&2
  .venv/bin/python -m pip install -q --force-reinstall --no-deps --no-cache-dir --no-binary llama-cpp-python \
    "llama-cpp-python==$version"
fi
exec timeout 3600 .venv/bin/python bench/gpu_box.py "$@"
