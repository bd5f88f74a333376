//! End-to-end parity of the Edit-2509 pipeline with diffusers' QwenImageEditPlusPipeline on the
//! tiny checkpoint (fixture run `run/edit_plus`): from the reference's own initial noise and
//! prompt embeddings, the condition latents, every step's velocities and latents, the final
//! latents and the output PNG must match the recorded run; then the same with the prompts
//! encoded by the engine's own multimodal encoder (1-D M-RoPE, as the reference computed them).
//! Also the RGBA layer edit around the pipeline.

use std::cell::RefCell;

use candle_core::Tensor;
use engine::pipeline::edit::ConditionImage;
use engine::pipeline::layer_edit::{edit_layer_with, AlphaMode, LayerEditOptions};
use engine::pipeline::{EditOptions, EditPipeline, EditPromptEmbeds, LoadOptions, NoProgress, Phase, Progress};
use engine::text_encoder::MropeMode;
use engine::weights::ModelDir;
use image::{Rgba, RgbaImage};
use test_support as ts;

const RUN: &str = "runs/edit_plus.safetensors";

fn pipeline() -> EditPipeline {
    pipeline_with(LoadOptions::default())
}

/// The tiny edit pipeline with its text encoder kept, loaded with `options` otherwise.
fn pipeline_with(options: LoadOptions) -> EditPipeline {
    let model = ModelDir::open(ts::edit_checkpoint()).unwrap();
    EditPipeline::load(
        model,
        LoadOptions {
            keep_text_encoder: true,
            ..options
        },
    )
    .unwrap()
}

fn case() -> &'static serde_json::Value {
    ts::case("run/edit_plus")
}

fn input_image() -> image::RgbImage {
    image::open(ts::reference_dir().join(case()["input_png"].as_str().unwrap()))
        .unwrap()
        .to_rgb8()
}

/// The reference run's parameters, with its initial noise injected.
fn options() -> EditOptions {
    let c = case();
    EditOptions {
        negative_prompt: c["negative_prompt"].as_str().map(String::from),
        true_cfg_scale: c["true_cfg_scale"].as_f64().unwrap(),
        num_inference_steps: c["num_inference_steps"].as_u64().unwrap() as usize,
        seed: c["seed"].as_u64().unwrap(),
        init_noise: Some(ts::reference_dir().join(RUN)),
        height: Some(c["height"].as_u64().unwrap() as u32),
        width: Some(c["width"].as_u64().unwrap() as u32),
        // diffusers 0.42.1 + transformers 5 give the image tokens 1-D positions.
        mrope: MropeMode::OneD,
        scheduler: None,
    }
}

/// The reference's recorded prompt embeddings (its multimodal encoder's output).
fn recorded_embeds() -> EditPromptEmbeds {
    EditPromptEmbeds {
        prompt: ts::load_tensor(RUN, "prompt_embeds"),
        negative: Some(ts::load_tensor(RUN, "negative_prompt_embeds")),
    }
}

#[test]
fn edit_plus_run_matches_the_reference() {
    let c = case();
    let mut pipe = pipeline();
    let opts = options();
    assert_eq!(opts.uses_cfg(), c["do_true_cfg"].as_bool().unwrap());
    let image = input_image();

    // Condition tokens: the ≈1 MP VAE image (1248×832 → 4056 tokens), strided in the fixture.
    let condition = ConditionImage::new(&image).unwrap();
    assert_eq!(condition.vl.dimensions(), (480, 320), "VL condition image size");
    let (cond, shapes) = pipe.encode_condition(std::slice::from_ref(&condition)).unwrap();
    let expected_shape = &c["img_shapes"][1];
    assert_eq!(
        shapes,
        vec![(
            1,
            expected_shape[1].as_u64().unwrap() as usize,
            expected_shape[2].as_u64().unwrap() as usize
        )]
    );
    assert_eq!(cond.dim(1).unwrap(), c["s_cond"].as_u64().unwrap() as usize);
    let err = ts::assert_close(
        &ts::as_stored(&cond, RUN, "cond_latents"),
        &ts::load_tensor(RUN, "cond_latents"),
        1e-4,
        "cond_latents",
    );
    println!("cond_latents: {err}");

    let worst = RefCell::new(0f64);
    let check = |what: String, actual: &Tensor| {
        let err = ts::assert_close(actual, &ts::load_tensor(RUN, &what), 1e-4, &what);
        println!("{what}: {err}");
        let mut w = worst.borrow_mut();
        *w = w.max(err.rel);
    };
    let out = pipe
        .edit_with_prompt_embeds(
            &[image],
            c["prompt"].as_str().unwrap(),
            &recorded_embeds(),
            &opts,
            &NoProgress,
            &mut |s| {
                check(format!("step{}/v_cond", s.step), s.v_cond);
                check(format!("step{}/v_uncond", s.step), s.v_uncond.expect("CFG run"));
                check(format!("step{}/v_guided", s.step), s.v_guided);
                check(format!("step{}/latents_after", s.step), s.latents_after);
            },
        )
        .unwrap();
    let final_err = ts::assert_close(
        &out.final_latents,
        &ts::load_tensor(RUN, "final_latents"),
        1e-4,
        "final_latents",
    );
    println!("final_latents: {final_err}");

    let [h, w] = [
        c["output_hw"][0].as_u64().unwrap() as u32,
        c["output_hw"][1].as_u64().unwrap() as u32,
    ];
    assert_eq!((out.record.height, out.record.width), (h, w));
    assert_png_matches(&out.image);
    println!("worst relative error over every step {:.2e}", worst.into_inner());
    println!("timings: {:?}", out.record.timings);
    assert_eq!(out.record.pipeline, "QwenImageEditPlusPipeline");
    assert_eq!(out.record.images, 1);
}

/// Several devices (issue 21), each on a second copy of the DiT on its own thread (a second GPU
/// on a CUDA host): CFG-parallel, where the negative prompt (shorter, so padded and masked in
/// the batched path) runs on the copy, and sequence-parallel, where the copies share each
/// forward's image tokens. Every step still matches the reference.
#[test]
fn edit_on_two_devices_matches_the_reference() {
    let c = case();
    let cfg_parallel = LoadOptions {
        cfg_parallel: Some(candle_core::Device::Cpu),
        ..LoadOptions::default()
    };
    let sequence_parallel = LoadOptions {
        sequence_parallel: vec![candle_core::Device::Cpu],
        ..LoadOptions::default()
    };
    for (how, load) in [("cfg-parallel", cfg_parallel), ("sequence-parallel", sequence_parallel)] {
        let mut pipe = pipeline_with(load);
        let check = |what: String, actual: &Tensor| {
            let err = ts::assert_close(actual, &ts::load_tensor(RUN, &what), 1e-4, &format!("{how} {what}"));
            println!("{how} {what}: {err}");
        };
        let out = pipe
            .edit_with_prompt_embeds(
                &[input_image()],
                c["prompt"].as_str().unwrap(),
                &recorded_embeds(),
                &options(),
                &NoProgress,
                &mut |s| {
                    check(format!("step{}/v_uncond", s.step), s.v_uncond.expect("CFG run"));
                    check(format!("step{}/latents_after", s.step), s.latents_after);
                },
            )
            .unwrap();
        check("final_latents".into(), &out.final_latents);
        assert_png_matches(&out.image);
    }
}

fn assert_png_matches(image: &image::RgbImage) {
    let (rw, rh, reference) = ts::load_png_rgba8(case()["output_pngs"][0].as_str().unwrap());
    assert_eq!(image.dimensions(), (rw, rh));
    let rgba = image::DynamicImage::ImageRgb8(image.clone()).to_rgba8();
    let max_diff = rgba
        .as_raw()
        .iter()
        .zip(&reference)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    println!("edited.png: max diff {max_diff}/255");
    assert!(max_diff <= 1, "edited image differs by {max_diff}/255");
}

#[test]
fn edit_plus_with_the_engines_prompt_encoder_matches_the_reference() {
    let c = case();
    let mut pipe = pipeline();
    let opts = options();
    let image = input_image();
    let prompt = c["prompt"].as_str().unwrap();
    // The embeddings the pipeline computes (both prompts in one batch, the image once).
    let condition = ConditionImage::new(&image).unwrap();
    let embeds = pipe
        .encode_prompts(std::slice::from_ref(&condition), prompt, &opts, &NoProgress)
        .unwrap();
    let err = ts::assert_close(
        &embeds.prompt,
        &ts::load_tensor(RUN, "prompt_embeds"),
        1e-4,
        "prompt_embeds",
    );
    println!("prompt_embeds: {err}");
    let negative = embeds.negative.expect("CFG run");
    let err = ts::assert_close(
        &negative,
        &ts::load_tensor(RUN, "negative_prompt_embeds"),
        1e-4,
        "negative_prompt_embeds",
    );
    println!("negative_prompt_embeds: {err}");
    // The whole call, encoding included.
    let out = pipe.edit(&[image], prompt, &opts, &NoProgress).unwrap();
    let err = ts::assert_close(
        &out.final_latents,
        &ts::load_tensor(RUN, "final_latents"),
        1e-4,
        "final_latents",
    );
    println!("final_latents (engine-encoded prompts): {err}");
    assert_png_matches(&out.image);
    assert!(out.record.timings.encode_prompt > 0.0);
}

/// Records phases and steps, and cancels after a given step.
struct Recorder {
    events: RefCell<Vec<String>>,
    cancel_after: Option<usize>,
}

impl Progress for Recorder {
    fn phase(&self, phase: Phase) {
        self.events.borrow_mut().push(phase.name().into());
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

/// A small run (the tiny model at 128×192 output, seeded noise) for the checks below.
fn small_options(steps: usize) -> EditOptions {
    EditOptions {
        num_inference_steps: steps,
        height: Some(128),
        width: Some(192),
        seed: 3,
        ..EditOptions::default()
    }
}

#[test]
fn progress_is_reported_and_cancellation_stops_between_steps() {
    let mut pipe = pipeline();
    let image = input_image();
    let rec = Recorder {
        events: RefCell::default(),
        cancel_after: None,
    };
    let out = pipe
        .edit_with_prompt_embeds(
            std::slice::from_ref(&image),
            "x",
            &recorded_embeds(),
            &small_options(3),
            &rec,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(
        rec.events.into_inner(),
        ["encoding", "denoising", "0/3", "1/3", "2/3", "3/3", "decoding"]
    );
    assert_eq!(out.image.dimensions(), (192, 128));

    let rec = Recorder {
        events: RefCell::default(),
        cancel_after: Some(1),
    };
    let err = pipe
        .edit_with_prompt_embeds(&[image], "x", &recorded_embeds(), &small_options(3), &rec, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, engine::Error::Cancelled), "{err}");
    assert_eq!(rec.events.into_inner(), ["encoding", "denoising", "0/3", "1/3"]);
}

#[test]
fn prompt_embeddings_must_fit_the_model_and_the_cfg_choice() {
    // These are refused before any model runs.
    let mut pipe = pipeline();
    let image = input_image();
    let no_neg = EditPromptEmbeds {
        negative: None,
        ..recorded_embeds()
    };
    let err = pipe.edit_with_prompt_embeds(
        std::slice::from_ref(&image),
        "x",
        &no_neg,
        &small_options(2),
        &NoProgress,
        &mut |_| {},
    );
    assert!(err.unwrap_err().to_string().contains("no negative prompt embeddings"));
    let no_cfg = EditOptions {
        negative_prompt: None,
        ..small_options(2)
    };
    let err = pipe.edit_with_prompt_embeds(
        std::slice::from_ref(&image),
        "x",
        &recorded_embeds(),
        &no_cfg,
        &NoProgress,
        &mut |_| {},
    );
    assert!(err.unwrap_err().to_string().contains("CFG is off"));
    let wrong = EditPromptEmbeds {
        prompt: Tensor::zeros((1, 4, 7), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        negative: None,
    };
    let err = pipe.edit_with_prompt_embeds(
        std::slice::from_ref(&image),
        "x",
        &wrong,
        &no_cfg,
        &NoProgress,
        &mut |_| {},
    );
    let msg = err.unwrap_err().to_string();
    assert!(msg.contains("[1, 4, 7]") && msg.contains("[1, L, 32]"), "{msg}");
    let one_step = EditOptions {
        num_inference_steps: 1,
        ..small_options(2)
    };
    let err = pipe.edit_with_prompt_embeds(&[image], "x", &recorded_embeds(), &one_step, &NoProgress, &mut |_| {});
    assert!(err.unwrap_err().to_string().contains("at least 2 inference steps"));
}

#[test]
fn a_layered_checkpoint_is_refused_as_an_edit_model() {
    let model = ModelDir::open(ts::layered_checkpoint()).unwrap();
    let err = EditPipeline::load(model, LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("Qwen-Image-Layered model"), "{err}");
}

/// The RGBA layer edit around the real (tiny) pipeline: holes stay holes, soft edges keep their
/// alpha, and the result has the layer's size.
#[test]
fn layer_edit_on_the_tiny_model_keeps_the_layers_alpha() {
    let mut pipe = pipeline();
    // 96×64 layer: transparent left third, an alpha ramp, an opaque block with a round hole.
    let layer = RgbaImage::from_fn(96, 64, |x, y| {
        let hole = (x as i32 - 70).pow(2) + (y as i32 - 32).pow(2) < 100;
        let a = match x {
            _ if hole => 0,
            0..32 => 0,
            32..48 => ((x - 31) * 16 - 1) as u8,
            _ => 255,
        };
        Rgba([(x * 2) as u8, 40, (y * 3) as u8, a])
    });
    // Without CFG (one forward per step, so no uncond velocity), to keep the test short.
    let edit = EditOptions {
        negative_prompt: None,
        ..small_options(2)
    };
    let options = LayerEditOptions {
        edit,
        alpha: AlphaMode::KeepOriginal,
        key_color: None,
    };
    let single = EditPromptEmbeds {
        negative: None,
        ..recorded_embeds()
    };
    let mut uncond_seen = false;
    let (out, key) = edit_layer_with(&layer, &options, |composite| {
        assert_eq!(composite.dimensions(), (96, 64));
        let run = pipe.edit_with_prompt_embeds(
            std::slice::from_ref(composite),
            "make it red",
            &single,
            &options.edit,
            &NoProgress,
            &mut |s| uncond_seen |= s.v_uncond.is_some(),
        )?;
        assert_eq!(run.image.dimensions(), (192, 128));
        Ok(run.image)
    })
    .unwrap();
    assert!(!uncond_seen);
    assert_eq!(key, engine::pipeline::layer_edit::OFFICIAL_KEY_COLOR);
    assert_eq!(out.dimensions(), (96, 64));
    let mut soft = 0;
    for (o, l) in out.pixels().zip(layer.pixels()) {
        assert_eq!(o.0[3], l.0[3], "alpha kept");
        if l.0[3] == 0 {
            assert_eq!(o.0, [0, 0, 0, 0], "holes stay empty");
        }
        soft += usize::from(l.0[3] > 0 && l.0[3] < 255);
    }
    assert_eq!(soft, 15 * 64, "the soft edge is there to check");
}

/// The same pipeline in half precision (f16 on the CPU stands in for bf16 on CUDA: the same
/// casts, with norms, softmax, RoPE and the scheduler in f32): it runs and lands near the f32
/// run from the same noise.
#[test]
fn half_precision_edit_runs_and_stays_close() {
    let model = ModelDir::open(ts::edit_checkpoint()).unwrap();
    let load = LoadOptions {
        dtype: candle_core::DType::F16,
        ..LoadOptions::default()
    };
    let mut half = EditPipeline::load(model, load).unwrap();
    let image = input_image();
    let out = half
        .edit_with_prompt_embeds(
            std::slice::from_ref(&image),
            "x",
            &recorded_embeds(),
            &options(),
            &NoProgress,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(out.final_latents.dtype(), candle_core::DType::F32, "latents stay f32");
    assert_eq!(out.record.dtype, "F16");
    let err = ts::compare(&out.final_latents, &ts::load_tensor(RUN, "final_latents"));
    println!("f16 final_latents vs f32 reference: {err}");
    assert!(err.rel < 1e-2, "{err}");
}

/// The decompose pipeline lends its kept text encoder to the edit pipeline only when the edit
/// checkpoint's text encoder is the same weights, placed the same way: the tiny Edit fixture's
/// `text_encoder` links to the Layered one's (as hub snapshots of equal files link to one blob
/// hash); a copy of the files is not known to be the same without hashing 16 GB, so it loads.
#[test]
fn the_text_encoder_is_shared_only_when_the_weights_are_the_same() {
    use engine::pipeline::LayeredPipeline;
    let keep = LoadOptions {
        keep_text_encoder: true,
        ..LoadOptions::default()
    };
    let layered = LayeredPipeline::load(ModelDir::open(ts::layered_checkpoint()).unwrap(), keep.clone()).unwrap();
    let shared = layered.shared_text_model().expect("a kept text encoder is lent");

    let linked = ModelDir::open(ts::edit_checkpoint()).unwrap();
    assert!(shared.serves(&linked, &keep), "same files, same placement");
    let f16 = LoadOptions {
        dtype: candle_core::DType::F16,
        ..keep.clone()
    };
    assert!(!shared.serves(&linked, &f16), "another dtype is another model");

    let copied = std::env::temp_dir().join(format!("edit-copied-text-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copied);
    std::fs::create_dir_all(copied.join("text_encoder")).unwrap();
    for entry in std::fs::read_dir(ts::edit_checkpoint()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "text_encoder" {
            std::os::unix::fs::symlink(entry.path(), copied.join(entry.file_name())).unwrap();
        }
    }
    for entry in std::fs::read_dir(ts::edit_checkpoint().join("text_encoder")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copied.join("text_encoder").join(entry.file_name())).unwrap();
    }
    assert!(
        !shared.serves(&ModelDir::open(&copied).unwrap(), &keep),
        "a copy is loaded, not assumed equal"
    );
    std::fs::remove_dir_all(&copied).unwrap();

    let edit = EditPipeline::load_sharing(linked, keep.clone(), Some(&shared)).unwrap();
    let lent_back = edit.shared_text_model().expect("the edit pipeline keeps it too");
    assert_eq!(lent_back.weights, shared.weights);
}
