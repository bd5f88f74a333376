//! Timestep conditioning (diffusers `QwenTimestepProjEmbeddings`): a sinusoidal embedding of
//! σ·1000, an MLP, and for the layered model a learned row added on top.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};

/// Width of the sinusoidal projection (`Timesteps(num_channels=256, …)`).
pub const TIMESTEP_CHANNELS: usize = 256;

/// `[cos(a_k), sin(a_k)]` with `a_k = σ · 1000 · 10000^(−k/128)`, k < 128, in f32: diffusers
/// `Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000)`.
///
/// `sigma` is `[B]`; the result is `[B, 256]` f32.
pub fn timestep_sinusoid(sigma: &Tensor) -> Result<Tensor> {
    let half = TIMESTEP_CHANNELS / 2;
    // Same f32 steps as the reference: (−ln 10000 · k) / half, then exp.
    let neg_log_period = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (neg_log_period * k as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), sigma.device())?;
    let sigma = sigma.to_dtype(DType::F32)?.unsqueeze(1)?;
    // The reference multiplies by the frequencies first, then by the scale.
    let angles = (sigma.broadcast_mul(&freqs)? * 1000.0)?;
    Tensor::cat(&[angles.cos()?, angles.sin()?], 1)
}

/// `TimestepEmbedding`: Linear(256 → D), SiLU, Linear(D → D).
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(TIMESTEP_CHANNELS, dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(dim, dim, vb.pp("linear_2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

/// `time_text_embed`: the conditioning vector `temb` `[B, D]` every block is modulated by.
#[derive(Debug, Clone)]
pub struct TimeTextEmbed {
    timestep_embedder: TimestepEmbedding,
    /// Layered only: row 0 is what the pipeline always passes (`is_rgb = 0`).
    addition_t_embedding: Option<Embedding>,
}

impl TimeTextEmbed {
    pub fn new(dim: usize, use_additional_t_cond: bool, vb: VarBuilder) -> Result<Self> {
        let addition_t_embedding = if use_additional_t_cond {
            Some(candle_nn::embedding(2, dim, vb.pp("addition_t_embedding"))?)
        } else {
            None
        };
        Ok(Self {
            timestep_embedder: TimestepEmbedding::new(dim, vb.pp("timestep_embedder"))?,
            addition_t_embedding,
        })
    }

    pub fn uses_additional_t_cond(&self) -> bool {
        self.addition_t_embedding.is_some()
    }

    /// `sigma` `[B]` (= timestep/1000), `additional_t_cond` `[B]` integer row indices (0 or 1),
    /// required exactly when the model has `addition_t_embedding`. Returns `[B, D]` in `dtype`.
    pub fn forward(&self, sigma: &Tensor, additional_t_cond: Option<&Tensor>, dtype: DType) -> Result<Tensor> {
        // diffusers casts the timestep to the model dtype before embedding it; in bf16 that rounds
        // σ to 8 mantissa bits. Reproduced so bf16 runs match the reference (a no-op in f32).
        let sigma = sigma.to_dtype(dtype)?;
        let proj = timestep_sinusoid(&sigma)?.to_dtype(dtype)?;
        let temb = self.timestep_embedder.forward(&proj)?;
        match (&self.addition_t_embedding, additional_t_cond) {
            (Some(table), Some(cond)) => {
                let batch = sigma.dim(0)?;
                if cond.dims() != [batch] {
                    candle_core::bail!("additional_t_cond has shape {:?}, expected [{batch}]", cond.dims());
                }
                let rows = cond.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                if let Some(bad) = rows.iter().find(|&&r| r > 1) {
                    candle_core::bail!("additional_t_cond values must be 0 or 1 (addition_t_embedding has 2 rows), got {bad}");
                }
                temb + table.forward(&cond.to_dtype(DType::U32)?)?.to_dtype(dtype)?
            }
            (Some(_), None) => candle_core::bail!(
                "this transformer has use_additional_t_cond=true (Qwen-Image-Layered): pass additional_t_cond \
                 ([B] zeros, as the pipeline does)"
            ),
            (None, Some(_)) => candle_core::bail!(
                "additional_t_cond was passed, but this transformer has use_additional_t_cond=false (no addition_t_embedding)"
            ),
            (None, None) => Ok(temb),
        }
    }
}
