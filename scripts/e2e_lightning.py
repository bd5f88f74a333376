"""Fast edits end to end (issue 20): the same layer edit at 50 steps with true CFG and with the
Lightning-style 8-step preset (a LoRA merged into the DiT, the preset's scheduler file, no CFG),
ours over REST and diffusers' QwenImageEditPlusPipeline with the same LoRA (load_lora_weights +
fuse_lora), on the same checkpoint and card. One JSON line per measurement
(scripts/gpu_bench.sh, stage e2e_lightning; rehearsed on the CPU with the tiny checkpoints).

usage:
  e2e_lightning.py ours SERVER_BIN --edit DIR --lora FILE --scheduler FILE [--layered DIR]
      [--cases edit,edit,fast8,fast8,fast4,edit] [--steps 50] [--cfg 4] [--offload on|off]
      [--port 7862] [--log FILE] [--tag T]
  e2e_lightning.py diffusers --edit DIR --lora FILE --scheduler FILE [--steps 50] [--cfg 4]
      [--fast-steps 8,4] [--device cuda]
  e2e_lightning.py table JSONL        the Markdown table of both sides' lines

Cases (ours): `edit` = --steps with --cfg (no preset); `fast8` / `fast4` = the presets
fast-edit-8 / fast-edit-4 (8 / 4 steps, cfg 1, the scheduler file, the LoRA). The first request
loads the edit model; the first request after a change of preset swaps the DiT's adapters
(merged at load: the DiT is read again), which its wall time includes; the repeat is warm.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_rest import Sampler, log_events, request, test_photo  # noqa: E402


def emit(**row):
    print(json.dumps(row), flush=True)


def config_text(args):
    lines = ["[default.qwen_image]"]
    if args.layered:
        lines.append(f'model_path = "{os.path.abspath(args.layered)}"')
    lines += [f'edit_model_path = "{os.path.abspath(args.edit)}"',
              f"cpu_offload = {'true' if args.offload == 'on' else 'false'}", ""]
    for steps in (8, 4):
        lines += [f"[default.presets.fast-edit-{steps}]", f'label = "Fast edit ({steps} steps)"', 'pipeline = "edit"',
                  f"steps = {steps}", "cfg_scale = 1.0", f'scheduler_config = "{os.path.abspath(args.scheduler)}"',
                  f'lora = [{{ path = "{os.path.abspath(args.lora)}", scale = 1.0 }}]', ""]
    return "\n".join(lines)


def ours(args):
    sampler = Sampler()
    work = tempfile.mkdtemp(prefix="e2e-lightning-")
    config = os.path.join(work, "config.toml")
    with open(config, "w") as f:
        f.write(config_text(args))
    log_path = args.log or os.path.join(work, "server.log")
    log = open(log_path, "w")
    server = subprocess.Popen(
        [args.server, "--config", config, "--port", str(args.port), "--data-dir", os.path.join(work, "data"),
         "--queue-depth", "1", "--request-timeout-secs", "3600"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, NO_COLOR="1", RUST_LOG="info"))
    sampler.pid = server.pid
    base = f"http://127.0.0.1:{args.port}/api/qwen-image"
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"server exited ({server.returncode}); log: {open(log_path).read()[-3000:]}")
            try:
                request(base + "/status", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        cfg = json.loads(request(base + "/config")[2])
        presets = {p["name"]: p for p in cfg["adapters"]["presets"]}
        if not all(presets.get(f"fast-edit-{n}", {}).get("available") for n in (8, 4)):
            sys.exit(f"presets not available: {json.dumps(presets)[:2000]}")
        photo = test_photo()
        _, offset = log_events(log_path, 0)
        previous = None
        for case in args.cases.split(","):
            body = {"layer_image": photo, "instruction": "make it blue", "seed": 7}
            if case == "edit":
                body.update(steps=args.steps, cfg_scale=args.cfg)
            elif case in ("fast8", "fast4"):
                body["preset"] = f"fast-edit-{case[4:]}"
            else:
                sys.exit(f"unknown case {case}")
            t0 = time.time()
            try:
                status, ctype, raw = request(base + "/edit-layer", body)
            except urllib.error.HTTPError as e:
                status, ctype, raw = e.code, "", e.read()
            t1 = time.time()
            time.sleep(0.3)
            events, offset = log_events(log_path, offset)
            row = {"run": "e2e_lightning", "side": "ours", "tag": args.tag, "case": case, "offload": args.offload,
                   "steps": 8 if case == "fast8" else 4 if case == "fast4" else args.steps,
                   "cfg": 1.0 if case.startswith("fast") else args.cfg,
                   "adapters_changed": previous is not None and case.startswith("fast") != previous.startswith("fast"),
                   "status": status, "wall_s": round(t1 - t0, 3)}
            row.update(sampler.peaks(t0, t1))
            for message, fields in events:
                row[message.replace(" ", "_")] = fields
            if status != 200:
                row["error"] = raw[:500].decode(errors="replace")
            else:
                row["edited_png_ok"] = ctype.startswith("image/png") and raw[:8] == b"\x89PNG\r\n\x1a\n"
            status_now = json.loads(request(base + "/status")[2])
            row["merged_lora"] = len(status_now.get("lora", {}).get("edit", []))
            previous = case
            emit(**row)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        sampler.close()


def diffusers(args):
    import base64
    import io

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline
    from PIL import Image

    dev = args.device
    cuda = dev.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32

    def sync():
        if cuda:
            torch.cuda.synchronize()

    source = Image.open(io.BytesIO(base64.b64decode(test_photo().split(",", 1)[1]))).convert("RGB")
    t0 = time.perf_counter()
    pipe = QwenImageEditPlusPipeline.from_pretrained(args.edit, torch_dtype=dtype, device_map=dev if cuda else None)
    pipe.set_progress_bar_config(disable=True)
    sync()
    emit(run="e2e_lightning", side="diffusers", case="load", seconds=round(time.perf_counter() - t0, 2))

    def run(steps, cfg, tag):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = pipe(image=[source], prompt="make it blue", negative_prompt=" ", true_cfg_scale=cfg,
                   num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(7))
        out.images[0].save(io.BytesIO(), format="PNG")
        sync()
        emit(run="e2e_lightning", side="diffusers", case=tag, steps=steps, cfg=cfg,
             wall_s=round(time.perf_counter() - t, 3), size=list(out.images[0].size),
             peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)

    run(2, args.cfg, "warmup")  # kernel selection, allocator growth
    run(args.steps, args.cfg, "edit")
    t0 = time.perf_counter()
    pipe.load_lora_weights(args.lora, adapter_name="fast")
    pipe.fuse_lora(adapter_names=["fast"])
    pipe.unload_lora_weights()
    sync()
    emit(run="e2e_lightning", side="diffusers", case="load_and_fuse_lora", seconds=round(time.perf_counter() - t0, 2))
    with open(args.scheduler) as f:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(json.load(f))
    for steps in [int(s) for s in args.fast_steps.split(",")]:
        run(steps, 1.0, f"fast{steps}")


def table(path):
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    rows = [r for r in rows if r.get("run") == "e2e_lightning"]
    print("| side | case | steps | CFG | wall (s) | denoise (s) | adapters swapped before | peak VRAM (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "wall_s" not in r:
            print(f"| {r['side']} | {r['case']} | | | {r.get('seconds', '—')} | | | |")
            continue
        denoise = (r.get("layer_edited") or {}).get("denoise")
        vram = r.get("peak_vram_gib") if r.get("peak_vram_gib") is not None else r.get("peak_allocated_gib")
        print(f"| {r['side']} | {r['case']} | {r.get('steps')} | {r.get('cfg')} | {r['wall_s']:.2f} | "
              f"{'—' if denoise is None else f'{denoise:.2f}'} | {'yes' if r.get('adapters_changed') else ''} | "
              f"{'—' if vram is None else vram} |")
    for side in ("ours", "diffusers"):
        plain = [r["wall_s"] for r in rows if r["side"] == side and r.get("case") == "edit" and "wall_s" in r]
        fast = [r["wall_s"] for r in rows if r["side"] == side and r.get("case") == "fast8" and "wall_s" in r]
        if plain and fast:
            print(f"\n{side}: warm 8-step preset {min(fast):.2f} s vs 50 steps x CFG {min(plain):.2f} s "
                  f"(speed-up {min(plain) / min(fast):.1f}x)")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "table":
        return table(sys.argv[2])
    p = argparse.ArgumentParser()
    p.add_argument("side", choices=["ours", "diffusers"])
    p.add_argument("server", nargs="?")
    p.add_argument("--edit", required=True)
    p.add_argument("--layered", default=None)
    p.add_argument("--lora", required=True)
    p.add_argument("--scheduler", required=True)
    p.add_argument("--cases", default="edit,edit,fast8,fast8,fast4,edit")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--fast-steps", default="8,4")
    p.add_argument("--offload", choices=["on", "off"], default="off")
    p.add_argument("--port", type=int, default=7862)
    p.add_argument("--log", default=None)
    p.add_argument("--tag", default="")
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    if args.side == "ours":
        if not args.server:
            sys.exit("ours needs the server binary")
        ours(args)
    else:
        diffusers(args)


if __name__ == "__main__":
    main()
