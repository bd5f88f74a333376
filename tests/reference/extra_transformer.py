"""Extra transformer fixture: diffusers' forward of the tiny transformers in **bf16** on CPU.

The main fixtures are f32. In bf16 diffusers also rounds the timestep to bf16 before the
sinusoidal embedding (`timestep.to(hidden_states.dtype)`), which moves the output by ~8% on the
tiny model; the Rust port reproduces that cast, and this fixture lets a test check its bf16 path
against diffusers' bf16 path rather than against f32.

Inputs are the recorded ones of `transformer.safetensors` (record_transformer in generate.py).
Run from the repository root with the reference venv:
    /work/ref-venv/bin/python tests/reference/extra_transformer.py
Writes tests/fixtures/reference/extra/transformer_bf16.safetensors.
"""

from pathlib import Path

import torch
from diffusers import QwenImageTransformer2DModel
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"


def main() -> None:
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    r = load_file(str(FIX / "reference" / "transformer.safetensors"))
    out = {}
    cases = {
        "layered": ("tiny-qwen-image-layered", [[(1, 3, 4)] * 4] * 2, torch.tensor([0, 1])),
        "edit": ("tiny-qwen-image-edit-2509", [[(1, 4, 6), (1, 6, 4)]], None),
    }
    for tag, (ckpt, img_shapes, add_t) in cases.items():
        tr = QwenImageTransformer2DModel.from_pretrained(str(FIX / ckpt / "transformer"), torch_dtype=torch.bfloat16)
        mask = r.get(f"{tag}/in/encoder_hidden_states_mask")
        o = tr(
            hidden_states=r[f"{tag}/in/hidden_states"].bfloat16(),
            encoder_hidden_states=r[f"{tag}/in/encoder_hidden_states"].bfloat16(),
            encoder_hidden_states_mask=None if mask is None else mask.long(),
            timestep=r[f"{tag}/in/timestep"].bfloat16(),
            img_shapes=img_shapes,
            additional_t_cond=add_t,
            return_dict=False,
        )[0]
        out[f"{tag}/output_bf16"] = o.float().contiguous()
    dst = FIX / "reference" / "extra"
    dst.mkdir(exist_ok=True)
    save_file(out, str(dst / "transformer_bf16.safetensors"),
              metadata={"generator": "tests/reference/extra_transformer.py",
                        "meaning": "<tag>/output_bf16: diffusers forward in bf16 (weights, inputs, activations) "
                                   "on the transformer.safetensors inputs, cast to f32"})


if __name__ == "__main__":
    main()
