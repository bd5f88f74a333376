//! `QwenImageDecoder3d` on one frame: conv_in, the mid block, up blocks (residual blocks then an
//! upsampler that halves the channels), and the head (norm, SiLU, conv_out to pixel channels).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{Conv2d, MidBlock, ResidualBlock, RmsNorm, Upsample, VaeKernels};
use super::Config;

/// `QwenImageUpBlock`: `num_res_blocks + 1` residual blocks, then an optional upsampler.
#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Upsample>,
}

impl UpBlock {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, num_res_blocks: usize, upsample: bool) -> Result<Self> {
        let resnets = (0..=num_res_blocks)
            .map(|j| ResidualBlock::new(vb.pp("resnets").pp(j), if j == 0 { in_dim } else { out_dim }, out_dim))
            .collect::<Result<_>>()?;
        let upsampler = if upsample {
            Some(Upsample::new(vb.pp("upsamplers").pp(0), out_dim)?)
        } else {
            None
        };
        Ok(Self { resnets, upsampler })
    }
}

impl UpBlock {
    fn forward(&self, x: &Tensor, k: VaeKernels) -> Result<Tensor> {
        let mut x = x.clone();
        for resnet in &self.resnets {
            x = resnet.forward(&x, k)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, k),
            None => Ok(x),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// `vb` is the `decoder` prefix.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        // base_dim × [dim_mult[-1], dim_mult reversed…]: 384, 384, 384, 192, 96 released.
        let top = *cfg.dim_mult.last().unwrap_or(&1);
        let dims: Vec<usize> = std::iter::once(top)
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|m| m * cfg.base_dim)
            .collect();
        let conv_in = Conv2d::causal(vb.pp("conv_in"), cfg.z_dim, dims[0], 3)?;
        let mid_block = MidBlock::new(vb.pp("mid_block"), dims[0])?;

        let mut up_blocks = Vec::new();
        for (i, pair) in dims.windows(2).enumerate() {
            // Every block after the first receives the previous upsampler's halved channels.
            let in_dim = if i > 0 { pair[0] / 2 } else { pair[0] };
            let upsample = i != cfg.dim_mult.len() - 1;
            up_blocks.push(UpBlock::new(
                vb.pp("up_blocks").pp(i),
                in_dim,
                pair[1],
                cfg.num_res_blocks,
                upsample,
            )?);
        }

        let out_dim = *dims.last().expect("dims has len(dim_mult) + 1 >= 2 entries");
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            norm_out: RmsNorm::new(vb.pp("norm_out"), out_dim, &[out_dim, 1, 1, 1])?,
            conv_out: Conv2d::causal(vb.pp("conv_out"), out_dim, cfg.input_channels, 3)?,
        })
    }
}

impl Decoder {
    /// `[B, z_dim, h, w]` (after `post_quant_conv`) → `[B, C_out, 8h, 8w]`, not yet clamped.
    pub fn forward(&self, z: &Tensor, k: VaeKernels) -> Result<Tensor> {
        let _span = tracing::trace_span!("vae.decoder").entered();
        let x = self.conv_in.forward_with(z, None, k)?;
        let mut x = self.mid_block.forward(&x, k)?;
        for block in &self.up_blocks {
            x = block.forward(&x, k)?;
        }
        let x = self.norm_out.forward_with(&x, None, true, k)?;
        self.conv_out.forward_with(&x, None, k)
    }
}
