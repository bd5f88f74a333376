"""Markdown tables from the JSON lines of scripts/e2e_rest.py and scripts/diffusers_e2e.py (and the
checkpoint writer's), as docs/benchmarks.md shows them.

usage: e2e_table.py E2E_JSONL
"""
import json
import sys


def fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
    print("| request | offload | load (s) | wall (s) | text enc. | VAE enc. | denoise | VAE dec. | PNG+ZIP | "
          "wall − denoise − load | peak VRAM (GiB) | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("run") != "e2e":
            continue
        phases = r.get("layers_decomposed") or r.get("layer_edited") or {}
        loaded = r.get("decompose_model_loaded") or r.get("edit_model_loaded") or {}
        load = loaded.get("seconds")
        denoise = phases.get("denoise")
        outside = None
        if denoise is not None:
            outside = r["wall_s"] - denoise - (load or 0.0)
        name = r["case"] + (" (first)" if r.get("first_of_kind") else "")
        if r.get("status") != 200:
            name += f" — HTTP {r.get('status')}: {r.get('error', '')[:80]}"
        print(f"| {name} | {r['offload']} | {fmt(load)} | {fmt(r['wall_s'])} | {fmt(phases.get('encode_prompt'), 3)} | "
              f"{fmt(phases.get('encode_image'), 3)} | {fmt(denoise)} | {fmt(phases.get('decode'), 3)} | "
              f"{fmt(phases.get('png_zip'), 3)} | {fmt(outside, 3)} | {fmt(r.get('peak_vram_gib'))} | "
              f"{fmt(r.get('peak_rss_gib'))} |")
    # Peak device memory per phase (driver-level, from the server's own sampler), where logged.
    vram = [(r, r.get("layers_decomposed") or r.get("layer_edited") or {}) for r in rows if r.get("run") == "e2e"]
    vram = [(r, p) for r, p in vram if any(k.startswith("vram_") for k in p)]
    if vram:
        print()
        print("| request | offload | VRAM: text enc. | VAE enc. | denoise | VAE dec. (GiB) |")
        print("|---|---|---|---|---|---|")
        for r, p in vram:
            name = r["case"] + (" (first)" if r.get("first_of_kind") else "")
            cells = " | ".join(fmt(p.get(f"vram_{k}_gib")) for k in ("encode_prompt", "encode_image", "denoise", "decode"))
            print(f"| {name} | {r['offload']} | {cells} |")
    theirs = [r for r in rows if r.get("run") == "diffusers_e2e"]
    if theirs:
        print()
        print("| diffusers request | 2-step first call (s) | wall, 50 steps (s) | peak allocated (GiB) |")
        print("|---|---|---|---|")
        for r in theirs:
            print(f"| {r['case']} | {fmt(r['two_step_first_call_s'])} | {fmt(r['wall_s'])} | "
                  f"{fmt(r.get('peak_allocated_gib'))} |")
    other = [r for r in rows if r.get("run") not in ("e2e", "diffusers_e2e")]
    for r in other:
        print(f"\n`{json.dumps(r)}`")


if __name__ == "__main__":
    main()
