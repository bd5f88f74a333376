"""Z-Image-Turbo, ours vs diffusers, on the same full-size random checkpoint (issue 22).

1. `--write`: a random-weight checkpoint in Tongyi-MAI/Z-Image-Turbo's layout (transformer/,
   text_encoder/ (Qwen3-4B), tokenizer/, vae/, scheduler/, model_index.json): tensor names and
   shapes from the reference classes built on PyTorch's `meta` device, the non-size config keys
   and the tokenizer from the tiny fixture, bf16 values N(0, 1/fan_in) written shard by shard.
   `--size tiny` writes the fixture's sizes (a CPU rehearsal).
2. Ours: the release server (`SERVER`) with `--z-image-model-path`, over REST: a 2-step warm-up
   (loads the model), then `--runs` timed generations (`generation_time` is the pipeline's time;
   `wall` adds the HTTP round trip and the PNG/base64 encoding).
3. diffusers 0.42.1's `ZImagePipeline` in bf16 on the GPU: the same warm-up, then the timed runs
   (pipeline call + PNG encoding, `torch.cuda.synchronize` around it).
One JSON line per measurement.

usage: z_image_bench.py CKPT [--write] [--size full|tiny] [--server BIN] [--width 1024]
  [--height 1024] [--steps 8] [--runs 2] [--sides ours,diffusers] [--device cuda] [--offload]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "tiny-z-image-turbo")
# The release's sizes (Tongyi-MAI/Z-Image-Turbo's configs).
FULL_TRANSFORMER = {"dim": 3840, "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30,
                    "cap_feat_dim": 2560, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512]}
FULL_TEXT = {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
             "num_key_value_heads": 8, "head_dim": 128, "max_window_layers": 36}
FULL_VAE = {"block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "sample_size": 1024}
PROMPT = "A lighthouse on a rocky cliff at dusk, waves crashing below, warm light in the windows."


def emit(**row):
    print(json.dumps(row), flush=True)


def load_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def configs(size):
    tr = load_json(os.path.join(FIXTURE, "transformer", "config.json"))
    te = load_json(os.path.join(FIXTURE, "text_encoder", "config.json"))
    vae = load_json(os.path.join(FIXTURE, "vae", "config.json"))
    if size == "full":
        tr.update(FULL_TRANSFORMER)
        te.update(FULL_TEXT)
        vae.update(FULL_VAE)
    return tr, te, vae


def meta_tensors(component, cfg):
    """name -> shape of the reference class, built without memory."""
    with torch.device("meta"):
        if component == "transformer":
            from diffusers import ZImageTransformer2DModel
            model = ZImageTransformer2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        elif component == "vae":
            from diffusers import AutoencoderKL
            model = AutoencoderKL(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        else:
            from transformers import Qwen3Config, Qwen3ForCausalLM
            skip = ("architectures", "torch_dtype", "transformers_version")
            model = Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in cfg.items() if k not in skip}))
    # Tied embeddings: the checkpoint has no lm_head.weight.
    return {n: tuple(p.shape) for n, p in model.state_dict().items() if n != "lm_head.weight"}


def random_value(name, shape, gen):
    if name.endswith("bias"):
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
    if "norm" in name and len(shape) == 1:
        return torch.ones(shape, dtype=torch.bfloat16)
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    scale = 0.25 if "embed_tokens" in name else 1.0 / max(fan_in, 1) ** 0.5
    return (torch.randn(shape, generator=gen) * scale).to(torch.bfloat16)


def write_component(out, component, tensors, weights_name, shard_bytes):
    from safetensors.torch import save_file
    os.makedirs(os.path.join(out, component), exist_ok=True)
    gen = torch.Generator().manual_seed({"transformer": 1, "text_encoder": 2, "vae": 3}[component])
    shards, current, size = [], [], 0
    for name, shape in tensors.items():
        n = 2
        for d in shape:
            n *= d
        if current and size + n > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += n
    shards.append(current)
    stem, ext = weights_name.rsplit(".", 1)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        file = weights_name if len(shards) == 1 else f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}"
        values = {n: random_value(n, tensors[n], gen) for n in names}
        total += sum(v.numel() * 2 for v in values.values())
        save_file(values, os.path.join(out, component, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
        del values
    if len(shards) > 1:
        write_json(os.path.join(out, component, f"{weights_name}.index.json"),
                   {"metadata": {"total_size": total}, "weight_map": weight_map})
    return total


def write_checkpoint(out, size):
    t0 = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tr, te, vae = configs(size)
    for comp in ["scheduler", "tokenizer"]:
        # Resolved copies (the fixture's vocab and merges are links to the layered fixture's).
        shutil.copytree(os.path.join(FIXTURE, comp), os.path.join(out, comp), symlinks=False)
    shutil.copy(os.path.join(FIXTURE, "model_index.json"), out)
    gib = {}
    shard = 5 * 10**9 if size == "full" else 400_000
    for comp, cfg, weights in [("transformer", tr, "diffusion_pytorch_model.safetensors"),
                               ("text_encoder", te, "model.safetensors"),
                               ("vae", vae, "diffusion_pytorch_model.safetensors")]:
        os.makedirs(os.path.join(out, comp), exist_ok=True)
        write_json(os.path.join(out, comp, "config.json"), cfg)
        gib[comp] = round(write_component(out, comp, meta_tensors(comp, cfg), weights, shard) / 2**30, 2)
    emit(run="z_image_checkpoint", size=size, seconds=round(time.perf_counter() - t0, 1), gib=gib)


def post(base, path, body, timeout=3600):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def ours(args):
    cmd = [args.server, "--port", "0", "--device", "cuda" if args.device.startswith("cuda") else "cpu",
           "--z-image-model-path", args.ckpt, "--model-type", "zimage",
           "--qwen-image-model-path", os.path.join(ROOT, "end2end", "no-such-model")]
    if args.offload:
        cmd.append("--z-image-cpu-offload")
    log = open(args.log or os.devnull, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
                            env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info")))
    try:
        base = None
        for line in proc.stdout:
            if line.startswith("listening on "):
                base = line.split()[-1].strip()
                break
        if base is None:
            raise SystemExit("the server did not start")
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        body = {"prompt": PROMPT, "width": args.width, "height": args.height, "seed": 0, "cfg_scale": 0.0}
        t = time.perf_counter()
        post(base, "/api/z-image/generate", dict(body, steps=2))
        emit(run="z_image_ours_first_job", offload=args.offload, wall=round(time.perf_counter() - t, 3))
        for i in range(args.runs):
            t = time.perf_counter()
            out = post(base, "/api/z-image/generate", dict(body, steps=args.steps))
            emit(run="z_image_ours", offload=args.offload, width=args.width, height=args.height, steps=args.steps,
                 i=i, generation_time=out["generation_time"], wall=round(time.perf_counter() - t, 3))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def diffusers_side(args):
    import io
    from diffusers import ZImagePipeline
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    t = time.perf_counter()
    pipe = ZImagePipeline.from_pretrained(args.ckpt, torch_dtype=dtype)
    if args.offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(args.device)
    emit(run="z_image_diffusers_load", seconds=round(time.perf_counter() - t, 2))

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def call(steps):
        g = torch.Generator("cpu").manual_seed(0)
        image = pipe(PROMPT, height=args.height, width=args.width, num_inference_steps=steps,
                     guidance_scale=0.0, generator=g).images[0]
        image.save(io.BytesIO(), format="PNG")

    call(2)
    for i in range(args.runs):
        sync()
        t = time.perf_counter()
        call(args.steps)
        sync()
        emit(run="z_image_diffusers", offload=args.offload, width=args.width, height=args.height, steps=args.steps,
             i=i, seconds=round(time.perf_counter() - t, 3))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt")
    p.add_argument("--write", action="store_true")
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--server", default=os.path.join(ROOT, "target", "release", "server"))
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--sides", default="ours,diffusers")
    p.add_argument("--device", default="cuda")
    p.add_argument("--offload", action="store_true")
    p.add_argument("--log", help="our server's log file")
    args = p.parse_args()
    if args.write or not os.path.exists(os.path.join(args.ckpt, "model_index.json")):
        write_checkpoint(args.ckpt, args.size)
    sides = args.sides.split(",")
    if "ours" in sides:
        ours(args)
    if "diffusers" in sides:
        diffusers_side(args)


if __name__ == "__main__":
    sys.exit(main())
