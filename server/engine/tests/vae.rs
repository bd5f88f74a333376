//! The Qwen-Image VAE: structure, shapes and errors on seeded random tiny models, and parity with
//! the reference fixtures (diffusers 0.42.1 on the tiny checkpoints).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use engine::vae::{AutoencoderKLQwenImage, Config};

/// The spec's tiny VAE shape (§14) at base_dim 4: the real structure (dim_mult [1,2,4,4], z 16,
/// temporal flags) at 1/24 of the width.
fn tiny_config(input_channels: usize) -> Config {
    Config { base_dim: 4, input_channels, ..Config::qwen_image() }
}

/// A model whose every parameter is a fixed pseudo-random value: conv weights ~ ±1/√fan_in,
/// gammas around 1, biases small. Returns the parameters too, by name.
fn random_vae(cfg: &Config) -> (AutoencoderKLQwenImage, VarMap) {
    let varmap = VarMap::new();
    AutoencoderKLQwenImage::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    {
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<_> = data.keys().cloned().collect();
        names.sort();
        for (k, name) in names.iter().enumerate() {
            let var = &data[name];
            let dims = var.dims().to_vec();
            let n: usize = dims.iter().product();
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            let noise: Vec<f32> =
                (0..n).map(|i| ((i as f32 * 12.9898 + k as f32 * 78.233).sin() * 43758.547).fract()).collect();
            let values: Vec<f32> = if name.ends_with("gamma") {
                noise.iter().map(|u| 1.0 + 0.3 * u).collect()
            } else if name.ends_with("bias") {
                noise.iter().map(|u| 0.1 * u).collect()
            } else {
                let a = (3.0 / fan_in as f32).sqrt();
                noise.iter().map(|u| a * u).collect()
            };
            var.set(&Tensor::from_vec(values, dims, &Device::Cpu).unwrap()).unwrap();
        }
    }
    let vae = AutoencoderKLQwenImage::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    (vae, varmap)
}

/// A smooth test image in [-1, 1], `[b, c, h, w]`.
fn test_image(b: usize, c: usize, h: usize, w: usize) -> Tensor {
    let n = b * c * h * w;
    let v: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 0.9).collect();
    Tensor::from_vec(v, (b, c, h, w), &Device::Cpu).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

// ---------------------------------------------------------------- config

#[test]
fn config_reads_hf_keys_with_defaults() {
    let json = r#"{"_class_name": "AutoencoderKLQwenImage", "base_dim": 96, "z_dim": 16,
        "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
        "temperal_downsample": [false, true, true], "dropout": 0.0, "input_channels": 4}"#;
    let cfg: Config = serde_json::from_str(json).unwrap();
    assert_eq!(cfg, Config::qwen_image_layered());
    assert_eq!(cfg.spatial_scale_factor(), 8);
    assert_eq!(cfg.latents_mean[7], 1.5508);
    assert_eq!(cfg.latents_std[15], 1.9160);
    let rgb: Config = serde_json::from_str("{}").unwrap();
    assert_eq!(rgb.input_channels, 3);
    assert_eq!(rgb, Config::qwen_image());
}

#[test]
fn bad_config_is_a_clear_error() {
    let cfg = Config { latents_mean: vec![0.0; 4], ..tiny_config(3) };
    let err = AutoencoderKLQwenImage::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap_err().to_string();
    assert!(err.contains("latents_mean has 4") && err.contains("z_dim = 16"), "{err}");
    let cfg = Config { temperal_downsample: vec![true], ..tiny_config(3) };
    let err = AutoencoderKLQwenImage::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap_err().to_string();
    assert!(err.contains("temperal_downsample has 1"), "{err}");
}

// ---------------------------------------------------------------- structure

#[test]
fn tensor_names_and_shapes_follow_the_checkpoint() {
    let (_, varmap) = random_vae(&tiny_config(4));
    let data = varmap.data().lock().unwrap();
    let shape = |name: &str| data.get(name).unwrap_or_else(|| panic!("missing {name}")).dims().to_vec();
    // Spec §1.2 with 96 → 4 (so 192 → 8, 384 → 16).
    assert_eq!(shape("encoder.conv_in.weight"), [4, 4, 3, 3, 3]);
    assert_eq!(shape("encoder.down_blocks.0.norm1.gamma"), [4, 1, 1, 1]);
    assert_eq!(shape("encoder.down_blocks.2.resample.1.weight"), [4, 4, 3, 3]);
    assert_eq!(shape("encoder.down_blocks.3.conv_shortcut.weight"), [8, 4, 1, 1, 1]);
    assert_eq!(shape("encoder.down_blocks.5.resample.1.weight"), [8, 8, 3, 3]);
    assert_eq!(shape("encoder.down_blocks.6.conv_shortcut.weight"), [16, 8, 1, 1, 1]);
    assert_eq!(shape("encoder.down_blocks.8.resample.1.bias"), [16]);
    assert_eq!(shape("encoder.down_blocks.10.conv2.weight"), [16, 16, 3, 3, 3]);
    assert_eq!(shape("encoder.mid_block.attentions.0.norm.gamma"), [16, 1, 1]);
    assert_eq!(shape("encoder.mid_block.attentions.0.to_qkv.weight"), [48, 16, 1, 1]);
    assert_eq!(shape("encoder.mid_block.attentions.0.proj.weight"), [16, 16, 1, 1]);
    assert_eq!(shape("encoder.mid_block.resnets.1.conv1.weight"), [16, 16, 3, 3, 3]);
    assert_eq!(shape("encoder.norm_out.gamma"), [16, 1, 1, 1]);
    assert_eq!(shape("encoder.conv_out.weight"), [32, 16, 3, 3, 3]);
    assert_eq!(shape("quant_conv.weight"), [32, 32, 1, 1, 1]);
    assert_eq!(shape("post_quant_conv.weight"), [16, 16, 1, 1, 1]);
    assert_eq!(shape("decoder.conv_in.weight"), [16, 16, 3, 3, 3]);
    assert_eq!(shape("decoder.up_blocks.0.upsamplers.0.resample.1.weight"), [8, 16, 3, 3]);
    assert_eq!(shape("decoder.up_blocks.1.resnets.0.conv_shortcut.weight"), [16, 8, 1, 1, 1]);
    assert_eq!(shape("decoder.up_blocks.1.resnets.2.conv2.weight"), [16, 16, 3, 3, 3]);
    assert_eq!(shape("decoder.up_blocks.2.resnets.0.conv1.weight"), [8, 8, 3, 3, 3]);
    assert_eq!(shape("decoder.up_blocks.2.upsamplers.0.resample.1.weight"), [4, 8, 3, 3]);
    assert_eq!(shape("decoder.up_blocks.3.resnets.2.norm2.gamma"), [4, 1, 1, 1]);
    assert_eq!(shape("decoder.conv_out.weight"), [4, 4, 3, 3, 3]);
    // Never used on single frames, so never loaded; and nothing beyond the last block.
    assert!(!data.contains_key("encoder.down_blocks.5.time_conv.weight"));
    assert!(!data.contains_key("decoder.up_blocks.3.upsamplers.0.resample.1.weight"));
    assert!(!data.contains_key("encoder.down_blocks.11.conv1.weight"));
    assert!(!data.contains_key("decoder.up_blocks.0.resnets.0.conv_shortcut.weight"));
    // Residual block 6 tensors (+2 with a shortcut), resampler 2, attention 5, conv 2, norm 1.
    // Encoder: conv_in 2 + down 58 + mid 17 + head 3 = 80; quant convs 4;
    // decoder: conv_in 2 + mid 17 + up blocks 20 + 22 + 20 + 18 + head 3 = 102.
    assert_eq!(data.len(), 80 + 4 + 102);
}

// ---------------------------------------------------------------- shapes and errors

#[test]
fn encode_and_decode_shapes_rgba_and_rgb() {
    for c in [4, 3] {
        let (vae, _) = random_vae(&tiny_config(c));
        let x = test_image(2, c, 32, 48);
        let mean = vae.encode_mean(&x).unwrap();
        assert_eq!(mean.dims(), &[2, 16, 4, 6]);
        let y = vae.decode(&mean).unwrap();
        assert_eq!(y.dims(), &[2, c, 32, 48]);
        assert!(max_abs(&y) <= 1.0);
        // The random decoder output is not just the clamp limits.
        let inside = y.abs().unwrap().lt(0.999).unwrap().to_dtype(DType::F32).unwrap().mean_all().unwrap();
        assert!(inside.to_scalar::<f32>().unwrap() > 0.1);
    }
}

#[test]
fn encode_checks_channels_and_sizes() {
    let (vae, _) = random_vae(&tiny_config(4));
    let err = vae.encode_mean(&test_image(1, 3, 16, 16)).unwrap_err().to_string();
    assert!(err.contains("3 channels") && err.contains("takes 4 (RGBA)"), "{err}");
    let err = vae.encode_mean(&test_image(1, 4, 20, 16)).unwrap_err().to_string();
    assert!(err.contains("height 20 and width 16") && err.contains("multiples of 8"), "{err}");
    let err = vae.encode_mean(&Tensor::zeros((4, 16, 16), DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(err.contains("[B, C, H, W]") && err.contains("[4, 16, 16]"), "{err}");
    let err = vae.decode(&Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(err.contains("4 channels, expected z_dim = 16"), "{err}");
    let z = Tensor::zeros((1, 16, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(vae.decode_chunked(&z, 0).unwrap_err().to_string().contains("at least 1"));
}

#[test]
fn decode_chunked_equals_decode() {
    let (vae, _) = random_vae(&tiny_config(4));
    let z = (test_image(5, 16, 3, 2) * 2.0).unwrap();
    let whole = vae.decode(&z).unwrap();
    for chunk in [1, 2, 5, 8] {
        let parts = vae.decode_chunked(&z, chunk).unwrap();
        assert_eq!(parts.dims(), whole.dims());
        let d = max_abs(&(&parts - &whole).unwrap());
        assert!(d < 1e-5, "chunk {chunk}: {d}");
    }
}

#[test]
fn batch_items_are_independent() {
    // Encoding a batch equals encoding each item alone (no cross-batch mixing anywhere).
    let (vae, _) = random_vae(&tiny_config(3));
    let x = test_image(2, 3, 16, 16);
    let both = vae.encode_mean(&x).unwrap();
    let second = vae.encode_mean(&x.narrow(0, 1, 1).unwrap()).unwrap();
    assert!(max_abs(&(both.narrow(0, 1, 1).unwrap() - second).unwrap()) < 1e-5);
}

#[test]
fn latent_normalisation() {
    let (vae, _) = random_vae(&tiny_config(4));
    let cfg = vae.config().clone();
    let mean = Tensor::new(cfg.latents_mean.iter().map(|v| *v as f32).collect::<Vec<_>>(), &Device::Cpu)
        .unwrap()
        .reshape((1, 16, 1, 1))
        .unwrap();
    // The statistics' own mean normalises to 0, and 0 de-normalises to it.
    assert_eq!(max_abs(&vae.normalize_latents(&mean).unwrap()), 0.0);
    let zeros = Tensor::zeros((1, 16, 1, 1), DType::F32, &Device::Cpu).unwrap();
    assert!(max_abs(&(vae.denormalize_latents(&zeros).unwrap() - &mean).unwrap()) < 1e-7);
    // Channel 0: (x − (−0.7571)) / 2.8184 for x = 1.
    let ones = Tensor::ones((2, 16, 3, 1), DType::F32, &Device::Cpu).unwrap();
    let n = vae.normalize_latents(&ones).unwrap();
    let v = n.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((v[0] - (1.0 + 0.7571) / 2.8184).abs() < 1e-6, "{}", v[0]);
    // Round trip, also on the 5-D [B, C, F, h, w] layout.
    let x = test_image(2, 16, 3, 4).reshape((2, 16, 1, 3, 4)).unwrap();
    let back = vae.denormalize_latents(&vae.normalize_latents(&x).unwrap()).unwrap();
    assert!(max_abs(&(back - &x).unwrap()) < 1e-6);
    let err = vae.normalize_latents(&test_image(1, 4, 2, 2)).unwrap_err().to_string();
    assert!(err.contains("[B, 16, …]"), "{err}");
}
