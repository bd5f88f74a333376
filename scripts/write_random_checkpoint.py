"""Writes a random-weight Qwen-Image-Layered or Qwen-Image-Edit-2509 checkpoint in the released
diffusers layout (model_index.json; transformer/, text_encoder/, vae/ with sharded bf16
safetensors and their index; tokenizer/, processor/, scheduler/), full size or tiny, streaming one
tensor at a time so host memory stays small (diffusers' save_pretrained of the full model held it
all and exhausted the GPU machine's memory).

The tensor names and shapes come from the reference classes themselves, built on PyTorch's `meta`
device (no memory): diffusers' QwenImageTransformer2DModel and AutoencoderKLQwenImage,
transformers' Qwen2_5_VLForConditionalGeneration, saved under the checkpoint's (legacy) names.
`--check FIXTURE` first builds the same classes from a tiny fixture's configs and compares every
name, shape and dtype with the fixture's files (made by save_pretrained): the layout is the
released one or the script stops.

usage:
  write_random_checkpoint.py OUT --from FIXTURE [--size full|tiny]
      [--shard-gb 5] [--link-weights-from DIR] [--check]
FIXTURE: tests/fixtures/tiny-qwen-image-layered (or -edit-2509): its tokenizer, processor,
scheduler and the configs' non-size keys are reused. --link-weights-from reuses another written
checkpoint's shards (symbolic links) for every component whose tensors are all there with the
same shapes (Edit-2509's DiT and text encoder in Layered's), so both fit on one disk.
Prints one JSON line: seconds, GiB written per component.
"""
import argparse
import json
import os
import shutil
import struct
import sys
import time

import numpy as np
import torch

# Sizes of the released checkpoints (shared/reference/qwen_image_layered.md, section 2).
FULL_TRANSFORMER = {"num_layers": 60, "attention_head_dim": 128, "num_attention_heads": 24,
                    "joint_attention_dim": 3584, "axes_dims_rope": [16, 56, 56]}
FULL_TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "max_window_layers": 28,
             "tie_word_embeddings": False, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}
FULL_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
               "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31]}
FULL_VAE = {"base_dim": 96}
DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float32: "F32"}


def load_json(path):
    with open(path) as f:
        return json.load(f)


def full_configs(fixture):
    """The fixture's configs with the released sizes."""
    transformer = dict(load_json(os.path.join(fixture, "transformer", "config.json")), **FULL_TRANSFORMER)
    text = load_json(os.path.join(fixture, "text_encoder", "config.json"))
    text.update(FULL_TEXT)
    text["text_config"] = dict(text.get("text_config", {}), **FULL_TEXT)
    text["vision_config"] = dict(text["vision_config"], **FULL_VISION)
    vae = dict(load_json(os.path.join(fixture, "vae", "config.json")), **FULL_VAE)
    return {"transformer": transformer, "text_encoder": text, "vae": vae}


def tiny_configs(fixture):
    return {c: load_json(os.path.join(fixture, c, "config.json")) for c in ("transformer", "text_encoder", "vae")}


def layout(component, config):
    """[(name, shape, dtype)] in the model's own order, under the names its checkpoint uses."""
    with torch.device("meta"):
        if component == "transformer":
            from diffusers import QwenImageTransformer2DModel
            model = QwenImageTransformer2DModel.from_config(config)
        elif component == "vae":
            from diffusers import AutoencoderKLQwenImage
            model = AutoencoderKLQwenImage.from_config(config)
        else:
            from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
            model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(config))
    tied = component == "text_encoder" and config.get("tie_word_embeddings", False)
    out = []
    for name, tensor in model.state_dict().items():
        if component == "text_encoder":
            # transformers 5 nests the language model and the vision tower; checkpoints (and
            # save_pretrained) keep the legacy top-level names.
            if name.startswith("model.language_model."):
                name = "model." + name[len("model.language_model."):]
            elif name.startswith("model.visual."):
                name = name[len("model."):]
            if tied and name == "lm_head.weight":
                continue
        out.append((name, list(tensor.shape), torch.bfloat16))
    return out


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def stored_tensors(folder):
    """{name: (shape, dtype name, file)} of every safetensors file in a component folder."""
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            for name, info in read_header(os.path.join(folder, f)).items():
                out[name] = (info["shape"], info["dtype"], f)
    return out


def check_against_fixture(fixture):
    configs = tiny_configs(fixture)
    for component, config in configs.items():
        ours = {n: (s, DTYPE_NAMES[d]) for n, s, d in layout(component, config)}
        theirs = {n: (s, d) for n, (s, d, _) in stored_tensors(os.path.join(fixture, component)).items()}
        if ours != theirs:
            missing = sorted(set(theirs) - set(ours))[:5]
            extra = sorted(set(ours) - set(theirs))[:5]
            wrong = sorted(n for n in set(ours) & set(theirs) if ours[n] != theirs[n])[:5]
            sys.exit(f"{component}: layout differs from {fixture}: missing {missing}, extra {extra}, "
                     f"different {[(n, ours[n], theirs[n]) for n in wrong]}")
        print(f"layout of {component} matches {fixture} ({len(ours)} tensors)", file=sys.stderr)


class RandomValues:
    """bf16 values of N(0, 0.02), from a fixed pool read cyclically (fast; values don't matter)."""

    def __init__(self, seed=0, count=1 << 25):
        f32 = (np.random.default_rng(seed).standard_normal(count, dtype=np.float32) * 0.02)
        self.pool = (f32.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        self.offset = 0

    def write(self, f, nbytes):
        while nbytes > 0:
            chunk = min(nbytes, len(self.pool) - self.offset)
            f.write(memoryview(self.pool)[self.offset:self.offset + chunk])
            self.offset = (self.offset + chunk) % len(self.pool)
            nbytes -= chunk


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def shards(tensors, max_bytes):
    """Greedy split in model order, as save_pretrained does: a new shard once the next tensor
    would pass max_bytes."""
    groups, current, size = [], [], 0
    for t in tensors:
        nbytes = numel(t[1]) * 2
        if current and size + nbytes > max_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(t)
        size += nbytes
    if current:
        groups.append(current)
    return groups


def write_safetensors(path, tensors, values):
    header, offset = {}, 0
    for name, shape, dtype in tensors:
        nbytes = numel(shape) * 2
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _name, shape, _dtype in tensors:
            values.write(f, numel(shape) * 2)
    return offset


def write_component(out, component, tensors, values, shard_bytes, link_from):
    folder = os.path.join(out, component)
    os.makedirs(folder, exist_ok=True)
    diffusers_style = component != "text_encoder"
    stem = "diffusion_pytorch_model" if diffusers_style else "model"
    index_name = f"{stem}.safetensors.index.json"
    total = sum(numel(s) * 2 for _, s, _ in tensors)
    if link_from:
        there = stored_tensors(os.path.join(link_from, component))
        if all(n in there and there[n][0] == s for n, s, _ in tensors):
            weight_map = {n: there[n][2] for n, _, _ in tensors}
            for f in sorted(set(weight_map.values())):
                os.symlink(os.path.abspath(os.path.join(link_from, component, f)), os.path.join(folder, f))
            write_index(os.path.join(folder, index_name), weight_map, total, tensors, diffusers_style)
            return 0
    groups = shards(tensors, shard_bytes)
    if len(groups) == 1:
        write_safetensors(os.path.join(folder, f"{stem}.safetensors"), groups[0], values)
        return total
    weight_map = {}
    for i, group in enumerate(groups, 1):
        name = f"{stem}-{i:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(os.path.join(folder, name), group, values)
        weight_map.update({n: name for n, _, _ in group})
    write_index(os.path.join(folder, index_name), weight_map, total, tensors, diffusers_style)
    return total


def write_index(path, weight_map, total, tensors, diffusers_style):
    metadata = {"total_size": total}
    if not diffusers_style:
        metadata = {"total_parameters": sum(numel(s) for _, s, _ in tensors), "total_size": total}
    with open(path, "w") as f:
        json.dump({"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--from", dest="fixture", required=True, help="tiny fixture of the same model")
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--shard-gb", type=float, default=5.0, help="largest shard, GB (10^9 bytes)")
    p.add_argument("--link-weights-from", help="another written checkpoint whose shards to reuse")
    p.add_argument("--check", action="store_true", help="first compare the layout with the fixture's")
    args = p.parse_args()
    started = time.perf_counter()
    if args.check:
        check_against_fixture(args.fixture)
    configs = full_configs(args.fixture) if args.size == "full" else tiny_configs(args.fixture)
    os.makedirs(args.out, exist_ok=True)
    values = RandomValues()
    written = {}
    for component, config in configs.items():
        os.makedirs(os.path.join(args.out, component), exist_ok=True)
        with open(os.path.join(args.out, component, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        tensors = layout(component, config)
        nbytes = write_component(args.out, component, tensors, values, int(args.shard_gb * 1e9), args.link_weights_from)
        written[component] = round(nbytes / 2**30, 3)
    for extra in ("tokenizer", "processor", "scheduler"):
        shutil.copytree(os.path.join(args.fixture, extra), os.path.join(args.out, extra), dirs_exist_ok=True)
    for extra in ("model_index.json", os.path.join("text_encoder", "generation_config.json")):
        if os.path.exists(os.path.join(args.fixture, extra)):
            shutil.copy(os.path.join(args.fixture, extra), os.path.join(args.out, extra))
    print(json.dumps({"run": "write_random_checkpoint", "from": os.path.basename(args.fixture.rstrip("/")), "size": args.size,
                      "seconds": round(time.perf_counter() - started, 2), "written_gib": written}), flush=True)


if __name__ == "__main__":
    main()
