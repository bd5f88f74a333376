"""Writes a full-size random Qwen-Image-Layered transformer checkpoint in the released diffusers
layout (model_index.json, transformer/config.json, sharded bf16 safetensors + index), so that
engine-bench --model DIR can time loading real-size weights. The VAE and text-encoder configs are
the released ones (weights are not written: the load benchmark runs the DiT phase only).

usage: gpu_write_checkpoint.py OUT_DIR   (on the GPU machine, with diffusers importable)
"""
import json
import os
import sys
import time

import torch
from diffusers import QwenImageTransformer2DModel
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
t0 = time.perf_counter()
dev = torch.device("cuda")
# As diffusers_anchor.py: a 1-block model, then 60 bf16 blocks (an f32 init would not fit).
with torch.device(dev):
    m = QwenImageTransformer2DModel(num_layers=1, use_additional_t_cond=True, use_layer3d_rope=True).to(torch.bfloat16)
    torch.set_default_dtype(torch.bfloat16)
    blocks = torch.nn.ModuleList([QwenImageTransformerBlock(3072, 24, 128) for _ in range(60)])
    torch.set_default_dtype(torch.float32)
for p in blocks.parameters():
    p.data.normal_(0, 0.02)
m.transformer_blocks = blocks
m.register_to_config(num_layers=60)
m.save_pretrained(os.path.join(out, "transformer"), max_shard_size="5GB", safe_serialization=True)
cfg_path = os.path.join(out, "transformer", "config.json")
cfg = json.load(open(cfg_path))
cfg["num_layers"] = 60
json.dump(cfg, open(cfg_path, "w"), indent=2)

vae = {"_class_name": "AutoencoderKLQwenImage", "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4],
       "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0,
       "input_channels": 4}
os.makedirs(os.path.join(out, "vae"), exist_ok=True)
json.dump(vae, open(os.path.join(out, "vae", "config.json"), "w"), indent=2)
text = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": 152064, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "hidden_act": "silu",
        "max_position_embeddings": 128000, "tie_word_embeddings": False,
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                          "tokens_per_second": 2, "window_size": 112, "out_hidden_size": 3584,
                          "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu"}}
os.makedirs(os.path.join(out, "text_encoder"), exist_ok=True)
json.dump(text, open(os.path.join(out, "text_encoder", "config.json"), "w"), indent=2)
json.dump({"_class_name": "QwenImageLayeredPipeline", "_diffusers_version": "0.42.1"},
          open(os.path.join(out, "model_index.json"), "w"))
size = sum(os.path.getsize(os.path.join(out, "transformer", f)) for f in os.listdir(os.path.join(out, "transformer")))
print(json.dumps({"run": "write_random_checkpoint", "seconds": time.perf_counter() - t0, "transformer_gib": size / 2**30}))
