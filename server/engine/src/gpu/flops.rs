//! Analytic FLOP counts, written the same way as `shared/bench/diffusers_anchor.py` so that
//! achieved TFLOP/s of our runs and diffusers' compare directly.

/// Model width, blocks and MLP ratio of the released Qwen-Image transformer.
const DIM: f64 = 3072.0;
const BLOCKS: f64 = 60.0;

/// FLOPs of one DiT forward at `resolution`² with `layers` output layers (so `layers + 2`
/// frames of (res/16)² tokens: composite, layers, condition) and `txt` text tokens:
/// q/k/v/out projections (4·D² per token and stream), the MLP (2 · D·4D), the modulation
/// (approximate, as the anchor) and attention (4·S²·D), each multiply-add counted as 2.
pub fn dit_forward(resolution: usize, layers: usize, txt: usize) -> f64 {
    let h = (resolution / 16) as f64;
    let s = (layers as f64 + 2.0) * h * h + txt as f64;
    let per_block = 2.0 * s * DIM * (4.0 * DIM) + 2.0 * s * DIM * (4.0 * DIM) * 2.0 + 2.0 * 2.0 * s * DIM * 6.0;
    let attn = 4.0 * s * s * DIM;
    BLOCKS * (per_block + attn)
}

/// One denoising step with true CFG as the anchor counts it: a forward with the 30-token
/// prompt plus one with the 6-token negative prompt (we run them as one batch of two, padded
/// to 30 tokens; the count stays the anchor's so the rates compare).
pub fn dit_cfg_step(resolution: usize, layers: usize) -> f64 {
    dit_forward(resolution, layers, 30) + dit_forward(resolution, layers, 6)
}

/// The attention share of [`dit_forward`].
pub fn dit_attention_share(resolution: usize, layers: usize, txt: usize) -> f64 {
    let h = (resolution / 16) as f64;
    let s = (layers as f64 + 2.0) * h * h + txt as f64;
    BLOCKS * 4.0 * s * s * DIM / dit_forward(resolution, layers, txt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_640_step_is_the_anchors_398_tflop() {
        let t = dit_cfg_step(640, 4) / 1e12;
        assert!((t - 398.0).abs() < 1.0, "{t}");
        // Attention is about a third of the FLOPs at 640² and over half at 1024² (issue 11).
        assert!((dit_attention_share(640, 4, 30) - 0.34).abs() < 0.01);
        assert!((dit_attention_share(1024, 4, 30) - 0.57).abs() < 0.01);
    }
}
