#!/usr/bin/env bash
# gpu_bench.sh — everything the GPU machine does for the CUDA engine, in ONE call, from the
# repository root: parity tests on CUDA (f32 and bf16), our benchmark (640² and 1024², offload
# off and on), diffusers' anchor on the same card, and a comparison table.
#
# Expects (git-ignored, carried with `carry: ["gpu"]`), prepared by scripts/gpu_prepare.sh:
#   gpu/engine-bench.xz, gpu/device_parity.xz   binaries built with --features cuda (+bench)
#   gpu/wheels/*.whl                            diffusers 0.42.1 (+ importlib_metadata, zipp)
#   gpu/diffusers_anchor.py, gpu/gpu_compare.py, gpu/gpu_bench.sh
# Writes logs and JSON lines under /tmp/gpu-logs, then the table, the JSON lines and a tarball
# of the logs into $OUT (the device tool brings back at most 8 files); prints the table last.
#
# STAGES (env) selects parts: parity,ours,anchor (default); init (opt-in: each side on the other's
# random-weight distribution, clocks per run); quick (opt-in: our 640² and 1024² steps and
# diffusers' alone, clocks per run); sweep (opt-in: scripts/gemm_algos/sweep.cu); extra (opt-in: the profile alone,
# and offload with a 20 GiB VRAM budget); vae (opt-in: our VAE, plain and fused, and diffusers'); zimage (opt-in:
# Z-Image-Turbo, ours over REST vs diffusers' ZImagePipeline on a full-size random checkpoint); multi_gpu (opt-in:
# one GPU vs CFG-parallel on two, and a burst of jobs on one GPU vs a worker per GPU); e2e, e2e_offload, e2e_diffusers (opt-in: full-size random
# checkpoints of both models in the released layout, then our release server driven over REST with
# offload off / on, and diffusers' pipelines on the same checkpoints: scripts/e2e_rest.py and
# scripts/diffusers_e2e.py); load (opt-in: engine-bench's DiT from that checkpoint). Each
# part has its own timeout so one failure does not take the others down. PARITY_DTYPES (default
# "f32 bf16") and OFFLOAD_PHASES (default text,dit) trim a call that must fit the device tool's
# 10 minutes.
set -u
G="${G:-gpu}"
# PYTHON, CKPT and CKPT_SIZE=tiny let the e2e stages be rehearsed on a CPU machine (a venv with
# torch, the CPU server's binary xz'd into $G): see docs/benchmarks.md.
PY="${PYTHON:-python3}"
RESULTS="${OUT:-/tmp/gpu-out}"
OUT=/tmp/gpu-logs
mkdir -p "$OUT" "$RESULTS"
STAGES="${STAGES:-parity,ours,anchor}"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
has() { case ",$STAGES," in *",$1,"*) return 0;; esac; return 1; }
log() { echo "== $(date +%T) $*"; }

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
free -g | head -2

# CUDA 13 libraries of the machine's PyTorch wheels (see shared/cuda/run_on_gpu.sh).
sp="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for d in "$sp/nvidia/cu13/lib" "$sp/nvidia/cudnn/lib" /usr/local/cuda/lib64 /usr/local/nvidia/lib64; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH

BIN=/tmp/engine-bin
mkdir -p "$BIN"
for f in "$G"/*.xz; do
  b="$BIN/$(basename "${f%.xz}")"
  xz -dc "$f" > "$b" && chmod +x "$b"
done
for b in "$BIN"/*; do
  missing="$(ldd "$b" | awk '/not found/ {print $1}')"
  [ -n "$missing" ] && echo "MISSING LIBRARIES for $b: $missing"
done

# The test binary finds tests/fixtures through the path it was compiled at.
COMPILED_AT="$(cat "$G/compiled_at" 2>/dev/null || echo /work/wt/gpu)"
if [ ! -e "$COMPILED_AT/tests/fixtures" ]; then
  mkdir -p "$(dirname "$COMPILED_AT")" && ln -sfn "$PWD" "$COMPILED_AT"
fi

if has parity; then
  for dt in ${PARITY_DTYPES:-f32 bf16}; do
    log "parity tests on CUDA, $dt"
    ENGINE_TEST_DEVICE=cuda ENGINE_TEST_DTYPE=$dt timeout "${PARITY_LIMIT:-240}" "$BIN/device_parity" --test-threads=1 --nocapture \
      > "$OUT/parity_$dt.log" 2>&1
    echo "exit $?"
    grep -E "^test |test result|worst|GPU vs CPU|vs CPU|final latents|PNGs|offload resident|panicked|not within|differ" \
      "$OUT/parity_$dt.log" | cut -c1-220
    # Z-Image (issue 22): a CFG run against diffusers' f32 reference; in bf16 also the flash path.
    if [ -x "$BIN/z_image_device" ]; then
      ENGINE_TEST_DEVICE=cuda ENGINE_TEST_DTYPE=$dt timeout 120 "$BIN/z_image_device" --test-threads=1 --nocapture \
        > "$OUT/parity_z_image_$dt.log" 2>&1
      echo "z-image exit $?"
      grep -E "^test |test result|z-image|panicked|not within" "$OUT/parity_z_image_$dt.log" | cut -c1-220
    fi
  done
fi

# SM clock and power draw every 250 ms during a stage: a card at its power limit lowers its clock,
# which shows in every number of that stage (ours and diffusers' alike).
sample_clocks() {
  nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader,nounits -lms 250 > "$OUT/clocks_$1.csv" &
  SAMPLER=$!
}
stop_clocks() {
  kill "$SAMPLER" 2>/dev/null
  python3 - "$OUT/clocks_$1.csv" "$1" <<'PY' | tee -a "$OUT/clocks.txt"
import statistics, sys
rows = [l.split(",") for l in open(sys.argv[1]) if l.count(",") == 1]
busy = [(float(c), float(p)) for c, p in rows if float(p) > 300]  # samples under load
if busy:
    clocks, power = [c for c, _ in busy], [p for _, p in busy]
    print(f"clocks {sys.argv[2]}: {len(busy)} loaded samples, SM clock median {statistics.median(clocks):.0f} MHz "
          f"(min {min(clocks):.0f}, max {max(clocks):.0f}), power median {statistics.median(power):.0f} W (max {max(power):.0f})")
PY
}

B="$BIN/engine-bench"
touch "$OUT/ours.jsonl"
run_ours() {
  local name="$1"; shift
  log "ours: $name"
  timeout "$TIMEOUT" "$B" --tag "$name" "$@" > "$OUT/ours_$name.log" 2>&1
  echo "exit $?"
  grep '^{' "$OUT/ours_$name.log" >> "$OUT/ours.jsonl"
  grep -v '^{"check"' "$OUT/ours_$name.log" | cut -c1-400
}
if has ours; then
  sample_clocks ours
  TIMEOUT=240 run_ours 640 --random-weights --resolution 640 --layers 4 --steps 3 --warmup 1 --check-finite --phases text,dit,profile,vae
  # The same step through our own flash kernel (no cuDNN), cuDNN with its plans auto-tuned, and
  # the plain (unfused) path: the before/after of issue 11 in the same call.
  TIMEOUT=120 run_ours 640_cudnn --random-weights --resolution 640 --layers 4 --steps 3 --warmup 1 --attention cudnn --phases dit
  TIMEOUT=120 run_ours 640_mma_sync --random-weights --resolution 640 --layers 4 --steps 3 --warmup 1 --flash-kernel w4 --phases dit
  TIMEOUT=120 run_ours 640_separate_epilogues --random-weights --resolution 640 --layers 4 --steps 3 --warmup 1 --gemm-epilogue off --phases dit
  TIMEOUT=120 run_ours 640_plain --random-weights --resolution 640 --layers 4 --steps 2 --warmup 1 --fused off --phases dit
  TIMEOUT=240 run_ours 640_offload --random-weights --resolution 640 --layers 4 --steps 2 --warmup 1 --offload on --phases ${OFFLOAD_PHASES:-text,dit}
  TIMEOUT=240 run_ours 1024 --random-weights --resolution 1024 --layers 4 --steps 2 --warmup 1 --phases dit,vae --check-finite
  stop_clocks ours
fi

# cuBLASLt's candidate algorithms for the block's GEMMs, timed under sustained load.
if has sweep; then
  log "GEMM algorithm sweep"
  timeout 300 "$G/gemm_sweep" > "$OUT/gemm_sweep.txt" 2>&1
  echo "exit $?"
  grep -E "^#|A/B" "$OUT/gemm_sweep.txt"
  cp "$OUT/gemm_sweep.txt" "$RESULTS/"
fi

# One 640² or 1024² DiT step of ours with its own clock and power record (quick and init stages).
ours_step() {
  local name="$1" res="$2"; shift 2
  sample_clocks "ours_$name"
  TIMEOUT=150 run_ours "$name" --random-weights --resolution "$res" --layers 4 --steps 3 --warmup 1 --phases dit "$@"
  stop_clocks "ours_$name"
}

# STAGES=quick: our 640² and 1024² steps alone, then (below) diffusers' at both sizes, clocks per
# run: the issue-11 ratio in about 90 s of device time.
if has quick; then
  for res in 640 1024; do ours_step "$res" "$res"; done
fi

# The same steps on the other side's weight distribution (see scripts/diffusers_same_init.py):
# ours on the anchor's N(0, 0.02) weights, diffusers on engine-bench's fan-in weights. Clocks and
# power per run, since the distributions differ in how much power the tensor cores draw.
if has init; then
  for res in 640 1024; do
    ours_step "${res}_fan_in" "$res"
    ours_step "${res}_anchor_init" "$res" --init anchor --check-finite
  done
fi

if has extra; then
  TIMEOUT=150 run_ours extra_profile --random-weights --resolution 640 --layers 4 --phases profile
  TIMEOUT=240 run_ours extra_budget20 --random-weights --resolution 640 --layers 4 --steps 2 --warmup 1 \
    --offload on --vram-budget-gb 20 --phases dit
fi

if has anchor || has vae || has load || has init || has quick || has e2e || has e2e_offload || has e2e_diffusers \
  || has e2e_lightning || has e2e_lightning_diffusers || has multi_gpu; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$G"/wheels/*.whl > "$OUT/pip.log" 2>&1 \
    || tail -3 "$OUT/pip.log"
fi

# STAGES=vae: our VAE (plain path, then the fused kernels) at 640² and 1024², its pieces alone,
# and diffusers' VAE on the same card.
if has vae; then
  sample_clocks vae
  TIMEOUT=150 run_ours vae640 --random-weights --resolution 640 --layers 4 --steps 3 --warmup 1 --phases vae,vae-ops --check-finite
  TIMEOUT=150 run_ours vae1024 --random-weights --resolution 1024 --layers 4 --steps 2 --warmup 1 --phases vae --check-finite
  log "diffusers VAE"
  PYTHONPATH=/tmp/site timeout 240 python3 "$G/diffusers_anchor.py" vae640 > "$OUT/anchor_vae.log" 2>&1
  echo "exit $?"
  stop_clocks vae
  grep '^{' "$OUT/anchor_vae.log" | tee -a "$OUT/anchor.jsonl" | cut -c1-300
  grep -v '^{' "$OUT/anchor_vae.log" | tail -3
fi

# A full-size random checkpoint of each model in the released layout (scripts/write_random_checkpoint.py,
# streamed tensor by tensor; Edit-2509's DiT and text encoder are links to Layered's shards, so
# both fit on the disk), then the disk's own cold read rate for the load timings.
CKPT="${CKPT:-/tmp/ckpt}"
[ -f /dev/shm/ckpt/edit/model_index.json ] && CKPT=/dev/shm/ckpt  # written there by an earlier call
write_checkpoints() {
  [ -f "$CKPT/edit/model_index.json" ] && return 0
  log "write full-size random checkpoints"
  rm -rf "$CKPT"
  df -h / /tmp /dev/shm 2>/dev/null
  avail_gb=$(df --output=avail -B1000000000 "$(dirname "$CKPT")" | tail -1 | tr -d ' ')
  if [ "${CKPT_SIZE:-full}" = full ] && [ "${avail_gb:-0}" -lt 60 ]; then
    echo "only ${avail_gb} GB free beside $CKPT: the checkpoint (58 GB) goes to /dev/shm"
    CKPT=/dev/shm/ckpt
  fi
  # The layout check against the fixture, with this machine's diffusers and transformers.
  PYTHONPATH=/tmp/site timeout 100 "$PY" "$G/write_random_checkpoint.py" /tmp/ckpt-tiny --size tiny --check \
    --from tests/fixtures/tiny-qwen-image-layered 2>&1 | grep -E "^layout|differs|Error"
  PYTHONPATH=/tmp/site timeout 400 "$PY" "$G/write_random_checkpoint.py" "$CKPT/layered" --size "${CKPT_SIZE:-full}" \
    --from tests/fixtures/tiny-qwen-image-layered 2>&1 | grep '^{' | tee -a "$OUT/ckpt.jsonl"
  PYTHONPATH=/tmp/site timeout 100 "$PY" "$G/write_random_checkpoint.py" "$CKPT/edit" --size "${CKPT_SIZE:-full}" \
    --from tests/fixtures/tiny-qwen-image-edit-2509 --link-weights-from "$CKPT/layered" 2>&1 | grep '^{' | tee -a "$OUT/ckpt.jsonl"
  df -h /tmp | tail -1
}

# COLD=1: the page cache dropped before the first server starts, so its first job reads the
# checkpoint from the disk; the disk's own read rate (one shard, cache dropped) comes first.
drop_page_cache() {
  sync
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "could not drop the page cache"
}
cold_start() {
  drop_page_cache
  shard="$(ls "$CKPT"/layered/transformer/*.safetensors | head -1)"
  python3 - "$shard" <<'PY' | tee -a "$OUT/ckpt.jsonl"
import json, os, sys, time
path = sys.argv[1]; t = time.perf_counter(); n = 0
with open(path, "rb", buffering=0) as f:
    while chunk := f.read(64 << 20):
        n += len(chunk)
s = time.perf_counter() - t
print(json.dumps({"run": "disk_cold_read", "file": os.path.basename(path), "gb": round(n / 1e9, 2), "gb_per_s": round(n / 1e9 / s, 2)}))
PY
  drop_page_cache
}

# Our release server over REST (scripts/e2e_rest.py): E2E_CASES with offload off (stage e2e), or
# E2E_OFFLOAD_CASES with offload on (stage e2e_offload); the first job of each model loads it.
e2e_ours() {
  local offload="$1" cases="$2" limit="$3"
  log "ours over REST, offload $offload: $cases"
  sample_clocks "e2e_$offload"
  PYTHONPATH=/tmp/site timeout "$limit" "$PY" "$G/e2e_rest.py" "$BIN/server" --layered "$CKPT/layered" \
    --edit "$CKPT/edit" --offload "$offload" --cases "$cases" --tag h200 --log "$OUT/server_$offload.log" ${E2E_ARGS:-} \
    2>&1 | tee -a "$OUT/e2e.jsonl" | cut -c1-600
  stop_clocks "e2e_$offload"
  grep -E "runs on|error|panick" "$OUT/server_$offload.log" | head -5
}
if has e2e || has e2e_offload || has e2e_diffusers || has load; then
  write_checkpoints
  [ "${COLD:-0}" = 1 ] && cold_start
fi
has e2e && e2e_ours off "${E2E_CASES:-decompose640,decompose640,decompose1024,edit,edit}" "${E2E_LIMIT:-420}"
has e2e_offload && e2e_ours on "${E2E_OFFLOAD_CASES:-decompose640,decompose640,edit,edit}" "${E2E_OFFLOAD_LIMIT:-300}"
if has e2e_diffusers; then
  log "diffusers end to end on the same checkpoints"
  sample_clocks e2e_diffusers
  PYTHONPATH=/tmp/site timeout "${E2E_DIFFUSERS_LIMIT:-300}" "$PY" "$G/diffusers_e2e.py" --layered "$CKPT/layered" \
    --edit "$CKPT/edit" --cases "${E2E_DIFFUSERS_CASES:-decompose640,edit}" > "$OUT/diffusers_e2e.log" 2>&1
  echo "exit $?"
  stop_clocks e2e_diffusers
  grep '^{' "$OUT/diffusers_e2e.log" | tee -a "$OUT/e2e.jsonl"
  grep -v '^{' "$OUT/diffusers_e2e.log" | grep -v "it/s\]\|s/it\]" | tail -4
fi
# Several GPUs of one host (issue 21; opt-in stage multi_gpu, on a kind with 2+ GPUs): the same
# 640² decompose (4 layers, 50 steps, CFG 4) over REST on one GPU and CFG-parallel on two
# (--parallel latency: the unconditional branch on the second card, peer copies, no NCCL); then a
# burst of jobs on one GPU against the same burst on every GPU as workers (throughput). Each
# server's first burst of one job per worker loads every worker before the timed burst. MULTI_RUNS
# picks parts (one,cfg2,burst1,burstall,one1024,seq1024: 1024² on one GPU, then sequence-parallel over
# every GPU), MULTI_BURST the timed burst's size per GPU (default 4).
if has multi_gpu; then
  write_checkpoints
  gpus=$(nvidia-smi -L | wc -l)
  all=$(seq -s, 0 $((gpus - 1)))
  per="${MULTI_BURST:-4}"
  for dt in ${PARITY_DTYPES:-f32 bf16}; do
    log "CFG-parallel (cuda:0+cuda:1) and sequence-parallel (2 or 4 GPUs) against one GPU, $dt"
    ENGINE_TEST_DEVICE=cuda ENGINE_TEST_DTYPE=$dt timeout 180 "$BIN/device_parity" --ignored --test-threads=1 \
      _gpus_equals_ --nocapture > "$OUT/parity_multi_gpu_$dt.log" 2>&1
    echo "exit $?"
    grep -E "^test |test result|parallel vs|over .* GPUs|panicked" "$OUT/parity_multi_gpu_$dt.log" | tail -8 | cut -c1-220
  done
  multi() {
    local tag="$1" server_args="$2" cases="$3"
    log "multi-GPU $tag: $server_args: $cases"
    sample_clocks "multi_$tag"
    PYTHONPATH=/tmp/site timeout "${MULTI_LIMIT:-420}" "$PY" "$G/e2e_rest.py" "$BIN/server" --layered "$CKPT/layered" \
      --edit "$CKPT/edit" --cases "$cases" --tag "$tag" --server-args "$server_args" --log "$OUT/server_multi_$tag.log" \
      ${E2E_ARGS:-} 2>&1 | tee -a "$OUT/multi_gpu.jsonl" | cut -c1-600
    stop_clocks "multi_$tag"
    grep -E "runs on|error|panick" "$OUT/server_multi_$tag.log" | head -"$((gpus + 2))"
  }
  for run in ${MULTI_RUNS:-one cfg2 burst1 burstall one1024 seq1024}; do
    case "$run" in
      one) multi one "--devices 0" "decompose640,decompose640,decompose640" ;;
      cfg2) multi cfg2 "--devices 0,1 --parallel latency" "decompose640,decompose640,decompose640" ;;
      burst1) multi burst1 "--devices 0" "decompose640,burst$per" ;;
      burstall) multi "burst$gpus" "--devices $all" "burst$gpus,burst$((per * gpus))" ;;
      # Sequence-parallel over every GPU at 1024² (E2E_ARGS may set --layers); one GPU first.
      one1024) multi one1024 "--devices 0" "decompose1024,decompose1024" ;;
      seq1024) multi "seq$gpus" "--devices $all --parallel sequence" "decompose1024,decompose1024" ;;
    esac
  done
fi
# Fast edits (issue 20; opt-in stages e2e_lightning, e2e_lightning_diffusers): a random full-size
# LoRA in Qwen-Image-Lightning's released layout (rank 64, the 720 attention/MLP linears of the edit
# DiT) beside the checkpoint, then the same layer edit at 50 steps x true CFG and with the 8- and
# 4-step presets (the LoRA merged into the DiT, presets/qwen-image-lightning/scheduler_config.json,
# no CFG): ours over REST (the first preset request includes swapping the adapters), and diffusers
# with load_lora_weights + fuse_lora and the same scheduler file (scripts/e2e_lightning.py).
# LIGHTNING_CASES, LIGHTNING_LIMIT, LIGHTNING_DIFFUSERS_LIMIT, LIGHTNING_ARGS trim or rehearse it.
if has e2e_lightning || has e2e_lightning_diffusers; then
  write_checkpoints
  LORA="$CKPT/lightning-random-r64.safetensors"
  [ -f "$LORA" ] || PYTHONPATH=/tmp/site timeout 300 "$PY" scripts/write_random_lora.py "$LORA" --from "$CKPT/edit" \
    --rank "${LIGHTNING_RANK:-64}" | tee -a "$OUT/lightning.jsonl"
  SCHED=presets/qwen-image-lightning/scheduler_config.json
fi
if has e2e_lightning; then
  log "ours over REST: edit at 50 steps x CFG vs the 8/4-step Lightning-style presets"
  sample_clocks e2e_lightning
  PYTHONPATH=/tmp/site timeout "${LIGHTNING_LIMIT:-480}" "$PY" scripts/e2e_lightning.py ours "$BIN/server" \
    --edit "$CKPT/edit" --lora "$LORA" --scheduler "$SCHED" --cases "${LIGHTNING_CASES:-edit,edit,fast8,fast8,fast4,edit}" \
    --tag h200 --log "$OUT/server_lightning.log" ${LIGHTNING_ARGS:-} 2>&1 | tee -a "$OUT/lightning.jsonl" | cut -c1-600
  stop_clocks e2e_lightning
  grep -E "runs on|error|panick|LoRA" "$OUT/server_lightning.log" | head -8
fi
if has e2e_lightning_diffusers; then
  log "diffusers: the same edit, then load_lora_weights + fuse_lora with the preset's scheduler"
  sample_clocks e2e_lightning_diffusers
  PYTHONPATH=/tmp/site timeout "${LIGHTNING_DIFFUSERS_LIMIT:-480}" "$PY" scripts/e2e_lightning.py diffusers \
    --edit "$CKPT/edit" --lora "$LORA" --scheduler "$SCHED" ${LIGHTNING_ARGS:-} > "$OUT/diffusers_lightning.log" 2>&1
  echo "exit $?"
  stop_clocks e2e_lightning_diffusers
  grep '^{' "$OUT/diffusers_lightning.log" | tee -a "$OUT/lightning.jsonl"
  grep -v '^{' "$OUT/diffusers_lightning.log" | grep -v "it/s\]\|s/it\]" | tail -4
fi
if [ -s "$OUT/lightning.jsonl" ]; then
  "$PY" scripts/e2e_lightning.py table "$OUT/lightning.jsonl" | tee "$RESULTS/lightning_table.md"
  cp "$OUT/lightning.jsonl" "$RESULTS/"
fi

if has load; then
  TIMEOUT=200 run_ours load --model "$CKPT/layered" --resolution 640 --layers 4 --steps 1 --warmup 0 --phases dit
fi

# Z-Image-Turbo (issue 22): a full-size random checkpoint in its released layout (written once,
# into ZCKPT, /dev/shm by default: 20 GB), then our release server over REST and diffusers'
# ZImagePipeline on it, Z_SIZE² (1024) and Z_STEPS (8), no CFG, Z_RUNS timed runs each after a
# 2-step warm-up (scripts/z_image_bench.py). Z_ARGS="--offload" measures both with offload.
if has zimage; then
  log "z-image: ours vs diffusers, ${Z_SIZE:-1024}², ${Z_STEPS:-8} steps"
  sample_clocks zimage
  PYTHONPATH=/tmp/site timeout "${Z_LIMIT:-540}" "$PY" "$G/z_image_bench.py" "${ZCKPT:-/dev/shm/zckpt}" \
    --size "${CKPT_SIZE:-full}" --server "$BIN/server" --width "${Z_SIZE:-1024}" --height "${Z_SIZE:-1024}" \
    --steps "${Z_STEPS:-8}" --runs "${Z_RUNS:-2}" --log "$OUT/server_zimage.log" ${Z_ARGS:-} \
    > "$OUT/zimage.log" 2>&1
  echo "exit $?"
  stop_clocks zimage
  grep '^{' "$OUT/zimage.log" | tee -a "$OUT/zimage.jsonl" | cut -c1-300
  grep -E "Error|error|panick" "$OUT/zimage.log" "$OUT/server_zimage.log" | head -5
  cp "$OUT/zimage.jsonl" "$RESULTS/" 2>/dev/null
fi

if has anchor; then
  log "diffusers anchor"
  sample_clocks anchor
  PYTHONPATH=/tmp/site timeout 420 python3 "$G/diffusers_anchor.py" ${ANCHOR_WHAT:-dit640 dit1024 offload640 vae640} \
    > "$OUT/anchor.log" 2>&1
  echo "exit $?"
  stop_clocks anchor
  grep '^{' "$OUT/anchor.log" >> "$OUT/anchor.jsonl"
  grep -v '^{' "$OUT/anchor.log" | tail -5
  cat "$OUT/anchor.jsonl" | cut -c1-300
fi

# One diffusers step (SCRIPT dit640|dit1024) with its own clock record; JSON lines to anchor.jsonl.
diffusers_step() {
  local script="$1" what="$2" name="$3"
  sample_clocks "$name"
  PYTHONPATH=/tmp/site timeout 240 python3 "$G/$script" "$what" > "$OUT/$name.log" 2>&1
  echo "exit $?"
  stop_clocks "$name"
  grep '^{' "$OUT/$name.log" | tee -a "$OUT/anchor.jsonl" | cut -c1-300
  grep -v '^{' "$OUT/$name.log" | tail -3
}

if has init || has quick; then
  log "diffusers per size (init: on engine-bench's fan-in weights too)"
  for what in dit640 dit1024; do
    has init && diffusers_step diffusers_same_init.py "$what" "diffusers_${what}_fan_in"
    # The anchor's own step at this size, unless the anchor stage already ran it.
    has anchor || diffusers_step diffusers_anchor.py "$what" "diffusers_${what}_anchor_init"
  done
fi

log "table"
python3 "$G/gpu_compare.py" "$OUT/ours.jsonl" "$OUT/anchor.jsonl" "$OUT/gpu.txt" | tee "$OUT/table.md"
cp "$OUT/table.md" "$OUT/ours.jsonl" "$OUT/clocks.txt" "$RESULTS/" 2>/dev/null
cat "$OUT"/ckpt.jsonl "$OUT"/e2e.jsonl > "$RESULTS/e2e.jsonl" 2>/dev/null
[ -s "$RESULTS/e2e.jsonl" ] && python3 "$G/e2e_table.py" "$RESULTS/e2e.jsonl" | tee "$RESULTS/e2e_table.md"
[ -f "$OUT/anchor.jsonl" ] && cp "$OUT/anchor.jsonl" "$RESULTS/"
[ -s "$OUT/multi_gpu.jsonl" ] && cp "$OUT/multi_gpu.jsonl" "$RESULTS/"
tar czf "$RESULTS/logs.tgz" -C /tmp gpu-logs
