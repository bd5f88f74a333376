//! The Qwen-Image VAE: structure, shapes and errors on seeded random tiny models, and parity with
//! the reference fixtures (diffusers 0.42.1 on the tiny checkpoints).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use engine::vae::{AutoencoderKLQwenImage, Config};

/// The spec's tiny VAE shape (§14) at base_dim 4: the real structure (dim_mult [1,2,4,4], z 16,
/// temporal flags) at 1/24 of the width.
fn tiny_config(input_channels: usize) -> Config {
    Config {
        base_dim: 4,
        input_channels,
        ..Config::qwen_image()
    }
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
            let noise: Vec<f32> = (0..n)
                .map(|i| ((i as f32 * 12.9898 + k as f32 * 78.233).sin() * 43758.547).fract())
                .collect();
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
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
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
    let cfg = Config {
        latents_mean: vec![0.0; 4],
        ..tiny_config(3)
    };
    let err = AutoencoderKLQwenImage::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latents_mean has 4") && err.contains("z_dim = 16"),
        "{err}"
    );
    let cfg = Config {
        temperal_downsample: vec![true],
        ..tiny_config(3)
    };
    let err = AutoencoderKLQwenImage::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(err.contains("temperal_downsample has 1"), "{err}");
}

// ---------------------------------------------------------------- structure

#[test]
fn tensor_names_and_shapes_follow_the_checkpoint() {
    let (_, varmap) = random_vae(&tiny_config(4));
    let data = varmap.data().lock().unwrap();
    let shape = |name: &str| {
        data.get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .dims()
            .to_vec()
    };
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
    assert_eq!(
        shape("decoder.up_blocks.0.upsamplers.0.resample.1.weight"),
        [8, 16, 3, 3]
    );
    assert_eq!(
        shape("decoder.up_blocks.1.resnets.0.conv_shortcut.weight"),
        [16, 8, 1, 1, 1]
    );
    assert_eq!(shape("decoder.up_blocks.1.resnets.2.conv2.weight"), [16, 16, 3, 3, 3]);
    assert_eq!(shape("decoder.up_blocks.2.resnets.0.conv1.weight"), [8, 8, 3, 3, 3]);
    assert_eq!(
        shape("decoder.up_blocks.2.upsamplers.0.resample.1.weight"),
        [4, 8, 3, 3]
    );
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
        let inside = y
            .abs()
            .unwrap()
            .lt(0.999)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .mean_all()
            .unwrap();
        assert!(inside.to_scalar::<f32>().unwrap() > 0.1);
    }
}

#[test]
fn encode_checks_channels_and_sizes() {
    let (vae, _) = random_vae(&tiny_config(4));
    let err = vae.encode_mean(&test_image(1, 3, 16, 16)).unwrap_err().to_string();
    assert!(err.contains("3 channels") && err.contains("takes 4 (RGBA)"), "{err}");
    let err = vae.encode_mean(&test_image(1, 4, 20, 16)).unwrap_err().to_string();
    assert!(
        err.contains("height 20 and width 16") && err.contains("multiples of 8"),
        "{err}"
    );
    let err = vae
        .encode_mean(&Tensor::zeros((4, 16, 16), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("[B, C, H, W]") && err.contains("[4, 16, 16]"), "{err}");
    let err = vae
        .decode(&Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("4 channels, expected z_dim = 16"), "{err}");
    let z = Tensor::zeros((1, 16, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(vae
        .decode_chunked(&z, 0)
        .unwrap_err()
        .to_string()
        .contains("at least 1"));
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
    let mean = Tensor::new(
        cfg.latents_mean.iter().map(|v| *v as f32).collect::<Vec<_>>(),
        &Device::Cpu,
    )
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

// ---------------------------------------------------------------- parity with the reference

mod parity {
    use super::*;
    use engine::image_proc;
    use engine::weights::ModelDir;
    use test_support::{
        as_stored, assert_close, edit_checkpoint, layered_checkpoint, load_png_rgba8, load_tensor, read_reference_bytes,
    };

    const VAE: &str = "vae.safetensors";
    const TOL: f64 = 1e-4;

    /// The VAE of a tiny checkpoint, loaded as the pipelines will: config.json + safetensors.
    fn load(checkpoint: std::path::PathBuf) -> AutoencoderKLQwenImage {
        let dir = ModelDir::open(checkpoint).unwrap();
        let cfg: Config = dir.read_json("vae", "config.json").unwrap();
        AutoencoderKLQwenImage::new(&cfg, dir.var_builder("vae", DType::F32, &Device::Cpu).unwrap()).unwrap()
    }

    /// A stored `[B, C, 1, H, W]` tensor without its frame axis.
    fn frames_folded(name: &str) -> Tensor {
        load_tensor(VAE, name).squeeze(2).unwrap()
    }

    /// Encode → normalise → decode → postprocess for one checkpoint, each stage against the
    /// reference; `kind` is the tensor prefix, `png` the input image.
    fn check_stages(kind: &str, vae: &AutoencoderKLQwenImage, png: &str) {
        let bytes = read_reference_bytes(png);
        let x = match vae.config().input_channels {
            4 => image_proc::to_tensor(&image_proc::decode_rgba(&bytes).unwrap(), &Device::Cpu).unwrap(),
            _ => image_proc::to_tensor(&image_proc::decode_rgb(&bytes).unwrap(), &Device::Cpu).unwrap(),
        };
        let err = assert_close(&x, &frames_folded(&format!("{kind}/input")), 1e-7, "input pixels");
        println!("{kind} input: {err}");

        let mean = vae.encode_mean(&x).unwrap();
        let err = assert_close(
            &mean,
            &frames_folded(&format!("{kind}/posterior_mean")),
            TOL,
            "posterior mean",
        );
        println!("{kind} posterior mean: {err}");

        let normalized = vae.normalize_latents(&mean).unwrap();
        let err = assert_close(
            &normalized,
            &frames_folded(&format!("{kind}/latents_normalized")),
            TOL,
            "normalized",
        );
        println!("{kind} normalised latents: {err}");

        // Decode the reference mean, so the decoder is judged on its own.
        let decoded = vae.decode(&frames_folded(&format!("{kind}/posterior_mean"))).unwrap();
        let err = assert_close(&decoded, &frames_folded(&format!("{kind}/decoded")), TOL, "decoded");
        println!("{kind} decoded: {err}");

        let z2 = frames_folded(&format!("{kind}/batch2_z"));
        let want2 = frames_folded(&format!("{kind}/batch2_decoded"));
        let err = assert_close(&vae.decode(&z2).unwrap(), &want2, TOL, "batch-2 decode");
        println!("{kind} batch-2 decoded: {err}");
        let err = assert_close(
            &vae.decode_chunked(&z2, 1).unwrap(),
            &want2,
            TOL,
            "batch-2 decode, chunks of 1",
        );
        println!("{kind} batch-2 decoded in chunks of 1: {err}");
    }

    /// Our postprocessed pixels (after a PNG round trip) vs a reference PNG: max |Δ| in 1/255.
    fn png_diff(ours: Vec<u8>, reference_png: &str) -> (u8, usize, usize) {
        let (_, _, want) = load_png_rgba8(reference_png);
        let got = image_proc::decode_rgba(&ours).unwrap().into_raw();
        assert_eq!(got.len(), want.len(), "{reference_png}: size");
        let worst = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        let count = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        (worst, count, want.len())
    }

    #[test]
    fn layered_rgba_vae_matches_diffusers() {
        let vae = load(layered_checkpoint());
        assert_eq!(vae.config().input_channels, 4);
        check_stages("layered", &vae, "images/input_rgba_small.png");

        let decoded = vae.decode(&frames_folded("layered/posterior_mean")).unwrap();
        let png = test_support::encode_png(&image_proc::tensor_to_rgba8(&decoded.get(0).unwrap()).unwrap());
        let (worst, count, n) = png_diff(png, "images/vae_layered_decoded.png");
        println!("layered decoded PNG: max |Δ| {worst}/255 on {count} of {n} values");
        assert!(worst <= 1, "layered PNG differs by {worst}/255");
    }

    #[test]
    fn edit_rgb_vae_matches_diffusers() {
        let vae = load(edit_checkpoint());
        assert_eq!(vae.config().input_channels, 3);
        check_stages("edit", &vae, "images/input_rgb_small.png");

        let decoded = vae.decode(&frames_folded("edit/posterior_mean")).unwrap();
        let png = test_support::encode_png(&image_proc::tensor_to_rgb8(&decoded.get(0).unwrap()).unwrap());
        let (worst, count, n) = png_diff(png, "images/vae_edit_decoded.png");
        println!("edit decoded PNG: max |Δ| {worst}/255 on {count} of {n} values");
        assert!(worst <= 1, "edit PNG differs by {worst}/255");
    }

    /// `[B, 16, h, w]` → `[B, h/2·w/2, 64]` (channel `c·4 + dy·2 + dx`), the pipelines' packing.
    fn pack(z: &Tensor) -> Tensor {
        let (b, c, h, w) = z.dims4().unwrap();
        z.reshape((b, c, h / 2, 2, w / 2, 2))
            .unwrap()
            .permute((0, 2, 4, 1, 3, 5))
            .unwrap()
            .reshape((b, h / 2 * (w / 2), c * 4))
            .unwrap()
    }

    /// The inverse of [`pack`].
    fn unpack(x: &Tensor, h: usize, w: usize) -> Tensor {
        let (b, _, d) = x.dims3().unwrap();
        let c = d / 4;
        x.reshape((b, h / 2, w / 2, c, 2, 2))
            .unwrap()
            .permute((0, 3, 1, 4, 2, 5))
            .unwrap()
            .reshape((b, c, h, w))
            .unwrap()
    }

    /// The condition latents of the Layered run: input PNG → bucket size → Pillow LANCZOS (RGBA)
    /// → [-1, 1] → encode → normalise → pack, against the run's (strided) record.
    #[test]
    fn layered_run_condition_latents() {
        let vae = load(layered_checkpoint());
        let run = "runs/layered_l2_cfgnorm.safetensors";
        let img = image_proc::decode_rgba(&read_reference_bytes("images/input_rgba_square.png")).unwrap();
        let (w, h) = image_proc::layered_dimensions(640, img.width(), img.height()).unwrap();
        let resized = image_proc::resize_lanczos(&img, w, h).unwrap();
        let mean = vae
            .encode_mean(&image_proc::to_tensor(&resized, &Device::Cpu).unwrap())
            .unwrap();
        let packed = pack(&vae.normalize_latents(&mean).unwrap());
        let expected = load_tensor(run, "cond_latents");
        let err = assert_close(
            &as_stored(&packed, run, "cond_latents"),
            &expected,
            TOL,
            "layered cond latents",
        );
        println!("layered run condition latents (640² encode, strided): {err}");
    }

    /// The Edit-2509 run's output: final packed latents → unpack → de-normalise → decode →
    /// postprocess → PNG, against the pipeline's PNG; and its condition latents (1248×832 RGB).
    #[test]
    fn edit_run_decode_to_png_and_condition_latents() {
        let vae = load(edit_checkpoint());
        let run = "runs/edit_plus.safetensors";
        let (out_h, out_w) = (256, 384);
        // The last step's latents are the final ones (README: `step{i}/latents_after`).
        let last = test_support::case("run/edit_plus")["num_inference_steps"]
            .as_u64()
            .unwrap()
            - 1;
        let latents = unpack(
            &load_tensor(run, &format!("step{last}/latents_after")),
            out_h / 8,
            out_w / 8,
        );
        let decoded = vae.decode(&vae.denormalize_latents(&latents).unwrap()).unwrap();
        let png = test_support::encode_png(&image_proc::tensor_to_rgb8(&decoded.get(0).unwrap()).unwrap());
        let (worst, count, n) = png_diff(png, "runs/edit_plus/edited.png");
        println!("edit run output PNG: max |Δ| {worst}/255 on {count} of {n} values");
        assert!(worst <= 1, "edit output PNG differs by {worst}/255");

        let img = image_proc::decode_rgb(&read_reference_bytes("images/input_rgb_wide.png")).unwrap();
        let (w, h) = image_proc::edit_vae_dimensions(img.width(), img.height()).unwrap();
        assert_eq!((w, h), (1248, 832));
        let resized = image_proc::resize_lanczos_rgb(&img, w, h).unwrap();
        let mean = vae
            .encode_mean(&image_proc::to_tensor(&resized, &Device::Cpu).unwrap())
            .unwrap();
        let packed = pack(&vae.normalize_latents(&mean).unwrap());
        let expected = load_tensor(run, "cond_latents");
        let err = assert_close(
            &as_stored(&packed, run, "cond_latents"),
            &expected,
            TOL,
            "edit cond latents",
        );
        println!("edit run condition latents (1248×832 encode, strided): {err}");
    }

    /// The same code in half precision: inputs are cast to the weights' dtype; norms, softmax
    /// and attention run in f32 inside; the result stays near the f32 reference. (f16 stands in
    /// for the GPU's bf16: candle's CPU matmul has no bf16 kernel; the code path is the same.)
    #[test]
    fn half_precision_weights_run_and_stay_close() {
        let dir = ModelDir::open(layered_checkpoint()).unwrap();
        let cfg: Config = dir.read_json("vae", "config.json").unwrap();
        let vae = AutoencoderKLQwenImage::new(&cfg, dir.var_builder("vae", DType::F16, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(vae.dtype(), DType::F16);
        let mean = vae.encode_mean(&frames_folded("layered/input")).unwrap();
        assert_eq!(mean.dtype(), DType::F16);
        let err = assert_close(
            &mean.to_dtype(DType::F32).unwrap(),
            &frames_folded("layered/posterior_mean"),
            2e-2,
            "f16 posterior mean",
        );
        println!("layered posterior mean in f16: {err}");
        let decoded = vae.decode(&frames_folded("layered/posterior_mean")).unwrap();
        let err = assert_close(
            &decoded.to_dtype(DType::F32).unwrap(),
            &frames_folded("layered/decoded"),
            2e-2,
            "f16 decode",
        );
        println!("layered decoded in f16: {err}");
    }
}
