"""diffusers' DiT step with our engine-bench's default random weights (`--init fan-in`), so each
side can be timed on both weight distributions in one call.

Why: an H100/H200 runs both steps at its power limit, and tensor-core power depends on the
operands' values (low-entropy operands draw less, so the clock stays higher). diffusers' anchor
(`shared/bench/diffusers_anchor.py`) draws every block parameter from N(0, 0.02), q/k RMSNorm
scales included, which makes the attention probabilities nearly uniform; engine-bench's default
draws matrices from N(0, 1/fan_in) with unit norm scales and zero biases. This script builds the
same model as the anchor, redraws its weights as engine-bench's default does, and times the step
exactly as the anchor does (4 layers, true CFG as two forwards, prompts of 30 and 6 tokens,
median of 3 after 1 warm-up). The other cross-check, our engine on the anchor's distribution, is
`engine-bench --init anchor`.

usage: PYTHONPATH=<diffusers 0.42.1> python3 diffusers_same_init.py [dit640] [dit1024]
Prints one JSON line per measurement (run `diffusers_dit_step_<res>_L4_cfg_fan_in_init`).
"""
import json
import sys
import time

import torch
from diffusers import QwenImageTransformer2DModel
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock

DEV = torch.device("cuda")
BF = torch.bfloat16


def build_dit():
    """The released DiT's shape (60 blocks of 3072 wide, 24 heads of 128), as the anchor builds it."""
    with torch.device(DEV):
        model = QwenImageTransformer2DModel(num_layers=1, use_additional_t_cond=True, use_layer3d_rope=True).to(BF)
        model.transformer_blocks = torch.nn.ModuleList(
            [QwenImageTransformerBlock(3072, 24, 128).to(BF) for _ in range(60)]
        )
    return model.eval()


@torch.no_grad()
def fan_in_init(model):
    """engine-bench's `InitScheme::FanIn`: biases 0, 1-D weights (norm scales) 1, every other
    weight ~ N(0, 1/fan_in) with fan_in = the product of all axes but the first."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif p.dim() <= 1:
            p.fill_(1.0)
        else:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, device=p.device, dtype=torch.float32) * fan_in ** -0.5)


def step_inputs(res, layers, txt_len):
    grid = res // 16
    tokens = (layers + 2) * grid * grid
    x = torch.randn(1, tokens, 64, device=DEV, dtype=BF)
    ctx = torch.randn(1, txt_len, 3584, device=DEV, dtype=BF)
    shapes = [[(1, grid, grid)] * (layers + 2)]
    return x, ctx, shapes


def forward(model, x, ctx, shapes):
    t = torch.full((1,), 0.5, device=DEV, dtype=BF)
    return model(hidden_states=x, encoder_hidden_states=ctx, encoder_hidden_states_mask=None, timestep=t,
                 img_shapes=shapes, additional_t_cond=torch.zeros(1, dtype=torch.long, device=DEV),
                 return_dict=False)[0]


def time_step(model, res, layers=4, reps=3, warm=1):
    cond = step_inputs(res, layers, 30)
    uncond = step_inputs(res, layers, 6)
    times = []
    with torch.inference_mode():
        for _ in range(warm + reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            forward(model, *cond)
            forward(model, *uncond)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    times = sorted(times[warm:])
    return times[len(times) // 2], times


def main():
    what = sys.argv[1:] or ["dit640", "dit1024"]
    torch.manual_seed(0)
    model = build_dit()
    fan_in_init(model)
    for res in (640, 1024):
        if f"dit{res}" not in what:
            continue
        median, times = time_step(model, res)
        print(json.dumps({"run": f"diffusers_dit_step_{res}_L4_cfg_fan_in_init", "median_s": median,
                          "all_s": times, "gpu": torch.cuda.get_device_name()}), flush=True)


if __name__ == "__main__":
    main()
