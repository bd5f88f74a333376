//! AutoencoderKLQwenImage: the Qwen-Image VAE (a fine-tuned Wan-2.1 causal 3-D video VAE), as a
//! single-image 2-D model. One port serves both checkpoints: Qwen-Image-Edit-2509's RGB VAE and
//! Qwen-Image-Layered's RGBA VAE (`input_channels: 4`, which only widens `conv_in`/`conv_out`).
//!
//! Reference: diffusers 0.42.1 `models/autoencoders/autoencoder_kl_qwenimage.py`; spec
//! `qwen_image_layered.md` §1.2 (tensor names), §2 (config), §5 (architecture).
//!
//! - Encoder: conv_in → down blocks (residual blocks, stride-2 downsamplers ×3) → mid block
//!   (Res, single-head attention, Res) → L2 "RMS" norm, SiLU → conv_out (2·z_dim) → quant_conv.
//!   The pipelines take the posterior **mean** (first z_dim channels; `sample_mode="argmax"`).
//! - Decoder: post_quant_conv → conv_in → mid block → up blocks (nearest ×2 + conv, halving
//!   channels) → norm, SiLU → conv_out → clamp to [-1, 1].
//! - Latent normalisation: `(mean − latents_mean) / latents_std` after encoding, and the inverse
//!   before decoding.
//!
//! **Why a 2-D port is exact.** Every convolution is a `CausalConv3d` that pads time by `k−1`
//! zero frames in front only. Every call in these pipelines sees a single frame (the Layered
//! decode folds its layers into the batch), and diffusers starts each encode/decode with an empty
//! frame cache, so the padding frames are zeros and only the last temporal tap of a 3×3×3 kernel
//! touches data: the conv equals a 2-D conv with `weight[:, :, 2]` (1×1×1 kernels: `weight[:, :, 0]`).
//! The temporal `time_conv`s of the `*3d` resamplers run only from the second frame on (the first
//! frame just fills their cache), so they are never used and not loaded. Weights are read in their
//! stored 5-D form and sliced here, so the checkpoint is used as released.

mod blocks;
mod config;
mod decoder;
mod encoder;

pub use blocks::{Conv2d, VaeKernels};
pub use config::Config;
pub use decoder::Decoder;
pub use encoder::Encoder;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// The VAE: encoder + `quant_conv`, `post_quant_conv` + decoder, and the latent statistics.
#[derive(Debug, Clone)]
pub struct AutoencoderKLQwenImage {
    encoder: Encoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    decoder: Decoder,
    /// `latents_mean` / `latents_std` as f32 `[z_dim]`.
    latents_mean: Tensor,
    latents_std: Tensor,
    config: Config,
    dtype: DType,
    kernels: VaeKernels,
}

impl AutoencoderKLQwenImage {
    /// Loads from the `vae/` component (tensor names as in `vae/diffusion_pytorch_model.safetensors`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let z = cfg.z_dim;
        let to_f32 = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<_>>();
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            quant_conv: Conv2d::causal(vb.pp("quant_conv"), 2 * z, 2 * z, 1)?,
            post_quant_conv: Conv2d::causal(vb.pp("post_quant_conv"), z, z, 1)?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            latents_mean: Tensor::new(to_f32(&cfg.latents_mean), vb.device())?,
            latents_std: Tensor::new(to_f32(&cfg.latents_std), vb.device())?,
            config: cfg.clone(),
            dtype: vb.dtype(),
            kernels: VaeKernels::default(),
        })
    }

    /// Chooses the fused CUDA kernels (the default; used only where they apply) or the plain
    /// path (the parity reference).
    pub fn set_kernels(&mut self, kernels: VaeKernels) {
        self.kernels = kernels;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The dtype of the weights; inputs are cast to it.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Pixels per latent along each side (8).
    pub fn spatial_scale_factor(&self) -> usize {
        self.config.spatial_scale_factor()
    }

    /// The posterior mean of `x` (`[B, C, H, W]` pixels in [-1, 1], C = `input_channels`, H and W
    /// multiples of 8): `[B, z_dim, H/8, W/8]`, not normalised, in the model's dtype.
    pub fn encode_mean(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "vae encode: expected pixels [B, C, H, W], got shape {:?}",
                x.dims()
            ))
        })?;
        let f = self.spatial_scale_factor();
        if c != self.config.input_channels {
            candle_core::bail!(
                "vae encode: the image has {c} channels but this VAE takes {} ({})",
                self.config.input_channels,
                if self.config.input_channels == 4 { "RGBA" } else { "RGB" }
            );
        }
        if h == 0 || w == 0 || h % f != 0 || w % f != 0 {
            candle_core::bail!("vae encode: height {h} and width {w} must be positive multiples of {f}");
        }
        let moments = self
            .quant_conv
            .forward(&self.encoder.forward(&x.to_dtype(self.dtype)?, self.kernels)?)?;
        moments.narrow(1, 0, self.config.z_dim)
    }

    /// Decodes `[B, z_dim, h, w]` (de-normalised) latents to pixels `[B, C, 8h, 8w]` clamped to
    /// [-1, 1], in the model's dtype. The whole batch goes through at once; see
    /// [`Self::decode_chunked`] to bound memory.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = z.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "vae decode: expected latents [B, C, h, w], got shape {:?}",
                z.dims()
            ))
        })?;
        if c != self.config.z_dim {
            candle_core::bail!(
                "vae decode: latents have {c} channels, expected z_dim = {}",
                self.config.z_dim
            );
        }
        if h == 0 || w == 0 {
            candle_core::bail!("vae decode: empty latents ({h}×{w})");
        }
        let x = self.post_quant_conv.forward(&z.to_dtype(self.dtype)?)?;
        self.decoder.forward(&x, self.kernels)?.clamp(-1f32, 1f32)
    }

    /// [`Self::decode`] `chunk` batch items at a time, so decoding N layers holds at most `chunk`
    /// decoder activations at once. Items are independent, so the result equals one big decode.
    pub fn decode_chunked(&self, z: &Tensor, chunk: usize) -> Result<Tensor> {
        if chunk == 0 {
            candle_core::bail!("vae decode: chunk size must be at least 1");
        }
        let b = z.dim(0)?;
        if b <= chunk {
            return self.decode(z);
        }
        let parts = (0..b)
            .step_by(chunk)
            .map(|start| self.decode(&z.narrow(0, start, chunk.min(b - start))?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }

    /// `(mean − latents_mean) / latents_std` over the channel axis (dim 1) of `[B, z_dim, …]`, as
    /// the pipelines' `_encode_vae_image` (statistics cast to the latents' dtype first).
    pub fn normalize_latents(&self, mean: &Tensor) -> Result<Tensor> {
        self.check_latents(mean, "normalize_latents")?;
        let m = self.per_channel(&self.latents_mean, mean)?;
        let s = self.per_channel(&self.latents_std, mean)?;
        mean.broadcast_sub(&m)?.broadcast_div(&s)
    }

    /// The inverse of [`Self::normalize_latents`], written as the pipelines do:
    /// `z / (1 / latents_std) + latents_mean`, the reciprocal taken in f32 before the cast.
    pub fn denormalize_latents(&self, z: &Tensor) -> Result<Tensor> {
        self.check_latents(z, "denormalize_latents")?;
        let inv_std = self.per_channel(&self.latents_std.recip()?, z)?;
        let m = self.per_channel(&self.latents_mean, z)?;
        z.broadcast_div(&inv_std)?.broadcast_add(&m)
    }

    fn check_latents(&self, x: &Tensor, what: &str) -> Result<()> {
        let z = self.config.z_dim;
        if x.rank() < 2 || x.dim(1)? != z {
            candle_core::bail!("vae {what}: expected [B, {z}, …] latents, got shape {:?}", x.dims());
        }
        Ok(())
    }

    /// A `[z_dim]` statistic shaped `[1, z_dim, 1, …]` for `x`'s rank, on its device and dtype.
    fn per_channel(&self, stat: &Tensor, x: &Tensor) -> Result<Tensor> {
        let mut shape = vec![1usize; x.rank()];
        shape[1] = self.config.z_dim;
        stat.to_device(x.device())?.to_dtype(x.dtype())?.reshape(shape)
    }
}
