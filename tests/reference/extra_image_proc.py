"""Pillow resize ground truth for the engine's image_proc tests (issue 5).

Writes tests/fixtures/extra/image_proc_resize.safetensors: small seeded RGB and RGBA images
(alpha includes 0 and 255) and what Pillow's Image.resize makes of them with LANCZOS and
BICUBIC, for down-, up- and one-axis resizes, plus the tensor → uint8 postprocessing of
diffusers' VaeImageProcessor on a few edge values. Run with /work/ref-venv/bin/python.
"""

from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from safetensors.numpy import save_file

from diffusers.image_processor import VaeImageProcessor

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "extra" / "image_proc_resize.safetensors"

rng = np.random.default_rng(5)
tensors = {}

# A smooth gradient plus noise plus hard edges, so ringing, clipping and rounding all show.
h, w = 29, 37
yy, xx = np.mgrid[0:h, 0:w]
base = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), (xx + yy) % 2 * 255], -1)
rgb = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
alpha[:, :5] = 0
alpha[:, -5:] = 255
rgba = np.concatenate([rgb, alpha[..., None]], -1)
tensors["rgb"] = rgb
tensors["rgba"] = rgba

# The last four straddle Pillow 13's pass-order switch (vertical first when the height shrinks
# by more than twice as many pixels as the width): 36x10, 60x20, 33x20 vertical first; 32x19 not.
sizes = [(16, 16), (64, 48), (37, 60), (20, 29), (11, 7), (53, 41), (36, 10), (60, 20), (33, 20), (32, 19)]
filters = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC}
for name, arr in [("rgb", rgb), ("rgba", rgba)]:
    img = Image.fromarray(arr)
    for fname, f in filters.items():
        for ow, oh in sizes:
            tensors[f"{name}_{fname}_{ow}x{oh}"] = np.array(img.resize((ow, oh), f))

# Postprocessing: decoded values in [-1, 1] (and beyond) to uint8, through diffusers itself.
vals = np.array([-1.5, -1.0, -0.4, -0.227451, 0.0, 0.054902, 0.5, 0.9999, 1.0, 1.2], dtype=np.float32)
x = torch.from_numpy(np.tile(vals, (4, 1)).reshape(1, 4, 1, -1))
pil = VaeImageProcessor(vae_scale_factor=16).postprocess(x, output_type="pil")[0]
tensors["post_in"] = vals
tensors["post_out"] = np.array(pil)[0].copy()  # [n, 4]

OUT.parent.mkdir(parents=True, exist_ok=True)
save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(OUT),
          metadata={"pillow": PIL.__version__})
print(OUT, OUT.stat().st_size, "bytes,", len(tensors), "tensors, Pillow", PIL.__version__)
