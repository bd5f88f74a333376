"""Our engine-bench JSON lines next to diffusers_anchor.py's, as a markdown table with ratios.

usage: gpu_compare.py ours.jsonl anchor.jsonl [gpu.txt]
Ratios are ours / diffusers for times (below 1 = we are faster) and memory.
"""
import json
import sys


def load(path, tags=None):
    """run name -> JSON object; with `tags`, only lines whose tag starts with one of them, else
    only lines without a `load` tag (the checkpoint-loading runs are reported apart)."""
    runs = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    d = json.loads(line)
                    tag = str(d.get("tag", ""))
                    if tags:
                        keep = tag.startswith(tuple(tags)) or tag.endswith(tuple(tags))
                    else:
                        keep = not tag.startswith(("load", "extra")) and not tag.endswith(("_fan_in", "_anchor_init"))
                    if "run" in d and keep:
                        runs[d["run"]] = d
    except FileNotFoundError:
        pass
    return runs


ours = load(sys.argv[1])
loads = load(sys.argv[1], tags=["load", "extra"])
# STAGES=init: each side on the other's weight distribution, keyed by tag (`640_fan_in`, ...).
by_tag = {str(d.get("tag")): d for d in load(sys.argv[1], tags=["_fan_in", "_anchor_init"]).values()}
theirs = load(sys.argv[2])
gpu = open(sys.argv[3]).read().strip() if len(sys.argv) > 3 else ""


def get(runs, run, key):
    v = runs.get(run, {}).get(key)
    return v if isinstance(v, (int, float)) else None


def fmt(v, unit=""):
    if v is None:
        return "—"
    if unit == "s":
        return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"
    if unit == "GiB":
        return f"{v:.2f} GiB"
    if unit == "TF":
        return f"{v:.0f}"
    return f"{v:.3g}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b not in (None, 0) else "—"


rows = []


def row(label, a, b, unit):
    rows.append((label, fmt(a, unit), fmt(b, unit), ratio(a, b)))


for res in (640, 1024):
    o, d = f"ours_dit_step_{res}_L4_cfg", f"diffusers_dit_step_{res}_L4_cfg"
    row(f"DiT step {res}², 4 layers, true CFG", get(ours, o, "median_s"), get(theirs, d, "median_s"), "s")
    row(f"  achieved TFLOP/s (anchor's count, {get(theirs, d, 'tflops_per_step') or get(ours, o, 'tflops_per_step') or 0:.0f} TFLOP/step)",
        get(ours, o, "achieved_tflops"), get(theirs, d, "achieved_tflops"), "TF")
    row(f"  peak VRAM {res}²", get(ours, o, "peak_gib"), get(theirs, d, "peak_gib"), "GiB")

# Issue 11's variants of the 640² step, against the same diffusers step.
d640 = "diffusers_dit_step_640_L4_cfg"
for suffix, label in (("_cudnn", "cuDNN SDPA instead of our Hopper kernel"),
                      ("_mma_sync_attention", "our mma.sync kernel (w4) instead of the Hopper one"),
                      ("_separate_epilogues", "bias/GELU passes instead of GEMM epilogues"),
                      ("_plain", "plain candle path (before issue 11)")):
    v = get(ours, f"ours_dit_step_640_L4_cfg{suffix}", "median_s")
    if v is not None:
        row(f"  640² step, {label}", v, get(theirs, d640, "median_s"), "s")

# The same weight distribution on both sides (scripts/diffusers_same_init.py): the anchor's
# N(0, 0.02) weights, and engine-bench's fan-in weights.
for res in (640, 1024):
    for init, theirs_run, label in (("anchor_init", f"diffusers_dit_step_{res}_L4_cfg", "both on the anchor's N(0, 0.02) weights"),
                                    ("fan_in", f"diffusers_dit_step_{res}_L4_cfg_fan_in_init", "both on engine-bench's fan-in weights")):
        mine = by_tag.get(f"{res}_{init}", {}).get("median_s")
        theirs_s = get(theirs, theirs_run, "median_s")
        # The anchor-init diffusers run is the default one, always there: its row needs ours.
        if mine is not None or (init == "fan_in" and theirs_s is not None):
            row(f"  {res}² step, {label}", mine, theirs_s, "s")

o, d = "ours_dit_step_640_L4_cfg_offload", "diffusers_group_offload_step_640_L4_cfg"
row("Offload step 640², 4 layers, CFG", get(ours, o, "median_s"), get(theirs, d, "median_s"), "s")
row("  peak VRAM (offload)", get(ours, o, "peak_gib"), get(theirs, d, "peak_gib"), "GiB")
own = get(ours, "ours_dit_step_640_L4_cfg", "median_s")
dn = get(theirs, "diffusers_dit_step_640_L4_cfg", "median_s")
oo, do = get(ours, o, "median_s"), get(theirs, d, "median_s")
rows.append(("  offload step / own no-offload step", ratio(oo, own), ratio(do, dn), "—"))
row("  offload setup (pack to host / enable_group_offload)", get(ours, o, "build_s"), get(theirs, d, "setup_s"), "s")

row("VAE encode 640² RGBA", get(ours, "ours_vae_640", "encode_s"), get(theirs, "diffusers_vae_640", "encode_s"), "s")
row("VAE decode 4 layers 640² (one at a time)", get(ours, "ours_vae_640", "decode_layers_s"),
    get(theirs, "diffusers_vae_640", "decode_4_layers_s"), "s")
row("Text encode (64 + 40 tokens), resident", get(ours, "ours_text_encode", "median_s"), None, "s")
row("  peak VRAM text phase, resident", get(ours, "ours_text_encode", "peak_gib"), None, "GiB")
row("Text encode, offloaded", get(ours, "ours_text_encode_offload", "median_s"), None, "s")
row("  peak VRAM text phase, offloaded", get(ours, "ours_text_encode_offload", "peak_gib"), None, "GiB")

print(f"GPU: {gpu}\n")
print("| measurement | ours | diffusers 0.42.1 | ours / diffusers |")
print("|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
for run, d in loads.items():
    if run.startswith("ours_dit_step"):
        print(f"| {d.get('tag')}: {run} | build {fmt(d.get('build_s'), 's')}, step {fmt(d.get('median_s'), 's')}, "
              f"peak {fmt(d.get('peak_gib'), 'GiB')} | — | {d.get('offload') or ''} |")
off = ours.get(o, {}).get("offload")
if off:
    print(f"\nour offload: {off}")
print("\nPeaks: ours = driver-level used memory above the process's start (cuMemGetInfo sampled every 2 ms: "
      "tensors + CUDA pool cache + cuBLAS workspace); diffusers = torch.cuda.max_memory_allocated (tensors only).")
