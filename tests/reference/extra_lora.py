"""LoRA fixtures (issue 20): tiny random LoRAs for the tiny transformers in every layout people
publish for Qwen-Image, and what diffusers 0.42.1 (+ peft) makes of them with
`load_lora_weights` + `set_adapters` + `fuse_lora`.

Layouts (each a real file layout; the values are seeded noise):
- `peft.safetensors`: diffusers/PEFT as `save_lora_weights` writes it: `transformer.<module>.lora_A.weight`
  / `lora_B.weight`, no alpha tensors, `lora_adapter_metadata` in the safetensors header with
  `transformer.r` 4 and `transformer.lora_alpha` 8 (scale 2).
- `diffusers_alpha.safetensors`: diffusers names without prefix plus `<module>.alpha` tensors
  (alpha / rank per module; ranks 4 and 2 mixed).
- `kohya.safetensors`: kohya / musubi-tuner: `lora_unet_<module with _>.lora_down.weight`,
  `lora_up.weight`, `alpha`.
- `lightning.safetensors`: as lightx2v/Qwen-Image-Lightning releases them: dotted diffusers module
  names, `lora_down` / `lora_up` / `alpha`, bf16, every attention and MLP linear of every block.
- `comfy.safetensors`: `diffusion_model.<module>.lora_A.weight` / `lora_B.weight` + `alpha`.

Outputs (tests/fixtures/reference/extra/lora/outputs.safetensors), per case: the fused
transformer's forward on the recorded inputs of transformer.safetensors (same inputs and
img_shapes as extra_transformer.py), and one fused weight:
- `<case>/output` [B, S_img, 64], `<case>/weight` (the fused weight of `<case>`'s probe module)
`lightning_sigmas.json`: the shipped Lightning preset's sigmas and timesteps at 4 and 8 steps.
Cases: each layout alone on the Edit transformer at scale 1 (`edit/<layout>`), three adapters at
once with scales 0.7 / -0.5 / 1.0 (`edit/multi`), and one layout on the Layered transformer
(`layered/kohya`, scale 0.8).

Run from the repository root with the reference venv (CPU, f32, one thread):
    /work/ref-venv/bin/python tests/reference/extra_lora.py
peft 0.21.2 is needed (`pip install --no-deps peft==0.21.2`).
"""

import json
from pathlib import Path

import numpy as np
import peft
import torch
from diffusers import QwenImageEditPlusPipeline, QwenImageLayeredPipeline
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "reference" / "extra" / "lora"

BLOCK_MODULES = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
    "img_mod.1", "txt_mod.1",
]
TOP_MODULES = ["img_in", "txt_in", "proj_out", "norm_out.linear",
               "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2"]


def shapes(transformer_dir):
    index = json.loads((transformer_dir / "diffusion_pytorch_model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        for k, v in load_file(str(transformer_dir / shard)).items():
            out[k] = tuple(v.shape)
    return out


def pairs(gen, sh, modules, rank_of):
    """module → (down [r, in], up [out, r]) of seeded noise, big enough to move the output."""
    res = {}
    for m in modules:
        o, i = sh[f"{m}.weight"]
        r = rank_of(m)
        down = torch.randn(r, i, generator=gen) / i ** 0.5
        up = torch.randn(o, r, generator=gen) * 0.3 / r ** 0.5
        res[m] = (down, up)
    return res


def blocks(n, names):
    return [f"transformer_blocks.{b}.{m}" for b in range(n) for m in names]


def write_layouts(sh, gen):
    OUT.mkdir(parents=True, exist_ok=True)
    files = {}

    # diffusers / PEFT, alpha in the header metadata.
    p = pairs(gen, sh, blocks(2, ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]) + ["img_in", "proj_out"],
              lambda m: 4)
    sd = {}
    for m, (a, b) in p.items():
        sd[f"transformer.{m}.lora_A.weight"] = a
        sd[f"transformer.{m}.lora_B.weight"] = b
    meta = {"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.target_modules": sorted(p),
            "transformer.alpha_pattern": {}, "transformer.rank_pattern": {}, "transformer.use_dora": False,
            "transformer.use_rslora": False, "transformer.lora_bias": False}
    files["peft"] = (sd, {"format": "pt", "lora_adapter_metadata": json.dumps(meta, indent=2, sort_keys=True)},
                     "transformer_blocks.1.attn.to_k")

    # diffusers names + alpha tensors, mixed ranks.
    mods = blocks(2, ["txt_mlp.net.0.proj", "txt_mlp.net.2", "img_mod.1"]) + [
        "txt_in", "norm_out.linear", "time_text_embed.timestep_embedder.linear_1"]
    p = pairs(gen, sh, mods, lambda m: 2 if "txt_mlp.net.2" in m or m == "txt_in" else 4)
    sd = {}
    for m, (a, b) in p.items():
        sd[f"{m}.lora_A.weight"] = a
        sd[f"{m}.lora_B.weight"] = b
        sd[f"{m}.alpha"] = torch.tensor(3.0 if a.shape[0] == 4 else 1.0)
    files["diffusers_alpha"] = (sd, {"format": "pt"}, "transformer_blocks.0.txt_mlp.net.2")

    # kohya / musubi-tuner.
    mods = blocks(2, ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
                      "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mod.1"]) + [
        "norm_out.linear", "time_text_embed.timestep_embedder.linear_2", "proj_out", "img_in"]
    p = pairs(gen, sh, mods, lambda m: 4)
    sd = {}
    for m, (a, b) in p.items():
        flat = "lora_unet_" + m.replace(".", "_")
        sd[f"{flat}.lora_down.weight"] = a
        sd[f"{flat}.lora_up.weight"] = b
        sd[f"{flat}.alpha"] = torch.tensor(1.0)
    files["kohya"] = (sd, {"format": "pt"}, "transformer_blocks.1.attn.to_add_out")

    # Lightning as released: dotted names, lora_down/lora_up/alpha, bf16, every attention and MLP linear.
    mods = blocks(2, BLOCK_MODULES[:12])
    p = pairs(gen, sh, mods, lambda m: 8)
    sd = {}
    for m, (a, b) in p.items():
        sd[f"{m}.lora_down.weight"] = a.bfloat16()
        sd[f"{m}.lora_up.weight"] = b.bfloat16()
        sd[f"{m}.alpha"] = torch.tensor(8.0, dtype=torch.bfloat16)
    files["lightning"] = (sd, {"format": "pt"}, "transformer_blocks.0.img_mlp.net.0.proj")

    # diffusion_model. prefix (ComfyUI-style) with lora_A/lora_B + alpha.
    mods = blocks(2, ["attn.to_v", "img_mlp.net.2"])
    p = pairs(gen, sh, mods, lambda m: 4)
    sd = {}
    for m, (a, b) in p.items():
        sd[f"diffusion_model.{m}.lora_A.weight"] = a
        sd[f"diffusion_model.{m}.lora_B.weight"] = b
        sd[f"diffusion_model.{m}.alpha"] = torch.tensor(2.0)
    files["comfy"] = (sd, {"format": "pt"}, "transformer_blocks.1.img_mlp.net.2")

    probes = {}
    for name, (sd, meta, probe) in files.items():
        sd = {k: v.contiguous() for k, v in sd.items()}
        save_file(sd, str(OUT / f"{name}.safetensors"), metadata=meta)
        probes[name] = probe
    return probes


def forward(tr, r, tag, img_shapes, add_t):
    mask = r.get(f"{tag}/in/encoder_hidden_states_mask")
    return tr(
        hidden_states=r[f"{tag}/in/hidden_states"],
        encoder_hidden_states=r[f"{tag}/in/encoder_hidden_states"],
        encoder_hidden_states_mask=None if mask is None else mask.long(),
        timestep=r[f"{tag}/in/timestep"],
        img_shapes=img_shapes,
        additional_t_cond=add_t,
        return_dict=False,
    )[0].contiguous()


def main() -> None:
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20)
    edit_dir = FIX / "tiny-qwen-image-edit-2509"
    layered_dir = FIX / "tiny-qwen-image-layered"
    probes = write_layouts(shapes(edit_dir / "transformer"), gen)
    r = load_file(str(FIX / "reference" / "transformer.safetensors"))
    edit_shapes, layered_shapes = [[(1, 4, 6), (1, 6, 4)]], [[(1, 3, 4)] * 4] * 2
    out = {}
    cases = [(f"edit/{n}", "edit", [(n, 1.0)]) for n in probes] + [
        ("edit/multi", "edit", [("peft", 0.7), ("kohya", -0.5), ("lightning", 1.0)]),
        ("layered/kohya", "layered", [("kohya", 0.8)]),
    ]
    for case, tag, adapters in cases:
        if tag == "edit":
            pipe = QwenImageEditPlusPipeline.from_pretrained(str(edit_dir), torch_dtype=torch.float32)
            img_shapes, add_t = edit_shapes, None
        else:
            pipe = QwenImageLayeredPipeline.from_pretrained(str(layered_dir), torch_dtype=torch.float32)
            img_shapes, add_t = layered_shapes, torch.tensor([0, 1])
        if case == "edit/peft":
            out["edit/base_output"] = forward(pipe.transformer, r, tag, img_shapes, add_t)
        for name, _ in adapters:
            pipe.load_lora_weights(str(OUT / f"{name}.safetensors"), adapter_name=name)
        pipe.set_adapters([n for n, _ in adapters], adapter_weights=[s for _, s in adapters])
        pipe.fuse_lora(adapter_names=[n for n, _ in adapters])
        pipe.unload_lora_weights()  # keeps the fused weights, removes the LoRA layers
        out[f"{case}/output"] = forward(pipe.transformer, r, tag, img_shapes, add_t)
        probe = probes[adapters[-1][0]]
        out[f"{case}/weight"] = pipe.transformer.get_submodule(probe).weight.detach().contiguous()
        print(case, "probe", probe, "max|Δoutput| vs none:",
              float((out[f"{case}/output"] - forward_base(tag, r, img_shapes, add_t)).abs().max()))
    save_file(out, str(OUT / "outputs.safetensors"),
              metadata={"generator": "tests/reference/extra_lora.py", "peft": peft.__version__,
                        "probes": json.dumps(probes),
                        "meaning": "<case>/output: fused transformer forward on transformer.safetensors' "
                                   "<tag>/in/* inputs; <case>/weight: fused weight of the last adapter's probe"})
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(OUT, total, "bytes")


_BASE = {}


def forward_base(tag, r, img_shapes, add_t):
    if tag not in _BASE:
        from diffusers import QwenImageTransformer2DModel
        d = "tiny-qwen-image-edit-2509" if tag == "edit" else "tiny-qwen-image-layered"
        tr = QwenImageTransformer2DModel.from_pretrained(str(FIX / d / "transformer"), torch_dtype=torch.float32)
        _BASE[tag] = forward(tr, r, tag, img_shapes, add_t)
    return _BASE[tag]




def lightning_sigmas() -> None:
    """The shipped Lightning preset's scheduler (presets/qwen-image-lightning/scheduler_config.json,
    the config of ModelTC/Qwen-Image-Lightning's README) as QwenImageEditPlusPipeline sets it up:
    sigmas = linspace(1, 1/N, N), mu = calculate_shift(noisy tokens). Written to
    tests/fixtures/reference/extra/lora/lightning_sigmas.json."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift

    path = ROOT / "presets" / "qwen-image-lightning" / "scheduler_config.json"
    sched = FlowMatchEulerDiscreteScheduler.from_config(json.loads(path.read_text()))
    c = sched.config
    cases = []
    for steps in (4, 8):
        for tokens in (1024, 4096, 6188):
            mu = calculate_shift(tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
            sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
            cases.append({"steps": steps, "noisy_tokens": tokens, "mu": mu,
                          "sigmas": [float(x) for x in sched.sigmas.float()],
                          "timesteps": [float(x) for x in sched.timesteps.float()]})
    (OUT / "lightning_sigmas.json").write_text(json.dumps({"generator": "tests/reference/extra_lora.py",
                                                           "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
    lightning_sigmas()
