"""Z-Image fixtures (issue 22): a tiny random checkpoint in `Tongyi-MAI/Z-Image-Turbo`'s layout and
what diffusers 0.42.1's `ZImagePipeline` computes on it, stage by stage.

Run from the repository root with the reference venv (CPU, f32, one thread, offline):
    /work/ref-venv/bin/python tests/reference/extra_z_image.py
Writes (deleting them first) `tests/fixtures/tiny-z-image-turbo/` and
`tests/fixtures/reference/extra/z_image/` (`z_image.safetensors`, `manifest.json`, PNGs).
It reads the tokenizer of `tests/fixtures/tiny-qwen-image-layered/` (run generate.py first):
Qwen3's vocabulary and merges are Qwen2.5's, so `tokenizer/vocab.json` and `merges.txt` are
relative symlinks to that folder; `tokenizer_config.json` adds Qwen3's four extra tokens
(151665..151668) and a chat template that renders what Qwen3's does for one user message
(the release's template also handles tools and multi-turn reasoning, which the pipeline never uses).

Everything recorded is computed by diffusers / transformers (hooks and the pipeline's own methods);
nothing here re-implements the maths under test. Weights are seeded noise saved in bf16 and
reloaded in f32, like generate.py's.
"""

import json
import math
import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM, Qwen3Model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
CK = FIX / "tiny-z-image-turbo"
OUT = FIX / "reference" / "extra" / "z_image"
LAYERED_TOK = FIX / "tiny-qwen-image-layered" / "tokenizer"

# Qwen3's chat template, reduced to what `_encode_prompt` renders (messages without tools;
# `enable_thinking=False` would add an empty think block, as Qwen3's does).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
QWEN3_EXTRA_TOKENS = {151665: "<tool_response>", 151666: "</tool_response>", 151667: "<think>", 151668: "</think>"}

TEXT_ENCODER = dict(
    architectures=["Qwen3ForCausalLM"],
    attention_bias=False,
    attention_dropout=0.0,
    bos_token_id=151643,
    eos_token_id=151645,
    head_dim=8,  # [128]
    hidden_act="silu",
    hidden_size=16,  # [2560]
    initializer_range=0.02,
    intermediate_size=32,  # [9728]
    max_position_embeddings=40960,
    max_window_layers=3,  # [36]
    model_type="qwen3",
    num_attention_heads=2,  # [32]
    num_hidden_layers=3,  # [36]
    num_key_value_heads=1,  # [8]
    rms_norm_eps=1e-06,
    rope_scaling=None,
    rope_theta=1000000,
    sliding_window=None,
    tie_word_embeddings=True,
    torch_dtype="bfloat16",
    transformers_version="4.51.0",
    use_cache=True,
    use_sliding_window=False,
    vocab_size=151936,
)
TRANSFORMER = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=16,
    dim=64,  # [3840]; int(64/3*8) = 170 hidden units (not 168: the rounding is the reference's)
    n_layers=2,  # [30]
    n_refiner_layers=2,
    n_heads=2,  # [30]
    n_kv_heads=2,  # [30]
    norm_eps=1e-05,
    qk_norm=True,
    cap_feat_dim=16,  # [2560] = text hidden size
    rope_theta=256.0,
    t_scale=1000.0,
    axes_dims=[8, 12, 12],  # [32, 48, 48]
    axes_lens=[1536, 512, 512],
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 8, 16, 16],  # [128, 256, 512, 512]
    layers_per_block=2,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=4,  # [32]
    sample_size=64,  # [1024]
    scaling_factor=0.3611,
    shift_factor=0.1159,
    latents_mean=None,
    latents_std=None,
    force_upcast=True,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=True,
)
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.36.0.dev0",
             "num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 3.0}

PROMPTS = {
    "ascii": "A red fox in fresh snow, watercolor.",
    "chinese": "一只橘猫坐在窗台上 🐱",
    "empty": "",
    # 40 tokens once templated: its caption pads to 64, the negative prompt's to 32, so a CFG batch
    # has rows of different lengths (the batch attention mask).
    "long": "A lighthouse on a rocky cliff at dusk, waves crashing below, warm light in the windows, "
            "seagulls overhead, oil painting with thick brush strokes.",
}
NEGATIVE = "blurry, low quality"

EMBED_STD = 0.25


class Recorder:
    def __init__(self):
        self.tensors = {}
        self.meaning = {}

    def add(self, name, t, meaning):
        self.tensors[name] = t.detach().to(torch.float32).contiguous().clone()
        self.meaning[name] = {"shape": list(t.shape), "meaning": meaning}


def perturb(model, seed, gains=None):
    """generate.py's rules: matrices N(0, 1/fan_in), biases N(0, 0.1²), norm weights 1 + N(0, 0.2²),
    token embeddings N(0, 0.25²)."""
    gains = gains or {}
    norms = set()
    for mname, mod in model.named_modules():
        if "norm" in type(mod).__name__.lower():
            for pname, _ in mod.named_parameters(recurse=False):
                norms.add(f"{mname}.{pname}" if mname else pname)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = next((v for k, v in gains.items() if k in name), 1.0)
            if name in norms:
                new = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                new = 0.1 * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name:
                new = torch.randn(p.shape, generator=g) * EMBED_STD
            else:
                fan_in = p[0].numel() if p.ndim >= 2 else p.numel()
                new = torch.randn(p.shape, generator=g) * (gain / math.sqrt(fan_in))
            p.copy_(new.to(torch.bfloat16).to(p.dtype))


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def build_checkpoint():
    if CK.exists():
        shutil.rmtree(CK)
    CK.mkdir(parents=True)

    tok = CK / "tokenizer"
    tok.mkdir()
    for f in ["vocab.json", "merges.txt"]:
        os.symlink(Path("..") / ".." / "tiny-qwen-image-layered" / "tokenizer" / f, tok / f)
    cfg = json.loads((LAYERED_TOK / "tokenizer_config.json").read_text())
    for i, content in QWEN3_EXTRA_TOKENS.items():
        cfg["added_tokens_decoder"][str(i)] = dict(
            content=content, lstrip=False, normalized=False, rstrip=False, single_word=False, special=False
        )
    cfg["chat_template"] = CHAT_TEMPLATE
    write_json(tok / "tokenizer_config.json", cfg)

    te_cfg = Qwen3Config(**{k: v for k, v in TEXT_ENCODER.items() if k not in ("architectures", "torch_dtype", "transformers_version")})
    te = Qwen3ForCausalLM(te_cfg)
    perturb(te, 2201)
    te.to(torch.bfloat16).save_pretrained(str(CK / "text_encoder"))
    write_json(CK / "text_encoder" / "config.json", TEXT_ENCODER)  # the release's 4.51 layout
    (CK / "text_encoder" / "generation_config.json").unlink(missing_ok=True)

    tr = ZImageTransformer2DModel(**TRANSFORMER)
    perturb(tr, 2202)
    tr.to(torch.bfloat16).save_pretrained(str(CK / "transformer"), max_shard_size="500KB")

    vae = AutoencoderKL(**VAE)
    perturb(vae, 2203, gains={"conv_out": 0.5})
    vae.to(torch.bfloat16).save_pretrained(str(CK / "vae"))

    (CK / "scheduler").mkdir()
    write_json(CK / "scheduler" / "scheduler_config.json", SCHEDULER)
    write_json(CK / "model_index.json", {
        "_class_name": "ZImagePipeline",
        "_diffusers_version": "0.36.0.dev0",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "ZImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })


def load_pipeline():
    pipe = ZImagePipeline.from_pretrained(str(CK), torch_dtype=torch.float32)
    assert isinstance(pipe.text_encoder, Qwen3Model)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    # The reload used every stored weight (no freshly initialised parameter).
    ref = Qwen3ForCausalLM.from_pretrained(str(CK / "text_encoder"), torch_dtype=torch.float32)
    assert torch.equal(ref.model.embed_tokens.weight, pipe.text_encoder.embed_tokens.weight)
    return pipe


def record(pipe, rec, cases):
    tok = pipe.tokenizer
    # Tokens: the templated prompt as the pipeline renders it, and its ids.
    tokens = {}
    for name, text in {**PROMPTS, "negative": NEGATIVE}.items():
        templated = tok.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )
        ids = tok(templated).input_ids
        tokens[name] = {"text": text, "templated": templated, "ids": list(ids)}
        emb = pipe._encode_prompt([text], device=torch.device("cpu"), max_sequence_length=512)[0]
        assert emb.shape[0] == len(ids)
        rec.add(f"text/{name}", emb, "_encode_prompt: hidden_states[-2] of the valid tokens [L, hidden]")
    cases["tokens"] = tokens

    # Scheduler: the pipeline's sigmas (linspace(1, 1/N, N), static shift 3) for several N.
    sched = {}
    for n in [1, 2, 3, 8, 9, 50]:
        s = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        s.set_timesteps(sigmas=torch.linspace(1.0, 1 / n, n).tolist(), mu=0.5, device="cpu")
        sched[str(n)] = {"sigmas": s.sigmas.tolist(), "timesteps": s.timesteps.tolist()}
    cases["scheduler"] = sched

    # One transformer forward, batch 2 with different caption lengths (cond, neg) as CFG runs it.
    tr = pipe.transformer
    g = torch.Generator().manual_seed(7)
    x = [torch.randn(16, 1, 8, 12, generator=g), torch.randn(16, 1, 8, 12, generator=g)]
    cap = [rec.tensors["text/long"], rec.tensors["text/negative"]]
    t = torch.tensor([0.3, 0.7])
    rec.add("tr/in/x0", x[0], "input latents, item 0 [C, F=1, H, W]")
    rec.add("tr/in/x1", x[1], "input latents, item 1")
    rec.add("tr/in/t", t, "timestep as the pipeline passes it: (1000 - t)/1000 [B]")
    hooks = []
    caught = {}

    def hook(name):
        def f(_m, _i, o):
            caught[name] = o
        return f

    hooks.append(tr.t_embedder.register_forward_hook(hook("t_embedder")))
    hooks.append(tr.noise_refiner[-1].register_forward_hook(hook("noise_refiner")))
    hooks.append(tr.context_refiner[-1].register_forward_hook(hook("context_refiner")))
    for i, layer in enumerate(tr.layers):
        hooks.append(layer.register_forward_hook(hook(f"layers.{i}")))
    with torch.no_grad():
        out = tr(x, t, cap, return_dict=False)[0]
    for h in hooks:
        h.remove()
    rec.add("tr/t_embedder", caught["t_embedder"], "t_embedder(t * t_scale) [B, 64]")
    rec.add("tr/noise_refiner", caught["noise_refiner"],
            "last noise_refiner output [B, S_x padded to 32, dim] (image tokens, x_pad_token past the real ones)")
    rec.add("tr/context_refiner", caught["context_refiner"],
            "last context_refiner output [B, max S_cap padded to 32, dim]; row b valid up to its own padded length")
    for i in range(len(tr.layers)):
        rec.add(f"tr/layers.{i}", caught[f"layers.{i}"],
                f"layers.{i} output [B, max(S_x + S_cap), dim] ([image, caption] per row; rows padded with zeros)")
    rec.add("tr/out0", out[0], "model output item 0 [C, 1, H, W]")
    rec.add("tr/out1", out[1], "model output item 1 [C, 1, H, W]")
    cases["transformer"] = {"cap_lens": [len(c) for c in cap], "x_shape": [16, 1, 8, 12]}

    # VAE decode of seeded latents, as the pipeline does it (z / scaling + shift).
    z = torch.randn(1, 16, 6, 10, generator=g) * 1.5
    with torch.no_grad():
        img = pipe.vae.decode(z / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor, return_dict=False)[0]
    rec.add("vae/z", z, "latents as the denoiser leaves them [1, 16, h, w]")
    rec.add("vae/decoded", img, "vae.decode(z / scaling_factor + shift_factor).sample [1, 3, 8h, 8w] (unclamped)")

    # Whole runs with injected noise.
    runs = {
        "turbo": dict(prompt=PROMPTS["ascii"], height=64, width=96, num_inference_steps=3, guidance_scale=0.0),
        "cfg": dict(prompt=PROMPTS["long"], negative_prompt=NEGATIVE, height=80, width=64,
                    num_inference_steps=4, guidance_scale=2.5),
        "cfg_norm": dict(prompt=PROMPTS["ascii"], negative_prompt=None, height=64, width=64,
                         num_inference_steps=2, guidance_scale=4.0, cfg_normalization=1.0),
    }
    cases["runs"] = {}
    for name, kw in runs.items():
        shape = (1, 16, 2 * (kw["height"] // 16), 2 * (kw["width"] // 16))
        noise = torch.randn(*shape, generator=g)
        steps = []

        def cb(_p, i, _t, kwargs):
            steps.append(kwargs["latents"].clone())
            return {}

        with torch.no_grad():
            out = pipe(**kw, latents=noise.clone(), output_type="np", callback_on_step_end=cb,
                       callback_on_step_end_tensor_inputs=["latents"])
        image = torch.from_numpy(np.asarray(out.images[0]))
        rec.add(f"run/{name}/noise", noise, "initial latents (injected) [1, 16, h, w]")
        for i, lat in enumerate(steps):
            rec.add(f"run/{name}/latents{i}", lat, f"latents after step {i}")
        rec.add(f"run/{name}/image", image, "pipeline output (output_type='np') [H, W, 3] in [0, 1]")
        u8 = (image.numpy() * 255).round().astype(np.uint8)
        Image.fromarray(u8).save(OUT / f"run_{name}.png")
        cases["runs"][name] = {k: v for k, v in kw.items()}


def main():
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    build_checkpoint()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    pipe = load_pipeline()
    rec = Recorder()
    cases = {}
    record(pipe, rec, cases)
    save_file(rec.tensors, str(OUT / "z_image.safetensors"))
    write_json(OUT / "manifest.json", {
        "generator": {"diffusers": __import__("diffusers").__version__,
                      "transformers": __import__("transformers").__version__, "torch": torch.__version__},
        "tensors": rec.meaning,
        "cases": cases,
        "configs": {"text_encoder": TEXT_ENCODER, "transformer": TRANSFORMER, "vae": VAE, "scheduler": SCHEDULER},
    })


if __name__ == "__main__":
    main()
