//! End-to-end parity of the decompose pipeline with diffusers' QwenImageLayeredPipeline on the
//! tiny checkpoint: starting from the reference's own initial noise, every step's velocities and
//! latents, the final latents and the layer PNGs must match the recorded run.

use std::cell::RefCell;
use std::path::PathBuf;

use candle_core::Tensor;
use engine::pipeline::{DecomposeOptions, LayeredPipeline, LoadOptions, NoProgress, Phase, Progress};
use engine::weights::ModelDir;
use test_support as ts;

fn pipeline() -> LayeredPipeline {
    pipeline_with(LoadOptions::default())
}

/// The tiny pipeline with its text encoder kept, loaded with `options` otherwise.
fn pipeline_with(options: LoadOptions) -> LayeredPipeline {
    let model = ModelDir::open(ts::layered_checkpoint()).unwrap();
    LayeredPipeline::load(
        model,
        LoadOptions {
            keep_text_encoder: true,
            ..options
        },
    )
    .unwrap()
}

fn input_image(case: &serde_json::Value) -> image::RgbaImage {
    let rel = case["input_png"].as_str().unwrap();
    image::open(ts::reference_dir().join(rel)).unwrap().to_rgba8()
}

/// The reference run's parameters, with its initial noise injected.
fn options(case: &serde_json::Value, file: &str) -> DecomposeOptions {
    DecomposeOptions {
        prompt: case["prompt"].as_str().unwrap().to_string(),
        negative_prompt: case["negative_prompt"].as_str().map(String::from),
        layers: case["layers"].as_u64().unwrap() as usize,
        resolution: case["resolution"].as_u64().unwrap() as u32,
        num_inference_steps: case["num_inference_steps"].as_u64().unwrap() as usize,
        true_cfg_scale: case["true_cfg_scale"].as_f64().unwrap(),
        cfg_normalize: case["cfg_normalize"].as_bool().unwrap(),
        seed: case["seed"].as_u64().unwrap(),
        init_noise: Some(ts::reference_dir().join(file)),
        ..DecomposeOptions::default()
    }
}

fn check_run(name: &str) {
    check_run_with(name, LoadOptions::default());
}

fn check_run_with(name: &str, load: LoadOptions) {
    let case = ts::case(&format!("run/{name}"));
    let file = format!("runs/{name}.safetensors");
    let mut pipe = pipeline_with(load);
    let opts = options(case, &file);
    assert_eq!(
        opts.uses_cfg(),
        case["do_true_cfg"].as_bool().unwrap(),
        "{name}: CFG decision"
    );
    let worst = RefCell::new(0f64);
    let check = |what: String, actual: &Tensor| {
        let expected = ts::load_tensor(&file, &what);
        let err = ts::assert_close(
            &ts::as_stored(actual, &file, &what),
            &expected,
            1e-4,
            &format!("{name} {what}"),
        );
        println!("{name} {what}: {err}");
        let mut w = worst.borrow_mut();
        *w = w.max(err.rel);
    };
    let out = pipe
        .decompose_traced(&input_image(case), &opts, &NoProgress, &mut |s| {
            check(format!("step{}/v_cond", s.step), s.v_cond);
            if let Some(u) = s.v_uncond {
                check(format!("step{}/v_uncond", s.step), u);
                check(format!("step{}/v_guided", s.step), s.v_guided);
            }
            check(format!("step{}/latents_after", s.step), s.latents_after);
        })
        .unwrap();
    let [h, w] = [
        case["output_hw"][0].as_u64().unwrap() as u32,
        case["output_hw"][1].as_u64().unwrap() as u32,
    ];
    assert_eq!((out.record.height, out.record.width), (h, w));
    assert_eq!(out.layers.len(), opts.layers);
    for (i, png) in case["output_pngs"].as_array().unwrap().iter().enumerate() {
        let (rw, rh, reference) = ts::load_png_rgba8(png.as_str().unwrap());
        let layer = &out.layers[i];
        assert_eq!(layer.dimensions(), (rw, rh));
        let max_diff = layer
            .as_raw()
            .iter()
            .zip(&reference)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        println!("{name} layer {} PNG: max diff {max_diff}/255", i + 1);
        assert!(max_diff <= 1, "{name} layer {}: pixels differ by {max_diff}/255", i + 1);
    }
    let final_err = ts::assert_close(
        &ts::as_stored(&out.final_latents, &file, "final_latents"),
        &ts::load_tensor(&file, "final_latents"),
        1e-4,
        &format!("{name} final_latents"),
    );
    println!("{name} final_latents: {final_err}");
    if case["output_pngs"].as_array().unwrap().is_empty() {
        // Every 4th row and column of each layer, as uint8 [layers, H/4, W/4, 4].
        let expected = ts::load_tensor_raw(&file, "output_pixels_strided4");
        let expected = expected.flatten_all().unwrap().to_vec1::<u8>().unwrap();
        let mut actual = Vec::new();
        for layer in &out.layers {
            for y in (0..layer.height()).step_by(4) {
                for x in (0..layer.width()).step_by(4) {
                    actual.extend_from_slice(&layer.get_pixel(x, y).0);
                }
            }
        }
        assert_eq!(actual.len(), expected.len(), "{name}: strided output size");
        let max_diff = actual.iter().zip(&expected).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        println!("{name} layers (every 4th pixel): max diff {max_diff}/255");
        assert!(max_diff <= 1, "{name}: layer pixels differ by {max_diff}/255");
    }
    println!(
        "{name}: worst relative error over every step {:.2e}",
        worst.into_inner()
    );
}

#[test]
fn two_layers_cfg_normalized_matches_the_reference_run() {
    check_run("layered_l2_cfgnorm");
}

#[test]
fn three_layers_cfg_unnormalized_chinese_prompt_matches_the_reference_run() {
    check_run("layered_l3_cfg");
}

/// CFG-parallel (issue 21): the unconditional branch on a second copy of the DiT, on its own
/// thread (a second GPU on a CUDA host; here a second CPU copy), still matches the reference
/// at every step.
#[test]
fn cfg_parallel_matches_the_reference_run() {
    check_run_with(
        "layered_l3_cfg",
        LoadOptions {
            cfg_parallel: Some(candle_core::Device::Cpu),
            ..LoadOptions::default()
        },
    );
}

/// Sequence-parallel (issue 21): each forward's image tokens split over two copies of the DiT
/// on their own threads (GPUs on a CUDA host), still matching the reference at every step.
#[test]
fn sequence_parallel_matches_the_reference_run() {
    check_run_with(
        "layered_l2_cfgnorm",
        LoadOptions {
            sequence_parallel: vec![candle_core::Device::Cpu],
            ..LoadOptions::default()
        },
    );
}

#[test]
fn wide_input_without_cfg_matches_the_reference_run() {
    check_run("layered_wide_nocfg");
}

/// Records phases and steps, and cancels after a given step.
struct Recorder {
    events: RefCell<Vec<String>>,
    cancel_after: Option<usize>,
}

impl Progress for Recorder {
    fn phase(&self, phase: Phase) {
        self.events.borrow_mut().push(phase.name().to_string());
    }
    fn step(&self, done: usize, total: usize) {
        self.events.borrow_mut().push(format!("{done}/{total}"));
    }
    fn is_cancelled(&self) -> bool {
        let done = self
            .events
            .borrow()
            .iter()
            .filter(|e| e.contains('/'))
            .count()
            .saturating_sub(1);
        self.cancel_after.is_some_and(|n| done >= n)
    }
}

#[test]
fn progress_is_reported_and_cancel_stops_between_steps() {
    let case = ts::case("run/layered_l2_cfgnorm");
    let mut pipe = pipeline();
    let mut opts = options(case, "runs/layered_l2_cfgnorm.safetensors");
    opts.num_inference_steps = 3;
    opts.init_noise = None;
    let rec = Recorder {
        events: RefCell::default(),
        cancel_after: None,
    };
    let out = pipe.decompose(&input_image(case), &opts, &rec).unwrap();
    assert_eq!(out.layers.len(), 2);
    assert_eq!(
        *rec.events.borrow(),
        ["encoding", "denoising", "0/3", "1/3", "2/3", "3/3", "decoding"]
    );

    let rec = Recorder {
        events: RefCell::default(),
        cancel_after: Some(1),
    };
    let err = pipe.decompose(&input_image(case), &opts, &rec).unwrap_err();
    assert!(matches!(err, engine::Error::Cancelled), "{err}");
    assert_eq!(rec.events.borrow().last().unwrap(), "1/3");
}

#[test]
fn same_seed_same_layers_and_bad_requests_are_clear_errors() {
    let case = ts::case("run/layered_l2_cfgnorm");
    let mut pipe = pipeline();
    let mut opts = options(case, "runs/layered_l2_cfgnorm.safetensors");
    opts.init_noise = None;
    opts.num_inference_steps = 1;
    let a = pipe.decompose(&input_image(case), &opts, &NoProgress).unwrap();
    let b = pipe.decompose(&input_image(case), &opts, &NoProgress).unwrap();
    assert_eq!(a.layers, b.layers);
    opts.seed += 1;
    let c = pipe.decompose(&input_image(case), &opts, &NoProgress).unwrap();
    assert_ne!(a.layers, c.layers);

    let mut bad = |f: &dyn Fn(&mut DecomposeOptions), needle: &str| {
        let mut o = opts.clone();
        f(&mut o);
        let err = pipe
            .decompose(&input_image(case), &o, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{needle} not in {err}");
    };
    bad(&|o| o.layers = 11, "layers");
    bad(&|o| o.resolution = 512, "640 or 1024");
    bad(&|o| o.prompt = "word ".repeat(600), "too long");
    bad(
        &|o| o.init_noise = Some(PathBuf::from("/no/such/noise.safetensors")),
        "init noise",
    );
}

#[test]
fn an_empty_prompt_is_replaced_by_a_caption_of_the_image() {
    // As the reference (prompt "" or " "): the resized RGBA image is captioned with the English
    // caption prompt, 3-D M-RoPE and the checkpoint's generation config, and the caption is what
    // gets encoded. With 8 new tokens the caption must be caption.json's (the reference's
    // get_image_caption on this very image), and the layers those of a run prompted with it.
    let case = ts::case("run/layered_l2_cfgnorm");
    let reference = ts::load_json("caption.json");
    let mut pipe = pipeline();
    let mut opts = options(case, "runs/layered_l2_cfgnorm.safetensors");
    opts.init_noise = None;
    opts.num_inference_steps = 1;
    opts.prompt = " ".into();
    opts.caption_max_new_tokens = reference["max_new_tokens"].as_u64().unwrap() as usize;
    let rec = Recorder {
        events: RefCell::default(),
        cancel_after: None,
    };
    let out = pipe.decompose(&input_image(case), &opts, &rec).unwrap();
    assert_eq!(rec.events.borrow()[..2], ["captioning", "encoding"]);
    let caption = out.record.caption.clone().expect("a caption in the run record");
    assert_eq!(caption, reference["generated_text"].as_str().unwrap());
    assert_eq!(out.record.prompt, " ");
    assert!(out.record.timings.caption > 0.0);

    let mut with_caption = opts.clone();
    with_caption.prompt = caption;
    let same = pipe.decompose(&input_image(case), &with_caption, &NoProgress).unwrap();
    assert_eq!(same.layers, out.layers);
    assert!(same.record.caption.is_none());

    opts.caption_max_new_tokens = 0;
    let err = pipe
        .decompose(&input_image(case), &opts, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("caption_max_new_tokens"), "{err}");
}
