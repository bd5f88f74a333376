//! Random weights for benchmarks: a `VarBuilder` backend that makes every tensor a model asks
//! for, in the requested shape, directly on the target device. Full-size models can then be
//! timed without a 57 GB checkpoint.
//!
//! Speed does not depend on the values' *meaning*, but it does depend on their *statistics*: an
//! H100/H200 running the DiT sits at its power limit, and a tensor-core GEMM over low-entropy
//! operands (near-constant attention probabilities, say) draws less power and so runs at a
//! higher clock. A speed comparison is therefore only fair on identically distributed weights,
//! which is what [`InitScheme::Anchor`] is for.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// How the random values are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InitScheme {
    /// Values that keep activations in range through 60 blocks: matrices and embeddings
    /// ~ N(0, 1/fan_in) (fan_in = every axis but the first), 1-D weights and VAE `gamma`s ones
    /// (norm scales), biases zeros. Attention scores then have a realistic spread.
    #[default]
    FanIn,
    /// The distribution of diffusers' speed anchor (`shared/bench/diffusers_anchor.py`): every
    /// parameter of `transformer_blocks.*` — biases and q/k RMSNorm scales included — ~ N(0, 0.02);
    /// everything else as PyTorch initialises it (Linear weights and biases ~ U(±1/√fan_in),
    /// norm scales ones). The tiny q/k norm scales make the attention probabilities nearly
    /// uniform.
    Anchor,
}

impl InitScheme {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "fan-in" => Some(Self::FanIn),
            "anchor" => Some(Self::Anchor),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::FanIn => "fan-in",
            Self::Anchor => "anchor",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RandomWeights {
    scheme: InitScheme,
}

impl RandomWeights {
    /// A `VarBuilder` of random weights ([`InitScheme::FanIn`]) in `dtype` on `device`.
    pub fn var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
        Self::var_builder_with(InitScheme::FanIn, dtype, device)
    }

    /// A `VarBuilder` of random weights drawn by `scheme`.
    pub fn var_builder_with(scheme: InitScheme, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(RandomWeights { scheme }), dtype, device.clone())
    }
}

impl SimpleBackend for RandomWeights {
    fn get(&self, shape: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let dims = shape.dims();
        let is_bias = name.ends_with("bias");
        let is_scale = name.ends_with("gamma") || dims.len() <= 1;
        let fan_in = dims[1..].iter().product::<usize>().max(1);
        // CUDA generates random numbers in f32 only; the cast is one pass on the device.
        let t = match self.scheme {
            InitScheme::Anchor if name.starts_with("transformer_blocks.") || name.contains(".transformer_blocks.") => {
                Tensor::randn(0f32, 0.02, shape, dev)?
            }
            InitScheme::Anchor if is_scale && !is_bias => Tensor::ones(shape, DType::F32, dev)?,
            InitScheme::Anchor => {
                // PyTorch's Linear: weight and bias ~ U(±1/√fan_in) of the *weight's* fan-in,
                // which a bias alone does not know; the DiT's non-block layers have fan-ins of
                // 64 to 3584, so the bias bound uses the weight-like default 1/√3072.
                let bound = if is_bias {
                    1.0 / 3072f64.sqrt()
                } else {
                    1.0 / (fan_in as f64).sqrt()
                };
                Tensor::rand(-bound as f32, bound as f32, shape, dev)?
            }
            InitScheme::FanIn if is_bias => return Tensor::zeros(shape, dtype, dev),
            InitScheme::FanIn if is_scale => return Tensor::ones(shape, dtype, dev),
            InitScheme::FanIn => Tensor::randn(0f32, (1.0 / fan_in as f64).sqrt() as f32, shape, dev)?,
        };
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights: {name} was requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_scales_follow_the_request() {
        let vb = RandomWeights::var_builder(DType::F32, &Device::Cpu);
        let w = vb.get((64, 256), "layer.weight").unwrap();
        assert_eq!(w.dims(), [64, 256]);
        let std = w.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        assert!((std - 1.0 / 16.0).abs() < 0.01, "{std}");
        let b = vb.get(64, "layer.bias").unwrap();
        assert_eq!(b.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let g = vb.get((8, 1, 1, 1), "norm.gamma").unwrap();
        assert_eq!(g.sum_all().unwrap().to_scalar::<f32>().unwrap(), 8.0);
        assert!(vb.get_unchecked("x").is_err());
    }

    #[test]
    fn anchor_scheme_follows_the_diffusers_anchor() {
        let vb = RandomWeights::var_builder_with(InitScheme::Anchor, DType::F32, &Device::Cpu);
        let std = |t: &Tensor| t.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        // Inside the blocks everything, norm scales and biases too, is N(0, 0.02).
        for (shape, name) in [
            (vec![256, 64], "transformer_blocks.3.attn.to_q.weight"),
            (vec![4096], "transformer_blocks.0.attn.to_q.bias"),
            (vec![4096], "transformer_blocks.59.attn.norm_k.weight"),
        ] {
            let s = std(&vb.get(shape, name).unwrap());
            assert!((s - 0.02).abs() < 0.002, "{name}: {s}");
        }
        // Outside them, PyTorch's defaults: uniform Linear weights, unit norm scales.
        let w = vb.get((64, 256), "img_in.weight").unwrap();
        let max = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max <= 1.0 / 16.0 && max > 0.9 / 16.0, "{max}");
        let s = std(&w);
        assert!((s - 1.0 / 16.0 / 3f32.sqrt()).abs() < 0.003, "{s}");
        let g = vb.get(64, "txt_norm.weight").unwrap();
        assert_eq!(g.sum_all().unwrap().to_scalar::<f32>().unwrap(), 64.0);
        assert_eq!(InitScheme::parse("anchor"), Some(InitScheme::Anchor));
        assert_eq!(InitScheme::parse(InitScheme::FanIn.name()), Some(InitScheme::FanIn));
        assert_eq!(InitScheme::parse("zeros"), None);
    }
}
