//! `vae/config.json` of AutoencoderKLQwenImage (diffusers 0.42.1,
//! `models/autoencoders/autoencoder_kl_qwenimage.py`), with the HF key names.

use serde::Deserialize;

/// The VAE configuration. Field names are the keys of `vae/config.json`; a missing key takes the
/// default of diffusers' `AutoencoderKLQwenImage.__init__`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    #[serde(default = "default_base_dim")]
    pub base_dim: usize,
    /// Latent channels (the encoder itself outputs `2 * z_dim`: mean and log-variance).
    #[serde(default = "default_z_dim")]
    pub z_dim: usize,
    #[serde(default = "default_dim_mult")]
    pub dim_mult: Vec<usize>,
    #[serde(default = "default_num_res_blocks")]
    pub num_res_blocks: usize,
    /// Spatial scales (1, 1/2, 1/4, …) of the encoder's down path that get an attention block
    /// after each residual block. Empty in every released checkpoint.
    #[serde(default)]
    pub attn_scales: Vec<f64>,
    /// Per down-sampling stage, whether it also halves time. Its length sets the spatial factor
    /// (`2^len`); the time part never runs on single images (see the module docs).
    #[serde(default = "default_temperal_downsample")]
    pub temperal_downsample: Vec<bool>,
    /// Training only.
    #[serde(default)]
    pub dropout: f64,
    /// Pixel channels: 3 (RGB, Qwen-Image/Edit) or 4 (RGBA, Qwen-Image-Layered).
    #[serde(default = "default_input_channels")]
    pub input_channels: usize,
    #[serde(default = "default_latents_mean")]
    pub latents_mean: Vec<f64>,
    #[serde(default = "default_latents_std")]
    pub latents_std: Vec<f64>,
}

fn default_base_dim() -> usize {
    96
}
fn default_z_dim() -> usize {
    16
}
fn default_dim_mult() -> Vec<usize> {
    vec![1, 2, 4, 4]
}
fn default_num_res_blocks() -> usize {
    2
}
fn default_temperal_downsample() -> Vec<bool> {
    vec![false, true, true]
}
fn default_input_channels() -> usize {
    3
}
// The defaults of `AutoencoderKLQwenImage.__init__`, equal to the released Qwen-Image config.
fn default_latents_mean() -> Vec<f64> {
    vec![
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
        -0.9497, 0.2503, -0.2921,
    ]
}
fn default_latents_std() -> Vec<f64> {
    vec![
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
        2.8251, 1.9160,
    ]
}

impl Config {
    /// Qwen-Image / Qwen-Image-Edit(-2509): the RGB VAE (released `vae/config.json`).
    pub fn qwen_image() -> Self {
        Self {
            base_dim: default_base_dim(),
            z_dim: default_z_dim(),
            dim_mult: default_dim_mult(),
            num_res_blocks: default_num_res_blocks(),
            attn_scales: Vec::new(),
            temperal_downsample: default_temperal_downsample(),
            dropout: 0.0,
            input_channels: 3,
            latents_mean: default_latents_mean(),
            latents_std: default_latents_std(),
        }
    }

    /// Qwen-Image-Layered: the same VAE with RGBA `conv_in`/`conv_out` (`input_channels: 4`).
    /// Its latents_mean/std are assumed equal to the base model's (spec §2, §13.1); the config
    /// file read at load time is what counts.
    pub fn qwen_image_layered() -> Self {
        Self {
            input_channels: 4,
            ..Self::qwen_image()
        }
    }

    /// Pixels per latent along each side: 8 for the released models.
    pub fn spatial_scale_factor(&self) -> usize {
        1 << self.temperal_downsample.len()
    }

    /// Checks the relations the model relies on, so a bad config fails at load with a message
    /// instead of as a shape error deep inside a forward pass.
    pub fn validate(&self) -> candle_core::Result<()> {
        if self.dim_mult.is_empty() {
            candle_core::bail!("vae config: dim_mult is empty");
        }
        if self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            candle_core::bail!(
                "vae config: temperal_downsample has {} entries, expected len(dim_mult) - 1 = {}",
                self.temperal_downsample.len(),
                self.dim_mult.len() - 1
            );
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            candle_core::bail!(
                "vae config: latents_mean has {} and latents_std {} entries, expected z_dim = {}",
                self.latents_mean.len(),
                self.latents_std.len(),
                self.z_dim
            );
        }
        if let Some(s) = self.latents_std.iter().find(|s| **s == 0.0) {
            candle_core::bail!("vae config: latents_std contains {s}");
        }
        if self.base_dim == 0 || self.z_dim == 0 || self.input_channels == 0 {
            candle_core::bail!(
                "vae config: base_dim {}, z_dim {} and input_channels {} must be positive",
                self.base_dim,
                self.z_dim,
                self.input_channels
            );
        }
        Ok(())
    }
}
