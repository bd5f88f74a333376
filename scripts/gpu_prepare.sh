#!/usr/bin/env bash
# gpu_prepare.sh DEST — builds the CUDA binaries here (no GPU needed) and fills DEST (a
# git-ignored folder of the checkout that travels to the GPU machine, e.g. /work/main/gpu) with
# everything scripts/gpu_bench.sh needs. Run from the repository root.
#
# Needs the CUDA 13.0 toolchain (shared/cuda/setup_cuda_toolchain.sh, sourced here) and keeps its
# own target dir (CARGO_TARGET_DIR, default /work/cuda-target): candle-kernels takes 12–15 min to
# build once; later builds recompile only our crates.
set -eu
DEST="${1:?usage: gpu_prepare.sh DEST}"
ROOT="$(pwd)"
SHARED="${SHARED:-$ROOT/../shared}"
[ -f "$SHARED/cuda/setup_cuda_toolchain.sh" ] || SHARED=/work/shared
# cuDNN 9 headers come with the toolchain (WITH_CUDNN=1); the cuDNN frontend (header-only, for
# the `cudnn-attention` feature) from its PyPI wheel. libcudnn itself is loaded at run time on the
# GPU machine, which has it.
export WITH_CUDNN=1
# shellcheck disable=SC1091
source "$SHARED/cuda/setup_cuda_toolchain.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/cuda-target}"
export CUDNN_INCLUDE="$CUDNN_LIB/include"
FRONTEND="${CUDNN_FRONTEND_DIR:-$HOME/.cache/cudnn-frontend-1.32.0}"
if [ ! -f "$FRONTEND/include/cudnn_frontend.h" ]; then
  mkdir -p "$FRONTEND"
  python3 -m pip download -q --no-deps "nvidia-cudnn-frontend==1.32.0" -d "$FRONTEND/wheel"
  (cd "$FRONTEND" && python3 -m zipfile -e wheel/*.whl unpacked && mv unpacked/include . && rm -rf unpacked)
fi
export CUDNN_FRONTEND_INCLUDE="$FRONTEND/include"
FEATURES="${ENGINE_GPU_FEATURES:-cuda,cudnn-attention}"

# One invocation, so the engine is compiled once for the bench, the server and the CLI.
engine_features="$(echo "$FEATURES,bench" | sed 's/\([a-z-]*\)/engine\/\1/g')"
cargo build --release -p engine -p server -p qwen-layers --bin engine-bench --bin server --bin qwen-layers \
  --features "$engine_features,server/cuda,qwen-layers/cuda"
test_bins="$(cargo test --release -p engine --features "$FEATURES,bench" --test device_parity --test z_image_device \
  --no-run --message-format=json \
  | python3 -c 'import json,sys
for l in sys.stdin:
    try: d = json.loads(l)
    except ValueError: continue
    if d.get("reason") == "compiler-artifact" and d.get("executable") and d["target"]["name"] in ("device_parity", "z_image_device"):
        print(d["executable"] + ":" + d["target"]["name"])')"

mkdir -p "$DEST/wheels"
for pair in "$CARGO_TARGET_DIR/release/engine-bench:engine-bench" $test_bins \
  "$CARGO_TARGET_DIR/release/server:server"; do
  src="${pair%%:*}"; name="${pair##*:}"
  strip -o "/tmp/$name.stripped" "$src"
  xz -6 -T2 -c "/tmp/$name.stripped" > "$DEST/$name.xz"
done
cp scripts/gpu_bench.sh scripts/gpu_compare.py scripts/write_random_checkpoint.py scripts/e2e_rest.py \
  scripts/diffusers_e2e.py scripts/e2e_table.py scripts/diffusers_same_init.py scripts/z_image_bench.py \
  "$SHARED/bench/diffusers_anchor.py" "$DEST/"
nvcc -O2 -std=c++17 -o "$DEST/gemm_sweep" scripts/gemm_algos/sweep.cu -lcublasLt
echo "$ROOT" > "$DEST/compiled_at"
if ! ls "$DEST"/wheels/diffusers-0.42.1-*.whl > /dev/null 2>&1; then
  python3 -m pip download -q --no-deps diffusers==0.42.1 importlib_metadata zipp -d "$DEST/wheels"
fi
# diffusers' load_lora_weights needs peft (the e2e_lightning_diffusers stage).
if ! ls "$DEST"/wheels/peft-0.21.2-*.whl > /dev/null 2>&1; then
  python3 -m pip download -q --no-deps peft==0.21.2 -d "$DEST/wheels"
fi
du -sh "$DEST"/* | sort -h
