//! Initial noise: seeded, device-independent, or injected from a file.
//!
//! Noise is drawn on the CPU from ChaCha8 (a portable, versioned stream) through a standard
//! normal, then moved to the run's device, so one seed gives the same layers on CPU and CUDA.
//! It cannot match torch's generator; for cross-implementation checks the exact reference noise
//! is injected instead ([`load_noise`]).

use std::path::Path;

use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::{Error, Result};

/// Standard-normal f32 noise of `shape`, from `seed`.
pub fn seeded_noise(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)?)
}

/// Reads the tensor named `noise` (or the file's only tensor) from a safetensors file, checking
/// it has `shape` (the unpacked latent shape of the run).
pub fn load_noise(path: &Path, shape: &[usize], device: &Device) -> Result<Tensor> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::InvalidInput(format!("init noise {}: {e}", path.display())))?;
    let noise = match tensors.get("noise") {
        Some(t) => t.clone(),
        None if tensors.len() == 1 => tensors.into_values().next().unwrap_or_else(|| unreachable!()),
        None => {
            return Err(Error::InvalidInput(format!(
                "init noise {}: no tensor named `noise` (found: {})",
                path.display(),
                tensors.keys().cloned().collect::<Vec<_>>().join(", ")
            )))
        }
    };
    if noise.dims() != shape {
        return Err(Error::InvalidInput(format!(
            "init noise {} has shape {:?}, but this run needs {shape:?} ([batch, layers+1, 16, H/8, W/8])",
            path.display(),
            noise.dims()
        )));
    }
    Ok(noise.to_dtype(candle_core::DType::F32)?.to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_reproducible_and_standard_normal() {
        let a = seeded_noise(42, &[4, 1000], &Device::Cpu).unwrap();
        let b = seeded_noise(42, &[4, 1000], &Device::Cpu).unwrap();
        let c = seeded_noise(43, &[4, 1000], &Device::Cpu).unwrap();
        let a_v = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a_v, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(a_v, c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let n = a_v.len() as f64;
        let mean = a_v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = a_v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
    }

    #[test]
    fn injected_noise_must_have_the_run_shape() {
        let dir = std::env::temp_dir().join(format!("noise-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.safetensors");
        let t = Tensor::ones((1, 3, 16, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&[("noise", t)].into_iter().collect(), &path).unwrap();
        assert_eq!(
            load_noise(&path, &[1, 3, 16, 2, 2], &Device::Cpu).unwrap().dims(),
            &[1, 3, 16, 2, 2]
        );
        let err = load_noise(&path, &[1, 4, 16, 2, 2], &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[1, 3, 16, 2, 2]") && err.contains("[1, 4, 16, 2, 2]"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
