"""A random LoRA for a Qwen-Image transformer, in the layout Qwen-Image-Lightning releases
(dotted diffusers module names, `lora_down` / `lora_up` / `alpha`, bf16) or another published one,
with the shapes read from a checkpoint's `transformer/` folder: for timing adapters on full-size
random checkpoints (scripts/gpu_bench.sh, stage e2e_lightning), where the real LoRA cannot be
downloaded. The values are small seeded noise (the update stays ~1% of the weights).

usage: write_random_lora.py OUT.safetensors --from CHECKPOINT [--rank 64] [--layout lightning|kohya|peft]
  [--modules attn_mlp|all] [--seed 0]

`attn_mlp` (default) targets what the Lightning LoRAs target: in every block the 8 attention
projections and the 4 MLP linears (12 per block, 720 for the 60-block model); `all` adds the two
modulation linears per block and the top-level linears. Prints one JSON line (tensors, bytes,
seconds).
"""
import argparse
import json
import os
import re
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ATTN_MLP = re.compile(r"^transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
                      r"|img_mlp\.net\.(0\.proj|2)|txt_mlp\.net\.(0\.proj|2))$")


def linear_shapes(checkpoint: Path) -> dict:
    """module → (out, in) of every 2-D `.weight` of the transformer."""
    shapes = {}
    for f in sorted((checkpoint / "transformer").glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                shape = st.get_slice(name).get_shape()
                if name.endswith(".weight") and len(shape) == 2:
                    shapes[name[: -len(".weight")]] = tuple(shape)
    if not shapes:
        raise SystemExit(f"no transformer weights under {checkpoint}/transformer")
    return shapes


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--from", dest="checkpoint", required=True)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--layout", choices=["lightning", "kohya", "peft"], default="lightning")
    p.add_argument("--modules", choices=["attn_mlp", "all"], default="attn_mlp")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.time()
    shapes = linear_shapes(Path(args.checkpoint))
    modules = sorted(m for m in shapes if args.modules == "all" or ATTN_MLP.match(m))
    g = torch.Generator().manual_seed(args.seed)
    r = args.rank
    sd = {}
    for m in modules:
        out_f, in_f = shapes[m]
        down = (torch.randn(r, in_f, generator=g) / in_f**0.5).bfloat16()
        up = (torch.randn(out_f, r, generator=g) * (0.01 / r**0.5)).bfloat16()
        alpha = torch.tensor(float(r), dtype=torch.bfloat16)
        if args.layout == "lightning":
            sd[f"{m}.lora_down.weight"], sd[f"{m}.lora_up.weight"], sd[f"{m}.alpha"] = down, up, alpha
        elif args.layout == "kohya":
            k = "lora_unet_" + m.replace(".", "_")
            sd[f"{k}.lora_down.weight"], sd[f"{k}.lora_up.weight"], sd[f"{k}.alpha"] = down, up, alpha
        else:
            sd[f"transformer.{m}.lora_A.weight"], sd[f"transformer.{m}.lora_B.weight"] = down, up
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(sd, args.out, metadata={"format": "pt", "generator": "scripts/write_random_lora.py"})
    print(json.dumps({"run": "random_lora", "layout": args.layout, "rank": r, "modules": len(modules),
                      "tensors": len(sd), "bytes": os.path.getsize(args.out),
                      "seconds": round(time.time() - t0, 2)}), flush=True)


if __name__ == "__main__":
    main()
