#!/usr/bin/env bash
# Sets up, builds (release) and starts the app on http://127.0.0.1:7860. Extra arguments go to the
# server, e.g. --qwen-image-model-path /models/Qwen-Image-Layered or --profile rtx4090.
#
# With an NVIDIA GPU and the CUDA toolkit (nvidia-smi and nvcc on PATH), the build is CUDA for
# the card's compute capability (Ampere, 8.0, or newer; CUDA_COMPUTE_CAP overrides the detected
# one). Otherwise, or with QWEN_LAYERS_BUILD=cpu, it is a CPU build, which runs only the tiny
# test models.
set -euo pipefail
cd "$(dirname "$0")/.."

features=()
if [ "${QWEN_LAYERS_BUILD:-}" != cpu ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader | head -n 1)
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')
  if [ "${cap:-0}" -lt 80 ]; then
    echo "error: $gpu: compute capability ${cap:0:1}.${cap:1} is older than Ampere (8.0), which the engine needs" >&2
    exit 1
  fi
  if ! command -v nvcc >/dev/null 2>&1; then
    echo "error: found $gpu but no nvcc: install the CUDA toolkit (13.0) and put nvcc on PATH," \
      "or run QWEN_LAYERS_BUILD=cpu scripts/run.sh for a CPU build (tiny test models only)" >&2
    exit 1
  fi
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$cap}
  features=(--features cuda)
  echo "GPU: $gpu → CUDA release build for compute capability $CUDA_COMPUTE_CAP"
else
  echo "warning: no NVIDIA GPU in use (nvidia-smi): building for the CPU, which runs only the tiny test" \
    "models (tests/fixtures); the real 20B models need a GPU" >&2
fi

scripts/setup.sh
scripts/build.sh release "${features[@]}"
exec env LEPTOS_SITE_ROOT=target/site ./target/release/server "$@"
