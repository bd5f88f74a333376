#!/usr/bin/env python3
"""Regenerate the tiny reference checkpoints and the reference fixtures.

Run by hand (never by CI) from the repository root:

    /work/ref-venv/bin/python tests/reference/generate.py

It writes (after deleting them):
  tests/fixtures/tiny-qwen-image-layered/     tiny QwenImageLayeredPipeline checkpoint (bf16 weights)
  tests/fixtures/tiny-qwen-image-edit-2509/   tiny QwenImageEditPlusPipeline checkpoint (bf16 weights)
  tests/fixtures/reference/                   what diffusers 0.42.1 + transformers 5.x compute on them

Everything recorded is what diffusers/transformers computed (captured with wrappers and forward hooks
around the real modules); nothing here re-implements the maths that the Rust engine is tested on.
See tests/reference/README.md for the meaning of every file and tensor.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPlusPipeline,
    QwenImageLayeredPipeline,
    QwenImageTransformer2DModel,
)
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as edit_mod  # noqa: E402
from diffusers.pipelines.qwenimage import pipeline_qwenimage_layered as layered_mod  # noqa: E402
from transformers import (  # noqa: E402
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor  # noqa: E402
from tokenizers import AddedToken  # noqa: E402

transformers.logging.set_verbosity_error()
diffusers.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures"
LAYERED = FIX / "tiny-qwen-image-layered"
EDIT = FIX / "tiny-qwen-image-edit-2509"
REF = FIX / "reference"

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Recorder: every stored tensor goes through here (f32, CPU, contiguous) with a one-line meaning.
# ---------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.files: dict[str, OrderedDict[str, torch.Tensor]] = {}
        self.meta: dict[str, dict[str, dict]] = {}
        self.cases: dict[str, dict] = {}
        self.json_files: dict[str, object] = {}
        self.pngs: dict[str, dict] = {}

    def add(self, file: str, name: str, t, meaning: str, dtype=torch.float32, **extra) -> None:
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(np.asarray(t))
        t = t.detach().to("cpu")
        if t.is_complex():
            raise ValueError(f"{name}: store real and imaginary parts separately")
        t = t.to(dtype).contiguous().clone()
        d = self.files.setdefault(file, OrderedDict())
        if name in d:
            raise ValueError(f"duplicate tensor {file}:{name}")
        d[name] = t
        entry = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "meaning": meaning}
        entry.update(extra)
        self.meta.setdefault(file, {})[name] = entry

    def add_strided(self, file: str, name: str, t: torch.Tensor, stride: int, meaning: str, dim: int = 1) -> None:
        """Store every `stride`-th index (0, stride, 2*stride, ...) along `dim` to save space."""
        idx = torch.arange(0, t.shape[dim], stride)
        self.add(
            file,
            name,
            t.index_select(dim, idx),
            meaning + f" [STRIDED: indices 0,{stride},{2 * stride},.. of dim {dim} (full length {t.shape[dim]})]",
            strided={"dim": dim, "stride": stride, "full_len": int(t.shape[dim])},
        )

    def case(self, name: str, **params) -> None:
        self.cases.setdefault(name, {}).update(params)

    def png(self, rel: str, img: Image.Image, meaning: str) -> None:
        path = REF / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(img, path)
        self.pngs[rel] = {"mode": img.mode, "size_wh": list(img.size), "meaning": meaning}

    def write(self) -> None:
        for file, tensors in self.files.items():
            path = REF / file
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(dict(tensors), str(path), metadata={"generator": "tests/reference/generate.py"})
        for file, obj in self.json_files.items():
            write_json(REF / file, obj)


REC = Recorder()


def write_json(path: Path, obj, indent: int | None = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def save_png(img: Image.Image, path: Path) -> None:
    # No metadata chunks, fixed compression: bit-reproducible files.
    img.save(path, format="PNG", optimize=False, compress_level=9)


def ids_list(t) -> list[int]:
    return [int(x) for x in torch.as_tensor(t).reshape(-1).tolist()]


# ---------------------------------------------------------------------------------------------
# 1. The real Qwen2 tokenizer, rebuilt offline from dashscope's qwen.tiktoken
# ---------------------------------------------------------------------------------------------

SPECIAL_TOKENS = [
    # (content, "special" flag as in the Qwen2.5 tokenizer_config.json)
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
FIRST_SPECIAL_ID = 151643
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def gpt2_byte_to_unicode() -> dict[int, str]:
    """The GPT-2 reversible byte -> printable unicode character map."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def load_tiktoken_ranks() -> dict[bytes, int]:
    import importlib.util

    spec = importlib.util.find_spec("dashscope")  # locate the package without importing it (it needs aiohttp)
    path = Path(spec.origin).parent / "resources" / "qwen.tiktoken"
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover BPE merges from tiktoken ranks: replay byte-level BPE on each multi-byte token using only
    merges of lower rank; it must end in exactly two parts, which form the merge of that rank."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while True:
            best_i, best_rank = -1, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best_rank is None or r < best_rank):
                    best_i, best_rank = i, r
            if best_rank is None:
                break
            parts = parts[:best_i] + [parts[best_i] + parts[best_i + 1]] + parts[best_i + 2 :]
        if len(parts) != 2:
            raise RuntimeError(f"token of rank {rank} does not reduce to a pair: {parts}")
        merges.append((parts[0], parts[1]))
    return merges


PREPROCESSOR_CONFIG = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "max_pixels": 12845056,
    "merge_size": 2,
    "min_pixels": 3136,
    "patch_size": 14,
    "processor_class": "Qwen2VLProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 12845056, "shortest_edge": 3136},
    "temporal_patch_size": 2,
}


def build_tokenizer_files(tok_dir: Path, proc_dir: Path):
    ranks = load_tiktoken_ranks()
    assert len(ranks) == FIRST_SPECIAL_ID, len(ranks)
    b2u = gpt2_byte_to_unicode()

    def enc(bs: bytes) -> str:
        return "".join(b2u[b] for b in bs)

    vocab = {enc(tok): rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    assert len(vocab) == len(ranks)
    merges_b = derive_merges(ranks)
    merges = [(enc(a), enc(b)) for a, b in merges_b]
    log(f"tokenizer: {len(vocab)} ranked tokens, {len(merges)} merges")

    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",  # switched to <|im_end|> below, once the ids are in place
        pad_token="<|endoftext|>",
        add_prefix_space=False,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=131072,
    )
    # Added tokens in id order 151643.. (some may already be registered by the constructor).
    for i, (content, special) in enumerate(SPECIAL_TOKENS):
        want = FIRST_SPECIAL_ID + i
        have = tok.convert_tokens_to_ids(content)
        if have is None or have != want or content not in tok.get_added_vocab():
            tok.add_tokens([AddedToken(content, special=special, normalized=False)], special_tokens=special)
        got = tok.convert_tokens_to_ids(content)
        assert got == want, (content, got, want)
    assert len(tok) == FIRST_SPECIAL_ID + len(SPECIAL_TOKENS), len(tok)
    tok.eos_token = "<|im_end|>"

    # --- processor/ (transformers 5 save_pretrained layout: tokenizer.json & co) ---
    image_processor = Qwen2VLImageProcessor(
        min_pixels=3136,
        max_pixels=12845056,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    video_processor = Qwen2VLVideoProcessor()
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor)
    processor.save_pretrained(str(proc_dir))
    # tokenizer.json: same content as save_pretrained writes, minus the pretty-print indentation (11.2 MB -> ~6 MB).
    tj = json.loads((proc_dir / "tokenizer.json").read_text(encoding="utf-8"))
    (proc_dir / "tokenizer.json").write_text(
        json.dumps(tj, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    # The released processor/ folders carry a legacy preprocessor_config.json (not transformers 5's
    # processor_config.json); transformers 5 loads either (checked in check_tokenizers()).
    (proc_dir / "processor_config.json").unlink()
    write_json(proc_dir / "preprocessor_config.json", PREPROCESSOR_CONFIG, indent=2)

    # --- tokenizer/ (the legacy slow-tokenizer layout of the released checkpoints) ---
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    with open(tok_dir / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    added = {content: FIRST_SPECIAL_ID + i for i, (content, _) in enumerate(SPECIAL_TOKENS)}
    write_json(tok_dir / "added_tokens.json", added, indent=2)
    extra_special = [c for c, s in SPECIAL_TOKENS[1:] if s]
    special_map = {
        "additional_special_tokens": extra_special,
        "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
        "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False},
    }
    write_json(tok_dir / "special_tokens_map.json", special_map, indent=2)
    tok_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(FIRST_SPECIAL_ID + i): {
                "content": c,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": s,
            }
            for i, (c, s) in enumerate(SPECIAL_TOKENS)
        },
        "additional_special_tokens": extra_special,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    write_json(tok_dir / "tokenizer_config.json", tok_config, indent=2)
    return len(merges)


# ---------------------------------------------------------------------------------------------
# 2. Tiny configs (see README: "Tiny configs")
# ---------------------------------------------------------------------------------------------

LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]

TEXT_HIDDEN = 32
TE_TEXT = dict(
    vocab_size=152064,
    hidden_size=TEXT_HIDDEN,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    hidden_act="silu",
    max_position_embeddings=128000,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    mrope_section=[2, 3, 3],
    use_sliding_window=False,
    sliding_window=32768,
    max_window_layers=2,
    attention_dropout=0.0,
    initializer_range=0.02,
    use_cache=True,
)
TE_VISION = dict(
    depth=2,
    hidden_size=32,
    hidden_act="silu",
    intermediate_size=64,
    num_heads=2,
    in_chans=3,
    out_hidden_size=TEXT_HIDDEN,
    patch_size=14,
    spatial_merge_size=2,
    spatial_patch_size=14,
    temporal_patch_size=2,
    tokens_per_second=2,
    window_size=112,
    fullatt_block_indexes=[1],
)
TRANSFORMER = dict(
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=2,
    attention_head_dim=32,
    num_attention_heads=2,
    joint_attention_dim=TEXT_HIDDEN,
    guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)
VAE = dict(
    base_dim=4,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    dropout=0.0,
    latents_mean=LATENTS_MEAN,
    latents_std=LATENTS_STD,
)
SCHED_BASE = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=8192,
    max_shift=0.9,
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    use_karras_sigmas=False,
    use_exponential_sigmas=False,
    use_beta_sigmas=False,
    invert_sigmas=False,
    stochastic_sampling=False,
)
SCHED_LAYERED = dict(SCHED_BASE, shift_terminal=None, time_shift_type="linear")
SCHED_EDIT = dict(SCHED_BASE, shift_terminal=0.02, time_shift_type="exponential")
GENERATION_CONFIG = dict(
    bos_token_id=151643,
    pad_token_id=151643,
    do_sample=True,
    eos_token_id=[151645, 151643],
    repetition_penalty=1.05,
    temperature=0.1,
    top_p=0.001,
    top_k=1,
)


def text_encoder_legacy_config() -> dict:
    """text_encoder/config.json in the layout the released checkpoints use (transformers 4.5x): text fields at the
    top level + `rope_scaling: {type: mrope}`, a nested `text_config` copy, and `vision_config` with `in_chans`."""
    t = dict(TE_TEXT)
    mrope = t.pop("mrope_section")
    top = dict(t)
    top.update(
        architectures=["Qwen2_5_VLForConditionalGeneration"],
        model_type="qwen2_5_vl",
        bos_token_id=151643,
        eos_token_id=151645,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        vision_token_id=151654,
        image_token_id=151655,
        video_token_id=151656,
        rope_scaling={"type": "mrope", "mrope_section": mrope},
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        transformers_version="4.53.1",
    )
    text_config = dict(t)
    text_config.update(
        model_type="qwen2_5_vl_text",
        bos_token_id=151643,
        eos_token_id=151645,
        rope_scaling={"type": "mrope", "mrope_section": mrope, "rope_type": "default"},
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        vision_token_id=151654,
        image_token_id=151655,
        video_token_id=151656,
    )
    top["text_config"] = text_config
    vision = dict(TE_VISION)
    vision.update(model_type="qwen2_5_vl", initializer_range=0.02, torch_dtype="bfloat16")
    top["vision_config"] = vision
    return top


def make_text_encoder() -> Qwen2_5_VLForConditionalGeneration:
    cfg = Qwen2_5_VLConfig(**text_encoder_legacy_config())
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(**GENERATION_CONFIG)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Perturbation: seeded re-initialisation so that every weight, bias and norm is non-trivial.
# ---------------------------------------------------------------------------------------------

EMBED_STD = 0.25  # small token embeddings: the blocks, not the embedding, dominate the LM output


def norm_param_names(model: torch.nn.Module) -> set[str]:
    """Direct parameters of normalisation modules (RMSNorm / LayerNorm / the VAE's RMS_norm)."""
    names = set()
    for mname, mod in model.named_modules():
        if "norm" in type(mod).__name__.lower():
            for pname, _ in mod.named_parameters(recurse=False):
                names.add(f"{mname}.{pname}" if mname else pname)
    return names


def perturb(model: torch.nn.Module, seed: int, gains: dict[str, float] | None = None) -> None:
    gains = gains or {}
    norms = norm_param_names(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # named_parameters() skips tied duplicates
            gain = 1.0
            for key, val in gains.items():
                if key in name:
                    gain = val
            last = name.rsplit(".", 1)[-1]
            if name in norms:
                new = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            elif last == "bias":
                new = 0.1 * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name or "addition_t_embedding" in name:
                new = torch.randn(p.shape, generator=g) * (EMBED_STD if "embed_tokens" in name else 1.0)
            else:
                fan_in = p[0].numel() if p.ndim >= 2 else p.numel()
                new = torch.randn(p.shape, generator=g) * (gain / math.sqrt(fan_in))
            p.copy_(new.to(p.dtype))


def bf16_roundtrip_(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))


# ---------------------------------------------------------------------------------------------
# 3. Build, save (bf16, sharded) and reload the two tiny checkpoints
# ---------------------------------------------------------------------------------------------


def strip_keys(config_path: Path, keys: list[str]) -> None:
    cfg = json.loads(config_path.read_text())
    for k in keys:
        cfg.pop(k, None)
    write_json(config_path, cfg, indent=2)


def save_model_bf16(model, path: Path, **kw) -> None:
    model = model.to(torch.bfloat16)
    model.save_pretrained(str(path), **kw)
    model.to(torch.float32)


KEEP_IN_REF = {"extra"}


def build_checkpoints() -> None:
    # reference/extra/ holds fixtures written by other scripts (tests/reference/extra_*.py): keep it.
    targets = [LAYERED, EDIT] + ([p for p in REF.iterdir() if p.name not in KEEP_IN_REF] if REF.exists() else [])
    for d in targets:
        if d.is_symlink() or d.is_file():
            d.unlink()
        elif d.exists():
            shutil.rmtree(d)
    LAYERED.mkdir(parents=True)
    EDIT.mkdir(parents=True)

    n_merges = build_tokenizer_files(LAYERED / "tokenizer", LAYERED / "processor")
    REC.case("tokenizer", ranked_tokens=FIRST_SPECIAL_ID, merges=n_merges, added_tokens=len(SPECIAL_TOKENS))

    torch.manual_seed(0)
    # ---- text encoder (shared by both checkpoints) ----
    te = make_text_encoder()
    perturb(te, 1)
    save_model_bf16(te, LAYERED / "text_encoder", max_shard_size="4MB")
    write_json(LAYERED / "text_encoder" / "config.json", text_encoder_legacy_config(), indent=2)
    gen = dict(GENERATION_CONFIG, transformers_version="4.53.1")
    write_json(LAYERED / "text_encoder" / "generation_config.json", gen, indent=2)

    # ---- layered transformer / VAE / scheduler ----
    tr = QwenImageTransformer2DModel(**TRANSFORMER, use_additional_t_cond=True, use_layer3d_rope=True, zero_cond_t=False)
    perturb(tr, 2)
    save_model_bf16(tr, LAYERED / "transformer", max_shard_size="300KB")
    vae = AutoencoderKLQwenImage(**VAE, input_channels=4)
    perturb(vae, 3, gains={"conv_out": 0.5})
    save_model_bf16(vae, LAYERED / "vae")
    FlowMatchEulerDiscreteScheduler(**SCHED_LAYERED).save_pretrained(str(LAYERED / "scheduler"))
    pipe = QwenImageLayeredPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHED_LAYERED),
        vae=vae,
        text_encoder=te,
        tokenizer=Qwen2Tokenizer.from_pretrained(str(LAYERED / "tokenizer")),
        processor=Qwen2VLProcessor.from_pretrained(str(LAYERED / "processor")),
        transformer=tr,
    )
    pipe.save_config(str(LAYERED))

    # ---- edit-2509 transformer / VAE / scheduler; text encoder + tokenizers are shared (symlinks) ----
    tr_e = QwenImageTransformer2DModel(**TRANSFORMER)
    perturb(tr_e, 4)
    save_model_bf16(tr_e, EDIT / "transformer", max_shard_size="300KB")
    strip_keys(EDIT / "transformer" / "config.json", ["use_additional_t_cond", "use_layer3d_rope", "zero_cond_t"])
    vae_e = AutoencoderKLQwenImage(**VAE, input_channels=3)
    perturb(vae_e, 5, gains={"conv_out": 0.5})
    save_model_bf16(vae_e, EDIT / "vae")
    strip_keys(EDIT / "vae" / "config.json", ["input_channels"])
    FlowMatchEulerDiscreteScheduler(**SCHED_EDIT).save_pretrained(str(EDIT / "scheduler"))
    for comp in ("text_encoder", "tokenizer", "processor"):
        os.symlink(f"../{LAYERED.name}/{comp}", EDIT / comp)
    pipe_e = QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHED_EDIT),
        vae=vae_e,
        text_encoder=te,
        tokenizer=pipe.tokenizer,
        processor=pipe.processor,
        transformer=tr_e,
    )
    pipe_e.save_config(str(EDIT))


def checkpoint_layout() -> dict:
    """Per checkpoint and component: every file and every tensor (name, shape, dtype) saved on disk."""
    out = {}
    for ckpt in (LAYERED, EDIT):
        comps = {}
        for comp in sorted(p.name for p in ckpt.iterdir() if p.is_dir()):
            cdir = ckpt / comp
            files = sorted(p.name for p in cdir.iterdir())
            entry = {"files": files, "symlink": os.readlink(ckpt / comp) if (ckpt / comp).is_symlink() else None}
            st = [f for f in files if f.endswith(".safetensors")]
            if st:
                tensors = {}
                shard_of = {}
                for f in st:
                    with safe_open(str(cdir / f), framework="pt") as sf:
                        for k in sf.keys():
                            sl = sf.get_slice(k)
                            tensors[k] = {"shape": list(sl.get_shape()), "dtype": sl.get_dtype()}
                            shard_of[k] = f
                idx = [f for f in files if f.endswith(".safetensors.index.json")]
                entry["index"] = idx[0] if idx else None
                if idx:
                    wm = json.loads((cdir / idx[0]).read_text())["weight_map"]
                    assert wm == shard_of, f"{ckpt.name}/{comp}: index does not match shards"
                entry["tensors"] = tensors
                entry["num_tensors"] = len(tensors)
            comps[comp] = entry
        out[ckpt.name] = {"model_index": json.loads((ckpt / "model_index.json").read_text()), "components": comps}
    return out


def load_pipelines():
    pl = QwenImageLayeredPipeline.from_pretrained(str(LAYERED), torch_dtype=torch.float32)
    pe = QwenImageEditPlusPipeline.from_pretrained(str(EDIT), torch_dtype=torch.float32)
    for p in (pl, pe):
        p.set_progress_bar_config(disable=True)
        for m in (p.transformer, p.vae, p.text_encoder):
            m.eval()
            for prm in m.parameters():
                assert prm.dtype == torch.float32
    # transformers 5 must read the legacy-layout text_encoder/config.json with the intended values.
    for p in (pl, pe):
        c = p.text_encoder.config
        t, v = c.text_config, c.vision_config
        assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.vocab_size) == (
            TE_TEXT["hidden_size"], 2, 2, 1, 152064), t
        assert t.rope_parameters["mrope_section"] == TE_TEXT["mrope_section"] and t.rope_parameters["rope_theta"] == 1e6
        assert t.rms_norm_eps == 1e-6 and c.tie_word_embeddings
        assert (v.depth, v.hidden_size, v.num_heads, list(v.fullatt_block_indexes), v.window_size, v.out_hidden_size) == (
            2, 32, 2, [1], 112, TEXT_HIDDEN), v
        assert p.processor.image_processor.size["shortest_edge"] == 3136
        assert p.processor.image_processor.size["longest_edge"] == 12845056
    assert pl.transformer.config.use_layer3d_rope and not pe.transformer.config.use_layer3d_rope
    assert pl.vae.config.input_channels == 4 and pe.vae.config.input_channels == 3
    return pl, pe


# ---------------------------------------------------------------------------------------------
# 4. Synthetic input images (deterministic), saved under reference/images/
# ---------------------------------------------------------------------------------------------


def synth_image(w: int, h: int, variant: int, mode: str) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255.0 * x / max(w - 1, 1)
    g = 255.0 * y / max(h - 1, 1)
    b = 128.0 + 100.0 * np.sin(x / (7.0 + variant)) * np.cos(y / (11.0 + variant))
    rgb = np.stack([r, g, b], axis=-1)
    img = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    d = ImageDraw.Draw(img)
    d.rectangle([w * 0.10, h * 0.15, w * 0.45, h * 0.55], fill=(220, 40, 40, 255))
    d.ellipse([w * 0.50, h * 0.20, w * 0.90, h * 0.80], fill=(30, 60 + 40 * variant, 200, 255))
    d.polygon([(w * 0.2, h * 0.9), (w * 0.5, h * 0.6), (w * 0.8, h * 0.95)], fill=(250, 220, 30, 255))
    d.line([(0, 0), (w - 1, h - 1)], fill=(0, 0, 0, 255), width=max(1, w // 60))
    if mode == "RGB":
        return img.convert("RGB")
    a = np.array(img)
    alpha = np.full((h, w), 255.0)
    alpha[:, : w // 8] = 0.0  # fully transparent strip on the left (RGB underneath kept)
    band = (x >= w // 8) & (x < w // 4)
    alpha[band] = 255.0 * (x[band] - w // 8) / max(w // 4 - w // 8, 1)  # soft ramp
    cy, cx, rad = h * 0.7, w * 0.3, min(w, h) * 0.15
    alpha[(y - cy) ** 2 + (x - cx) ** 2 < rad**2] = 128.0  # semi-transparent disk
    a[..., 3] = np.clip(np.rint(alpha), 0, 255).astype(np.uint8)
    return Image.fromarray(a, "RGBA")


def make_inputs() -> dict[str, Image.Image]:
    imgs = {
        "rgba_square": synth_image(512, 512, 0, "RGBA"),
        "rgba_wide": synth_image(300, 200, 1, "RGBA"),
        "rgb_wide": synth_image(360, 240, 2, "RGB"),
        "rgba_small": synth_image(48, 32, 3, "RGBA"),
        "rgb_small": synth_image(48, 32, 4, "RGB"),
        "rgb_tiny_vl": synth_image(90, 50, 5, "RGB"),
    }
    meaning = {
        "rgba_square": "512x512 RGBA input of the square layered runs (transparent strip, alpha ramp, alpha-128 disk)",
        "rgba_wide": "300x200 RGBA input of the non-square layered run",
        "rgb_wide": "360x240 RGB input of the edit-plus run",
        "rgba_small": "48x32 RGBA input of the layered-VAE stage test",
        "rgb_small": "48x32 RGB input of the edit-VAE stage test",
        "rgb_tiny_vl": "90x50 RGB input of the small Qwen2-VL processor test (smart_resize -> 84x56; pixel_values stored in full)",
    }
    for k, im in imgs.items():
        REC.png(f"images/input_{k}.png", im, meaning[k])
    return imgs


# ---------------------------------------------------------------------------------------------
# Small wrapping helpers (record what a real module/method computed, then return it unchanged)
# ---------------------------------------------------------------------------------------------


class Wrap:
    """Temporarily replace obj.attr with a recording wrapper."""

    def __init__(self, obj, attr, fn):
        self.obj, self.attr, self.fn = obj, attr, fn

    def __enter__(self):
        self.orig = getattr(self.obj, self.attr)
        orig = self.orig
        fn = self.fn

        def wrapper(*a, **k):
            return fn(orig, *a, **k)

        setattr(self.obj, self.attr, wrapper)
        return self

    def __exit__(self, *exc):
        setattr(self.obj, self.attr, self.orig)


class Hooks:
    """Forward hooks on named submodules; outputs stored in order of calls."""

    def __init__(self, root: torch.nn.Module, names: list[str]):
        self.out: dict[str, list] = {n: [] for n in names}
        self.handles = []
        mods = dict(root.named_modules())
        for n in names:
            self.handles.append(mods[n].register_forward_hook(self._mk(n)))

    def _mk(self, n):
        def hook(mod, args, out):
            self.out[n].append(out)

        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def cplx_parts(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return t.real.float(), t.imag.float()


# ---------------------------------------------------------------------------------------------
# 5. Tokens
# ---------------------------------------------------------------------------------------------

LONG_PROMPT = " ".join(
    [
        "A sprawling isometric city at dusk, seen from above: narrow canals reflect orange street lamps,",
        "tiny boats drift between stone bridges, and rooftop gardens overflow with lavender and ivy.",
        "In the foreground a bakery with a striped awning displays loaves, croissants and a chalkboard that reads",
        "'Fresh bread 7am-7pm'; two cyclists wait at a crossing while a dog in a red scarf watches pigeons.",
    ]
    * 6
)
PROMPTS = OrderedDict(
    ascii="A red apple on a wooden table, soft morning light.",
    chinese="一只橘色的猫坐在窗台上，窗外是下雨的街道和霓虹灯。",
    emoji="Sunset 🌅 over the sea 🌊, a sailboat ⛵ and 3 gulls!",
    empty="",
    space=" ",
    mixed='Layer "2":\n\ttabs &  double  spaces, numbers 1234567 and symbols <>{}[] — done\r\n',
    long=LONG_PROMPT,
)
EDIT_PROMPT = "Make the sky purple and add a moon."
EDIT_IMG_PREFIX = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"


def record_tokens(pl, pe) -> None:
    tok_l = pl.tokenizer  # loaded from tokenizer/ (vocab.json + merges.txt)
    tok_p = pl.processor.tokenizer  # loaded from processor/tokenizer.json
    assert type(pl.processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    out: dict = {"templates": {}, "prompts": {}, "special_tokens": {}}
    for c, _ in SPECIAL_TOKENS:
        out["special_tokens"][c] = tok_l.convert_tokens_to_ids(c)
    for key, p, n in (("layered", pl, 34), ("edit", pe, 64)):
        tmpl = p.prompt_template_encode
        prefix = tmpl.split("{}")[0]
        ids = tok_l(prefix)["input_ids"]
        assert len(ids) == n == p.prompt_template_encode_start_idx, (key, len(ids))
        out["templates"][key] = {"template": tmpl, "drop_idx": n, "prefix_ids": ids}
    out["templates"]["edit_image_prompt"] = {"text": EDIT_IMG_PREFIX, "ids": tok_l(EDIT_IMG_PREFIX)["input_ids"]}
    for name, text in PROMPTS.items():
        e: dict = {"text": text}
        e["bare_ids"] = tok_l(text)["input_ids"]
        e["layered_ids"] = tok_l(pl.prompt_template_encode.format(text))["input_ids"]
        e["edit_ids_unexpanded"] = tok_l(pe.prompt_template_encode.format(EDIT_IMG_PREFIX + text))["input_ids"]
        for k in ("bare_ids", "layered_ids", "edit_ids_unexpanded"):
            src = {"bare_ids": text, "layered_ids": pl.prompt_template_encode.format(text),
                   "edit_ids_unexpanded": pe.prompt_template_encode.format(EDIT_IMG_PREFIX + text)}[k]
            assert tok_p(src)["input_ids"] == e[k], f"tokenizer/ and processor/ disagree on {name}/{k}"
        e["decoded_bare"] = tok_l.decode(e["bare_ids"])
        e["layered_kept_len"] = len(e["layered_ids"]) - 34
        out["prompts"][name] = e
    texts = [pl.prompt_template_encode.format(PROMPTS["ascii"]), pl.prompt_template_encode.format(PROMPTS["space"])]
    b = tok_l(texts, padding=True, return_tensors="pt")
    out["batch_padding"] = {
        "texts": texts,
        "input_ids": b.input_ids.tolist(),
        "attention_mask": b.attention_mask.tolist(),
        "padding_side": tok_l.padding_side,
    }
    for lang in ("en", "cn"):
        text = getattr(pl, f"image_caption_prompt_{lang}")
        out[f"caption_prompt_{lang}"] = {"text": text, "ids_unexpanded": tok_l(text)["input_ids"]}
    REC.json_files["tokens.json"] = out
    log(f"tokens: caption prompt lens en={len(out['caption_prompt_en']['ids_unexpanded'])} "
        f"cn={len(out['caption_prompt_cn']['ids_unexpanded'])}")


# ---------------------------------------------------------------------------------------------
# 6. Text encoder (text-only, layered template) and with an image (edit template), vision tower
# ---------------------------------------------------------------------------------------------


def te_capture(store: dict, inject_mm: bool = False):
    """Wrapper for text_encoder.forward: records inputs and all hidden states. With inject_mm it adds the
    mm_token_type_ids that the processor computed but diffusers drops (-> true 3-D M-RoPE positions)."""

    def fn(orig, *a, **k):
        if inject_mm and k.get("pixel_values") is not None:
            k["mm_token_type_ids"] = store["mm_token_type_ids"]
        out = orig(*a, **k)
        store["kwargs"] = k
        store["hidden_states"] = torch.stack([h for h in out.hidden_states], 0)
        return out

    return fn


def vision_hook_names(depth: int) -> list[str]:
    return ["patch_embed", "rotary_pos_emb", *[f"blocks.{i}" for i in range(depth)], "merger"]


def record_text_encoder(pl, pe, imgs) -> dict:
    te = pl.text_encoder
    F = "text_encoder.safetensors"
    cfg_cases = {}
    # --- text only (QwenImageLayeredPipeline.encode_prompt; identical code path for any text-only prompt) ---
    for name, text in PROMPTS.items():
        st: dict = {}
        with Wrap(te, "forward", te_capture(st)):
            emb, mask = pl.encode_prompt(prompt=text, device=torch.device("cpu"), max_sequence_length=512)
        hs = st["hidden_states"][:, 0]
        ids = st["kwargs"]["input_ids"][0]
        assert ids.tolist() == REC.json_files["tokens.json"]["prompts"][name]["layered_ids"]
        # hidden_states[-1] is the output after the final RMSNorm (== last_hidden_state):
        lhs = te.model(input_ids=st["kwargs"]["input_ids"], attention_mask=st["kwargs"]["attention_mask"]).last_hidden_state
        assert torch.equal(lhs[0], hs[-1]), "hidden_states[-1] != last_hidden_state"
        REC.add(F, f"text/{name}/hidden_states", hs,
                f"layered template + prompts[{name!r}]: hidden_states tuple of Qwen2_5_VLForConditionalGeneration "
                f"stacked [num_layers+1, S, hidden]: [0]=token embeddings, [i]=after decoder layer i, "
                f"[-1]=after final norm (the pipeline's hidden_states[-1])")
        REC.add(F, f"text/{name}/prompt_embeds", emb,
                "encode_prompt() output: hidden_states[-1] with the first 34 tokens dropped, "
                "truncated to max_sequence_length=512 [1, min(S-34,512), hidden]; mask is None (batch 1)")
        assert mask is None
        cfg_cases[f"text/{name}"] = {"seq_len": int(ids.numel()), "prompt_embeds_len": int(emb.shape[1]),
                                     "mask": None}
    # --- text only, batch of 2 prompts (padding + key mask inside the LM, re-padding after the drop) ---
    st = {}
    batch = [PROMPTS["ascii"], PROMPTS["chinese"]]
    with Wrap(te, "forward", te_capture(st)):
        emb, mask = pl.encode_prompt(prompt=batch, device=torch.device("cpu"), max_sequence_length=512)
    REC.add(F, "text/batch2/hidden_states", st["hidden_states"],
            "batch [ascii, chinese] (right-padded with <|endoftext|>, attention_mask in cases): hidden states "
            "[num_layers+1, 2, S_max, hidden]; rows at padded positions are whatever the LM computed there")
    REC.add(F, "text/batch2/attention_mask", st["kwargs"]["attention_mask"], "tokenizer attention mask [2, S_max] (1/0)")
    REC.add(F, "text/batch2/prompt_embeds", emb, "encode_prompt([ascii, chinese]) [2, L_max, hidden], zero rows past each length")
    REC.add(F, "text/batch2/prompt_embeds_mask", mask, "encode_prompt mask [2, L_max] (1 valid / 0 pad)")
    cfg_cases["text/batch2"] = {"prompts": ["ascii", "chinese"], "input_ids": st["kwargs"]["input_ids"].tolist()}

    # --- with an image: QwenImageEditPlusPipeline._get_qwen_prompt_embeds on the edit run's condition image ---
    img = imgs["rgb_wide"]
    cw, ch = edit_mod.calculate_dimensions(edit_mod.CONDITION_IMAGE_SIZE, img.size[0] / img.size[1])
    cond = pe.image_processor.resize(img, ch, cw)
    te_e = pe.text_encoder
    vis = te_e.model.visual
    for pname in ("edit", "space"):
        text = EDIT_PROMPT if pname == "edit" else " "
        proc = pe.processor(text=[pe.prompt_template_encode.format(EDIT_IMG_PREFIX + text)], images=[cond],
                            padding=True, return_tensors="pt")
        mm = (proc["input_ids"] == te_e.config.image_token_id).to(proc["mm_token_type_ids"].dtype)
        assert torch.equal(mm, proc["mm_token_type_ids"]), "mm_token_type_ids != (input_ids == image_pad)"
        res = {}
        for mode, inject in (("rope1d", False), ("rope3d", True)):
            st = {"mm_token_type_ids": proc["mm_token_type_ids"]}
            with Hooks(vis, vision_hook_names(len(vis.blocks))) as hk, Wrap(te_e, "forward", te_capture(st, inject)):
                emb, mask = pe.encode_prompt(prompt=text, image=[cond], device=torch.device("cpu"))
            assert torch.equal(st["kwargs"]["input_ids"], proc["input_ids"])
            assert torch.equal(st["kwargs"]["pixel_values"], proc["pixel_values"])
            res[mode] = (st, emb, hk)
            REC.add(F, f"image/{pname}/{mode}/hidden_states", st["hidden_states"][:, 0],
                    f"edit template with 'Picture 1: <|vision_start|><|image_pad|>*N<|vision_end|>' + {text!r}, "
                    f"image = images/edit_condition_lanczos.png; "
                    + ("1-D positions (what diffusers 0.42.1 + transformers 5 compute: no mm_token_type_ids)"
                       if mode == "rope1d" else "true 3-D M-RoPE positions (mm_token_type_ids passed; positions in cases)")
                    + " [num_layers+1, S, hidden]")
            REC.add(F, f"image/{pname}/{mode}/prompt_embeds", emb,
                    "encode_prompt output: hidden_states[-1] minus the first 64 tokens [1, S-64, hidden]; mask None")
            assert mask is None
        st, _, hk = res["rope1d"]
        # 3-D position ids exactly as transformers computes them when mm_token_type_ids is given:
        pos, deltas = te_e.model.get_rope_index(
            proc["input_ids"], mm_token_type_ids=proc["mm_token_type_ids"], image_grid_thw=proc["image_grid_thw"],
            attention_mask=proc["attention_mask"])
        cfg_cases[f"image/{pname}"] = {
            "prompt": text,
            "input_ids": proc["input_ids"][0].tolist(),
            "image_grid_thw": proc["image_grid_thw"].tolist(),
            "num_image_tokens": int(mm.sum()),
            "position_ids_3d": pos[:, 0].tolist(),
            "rope_delta_3d": int(deltas.reshape(-1)[0]),
            "condition_image_wh": [cw, ch],
            "max_abs_diff_1d_vs_3d_last_hidden": float(
                (res["rope1d"][0]["hidden_states"][-1] - res["rope3d"][0]["hidden_states"][-1]).abs().max()),
        }
        if pname == "edit":
            pv = proc["pixel_values"]
            grid = proc["image_grid_thw"]
            REC.add_strided("vision.safetensors", "edit/pixel_values", pv, 64,
                            "processor pixel_values [N_patches, 1176] (rows in 2x2 merge-block order, each row "
                            "channel-major [3][T=2][14][14]) for the condition image", dim=0)
            V = "vision.safetensors"
            REC.add(V, "edit/patch_embed", hk.out["patch_embed"][0], "visual.patch_embed output [N_patches, 32] (processor row order)")
            cos, sin = hk.out["rotary_pos_emb"][0]
            REC.add(V, "edit/rotary_cos", cos, "visual.rotary_pos_emb cos [N_patches, head_dim=16] (processor row order, before window permutation)")
            REC.add(V, "edit/rotary_sin", sin, "visual.rotary_pos_emb sin [N_patches, 16]")
            for i in range(len(vis.blocks)):
                REC.add(V, f"edit/block{i}", hk.out[f"blocks.{i}"][0],
                        f"visual.blocks.{i} output [N_patches, 32] in WINDOW order (rows permuted by window_index, "
                        f"4 rows per merged token); block {i} is "
                        + ("full attention" if i in vis.fullatt_block_indexes else "windowed"))
            REC.add(V, "edit/merger_windowed", hk.out["merger"][0], "visual.merger output [N_patches/4, 32] in window order")
            from transformers.vision_utils import get_vision_window_index

            widx, cuw = get_vision_window_index(grid, spatial_merge_size=2, window_size=112, patch_size=14)
            merged = hk.out["merger"][0][torch.argsort(widx)]
            REC.add(V, "edit/merged", merged, "final vision embeddings [N_patches/4, 32] in raster order of merged tokens "
                                               "(what replaces the <|image_pad|> embeddings)")
            cfg_cases["vision/edit"] = {
                "image_grid_thw": grid.tolist(),
                "window_index": widx.tolist(),
                "cu_window_seqlens": cuw.tolist(),
                "fullatt_block_indexes": list(vis.fullatt_block_indexes),
                "pixel_values_shape": list(pv.shape),
                "input_png": "images/edit_condition_processor_resized.png",
            }
    REC.png("images/edit_condition_lanczos.png", cond,
            "edit run condition image: VaeImageProcessor.resize (PIL LANCZOS) of input_rgb_wide to calculate_dimensions(384*384)")
    return cfg_cases


def record_caption(pl, imgs) -> dict:
    """QwenImageLayeredPipeline.get_image_caption's model call with max_new_tokens=8 (instead of 512)."""
    img = imgs["rgba_square"]
    w, h = layered_mod.calculate_dimensions(640 * 640, img.size[0] / img.size[1])
    prompt_image = pl.image_processor.resize(img, h, w)
    inputs = pl.vl_processor(text=pl.image_caption_prompt_en, images=prompt_image, padding=True, return_tensors="pt")
    te = pl.text_encoder
    vis = te.model.visual
    out = {"image": "images/resized_lanczos_rgba_square_640x640.png", "prompt": "image_caption_prompt_en",
           "input_ids": inputs["input_ids"][0].tolist(), "image_grid_thw": inputs["image_grid_thw"].tolist(),
           "model_input_keys": sorted(inputs.keys()), "max_new_tokens": 8}
    with Hooks(vis, ["merger"]) as hk:
        g1 = te.generate(**inputs, max_new_tokens=8, output_logits=True, return_dict_in_generate=True)
    n_in = inputs["input_ids"].shape[1]
    out["generation_config"] = {k: getattr(te.generation_config, k) for k in
                                ("do_sample", "top_k", "top_p", "temperature", "repetition_penalty", "eos_token_id")}
    out["generated_ids"] = g1.sequences[0, n_in:].tolist()
    out["generated_text"] = pl.vl_processor.batch_decode(
        g1.sequences[:, n_in:], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0].strip()
    out["step_logits_top8"] = [
        {"ids": torch.topk(l[0], 8).indices.tolist(), "values": torch.topk(l[0], 8).values.tolist()} for l in g1.logits
    ]
    from transformers.vision_utils import get_vision_window_index

    widx, _ = get_vision_window_index(inputs["image_grid_thw"], spatial_merge_size=2, window_size=112, patch_size=14)
    REC.add("vision.safetensors", "caption/merged", hk.out["merger"][0][torch.argsort(widx)],
            "vision embeddings [N/4, 32] of the 640x640 caption image (raster order of merged tokens)")
    g2 = te.generate(**inputs, max_new_tokens=8, do_sample=False, repetition_penalty=1.0, top_k=None, top_p=None,
                     temperature=None)
    out["plain_greedy_generated_ids"] = g2[0, n_in:].tolist()
    # same prompt, but the 1-D positions diffusers' text-encoding path would use (no mm_token_type_ids):
    k2 = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    g3 = te.generate(**k2, max_new_tokens=8)
    out["generated_ids_without_mm_token_type_ids"] = g3[0, n_in:].tolist()
    REC.json_files["caption.json"] = out
    log(f"caption: {out['generated_ids']} / greedy {out['plain_greedy_generated_ids']} / 1-D {out['generated_ids_without_mm_token_type_ids']}")
    return {"caption": {k: v for k, v in out.items() if k in ("max_new_tokens",)}}


# ---------------------------------------------------------------------------------------------
# 7. Image processing references (Pillow LANCZOS/BICUBIC, Qwen2-VL processor, calculate_dimensions)
# ---------------------------------------------------------------------------------------------


def record_image_proc(pl, pe, imgs) -> dict:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    cases = {}
    dims = []
    for area in (384 * 384, 640 * 640, 1024 * 1024):
        for w, h in ((1, 1), (3, 2), (2, 3), (16, 9), (9, 16), (300, 200), (1000, 333), (333, 1000), (5, 4)):
            cw, chh = layered_mod.calculate_dimensions(area, w / h)
            dims.append({"target_area": area, "width": w, "height": h, "ratio": w / h, "result_wh": [cw, chh],
                         "floored16_wh": [cw // 16 * 16, chh // 16 * 16]})
    cases["calculate_dimensions"] = dims
    sr = []
    for h, w in ((320, 480), (384, 384), (640, 640), (50, 90), (10, 10), (28, 2000), (1000, 1000), (4000, 5000),
                 (832, 1248), (5000, 6000)):
        rh, rw = smart_resize(h, w, factor=28, min_pixels=3136, max_pixels=12845056)
        sr.append({"hw": [h, w], "result_hw": [rh, rw]})
    cases["smart_resize"] = sr

    # LANCZOS (VaeImageProcessor.resize) to the bucket/VAE sizes the runs use
    for key, area in (("rgba_square", 640 * 640), ("rgba_wide", 640 * 640), ("rgb_wide", 1024 * 1024)):
        im = imgs[key]
        cw, chh = layered_mod.calculate_dimensions(area, im.size[0] / im.size[1])
        r = pl.image_processor.resize(im, chh, cw)
        REC.png(f"images/resized_lanczos_{key}_{cw}x{chh}.png", r,
                f"VaeImageProcessor.resize (PIL LANCZOS) of input_{key} to calculate_dimensions({area}) = {cw}x{chh}")

    # Qwen2-VL processor on a small image: the pipeline's processor (transformers 5 torchvision backend)
    # and the PIL backend of the same config.
    im = imgs["rgb_tiny_vl"]
    ip = pl.processor.image_processor
    got = {}

    def cap_resize(orig, *a, **k):
        out = orig(*a, **k)
        got["resized"] = out
        return out

    with Wrap(ip, "resize", cap_resize):
        tv = ip(images=[im], return_tensors="pt")
    rs = got["resized"]
    assert rs.dtype == torch.uint8, rs.dtype
    REC.png("images/vl_tiny_torchvision_resized.png", Image.fromarray(rs[0].permute(1, 2, 0).numpy(), "RGB"),
            "input_rgb_tiny_vl after the pipeline processor's resize (torchvision bicubic, antialias) to 84x56")
    REC.add("image_proc.safetensors", "vl_tiny/pixel_values", tv["pixel_values"],
            "Qwen2VLProcessor pixel_values [24, 1176] of input_rgb_tiny_vl (torchvision backend = what the pipelines use)")
    pil_ip = Qwen2VLImageProcessorPil(**{k: v for k, v in PREPROCESSOR_CONFIG.items()
                                         if k not in ("image_processor_type", "processor_class")})
    pv_pil = pil_ip(images=[im], return_tensors="pt")
    REC.add("image_proc.safetensors", "vl_tiny/pixel_values_pil", pv_pil["pixel_values"],
            "same with transformers' PIL backend (Qwen2VLImageProcessorPil: PIL BICUBIC resize) [24, 1176]")
    bic = im.resize((84, 56), Image.BICUBIC)
    REC.png("images/vl_tiny_pil_bicubic.png", bic, "PIL BICUBIC resize of input_rgb_tiny_vl to 84x56")
    cases["vl_tiny"] = {"image_grid_thw": tv["image_grid_thw"].tolist(), "resized_hw": [56, 84],
                        "max_abs_diff_torchvision_vs_pil_pixel_values":
                            float((tv["pixel_values"] - pv_pil["pixel_values"]).abs().max()),
                        "max_abs_diff_torchvision_vs_pil_u8": int(
                            (rs[0].permute(1, 2, 0).int() - torch.from_numpy(np.array(bic)).int()).abs().max())}

    # The edit run's condition image through the processor: capture the resized uint8 image exactly.
    img = imgs["rgb_wide"]
    cw, chh = edit_mod.calculate_dimensions(edit_mod.CONDITION_IMAGE_SIZE, img.size[0] / img.size[1])
    cond = pe.image_processor.resize(img, chh, cw)
    got = {}
    with Wrap(pe.processor.image_processor, "resize", cap_resize):
        pv = pe.processor.image_processor(images=[cond], return_tensors="pt")
    rs = got["resized"]
    REC.png("images/edit_condition_processor_resized.png", Image.fromarray(rs[0].permute(1, 2, 0).numpy(), "RGB"),
            "edit condition image after the processor's smart_resize (torchvision bicubic antialias, uint8): the exact "
            "pixels behind the edit pixel_values (rescale 1/255, CLIP mean/std, patchify)")
    h2, w2 = rs.shape[-2:]
    bic = cond.resize((w2, h2), Image.BICUBIC)
    REC.png("images/edit_condition_pil_bicubic.png", bic, "PIL BICUBIC resize of the edit condition image to the same size")
    cases["edit_condition"] = {"lanczos_wh": [cw, chh], "processor_resized_wh": [int(w2), int(h2)],
                               "image_grid_thw": pv["image_grid_thw"].tolist(),
                               "max_abs_diff_torchvision_vs_pil_u8": int(
                                   (rs[0].permute(1, 2, 0).int() - torch.from_numpy(np.array(bic)).int()).abs().max())}
    return cases


# ---------------------------------------------------------------------------------------------
# 8. VAE stage tests (small images), latent normalisation and packing
# ---------------------------------------------------------------------------------------------


def record_vae(pipe, img: Image.Image, tag: str) -> dict:
    vae = pipe.vae
    F = "vae.safetensors"
    h, w = img.size[1], img.size[0]
    x = pipe.image_processor.preprocess(img, h, w).unsqueeze(2)  # [1, C, 1, H, W] in [-1, 1]
    REC.add(F, f"{tag}/input", x, f"VaeImageProcessor.preprocess(images/input_{'rgba' if tag == 'layered' else 'rgb'}_small.png) "
            "+ frame axis: [1, C, 1, H, W] = 2*(u8/255)-1")
    enc_names = ["encoder.conv_in"] + [f"encoder.down_blocks.{i}" for i in range(len(vae.encoder.down_blocks))] + \
        ["encoder.mid_block", "encoder.conv_out", "quant_conv"]
    with Hooks(vae, enc_names) as hk:
        post = vae.encode(x).latent_dist
    for n in enc_names:
        assert len(hk.out[n]) == 1
        REC.add(F, f"{tag}/enc/{n}", hk.out[n][0], f"output of vae.{n} [1, C, 1, h, w]")
    REC.add(F, f"{tag}/posterior_mean", post.mean, "latent_dist.mean = mode() = first 16 channels of quant_conv output [1,16,1,h,w]")
    REC.add(F, f"{tag}/posterior_logvar", post.logvar, "latent_dist.logvar (clamped to [-30, 20]) [1,16,1,h,w]")
    norm = pipe._encode_vae_image(x, generator=None)
    REC.add(F, f"{tag}/latents_normalized", norm, "pipeline _encode_vae_image: (mean - latents_mean) / latents_std")
    dec_names = ["post_quant_conv", "decoder.conv_in", "decoder.mid_block"] + \
        [f"decoder.up_blocks.{i}" for i in range(len(vae.decoder.up_blocks))] + ["decoder.conv_out"]
    with Hooks(vae, dec_names) as hk:
        out = vae.decode(post.mean).sample
    for n in dec_names:
        REC.add(F, f"{tag}/dec/{n}", hk.out[n][0], f"output of vae.{n} when decoding posterior_mean")
    REC.add(F, f"{tag}/decoded", out, "vae.decode(posterior_mean).sample, clamped to [-1, 1]: [1, C, 1, H, W]")
    pil = pipe.image_processor.postprocess(out[:, :, 0], output_type="pil")[0]
    REC.png(f"images/vae_{tag}_decoded.png", pil, f"VaeImageProcessor.postprocess of {tag}/decoded (round(clamp(x/2+0.5)*255))")
    g = torch.Generator().manual_seed(11)
    z2 = torch.randn(2, 16, 1, post.mean.shape[-2], post.mean.shape[-1], generator=g) * 2.0
    REC.add(F, f"{tag}/batch2_z", z2, "seeded latents [2,16,1,h,w] (scale 2) for a batch-2 decode")
    REC.add(F, f"{tag}/batch2_decoded", vae.decode(z2).sample, "vae.decode(batch2_z).sample [2, C, 1, H, W]")
    clamp_frac = float((out.abs() >= 1.0).float().mean())
    return {f"vae/{tag}": {"input_hw": [h, w], "latent_hw": list(post.mean.shape[-2:]),
                           "decoded_fraction_clamped": clamp_frac, "decoded_std": float(out.std())}}


def record_packing(pl, pe) -> dict:
    F = "latents.safetensors"
    g = torch.Generator().manual_seed(12)
    x = torch.randn(1, 3, 16, 4, 6, generator=g)
    packed = pl._pack_latents(x, 1, 16, 4, 6, 3)
    REC.add(F, "layered/unpacked", x, "[B=1, frames=3, C=16, h=4, w=6] latents in the layered noise layout")
    REC.add(F, "layered/packed", packed, "QwenImageLayeredPipeline._pack_latents -> [1, 3*2*3, 64]")
    un = pl._unpack_latents(packed, 4 * 8, 6 * 8, 2, pl.vae_scale_factor)
    REC.add(F, "layered/unpacked_bcfhw", un, "_unpack_latents(packed, height=32, width=48, layers=2) -> [B, C, frames, h, w]")
    x = torch.randn(1, 16, 1, 4, 6, generator=g)
    packed = pe._pack_latents(x, 1, 16, 4, 6)
    REC.add(F, "edit/unpacked", x, "[B=1, C=16, 1, h=4, w=6]")
    REC.add(F, "edit/packed", packed, "QwenImageEditPlusPipeline._pack_latents -> [1, 6, 64]")
    REC.add(F, "edit/unpacked_back", pe._unpack_latents(packed, 32, 48, pe.vae_scale_factor), "_unpack_latents -> [1,16,1,4,6]")
    return {}


# ---------------------------------------------------------------------------------------------
# 9. Transformer: one direct forward per model on small inputs, every stage recorded
# ---------------------------------------------------------------------------------------------


def record_transformer(tr, tag: str, layered: bool) -> dict:
    F = "transformer.safetensors"
    g = torch.Generator().manual_seed(21 if layered else 22)
    if layered:
        layers = 2
        fh, fw = 3, 4  # odd height: centred positions -2..0; layer_num (3) > max(h//2, w//2) -> text offset 3
        img_shapes = [[(1, fh, fw)] * (layers + 1) + [(1, fh, fw)]] * 2
        s_img = (layers + 2) * fh * fw
        B, s_txt = 2, 6
        mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]], dtype=torch.long)
        t = torch.tensor([0.7, 0.7])
        add_t = torch.tensor([0, 1])
    else:
        img_shapes = [[(1, 4, 6), (1, 6, 4)]]
        s_img = 24 + 24
        B, s_txt = 1, 5
        mask = None
        t = torch.tensor([0.35])
        add_t = None
    hs = torch.randn(B, s_img, 64, generator=g)
    ehs = torch.randn(B, s_txt, TEXT_HIDDEN, generator=g) * 2.0
    if mask is not None:
        ehs = ehs * mask[..., None]  # padded rows are zeros, as the pipeline's prompt_embeds
    names = ["img_in", "txt_norm", "txt_in", "time_text_embed.time_proj", "time_text_embed.timestep_embedder",
             "time_text_embed", "pos_embed", *[f"transformer_blocks.{i}" for i in range(len(tr.transformer_blocks))],
             "norm_out", "proj_out"]
    with Hooks(tr, names) as hk:
        out = tr(hidden_states=hs, encoder_hidden_states=ehs, encoder_hidden_states_mask=mask, timestep=t,
                 img_shapes=img_shapes, additional_t_cond=add_t, return_dict=False)[0]
    P = f"{tag}/"
    REC.add(F, P + "in/hidden_states", hs, "input: packed image tokens [B, S_img, 64] (noisy frames then condition frame(s))")
    REC.add(F, P + "in/encoder_hidden_states", ehs, "input: prompt embeddings [B, S_txt, joint_attention_dim]")
    if mask is not None:
        REC.add(F, P + "in/encoder_hidden_states_mask", mask, "input: text key mask [B, S_txt] (1 valid, 0 pad)")
    REC.add(F, P + "in/timestep", t, "input: timestep as the pipeline passes it (= sigma = t/1000) [B]")
    REC.add(F, P + "img_in", hk.out["img_in"][0], "img_in(hidden_states) [B, S_img, 64]")
    REC.add(F, P + "txt_norm", hk.out["txt_norm"][0], "txt_norm (RMSNorm eps 1e-6) of encoder_hidden_states")
    REC.add(F, P + "txt_in", hk.out["txt_in"][0], "txt_in(txt_norm(...)) [B, S_txt, 64]")
    REC.add(F, P + "time_proj", hk.out["time_text_embed.time_proj"][0], "sinusoidal timestep features [B, 256] ([cos | sin], scale 1000)")
    REC.add(F, P + "timestep_embedder", hk.out["time_text_embed.timestep_embedder"][0], "linear_2(silu(linear_1(time_proj))) [B, 64]")
    REC.add(F, P + "temb", hk.out["time_text_embed"][0],
            "time_text_embed output [B, 64]" + (" = timestep_embedder + addition_t_embedding[additional_t_cond]" if layered else ""))
    vid, txt = hk.out["pos_embed"][0]
    c, s = cplx_parts(vid)
    REC.add(F, P + "rope_img_cos", c, "pos_embed image freqs, real part (cos) [S_img, head_dim/2=16]; complex pairs (2k,2k+1)")
    REC.add(F, P + "rope_img_sin", s, "pos_embed image freqs, imaginary part (sin) [S_img, 16]")
    c, s = cplx_parts(txt)
    REC.add(F, P + "rope_txt_cos", c, "pos_embed text freqs, cos [S_txt, 16]")
    REC.add(F, P + "rope_txt_sin", s, "pos_embed text freqs, sin [S_txt, 16]")
    for i in range(len(tr.transformer_blocks)):
        txt_o, img_o = hk.out[f"transformer_blocks.{i}"][0]
        REC.add(F, P + f"block{i}/txt", txt_o, f"transformer_blocks.{i} output, text stream [B, S_txt, 64]")
        REC.add(F, P + f"block{i}/img", img_o, f"transformer_blocks.{i} output, image stream [B, S_img, 64]")
    REC.add(F, P + "norm_out", hk.out["norm_out"][0], "norm_out(img, temb) (AdaLayerNormContinuous: scale first, then shift)")
    REC.add(F, P + "output", out, "model output [B, S_img, 64] (the pipeline keeps the first S_noisy tokens)")
    case = {"img_shapes": [list(map(list, x)) for x in img_shapes], "batch": B, "s_img": s_img, "s_txt": s_txt,
            "timestep": t.tolist(), "layered": layered}
    if layered:
        case["additional_t_cond"] = add_t.tolist()
        # batch-1 forward of sample 1 alone with its padding cut off (what diffusers does for an unbatched
        # negative prompt): the CFG-batching check.
        o1 = tr(hidden_states=hs[1:], encoder_hidden_states=ehs[1:, :3], encoder_hidden_states_mask=None, timestep=t[1:],
                img_shapes=img_shapes[:1], additional_t_cond=add_t[1:], return_dict=False)[0]
        REC.add(F, P + "sample1_alone_output", o1,
                "forward of batch item 1 alone, text cut to its 3 valid tokens, no mask [1, S_img, 64]: equals "
                "output[1] up to float rounding (batched CFG with a key mask == separate forwards)")
        case["max_abs_diff_batched_vs_alone_item1"] = float((o1[0] - out[1]).abs().max())
        # RoPE table of the real 640-bucket layered layout (2 layers), image part only, first frame + condition frame rows
        vid640, txt640 = tr.pos_embed([[(1, 40, 40)] * 3 + [(1, 40, 40)]], max_txt_seq_len=8, device=torch.device("cpu"))
        c, s = cplx_parts(vid640)
        REC.add_strided(F, P + "rope640_img_cos", c, 50, "pos_embed freqs (cos) for img_shapes [(1,40,40)]*3+[(1,40,40)] (640 bucket, 2 layers)", dim=0)
        REC.add_strided(F, P + "rope640_img_sin", s, 50, "same, sin", dim=0)
        c, s = cplx_parts(txt640)
        REC.add(F, P + "rope640_txt_cos", c, "text freqs for 8 text tokens with that layout [8, 16]")
        REC.add(F, P + "rope640_txt_sin", s, "same, sin")
    return {f"transformer/{tag}": case}


# ---------------------------------------------------------------------------------------------
# 10. Scheduler
# ---------------------------------------------------------------------------------------------


def record_scheduler(pl, pe) -> dict:
    import warnings

    F = "scheduler.safetensors"
    cases = {}
    for tag, pipe in (("layered", pl), ("edit", pe)):
        cfg = dict(pipe.scheduler.config)
        for n in (1, 2, 3, 20, 50):
            if tag == "layered":
                mus = {"s1600": (1600 / 256) ** 0.5, "s4096": (4096 / 256) ** 0.5, "s1536": (1536 / 256) ** 0.5}
                sig_in = np.linspace(1.0, 0, n + 1)[:-1]
            else:
                mus = {f"s{s}": edit_mod.calculate_shift(s, cfg["base_image_seq_len"], cfg["max_image_seq_len"],
                                                         cfg["base_shift"], cfg["max_shift"]) for s in (256, 384, 4096)}
                sig_in = np.linspace(1.0, 1 / n, n)
            for mk, mu in mus.items():
                sch = FlowMatchEulerDiscreteScheduler.from_config(cfg)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ts, _ = layered_mod.retrieve_timesteps(sch, n, torch.device("cpu"), sigmas=sig_in, mu=mu)
                key = f"{tag}/n{n}/{mk}"
                REC.add(F, key + "/sigmas", sch.sigmas, f"scheduler.sigmas after set_timesteps(sigmas=<pipeline default>, mu={mu!r}) [n+1] (last = 0)")
                REC.add(F, key + "/timesteps", ts, "scheduler.timesteps [n] (= 1000 * sigmas[:n])")
                cases[f"scheduler/{key}"] = {"num_inference_steps": n, "mu": float(mu), "image_seq_len": int(mk[1:]),
                                             "input_sigmas": [float(v) for v in sig_in],
                                             "has_nan": bool(torch.isnan(sch.sigmas).any())}
    # one Euler step, computed by scheduler.step
    sch = FlowMatchEulerDiscreteScheduler.from_config(pl.scheduler.config)
    ts, _ = layered_mod.retrieve_timesteps(sch, 3, torch.device("cpu"), sigmas=np.linspace(1.0, 0, 4)[:-1], mu=2.5)
    sch.set_begin_index(0)
    g = torch.Generator().manual_seed(31)
    x = torch.randn(1, 8, 64, generator=g)
    v = torch.randn(1, 8, 64, generator=g)
    REC.add(F, "step/sample", x, "sample before the step [1, 8, 64]")
    REC.add(F, "step/model_output", v, "velocity [1, 8, 64]")
    REC.add(F, "step/prev_sample", sch.step(v, ts[0], x, return_dict=False)[0],
            "scheduler.step at index 0 of layered/n3/s1600: sample + (sigma1 - sigma0) * v")
    return cases


# ---------------------------------------------------------------------------------------------
# 11. Full pipeline runs
# ---------------------------------------------------------------------------------------------

RUN_STRIDE = 37  # per-step token tensors are stored at tokens 0, 37, 74, ... (see README)

RUNS = [
    dict(name="layered_l2_cfgnorm", kind="layered", image="rgba_square", prompt=PROMPTS["ascii"], negative_prompt=" ",
         true_cfg_scale=4.0, layers=2, num_inference_steps=2, resolution=640, cfg_normalize=True, seed=42,
         full_pngs=True),
    dict(name="layered_l3_cfg", kind="layered", image="rgba_square", prompt=PROMPTS["chinese"],
         negative_prompt="blurry, low quality", true_cfg_scale=3.0, layers=3, num_inference_steps=2, resolution=640,
         cfg_normalize=False, seed=7),
    dict(name="layered_wide_nocfg", kind="layered", image="rgba_wide", prompt=PROMPTS["emoji"], negative_prompt=None,
         true_cfg_scale=4.0, layers=2, num_inference_steps=3, resolution=640, cfg_normalize=False, seed=123),
    dict(name="edit_plus", kind="edit", image="rgb_wide", prompt=EDIT_PROMPT, negative_prompt=" ", true_cfg_scale=4.0,
         num_inference_steps=2, height=256, width=384, seed=2025),
]


def record_run(pipe, run: dict, imgs) -> dict:
    name = run["name"]
    F = f"runs/{name}.safetensors"
    mod = layered_mod if run["kind"] == "layered" else edit_mod
    rec: dict = {"noise": [], "tr": [], "step": [], "enc": [], "prep": None, "dec": []}

    def randn_cap(orig, *a, **k):
        out = orig(*a, **k)
        rec["noise"].append(out.clone())
        return out

    def tr_cap(orig, *a, **k):
        out = orig(*a, **k)
        rec["tr"].append({"out": out[0].clone(), "t": k["timestep"].clone(), "img_shapes": k["img_shapes"],
                          "mask": k.get("encoder_hidden_states_mask"), "ehs": k["encoder_hidden_states"].clone(),
                          "add_t": k.get("additional_t_cond")})
        return out

    def step_cap(orig, v, t, x, *a, **k):
        out = orig(v, t, x, *a, **k)
        rec["step"].append({"v": v.clone(), "x": x.clone(), "prev": out[0].clone(), "t": float(t)})
        return out

    def enc_cap(orig, *a, **k):
        out = orig(*a, **k)
        rec["enc"].append(out)
        return out

    def prep_cap(orig, *a, **k):
        out = orig(*a, **k)
        rec["prep"] = (out[0].clone(), out[1].clone())
        return out

    def dec_cap(orig, z, *a, **k):
        out = orig(z, *a, **k)
        rec["dec"].append((z.clone(), out[0].clone()))
        return out

    img = imgs[run["image"]]
    gen = torch.Generator().manual_seed(run["seed"])
    kw = dict(image=img, prompt=run["prompt"], negative_prompt=run["negative_prompt"],
              true_cfg_scale=run["true_cfg_scale"], num_inference_steps=run["num_inference_steps"], generator=gen)
    if run["kind"] == "layered":
        kw.update(layers=run["layers"], resolution=run["resolution"], cfg_normalize=run["cfg_normalize"])
    else:
        kw.update(height=run["height"], width=run["width"])
    t0 = time.time()
    with Wrap(mod, "randn_tensor", randn_cap), Wrap(pipe.transformer, "forward", tr_cap), \
            Wrap(pipe.scheduler, "step", step_cap), Wrap(pipe, "encode_prompt", enc_cap), \
            Wrap(pipe, "prepare_latents", prep_cap), Wrap(pipe.vae, "decode", dec_cap):
        result = pipe(**kw)
    secs = time.time() - t0
    cfg = run["negative_prompt"] is not None and run["true_cfg_scale"] > 1
    assert len(rec["noise"]) == 1
    noise = rec["noise"][0]
    REC.add(F, "noise", noise, "initial noise exactly as drawn by randn_tensor(generator) in the UNPACKED shape "
            + ("[1, layers+1, 16, H/8, W/8] (frame 0 = composite)" if run["kind"] == "layered" else "[1, 1, 16, H/8, W/8]")
            + "; the pipeline then packs it")
    lat0, cond_lat = rec["prep"]
    s_noisy = lat0.shape[1]
    REC.add_strided(F, "cond_latents", cond_lat, RUN_STRIDE, "prepare_latents image_latents: VAE posterior mean of the "
                    "resized input, normalised, packed [1, S_cond, 64]")
    (pe_, pm_) = rec["enc"][0]
    REC.add(F, "prompt_embeds", pe_, "encode_prompt(prompt) [1, L, hidden]; prompt_embeds_mask is None")
    if cfg:
        (ne_, nm_) = rec["enc"][1]
        REC.add(F, "negative_prompt_embeds", ne_, "encode_prompt(negative_prompt) [1, L_neg, hidden]; mask None")
    per_step = 2 if cfg else 1
    assert len(rec["tr"]) == per_step * run["num_inference_steps"]
    sigmas = pipe.scheduler.sigmas.tolist()
    stride = 1 if run["kind"] == "edit" else RUN_STRIDE  # the edit run's 384 noisy tokens are stored in full

    def put(key, t, meaning):
        if stride == 1:
            REC.add(F, key, t, meaning + " [1, S_noisy, 64]")
        else:
            REC.add_strided(F, key, t, stride, meaning)

    for i, st in enumerate(rec["step"]):
        vc = rec["tr"][per_step * i]["out"][:, :s_noisy]
        put(f"step{i}/v_cond", vc, f"step {i}: transformer output with prompt_embeds, first S_noisy tokens")
        if cfg:
            vu = rec["tr"][per_step * i + 1]["out"][:, :s_noisy]
            put(f"step{i}/v_uncond", vu, f"step {i}: transformer output with negative_prompt_embeds")
        normed = run["kind"] == "edit" or run.get("cfg_normalize")
        put(f"step{i}/v_guided", st["v"],
            (f"step {i}: velocity given to scheduler.step (after CFG" + (" and per-token norm rescale)" if normed else ")"))
            if cfg else f"step {i}: velocity given to scheduler.step (= v_cond, no CFG)")
        put(f"step{i}/latents_after", st["prev"], f"step {i}: packed latents after the Euler step")
    put("final_latents", rec["step"][-1]["prev"], "packed latents after the last step (= last step's latents_after)")
    assert len(rec["dec"]) == 1
    pngs = []
    if run["kind"] == "layered":
        layers_out = result.images[0]
        assert len(layers_out) == run["layers"]
        if run.get("full_pngs"):
            for j, im in enumerate(layers_out):
                rel = f"runs/{name}/layer{j + 1}.png"
                REC.png(rel, im, f"pipeline output image {j} (RGBA) = decoded frame {j + 1} (frame 0 = composite is dropped)")
                pngs.append(rel)
        else:
            px = torch.stack([torch.from_numpy(np.array(im)) for im in layers_out])  # [layers, H, W, 4] uint8
            REC.add(F, "output_pixels_strided4", px[:, ::4, ::4], "pipeline output images as RGBA8, every 4th row and "
                    "column (rows/cols 0,4,8,..): [layers, H/4, W/4, 4] uint8 (layer j = decoded frame j+1)",
                    dtype=torch.uint8)
    else:
        rel = f"runs/{name}/edited.png"
        REC.png(rel, result.images[0], "pipeline output image (RGB)")
        pngs.append(rel)
    first = rec["tr"][0]
    case = {k: v for k, v in run.items() if k != "name"}
    case.update(
        input_png=f"images/input_{run['image']}.png",
        do_true_cfg=cfg,
        s_noisy=int(s_noisy),
        s_cond=int(cond_lat.shape[1]),
        noise_shape=list(noise.shape),
        img_shapes=[list(map(list, x)) for x in first["img_shapes"][0:1]][0],
        sigmas=sigmas,
        timesteps=[float(x) for x in pipe.scheduler.timesteps.tolist()],
        transformer_timesteps=[float(r["t"][0]) for r in rec["tr"]],
        mu=None,
        stride=stride,
        output_pngs=pngs,
    )
    if run["kind"] == "layered":
        case["additional_t_cond"] = ids_list(first["add_t"])
        case["output_hw"] = [int(noise.shape[-2] * 8), int(noise.shape[-1] * 8)]
        case["mu"] = float((cond_lat.shape[1] / 256.0) ** 0.5)
    else:
        sc = pipe.scheduler.config
        case["mu"] = float(edit_mod.calculate_shift(s_noisy, sc["base_image_seq_len"], sc["max_image_seq_len"],
                                                    sc["base_shift"], sc["max_shift"]))
        case["output_hw"] = [run["height"], run["width"]]
    log(f"run {name}: {secs:.1f}s, S_noisy={s_noisy}, S_cond={cond_lat.shape[1]}")
    return {f"run/{name}": case}


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def versions() -> dict:
    import PIL
    import safetensors
    import tokenizers
    import torchvision

    return {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "torchvision": torchvision.__version__, "safetensors": safetensors.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__}


def main() -> None:
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    build_checkpoints()
    log("checkpoints saved")
    layout = checkpoint_layout()
    write_json(REF / "checkpoint_layout.json", layout)
    pl, pe = load_pipelines()
    log("pipelines reloaded from disk (f32)")
    cases: dict = {}
    imgs = make_inputs()
    record_tokens(pl, pe)
    cases.update(record_image_proc(pl, pe, imgs))
    log("image processing done")
    cases.update(record_text_encoder(pl, pe, imgs))
    log("text encoder done")
    cases.update(record_caption(pl, imgs))
    cases.update(record_vae(pl, imgs["rgba_small"], "layered"))
    cases.update(record_vae(pe, imgs["rgb_small"], "edit"))
    cases.update(record_packing(pl, pe))
    log("vae done")
    cases.update(record_transformer(pl.transformer, "layered", True))
    cases.update(record_transformer(pe.transformer, "edit", False))
    cases.update(record_scheduler(pl, pe))
    log("transformer + scheduler done")
    for run in RUNS:
        torch.manual_seed(0)
        cases.update(record_run(pl if run["kind"] == "layered" else pe, run, imgs))
    REC.write()
    manifest = {
        "generator": {"script": "tests/reference/generate.py", "versions": versions(), "torch_num_threads": 1,
                      "seconds": round(time.time() - T0, 1)},
        "checkpoints": {"layered": LAYERED.name, "edit": EDIT.name,
                        "layout_file": "checkpoint_layout.json",
                        "shared_by_symlink": ["text_encoder", "tokenizer", "processor"]},
        "files": REC.meta,
        "json_files": sorted(REC.json_files),
        "pngs": REC.pngs,
        "cases": cases,
    }
    manifest["generator"].pop("seconds")  # keep the manifest bit-reproducible; the run time is logged instead
    write_json(REF / "manifest.json", manifest)
    log("done")


def print_tensor_table() -> None:
    """Markdown table of every stored tensor (pasted into tests/reference/README.md)."""
    m = json.loads((REF / "manifest.json").read_text(encoding="utf-8"))
    for file in sorted(m["files"]):
        print(f"\n#### `{file}`\n")
        print("| name | shape | meaning |")
        print("|---|---|---|")
        for name, e in m["files"][file].items():
            dt = "" if e["dtype"] == "float32" else f" {e['dtype']}"
            meaning = e["meaning"].replace("|", "\\|")
            print(f"| `{name}` | {e['shape']}{dt} | {meaning} |")


if __name__ == "__main__":
    if "--print-tensor-table" in sys.argv:
        print_tensor_table()
    else:
        main()
