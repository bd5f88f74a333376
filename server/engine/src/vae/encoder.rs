//! `QwenImageEncoder3d` on one frame: conv_in, a flat list of down blocks, the mid block, and the
//! head (norm, SiLU, conv_out to `2 · z_dim` channels: mean and log-variance).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{AttentionBlock, Conv2d, Downsample, MidBlock, ResidualBlock, RmsNorm, VaeKernels};
use super::Config;

/// One entry of `encoder.down_blocks`: the checkpoint numbers residual blocks, optional
/// attention blocks and resamplers in one sequence (`down_blocks.2` is the first resampler for
/// the released config).
#[derive(Debug, Clone)]
enum DownLayer {
    Residual(ResidualBlock),
    Attention(AttentionBlock),
    Downsample(Downsample),
}

impl DownLayer {
    fn forward(&self, x: &Tensor, k: VaeKernels) -> Result<Tensor> {
        match self {
            DownLayer::Residual(m) => m.forward(x, k),
            DownLayer::Attention(m) => m.forward(x, k),
            DownLayer::Downsample(m) => m.forward(x, k),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownLayer>,
    mid_block: MidBlock,
    norm_out: RmsNorm,
    conv_out: Conv2d,
}

impl Encoder {
    /// `vb` is the `encoder` prefix.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        // Channel widths per stage: base_dim × [1, dim_mult…] (96, 96, 192, 384, 384 released).
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|m| m * cfg.base_dim)
            .collect();
        let conv_in = Conv2d::causal(vb.pp("conv_in"), cfg.input_channels, dims[0], 3)?;

        let vb_down = vb.pp("down_blocks");
        let mut down_blocks = Vec::new();
        let mut scale = 1.0f64;
        for (stage, pair) in dims.windows(2).enumerate() {
            let (mut in_dim, out_dim) = (pair[0], pair[1]);
            for _ in 0..cfg.num_res_blocks {
                let block = ResidualBlock::new(vb_down.pp(down_blocks.len()), in_dim, out_dim)?;
                down_blocks.push(DownLayer::Residual(block));
                if cfg.attn_scales.contains(&scale) {
                    let attn = AttentionBlock::new(vb_down.pp(down_blocks.len()), out_dim)?;
                    down_blocks.push(DownLayer::Attention(attn));
                }
                in_dim = out_dim;
            }
            if stage != cfg.dim_mult.len() - 1 {
                down_blocks.push(DownLayer::Downsample(Downsample::new(
                    vb_down.pp(down_blocks.len()),
                    out_dim,
                )?));
                scale /= 2.0;
            }
        }

        let top = *dims.last().expect("dims has len(dim_mult) + 1 >= 2 entries");
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::new(vb.pp("mid_block"), top)?,
            norm_out: RmsNorm::new(vb.pp("norm_out"), top, &[top, 1, 1, 1])?,
            conv_out: Conv2d::causal(vb.pp("conv_out"), top, cfg.z_dim * 2, 3)?,
        })
    }
}

impl Encoder {
    /// `[B, C_in, H, W]` → `[B, 2·z_dim, H/8, W/8]` (before `quant_conv`).
    pub fn forward(&self, x: &Tensor, k: VaeKernels) -> Result<Tensor> {
        let _span = tracing::trace_span!("vae.encoder").entered();
        let mut x = self.conv_in.forward_with(x, None, k)?;
        for layer in &self.down_blocks {
            x = layer.forward(&x, k)?;
        }
        let x = self.mid_block.forward(&x, k)?;
        let x = self.norm_out.forward_with(&x, None, true, k)?;
        self.conv_out.forward_with(&x, None, k)
    }
}
