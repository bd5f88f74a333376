//! Z-Image's VAE: diffusers `AutoencoderKL` (the FLUX layout: 16 latent channels, no quant convs),
//! decoded with candle-transformers' `z_image::AutoEncoderKL`, which matches the reference on the
//! fixtures. That module has no `quant_conv`/`post_quant_conv` and always builds the mid-block
//! attention, so configs that ask otherwise are refused here rather than decoded wrongly.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::z_image::{AutoEncoderKL, VaeConfig};
use serde::Deserialize;

use crate::weights::ModelDir;
use crate::{Error, Result};

/// The keys of `vae/config.json` the candle module ignores but the layout depends on.
#[derive(Debug, Deserialize)]
struct Layout {
    #[serde(default = "yes")]
    use_quant_conv: bool,
    #[serde(default = "yes")]
    use_post_quant_conv: bool,
    #[serde(default = "yes")]
    mid_block_add_attention: bool,
    block_out_channels: Vec<usize>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone)]
pub struct Vae {
    model: AutoEncoderKL,
    latent_channels: usize,
    scale_factor: usize,
    dtype: DType,
}

impl Vae {
    pub fn load(model: &ModelDir, dtype: DType, device: &Device) -> Result<Self> {
        let layout: Layout = model.read_json("vae", "config.json")?;
        if layout.use_post_quant_conv || layout.use_quant_conv || !layout.mid_block_add_attention {
            return Err(Error::InvalidInput(format!(
                "{}: a Z-Image VAE has use_quant_conv=false, use_post_quant_conv=false and mid-block attention",
                model.component_dir("vae").join("config.json").display()
            )));
        }
        if layout.block_out_channels.is_empty() {
            return Err(Error::InvalidInput(
                "vae/config.json: block_out_channels is empty".into(),
            ));
        }
        let cfg: VaeConfig = model.read_json("vae", "config.json")?;
        let vb = model.var_builder("vae", dtype, device)?;
        Ok(Self {
            model: AutoEncoderKL::new(&cfg, vb)?,
            latent_channels: cfg.latent_channels,
            scale_factor: 1 << (layout.block_out_channels.len() - 1),
            dtype,
        })
    }

    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    /// Pixels per latent (8 for the release: 2^(levels − 1)).
    pub fn scale_factor(&self) -> usize {
        self.scale_factor
    }

    /// `[B, C, h, w]` latents as the denoiser leaves them → `[B, 3, H, W]` in about [−1, 1]
    /// (`decode(z / scaling_factor + shift_factor)`), f32.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.model.decode(&z.to_dtype(self.dtype)?)?.to_dtype(DType::F32)?)
    }
}
