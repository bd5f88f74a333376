"""The reference side of scripts/e2e_rest.py: diffusers' QwenImageLayeredPipeline and
QwenImageEditPlusPipeline end to end on the same checkpoints, image and settings, in one process.
Each case runs twice: a 2-step call first (cold: kernel selection, allocator growth), then the
timed one; the timed span is the pipeline call plus PNG encoding of what it returns, which is
what our server's generation time plus its PNG/ZIP encoding covers. One JSON line per case.

usage: diffusers_e2e.py --layered DIR --edit DIR [--steps 50] [--cfg 4] [--layers 4]
  [--cases decompose640,edit] [--device cuda]
"""
import argparse
import base64
import io
import json
import os
import sys
import time

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_rest import test_photo  # noqa: E402  (the same input image as our side)


def emit(**row):
    print(json.dumps(row), flush=True)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def pngs(images):
    for img in images:
        img.save(io.BytesIO(), format="PNG")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layered", required=True)
    p.add_argument("--edit", required=True)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--cases", default="decompose640,edit")
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    from diffusers import QwenImageEditPlusPipeline, QwenImageLayeredPipeline

    dev, bf = args.device, torch.bfloat16
    photo = Image.open(io.BytesIO(base64.b64decode(test_photo().split(",", 1)[1]))).convert("RGBA")
    prompt = "a red ball, a yellow box and a green sail in front of a gradient sky"

    t0 = time.perf_counter()
    # Straight onto the device (a CPU copy of 58 GB first would not fit beside the checkpoint).
    layered = QwenImageLayeredPipeline.from_pretrained(args.layered, torch_dtype=bf, device_map=dev)
    sync(dev)
    emit(run="diffusers_e2e_load", model="layered", seconds=round(time.perf_counter() - t0, 2))
    edit = None
    layer = None
    for case in args.cases.split(","):
        if case.startswith("decompose"):
            resolution = int(case[len("decompose"):])

            def run(steps):
                out = layered(image=photo, prompt=prompt, negative_prompt=" ", true_cfg_scale=args.cfg,
                              layers=args.layers, resolution=resolution, num_inference_steps=steps,
                              cfg_normalize=True, generator=torch.Generator("cpu").manual_seed(7))
                images = out.images[0]
                pngs(images)
                return images
        elif case == "edit":
            if edit is None:
                t0 = time.perf_counter()
                # Edit-2509 uses the same Qwen2.5-VL text encoder: shared, as our server shares it.
                edit = QwenImageEditPlusPipeline.from_pretrained(
                    args.edit, text_encoder=layered.text_encoder, torch_dtype=bf, device_map=dev)
                sync(dev)
                emit(run="diffusers_e2e_load", model="edit-2509", seconds=round(time.perf_counter() - t0, 2))
            source = (layer or photo).convert("RGB")

            def run(steps):
                out = edit(image=[source], prompt="make it blue", negative_prompt=" ", true_cfg_scale=args.cfg,
                           num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(7))
                pngs(out.images)
                return out.images
        else:
            sys.exit(f"unknown case {case}")
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run(2)
        sync(dev)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        images = run(args.steps)
        sync(dev)
        warm = time.perf_counter() - t0
        if case.startswith("decompose"):
            layer = images[1] if len(images) > 1 else images[0]
        emit(run="diffusers_e2e", case=case, steps=args.steps, cfg=args.cfg, two_step_first_call_s=round(cold, 3),
             wall_s=round(warm, 3), size=list(images[0].size),
             peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.startswith("cuda") else None)


if __name__ == "__main__":
    main()
