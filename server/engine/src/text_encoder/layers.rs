//! The building blocks the Qwen2.5-VL language model and vision tower share.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

/// The SwiGLU MLP: `down(silu(gate(x)) · up(x))`. The language model's projections have no
/// bias, the vision tower's do.
#[derive(Debug, Clone)]
pub(crate) struct GatedMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl GatedMlp {
    pub(crate) fn new(hidden: usize, intermediate: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let linear = |i, o, name| {
            if bias {
                candle_nn::linear(i, o, vb.pp(name))
            } else {
                candle_nn::linear_no_bias(i, o, vb.pp(name))
            }
        };
        Ok(Self {
            gate_proj: linear(hidden, intermediate, "gate_proj")?,
            up_proj: linear(hidden, intermediate, "up_proj")?,
            down_proj: linear(intermediate, hidden, "down_proj")?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

/// RMSNorm as Qwen2 / Qwen2.5-VL compute it: statistics in f32, the normalised values cast back
/// to the model dtype, then scaled by the weight (in that dtype).
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv_rms)?.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

/// `x·cos + rotate_half(x)·sin` with `rotate_half([a, b]) = [−b, a]` (the "half" RoPE layout,
/// unlike the DiT's interleaved pairs), computed in f32 and cast back; `cos`/`sin` broadcast
/// against `x`.
pub(crate) fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let half = x.dim(D::Minus1)? / 2;
    let rotated = Tensor::cat(
        &[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?],
        D::Minus1,
    )?;
    (x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?.to_dtype(dtype)
}
