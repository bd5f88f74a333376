//! The two normalisations of the transformer, with statistics in f32 whatever the run's dtype.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// `nn.LayerNorm(dim, elementwise_affine=False)` over the last axis.
///
/// Two passes (mean, then the mean of squared deviations) rather than E[x²] − E[x]², which loses
/// precision on the large-offset activations deep DiT blocks carry.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)
}

/// diffusers `RMSNorm(dim, eps)` with a learned weight: `w · x / sqrt(mean(x²) + eps)`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// Kept in f32 so the fused kernel runs on f32 statistics.
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?.to_dtype(DType::F32)?;
        Ok(Self {
            weight,
            eps: eps as f32,
        })
    }

    /// From a weight `[dim]` (kept in f32).
    pub fn from_weight(weight: Tensor, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: weight.to_dtype(DType::F32)?,
            eps: eps as f32,
        })
    }

    /// The learned weight, f32.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn eps(&self) -> f64 {
        self.eps as f64
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        candle_nn::ops::rms_norm(&x, &self.weight, self.eps)?.to_dtype(dtype)
    }
}
