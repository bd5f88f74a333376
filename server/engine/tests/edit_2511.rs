//! Qwen-Image-Edit-2511 (`zero_cond_t`) against diffusers 0.42.1 on its tiny checkpoint
//! (`tests/fixtures/tiny-qwen-image-edit-2511`, fixtures in `reference/extra/edit_2511/`, written by
//! `tests/reference/extra_edit_2511.py`): every stage of one transformer forward (the t and t = 0
//! embeddings, each block, the output norm, the velocity), then the edit_plus run's settings end to
//! end from the reference's noise and prompt embeddings (every step, the final latents, the PNG);
//! and the same checkpoint is chosen by `edit_model_path` alone.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use engine::pipeline::{EditOptions, EditPipeline, EditPromptEmbeds, LoadOptions, NoProgress};
use engine::text_encoder::MropeMode;
use engine::transformer::{Config, QwenImageTransformer};
use engine::weights::ModelDir;
use test_support as ts;

const DIR: &str = "extra/edit_2511";
const RUN: &str = "extra/edit_2511/runs/edit_2511.safetensors";

fn checkpoint() -> std::path::PathBuf {
    ts::fixtures_dir().join("tiny-qwen-image-edit-2511")
}

fn cases() -> serde_json::Value {
    ts::load_json(&format!("{DIR}/cases.json"))
}

#[test]
fn the_2511_checkpoint_says_zero_cond_t_and_2509_does_not() {
    let cfg: Config = ModelDir::open(checkpoint())
        .unwrap()
        .read_json("transformer", "config.json")
        .unwrap();
    assert!(cfg.zero_cond_t);
    let cfg: Config = ModelDir::open(ts::edit_checkpoint())
        .unwrap()
        .read_json("transformer", "config.json")
        .unwrap();
    assert!(!cfg.zero_cond_t);
}

#[test]
fn transformer_matches_diffusers_at_every_stage() {
    let dir = ModelDir::open(checkpoint()).unwrap();
    let cfg: Config = dir.read_json("transformer", "config.json").unwrap();
    let model =
        QwenImageTransformer::new(&cfg, dir.var_builder("transformer", DType::F32, &Device::Cpu).unwrap()).unwrap();
    let r: HashMap<String, Tensor> = ts::load_reference(&format!("{DIR}/transformer.safetensors"));
    let get = |n: &str| r[&format!("edit2511/{n}")].clone();
    let shapes = [(1, 4, 6), (1, 6, 4)];
    let sigma = get("in/timestep");
    let (out, trace) = model
        .forward_with_trace(
            &get("in/hidden_states"),
            &get("in/encoder_hidden_states"),
            None,
            &sigma,
            &shapes,
            None,
        )
        .unwrap();
    let check = |name: &str, ours: &Tensor, want: &Tensor| {
        let e = ts::assert_close(ours, want, 1e-4, name);
        println!("{name}: {e}");
    };
    // diffusers embeds [t, 0] in one batch: row 0 drives the noisy tokens, text and norm_out,
    // row 1 the condition tokens.
    let temb = get("temb");
    assert_eq!(temb.dims(), [2, 64]);
    check("temb (t)", &trace.temb, &temb.narrow(0, 0, 1).unwrap());
    let temb0 = model.timestep_embedding(&sigma.zeros_like().unwrap(), None).unwrap();
    check("temb (t = 0)", &temb0, &temb.narrow(0, 1, 1).unwrap());
    check("img_in", &trace.img_in, &get("img_in"));
    check("txt_norm", &trace.txt_norm, &get("txt_norm"));
    check("txt_in", &trace.txt_in, &get("txt_in"));
    for (i, (img, txt)) in trace.blocks.iter().enumerate() {
        check(&format!("block{i}/img"), img, &get(&format!("block{i}/img")));
        check(&format!("block{i}/txt"), txt, &get(&format!("block{i}/txt")));
    }
    check("norm_out", &trace.norm_out, &get("norm_out"));
    check("output", &out, &get("output"));

    // Without the flag the same weights give another output: the test sees the modulation.
    let plain = Config {
        zero_cond_t: false,
        ..cfg
    };
    let model = QwenImageTransformer::new(
        &plain,
        dir.var_builder("transformer", DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let other = model
        .forward(
            &get("in/hidden_states"),
            &get("in/encoder_hidden_states"),
            None,
            &sigma,
            &shapes,
            None,
        )
        .unwrap();
    assert!(ts::max_abs_diff(&other, &get("output")) > 1e-2);
}

#[test]
fn the_edit_plus_run_on_2511_matches_diffusers() {
    let c = &cases()["cases"]["run/edit_2511"];
    let mut pipe = EditPipeline::load(ModelDir::open(checkpoint()).unwrap(), LoadOptions::default()).unwrap();
    let opts = EditOptions {
        negative_prompt: c["negative_prompt"].as_str().map(String::from),
        true_cfg_scale: c["true_cfg_scale"].as_f64().unwrap(),
        num_inference_steps: c["num_inference_steps"].as_u64().unwrap() as usize,
        seed: c["seed"].as_u64().unwrap(),
        init_noise: Some(ts::reference_dir().join(RUN)),
        height: Some(c["height"].as_u64().unwrap() as u32),
        width: Some(c["width"].as_u64().unwrap() as u32),
        mrope: MropeMode::OneD,
        scheduler: None,
    };
    // generate.py's edit input (the same synthetic image).
    let image = image::open(ts::reference_dir().join(c["input_png"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let embeds = EditPromptEmbeds {
        prompt: ts::load_tensor(RUN, "prompt_embeds"),
        negative: Some(ts::load_tensor(RUN, "negative_prompt_embeds")),
    };
    let check = |what: String, actual: &Tensor| {
        let e = ts::assert_close(actual, &ts::load_tensor(RUN, &what), 1e-4, &what);
        println!("{what}: {e}");
    };
    let out = pipe
        .edit_with_prompt_embeds(
            &[image],
            c["prompt"].as_str().unwrap(),
            &embeds,
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
    check("final_latents".into(), &out.final_latents);
    let rel = c["output_pngs"][0].as_str().unwrap();
    let (rw, rh, reference) = ts::load_png_rgba8(&format!("{DIR}/{rel}"));
    assert_eq!(out.image.dimensions(), (rw, rh));
    let rgba = image::DynamicImage::ImageRgb8(out.image.clone()).to_rgba8();
    let max_diff = rgba
        .as_raw()
        .iter()
        .zip(&reference)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(max_diff <= 1, "edited image differs by {max_diff}/255");
}
