//! Z-Image on the parity tests' device and dtype (`ENGINE_TEST_DEVICE`, `ENGINE_TEST_DTYPE`, as
//! `device_parity.rs`): a whole CFG run against diffusers' f32 reference, and, on CUDA in bf16,
//! the flash-attention path against the plain candle path on a random model whose heads are 128
//! wide (the tiny checkpoint's are 32, which the fused kernel does not take). On the CPU in f32
//! (CI) the second test only checks its own harness (both paths are then the plain one).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use engine::gpu::fused::{kernel_launches, Kernels};
use engine::pipeline::{GenerateOptions, LoadOptions, NoProgress, ZImagePipeline};
use engine::weights::ModelDir;
use engine::z_image::{Config, ZImageTransformer};
use test_support::{assert_close, dtype_tolerance, load_tensor, test_device, test_dtype, z_image_checkpoint};

const FILE: &str = "extra/z_image/z_image.safetensors";

#[test]
fn a_cfg_run_on_the_test_device_matches_the_reference() {
    let (device, dtype) = (test_device(), test_dtype());
    let dir = std::env::temp_dir().join(format!("z_image_device_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let noise_file = dir.join("noise.safetensors");
    load_tensor(FILE, "run/cfg/noise")
        .save_safetensors("noise", &noise_file)
        .unwrap();
    let options = LoadOptions {
        device: device.clone(),
        dtype,
        keep_text_encoder: true,
        ..LoadOptions::default()
    };
    let pipe = ZImagePipeline::load(ModelDir::open(z_image_checkpoint()).unwrap(), options).unwrap();
    let m = test_support::load_json("extra/z_image/manifest.json");
    let case = &m["cases"]["runs"]["cfg"];
    let o = GenerateOptions {
        negative_prompt: case["negative_prompt"].as_str().map(String::from),
        width: 64,
        height: 80,
        num_inference_steps: 4,
        guidance_scale: 2.5,
        cfg_normalization: 0.0,
        cfg_truncation: 1.0,
        seed: 0,
        init_noise: Some(noise_file),
    };
    let out = pipe
        .generate(case["prompt"].as_str().unwrap(), &o, &NoProgress)
        .unwrap();
    let err = assert_close(
        &out.final_latents.to_device(&Device::Cpu).unwrap(),
        &load_tensor(FILE, "run/cfg/latents3"),
        dtype_tolerance(1e-3, 0.1),
        "final latents",
    );
    println!("z-image cfg run on {device:?} {dtype:?}: final latents {err}");
    let expected: Vec<f32> = load_tensor(FILE, "run/cfg/image")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let diffs: Vec<f32> = out
        .image
        .as_raw()
        .iter()
        .zip(&expected)
        .map(|(&a, &e)| (a as f32 - (e * 255.0).round()).abs())
        .collect();
    let worst = diffs.iter().copied().fold(0f32, f32::max);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    println!("z-image cfg run PNG vs diffusers: worst {worst} levels, mean {mean:.3}");
    if dtype == DType::F32 {
        assert!(worst <= 1.0, "pixels differ by up to {worst} levels");
    } else {
        assert!(mean <= 4.0, "pixels differ by {mean} levels on average");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A random model with 128-wide heads (dim 256, 2 heads) in `dtype` on `device`, built twice
/// over the same weights: with the default (fused) kernels and with the plain path.
fn random_models(device: &Device, dtype: DType) -> (ZImageTransformer, ZImageTransformer) {
    let mut cfg: Config = ModelDir::open(z_image_checkpoint())
        .unwrap()
        .read_json("transformer", "config.json")
        .unwrap();
    cfg.dim = 256;
    cfg.n_heads = 2;
    cfg.n_kv_heads = Some(2);
    cfg.axes_dims = vec![32, 48, 48];
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, device);
    ZImageTransformer::new(&cfg, vb.clone()).unwrap(); // creates the variables
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let shape = var.shape().clone();
        let fan_in = shape.dims().iter().skip(1).product::<usize>().max(1) as f64;
        let values = if name.contains("norm") && shape.rank() == 1 {
            (Tensor::randn(0f32, 0.2, shape, device).unwrap() + 1.0).unwrap()
        } else {
            Tensor::randn(0f32, (1.0 / fan_in.sqrt()) as f32, shape, device).unwrap()
        };
        var.set(&values.to_dtype(dtype).unwrap()).unwrap();
    }
    let fused = ZImageTransformer::new(&cfg, vb.clone()).unwrap();
    let mut plain = ZImageTransformer::new(&cfg, vb).unwrap();
    plain.set_kernels(Kernels::PLAIN);
    (fused, plain)
}

#[test]
fn the_flash_attention_path_matches_the_plain_path() {
    let (device, dtype) = (test_device(), test_dtype());
    let on_gpu = device.is_cuda() && dtype == DType::BF16;
    // The harness itself runs on the CPU in f32 (both paths plain there).
    let (device, dtype) = if on_gpu {
        (device, dtype)
    } else {
        (Device::Cpu, DType::F32)
    };
    let (fused, plain) = random_models(&device, dtype);
    let x = Tensor::randn(0f32, 1.0, (2, 16, 8, 12), &device).unwrap();
    let t = Tensor::new(&[0.3f32, 0.7], &device).unwrap();
    // Captions of 40 and 13 tokens: rows of different padded lengths (the key mask).
    let caps = [
        Tensor::randn(0f32, 1.0, (40, 16), &device).unwrap(),
        Tensor::randn(0f32, 1.0, (13, 16), &device).unwrap(),
    ];
    let before = kernel_launches();
    let a = fused.forward(&x, &t, &caps).unwrap();
    let launched = kernel_launches() - before;
    let b = plain.forward(&x, &t, &caps).unwrap();
    let (a, b) = (
        a.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap(),
        b.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap(),
    );
    if on_gpu {
        assert!(launched > 0, "the fused forward launched no flash-attention kernel");
        let err = assert_close(&a, &b, 3e-2, "flash vs plain attention");
        println!("z-image flash vs plain (bf16, CUDA): {err}");
    } else {
        assert_eq!(launched, 0);
        assert_close(&a, &b, 0.0, "plain vs plain");
        println!("skipped the CUDA comparison: set ENGINE_TEST_DEVICE=cuda ENGINE_TEST_DTYPE=bf16");
    }
}
