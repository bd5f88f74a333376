//! Random weights for benchmarks: a `VarBuilder` backend that makes every tensor a model asks
//! for, in the requested shape, directly on the target device. Full-size models can then be
//! timed without a 57 GB checkpoint (speed does not depend on the weight values, as long as they
//! are not zeros).
//!
//! Values keep activations in range through 60 blocks: matrices and embeddings ~ N(0, 1/fan_in)
//! (fan_in = every axis but the first), 1-D weights and VAE `gamma`s are ones (norm scales),
//! biases zeros.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

#[derive(Debug, Clone, Copy, Default)]
pub struct RandomWeights;

impl RandomWeights {
    /// A `VarBuilder` of random weights in `dtype` on `device`.
    pub fn var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone())
    }
}

impl SimpleBackend for RandomWeights {
    fn get(&self, shape: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let dims = shape.dims();
        if name.ends_with("bias") {
            return Tensor::zeros(shape, dtype, dev);
        }
        if name.ends_with("gamma") || dims.len() <= 1 {
            return Tensor::ones(shape, dtype, dev);
        }
        let fan_in = dims[1..].iter().product::<usize>().max(1);
        // CUDA generates normals in f32 only; the cast is one pass on the device.
        Tensor::randn(0f32, (1.0 / fan_in as f64).sqrt() as f32, shape, dev)?.to_dtype(dtype)
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
}
