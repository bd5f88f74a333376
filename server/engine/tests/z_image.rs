//! Z-Image against diffusers 0.42.1's `ZImagePipeline` on the tiny checkpoint, stage by stage
//! (fixtures: `tests/reference/extra_z_image.py`): tokens, text embeddings, sigmas, one batched
//! transformer forward with captions of different lengths, the VAE decode, and three whole runs
//! (Turbo without CFG, CFG with a negative prompt, CFG with the norm cap) with injected noise.
//! f32 on the CPU; relative error ≤ 1e-4 per module, ≤ 1e-3 per run, pixels within 1 level.

use candle_core::{DType, Device, IndexOp, Tensor};
use engine::pipeline::z_image::default_sigmas;
use engine::pipeline::{GenerateOptions, LoadOptions, NoProgress, ZImagePipeline};
use engine::scheduler::{FlowMatchEulerScheduler, SchedulerConfig};
use engine::tokenizer::QwenTokenizer;
use engine::weights::ModelDir;
use engine::z_image::text::{chat_template, TextEncoder};
use engine::z_image::vae::Vae;
use engine::z_image::{Config, ZImageTransformer};
use serde_json::Value;
use test_support::{assert_close, json_f64s, json_u32s, load_tensor, z_image_checkpoint};

const FILE: &str = "extra/z_image/z_image.safetensors";

fn model() -> ModelDir {
    ModelDir::open(z_image_checkpoint()).expect("tiny Z-Image checkpoint")
}

fn manifest() -> Value {
    test_support::load_json("extra/z_image/manifest.json")
}

fn prompts() -> Vec<(String, Value)> {
    let m = manifest();
    m["cases"]["tokens"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn tokens_match_the_chat_template() {
    let tok = QwenTokenizer::from_model_dir(&model()).unwrap();
    for (name, case) in prompts() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            chat_template(text),
            case["templated"].as_str().unwrap(),
            "{name}: template"
        );
        let ids = tok.encode(&chat_template(text)).unwrap();
        assert_eq!(ids, json_u32s(&case["ids"]).unwrap(), "{name}: ids");
    }
}

#[test]
fn text_embeddings_match() {
    let te = TextEncoder::load(&model(), DType::F32, &Device::Cpu).unwrap();
    for (name, case) in prompts() {
        let ids = json_u32s(&case["ids"]).unwrap();
        let got = te.encode_ids(&ids).unwrap();
        let err = assert_close(&got, &load_tensor(FILE, &format!("text/{name}")), 1e-4, &name);
        println!("text/{name}: {err}");
    }
}

#[test]
fn over_long_prompts_are_refused_before_encoding() {
    let tok = QwenTokenizer::from_model_dir(&model()).unwrap();
    let long = "fox ".repeat(600);
    let err = engine::z_image::text::prompt_ids(&tok, &long, "prompt").unwrap_err();
    assert!(err.to_string().contains("at most 512"), "{err}");
}

#[test]
fn sigmas_match() {
    let cfg: SchedulerConfig = model().read_json("scheduler", "scheduler_config.json").unwrap();
    let m = manifest();
    for (n, case) in m["cases"]["scheduler"].as_object().unwrap() {
        let mut s = FlowMatchEulerScheduler::new(cfg.clone()).unwrap();
        s.set_sigmas(&default_sigmas(n.parse().unwrap()), Some(0.5)).unwrap();
        // serde_json parses decimals to within an f64 ulp, not exactly: compare as the f32 both are.
        let f32s = |v: &Value| -> Vec<f32> { json_f64s(v).unwrap().iter().map(|&x| x as f32).collect() };
        assert_eq!(s.sigmas(), f32s(&case["sigmas"]), "N={n} sigmas");
        assert_eq!(s.timesteps(), f32s(&case["timesteps"]), "N={n} timesteps");
    }
}

fn load_transformer() -> ZImageTransformer {
    let m = model();
    let cfg: Config = m.read_json("transformer", "config.json").unwrap();
    assert_eq!(cfg.ffn_dim(), 170, "int(64 / 3 * 8), as Python rounds it");
    ZImageTransformer::new(&cfg, m.var_builder("transformer", DType::F32, &Device::Cpu).unwrap()).unwrap()
}

#[test]
fn transformer_forward_matches_with_captions_of_different_lengths() {
    let tr = load_transformer();
    let x = Tensor::cat(&[load_tensor(FILE, "tr/in/x0"), load_tensor(FILE, "tr/in/x1")], 1)
        .unwrap()
        .permute((1, 0, 2, 3))
        .unwrap()
        .contiguous()
        .unwrap();
    let caps = [load_tensor(FILE, "text/long"), load_tensor(FILE, "text/negative")];
    let t = load_tensor(FILE, "tr/in/t");
    let (out, trace) = tr.forward_with_trace(&x, &t, &caps).unwrap();
    assert_close(&trace.t_emb, &load_tensor(FILE, "tr/t_embedder"), 1e-4, "t_embedder");
    // 24 image tokens padded to 32 with x_pad_token in both rows.
    assert_close(
        &trace.noise_refiner,
        &load_tensor(FILE, "tr/noise_refiner"),
        1e-4,
        "noise_refiner",
    );
    // Captions 40 → 64 and 13 → 32 tokens; rows are compared over their own padded lengths.
    let cref = load_tensor(FILE, "tr/context_refiner");
    for (row, len) in [(0, 64), (1, 32)] {
        let (a, e) = (
            trace.context_refiner.i((row, ..len)).unwrap(),
            cref.i((row, ..len)).unwrap(),
        );
        assert_close(&a, &e, 1e-4, &format!("context_refiner row {row}"));
    }
    for (i, got) in trace.layers.iter().enumerate() {
        let e = load_tensor(FILE, &format!("tr/layers.{i}"));
        for (row, len) in [(0, 96), (1, 64)] {
            let err = assert_close(
                &got.i((row, ..len)).unwrap(),
                &e.i((row, ..len)).unwrap(),
                1e-4,
                &format!("layers.{i} row {row}"),
            );
            println!("layers.{i} row {row}: {err}");
        }
    }
    for row in 0..2 {
        let e = load_tensor(FILE, &format!("tr/out{row}")).squeeze(1).unwrap();
        let err = assert_close(&out.get(row).unwrap(), &e, 1e-4, &format!("output {row}"));
        println!("output {row}: {err}");
    }
    // Batched CFG == separate forwards: row 1 alone (no batch padding) gives the same output.
    let alone = tr
        .forward(&x.narrow(0, 1, 1).unwrap(), &t.narrow(0, 1, 1).unwrap(), &caps[1..])
        .unwrap();
    assert_close(
        &alone.get(0).unwrap(),
        &out.get(1).unwrap(),
        1e-5,
        "row 1 alone vs batched",
    );
}

#[test]
fn transformer_refuses_bad_inputs() {
    let tr = load_transformer();
    let cap = load_tensor(FILE, "text/ascii");
    let odd = Tensor::zeros((1, 16, 7, 8), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
    assert!(tr.forward(&odd, &t, std::slice::from_ref(&cap)).is_err());
    let x = Tensor::zeros((1, 16, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(tr.forward(&x, &t, &[]).is_err(), "missing caption");
    let wrong = Tensor::zeros((3, 7), DType::F32, &Device::Cpu).unwrap();
    assert!(tr.forward(&x, &t, &[wrong]).is_err(), "caption width");
}

#[test]
fn vae_decode_matches() {
    let vae = Vae::load(&model(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vae.scale_factor(), 8);
    let got = vae.decode(&load_tensor(FILE, "vae/z")).unwrap();
    let err = assert_close(&got, &load_tensor(FILE, "vae/decoded"), 1e-4, "vae decode");
    println!("vae: {err}");
}

fn run_case(name: &str) {
    let m = manifest();
    let case = &m["cases"]["runs"][name];
    let noise = load_tensor(FILE, &format!("run/{name}/noise"));
    let dir = std::env::temp_dir().join(format!("z_image_noise_{}_{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let noise_file = dir.join("noise.safetensors");
    noise.save_safetensors("noise", &noise_file).unwrap();
    let pipe = ZImagePipeline::load(model(), LoadOptions::default()).unwrap();
    let options = GenerateOptions {
        negative_prompt: case["negative_prompt"].as_str().map(String::from),
        width: case["width"].as_u64().unwrap() as u32,
        height: case["height"].as_u64().unwrap() as u32,
        num_inference_steps: case["num_inference_steps"].as_u64().unwrap() as usize,
        guidance_scale: case["guidance_scale"].as_f64().unwrap(),
        cfg_normalization: case["cfg_normalization"].as_f64().unwrap_or(0.0),
        cfg_truncation: 1.0,
        seed: 0,
        init_noise: Some(noise_file),
    };
    let mut steps = Vec::new();
    let out = pipe
        .generate_observed(case["prompt"].as_str().unwrap(), &options, &NoProgress, &mut |_, l| {
            steps.push(l.clone())
        })
        .unwrap();
    assert_eq!(steps.len(), options.num_inference_steps);
    for (i, got) in steps.iter().enumerate() {
        let err = assert_close(
            got,
            &load_tensor(FILE, &format!("run/{name}/latents{i}")),
            1e-3,
            &format!("{name} step {i}"),
        );
        println!("{name} step {i}: {err}");
    }
    let expected = load_tensor(FILE, &format!("run/{name}/image"));
    let (h, w, _) = expected.dims3().unwrap();
    assert_eq!(out.image.dimensions(), (w as u32, h as u32));
    let exp: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
    let worst = out
        .image
        .as_raw()
        .iter()
        .zip(&exp)
        .map(|(&a, &e)| (a as f32 - (e * 255.0).round()).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1.0, "{name}: pixels differ by up to {worst} levels");
    let png = image::open(test_support::reference_dir().join(format!("extra/z_image/run_{name}.png")))
        .unwrap()
        .to_rgb8();
    let worst_png = out
        .image
        .as_raw()
        .iter()
        .zip(png.as_raw())
        .map(|(&a, &b)| (a as i16 - b as i16).abs())
        .max()
        .unwrap();
    assert!(worst_png <= 1, "{name}: PNG differs by up to {worst_png} levels");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_turbo_without_cfg_matches() {
    run_case("turbo");
}

#[test]
fn run_with_cfg_and_negative_prompt_matches() {
    run_case("cfg");
}

#[test]
fn run_with_cfg_normalization_matches() {
    run_case("cfg_norm");
}

#[test]
fn seeded_runs_are_reproducible_and_options_are_checked() {
    let pipe = ZImagePipeline::load(model(), LoadOptions::default()).unwrap();
    let mut o = GenerateOptions {
        negative_prompt: None,
        width: 64,
        height: 48,
        num_inference_steps: 2,
        guidance_scale: 0.0,
        cfg_normalization: 0.0,
        cfg_truncation: 1.0,
        seed: 11,
        init_noise: None,
    };
    let a = pipe.generate("a cat", &o, &NoProgress).unwrap();
    let b = pipe.generate("a cat", &o, &NoProgress).unwrap();
    assert_eq!(a.image.dimensions(), (64, 48));
    assert_eq!(a.image, b.image, "same seed, same image");
    o.seed = 12;
    let c = pipe.generate("a cat", &o, &NoProgress).unwrap();
    assert_ne!(a.image, c.image, "another seed, another image");
    for bad in [
        GenerateOptions { width: 50, ..o.clone() },
        GenerateOptions {
            num_inference_steps: 0,
            ..o.clone()
        },
        GenerateOptions {
            guidance_scale: f64::NAN,
            ..o.clone()
        },
        GenerateOptions {
            cfg_normalization: -1.0,
            ..o.clone()
        },
    ] {
        let err = pipe.generate("a cat", &bad, &NoProgress).unwrap_err();
        assert!(matches!(err, engine::Error::InvalidInput(_)), "{err}");
    }
}

#[test]
fn cancel_stops_between_steps() {
    struct CancelAfterOne(std::sync::atomic::AtomicUsize);
    impl engine::pipeline::Progress for CancelAfterOne {
        fn step(&self, done: usize, _: usize) {
            self.0.store(done, std::sync::atomic::Ordering::SeqCst);
        }
        fn is_cancelled(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::SeqCst) >= 1
        }
    }
    let pipe = ZImagePipeline::load(model(), LoadOptions::default()).unwrap();
    let o = GenerateOptions {
        negative_prompt: None,
        width: 32,
        height: 32,
        num_inference_steps: 4,
        guidance_scale: 0.0,
        cfg_normalization: 0.0,
        cfg_truncation: 1.0,
        seed: 1,
        init_noise: None,
    };
    let p = CancelAfterOne(Default::default());
    assert!(matches!(pipe.generate("x", &o, &p), Err(engine::Error::Cancelled)));
    assert_eq!(p.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}
