#!/usr/bin/env bash
# gpu_quick_compare.sh — the issue-11 ratio in one short device call (~90 s on an H200): our 640²
# and 1024² steps, then diffusers' anchor at both sizes, SM clock and power per run. Run from the
# repository root as `bash gpu/gpu_quick_compare.sh` (carry `gpu`) after scripts/gpu_prepare.sh; writes ours.jsonl,
# anchor.jsonl and clocks.txt into $OUT. The full bench (parity, variants, offload, VAE) is
# gpu_bench.sh.
set -u
STAGES=none bash gpu/gpu_bench.sh > /dev/null 2>&1   # unpacks the binaries into /tmp/engine-bin
sp="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for d in "$sp/nvidia/cu13/lib" "$sp/nvidia/cudnn/lib" /usr/local/cuda/lib64; do [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; done
export LD_LIBRARY_PATH
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site gpu/wheels/*.whl > /dev/null 2>&1
mkdir -p "$OUT"
clocks() { nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader,nounits -lms 250 > "/tmp/c_$1.csv" & S=$!; }
done_clocks() { kill $S; python3 -c "
import statistics,sys; r=[l.split(',') for l in open('/tmp/c_$1.csv') if l.count(',')==1]; b=[(float(c),float(p)) for c,p in r if float(p)>300]
print('clocks $1: SM median %.0f MHz, power median %.0f W (%d samples)'%(statistics.median(c for c,_ in b),statistics.median(p for _,p in b),len(b)))" | tee -a "$OUT/clocks.txt"; }
for res in 640 1024; do
  clocks ours_$res
  /tmp/engine-bin/engine-bench --random-weights --resolution $res --layers 4 --steps 3 --warmup 1 --phases dit --tag final_$res | grep '^{' | tee -a "$OUT/ours.jsonl" | grep -o '"run":"[^"]*"\|"median_s":[0-9.]*\|"all_s":\[[^]]*\]' | tr '\n' ' '; echo
  done_clocks ours_$res
done
for w in dit640 dit1024; do
  clocks diffusers_$w
  PYTHONPATH=/tmp/site python3 gpu/diffusers_anchor.py $w 2>/dev/null | grep '^{' | tee -a "$OUT/anchor.jsonl" | cut -c1-160
  done_clocks diffusers_$w
done
nvidia-smi --query-gpu=name --format=csv,noheader
