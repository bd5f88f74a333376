"""Qwen-Image-Edit-2511 fixtures (issue 20): a tiny checkpoint in the 2511 layout and what diffusers
0.42.1 computes on it, with the same recorders as generate.py.

Edit-2511 runs in the same QwenImageEditPlusPipeline as 2509; its transformer config sets
`zero_cond_t: true`: the timestep embedding is computed for [t, 0], the noisy image tokens are
modulated with t and the condition-image tokens with t = 0 (text and the output norm use t).

Writes (after deleting them):
  tests/fixtures/tiny-qwen-image-edit-2511/   transformer with zero_cond_t (own seeded weights, bf16,
                                               sharded like 2509's); vae, scheduler, text_encoder,
                                               tokenizer, processor are links to the 2509 folder
  tests/fixtures/reference/extra/edit_2511/   transformer.safetensors (tag "edit2511": every stage of
                                               one forward on generate.py's edit inputs), runs/edit_2511
                                               (the edit_plus run's settings on this checkpoint), cases.json

This script imports generate.py for its recorders and helpers and only points them at other
folders; it does not touch generate.py's outputs. Run from the repository root:
    /work/ref-venv/bin/python tests/reference/extra_edit_2511.py
"""

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate as g  # noqa: E402

import torch  # noqa: E402
from diffusers import QwenImageEditPlusPipeline, QwenImageTransformer2DModel  # noqa: E402

CKPT = g.FIX / "tiny-qwen-image-edit-2511"
OUT = g.FIX / "reference" / "extra" / "edit_2511"


def build_checkpoint() -> None:
    for d in (CKPT, OUT):
        if d.exists():
            shutil.rmtree(d)
    CKPT.mkdir(parents=True)
    torch.manual_seed(0)
    tr = QwenImageTransformer2DModel(**g.TRANSFORMER, zero_cond_t=True)
    g.perturb(tr, 6)
    g.save_model_bf16(tr, CKPT / "transformer", max_shard_size="300KB")
    # As the 2511 release: the layered flags are absent, zero_cond_t is true.
    g.strip_keys(CKPT / "transformer" / "config.json", ["use_additional_t_cond", "use_layer3d_rope"])
    cfg = json.loads((CKPT / "transformer" / "config.json").read_text())
    assert cfg["zero_cond_t"] is True, cfg
    for comp in ("vae", "scheduler", "text_encoder", "tokenizer", "processor"):
        os.symlink(f"../{g.EDIT.name}/{comp}", CKPT / comp)
    shutil.copy(g.EDIT / "model_index.json", CKPT / "model_index.json")


def main() -> None:
    torch.set_grad_enabled(False)
    build_checkpoint()
    g.REF = OUT  # the recorders write under REF
    g.REC = g.Recorder()
    pe = QwenImageEditPlusPipeline.from_pretrained(str(CKPT), torch_dtype=torch.float32)
    pe.set_progress_bar_config(disable=True)
    assert pe.transformer.config.zero_cond_t
    cases = {}
    cases.update(g.record_transformer(pe.transformer, "edit2511", False))
    run = dict(next(r for r in g.RUNS if r["name"] == "edit_plus"), name="edit_2511")
    imgs = {"rgb_wide": g.synth_image(360, 240, 2, "RGB")}  # generate.py's edit input (images/input_rgb_wide.png)
    torch.manual_seed(0)
    cases.update(g.record_run(pe, run, imgs))
    g.REC.write()
    g.write_json(OUT / "cases.json", {"generator": "tests/reference/extra_edit_2511.py", "cases": cases,
                                      "files": g.REC.meta, "pngs": g.REC.pngs})
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    total += sum(p.stat().st_size for p in (CKPT / "transformer").iterdir())
    g.log(f"edit-2511 fixtures: {total} bytes")


if __name__ == "__main__":
    main()
