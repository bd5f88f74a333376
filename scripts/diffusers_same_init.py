"""diffusers' DiT step with our engine-bench's default random weights (`--init fan-in`), so each
side can be timed on both weight distributions in one call.

Why: an H100/H200 runs both steps at its power limit, and tensor-core power depends on the
operands' values (low-entropy operands draw less, so the clock stays higher). diffusers' anchor
(`shared/bench/diffusers_anchor.py`) draws every block parameter from N(0, 0.02), q/k RMSNorm
scales included, which makes the attention probabilities nearly uniform; engine-bench's default
draws matrices from N(0, 1/fan_in) with unit norm scales and zero biases. This script takes the
anchor's model and timing loop (4 layers, true CFG as two forwards, prompts of 30 and 6 tokens,
median of 3 after 1 warm-up) and redraws the weights as engine-bench's default does. The other
cross-check, our engine on the anchor's distribution, is `engine-bench --init anchor`.

usage: PYTHONPATH=<diffusers 0.42.1> python3 diffusers_same_init.py [dit640] [dit1024]
Prints one JSON line per measurement (run `diffusers_dit_step_<res>_L4_cfg_fan_in_init`).
"""
import json
import sys

import torch

# The anchor measures at import, choosing by sys.argv: imported with nothing chosen, it lends its
# model builder and timing loop, so both sides of the cross-check time exactly the same step.
_argv, sys.argv = sys.argv, [sys.argv[0], "none"]
import diffusers_anchor as anchor  # noqa: E402  (copied beside this script by gpu_prepare.sh)

sys.argv = _argv


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


def main():
    what = sys.argv[1:] or ["dit640", "dit1024"]
    torch.manual_seed(0)
    model = anchor.build_dit()
    fan_in_init(model)
    for res in (640, 1024):
        if f"dit{res}" not in what:
            continue
        median, times = anchor.time_step(model, res, layers=4)
        print(json.dumps({"run": f"diffusers_dit_step_{res}_L4_cfg_fan_in_init", "median_s": median,
                          "all_s": times, "gpu": torch.cuda.get_device_name()}), flush=True)


if __name__ == "__main__":
    main()
