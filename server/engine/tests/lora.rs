//! LoRA adapters against diffusers 0.42.1 + peft (`load_lora_weights`, `set_adapters`,
//! `fuse_lora`) on the tiny transformers: each published layout alone, three at once with their
//! own scales, one on the Layered transformer, and the offload path's host copies
//! (`tests/fixtures/reference/extra/lora/`, written by `tests/reference/extra_lora.py`). Also the
//! errors a user meets: unknown keys, a LoRA of another model, a missing half, a missing file.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use engine::lora::{linear_modules, merged_modules, LoraSet, LoraSpec};
use engine::pipeline::loading::{load_transformer, LoadOptions};
use engine::pipeline::{EditPipeline, LayeredPipeline};
use engine::transformer::{Config, QwenImageTransformer};
use engine::weights::ModelDir;
use test_support as ts;

const RTOL: f64 = 1e-5;

fn lora_dir() -> PathBuf {
    ts::reference_dir().join("extra/lora")
}

fn lora(name: &str, scale: f64) -> LoraSpec {
    LoraSpec::new(lora_dir().join(format!("{name}.safetensors")), scale)
}

fn outputs() -> HashMap<String, Tensor> {
    ts::load_reference("extra/lora/outputs.safetensors")
}

fn transformer(checkpoint: &str, adapters: Vec<LoraSpec>) -> QwenImageTransformer {
    let dir = ModelDir::open(ts::fixtures_dir().join(checkpoint)).unwrap();
    let cfg: Config = dir.read_json("transformer", "config.json").unwrap();
    let options = LoadOptions {
        lora: adapters,
        ..LoadOptions::default()
    };
    load_transformer(&dir, &cfg, &options).unwrap()
}

/// The recorded forward (inputs and img_shapes as `extra_transformer.py`).
fn forward(model: &QwenImageTransformer, tag: &str) -> Tensor {
    let r = ts::load_reference("transformer.safetensors");
    let get = |n: &str| r[&format!("{tag}/in/{n}")].clone();
    let (shapes, add_t) = if tag == "edit" {
        (vec![(1, 4, 6), (1, 6, 4)], None)
    } else {
        (vec![(1, 3, 4); 4], Some(Tensor::new(&[0u32, 1], &Device::Cpu).unwrap()))
    };
    let mask = r.get(&format!("{tag}/in/encoder_hidden_states_mask"));
    model
        .forward(
            &get("hidden_states"),
            &get("encoder_hidden_states"),
            mask,
            &get("timestep"),
            &shapes,
            add_t.as_ref(),
        )
        .unwrap()
}

fn check(case: &str, checkpoint: &str, tag: &str, adapters: Vec<LoraSpec>) {
    let out = outputs();
    let model = transformer(checkpoint, adapters);
    let ours = forward(&model, tag);
    ts::assert_close(&ours, &out[&format!("{case}/output")], RTOL, case);
    // The output moved: the adapters were applied, not ignored.
    let base = forward(&transformer(checkpoint, vec![]), tag);
    assert!(
        ts::max_abs_diff(&ours, &base) > 1e-2,
        "{case}: the LoRA changed nothing"
    );
}

#[test]
fn peft_layout_with_header_alpha_matches_diffusers() {
    check(
        "edit/peft",
        "tiny-qwen-image-edit-2509",
        "edit",
        vec![lora("peft", 1.0)],
    );
}

#[test]
fn diffusers_layout_with_alpha_tensors_and_mixed_ranks_matches_diffusers() {
    check(
        "edit/diffusers_alpha",
        "tiny-qwen-image-edit-2509",
        "edit",
        vec![lora("diffusers_alpha", 1.0)],
    );
}

#[test]
fn kohya_layout_matches_diffusers() {
    check(
        "edit/kohya",
        "tiny-qwen-image-edit-2509",
        "edit",
        vec![lora("kohya", 1.0)],
    );
}

#[test]
fn lightning_layout_as_released_matches_diffusers() {
    check(
        "edit/lightning",
        "tiny-qwen-image-edit-2509",
        "edit",
        vec![lora("lightning", 1.0)],
    );
}

#[test]
fn comfy_prefixed_layout_matches_diffusers() {
    check(
        "edit/comfy",
        "tiny-qwen-image-edit-2509",
        "edit",
        vec![lora("comfy", 1.0)],
    );
}

#[test]
fn three_adapters_with_their_own_scales_match_diffusers() {
    check(
        "edit/multi",
        "tiny-qwen-image-edit-2509",
        "edit",
        vec![lora("peft", 0.7), lora("kohya", -0.5), lora("lightning", 1.0)],
    );
}

#[test]
fn the_layered_transformer_takes_adapters_too() {
    check(
        "layered/kohya",
        "tiny-qwen-image-layered",
        "layered",
        vec![lora("kohya", 0.8)],
    );
}

#[test]
fn merged_weight_equals_the_fused_one() {
    // The multi case's probe (the Lightning adapter's img_mlp.net.0.proj of block 0) through a
    // VarBuilder the way the model's constructor reads it.
    let dir = ModelDir::open(ts::edit_checkpoint()).unwrap();
    let set = LoraSet::load(
        &[lora("peft", 0.7), lora("kohya", -0.5), lora("lightning", 1.0)],
        &linear_modules(&dir, "transformer").unwrap(),
    )
    .unwrap();
    assert!(merged_modules(&set).contains("transformer_blocks.0.img_mlp.net.0.proj"));
    let vb = set.wrap(dir.var_builder("transformer", DType::F32, &Device::Cpu).unwrap());
    let w = vb
        .get((256, 64), "transformer_blocks.0.img_mlp.net.0.proj.weight")
        .unwrap();
    ts::assert_close(&w, &outputs()["edit/multi/weight"], RTOL, "fused weight");
}

#[test]
fn host_copies_for_offload_hold_the_merged_weights() {
    // Offload packs the blocks read through the host VarBuilder; that builder is wrapped the same
    // way, so what it hands out (here on the CPU, as for the host copies) is merged.
    let dir = ModelDir::open(ts::edit_checkpoint()).unwrap();
    let set = LoraSet::load(&[lora("kohya", 1.0)], &linear_modules(&dir, "transformer").unwrap()).unwrap();
    let host = set.wrap(dir.var_builder("transformer", DType::F32, &Device::Cpu).unwrap());
    let w = host
        .pp("transformer_blocks")
        .pp(1)
        .get((64, 64), "attn.to_add_out.weight")
        .unwrap();
    ts::assert_close(&w, &outputs()["edit/kohya/weight"], RTOL, "host copy");
}

#[test]
fn pipelines_swap_adapters_without_reloading_the_rest() {
    let dir = || ModelDir::open(ts::edit_checkpoint()).unwrap();
    let mut edit = EditPipeline::load(dir(), LoadOptions::default()).unwrap();
    assert!(edit.lora().is_empty());
    edit.set_lora(&[lora("kohya", 1.0)]).unwrap();
    assert_eq!(edit.lora(), [lora("kohya", 1.0)]);
    // A bad adapter is refused before anything is dropped: the pipeline keeps the old one.
    let err = edit.set_lora(&[lora("no-such", 1.0)]).unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(edit.lora(), [lora("kohya", 1.0)]);
    edit.set_lora(&[]).unwrap();
    assert!(edit.lora().is_empty());

    let layered = ModelDir::open(ts::layered_checkpoint()).unwrap();
    let options = LoadOptions {
        lora: vec![lora("lightning", 0.5)],
        ..LoadOptions::default()
    };
    let mut p = LayeredPipeline::load(layered, options).unwrap();
    assert_eq!(p.lora(), [lora("lightning", 0.5)]);
    p.set_lora(&[]).unwrap();
}

#[test]
fn unknown_keys_are_named() {
    let dir = std::env::temp_dir().join(format!("lora-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, tensors: Vec<(&str, Tensor)>| {
        let path = dir.join(name);
        let map: HashMap<String, Tensor> = tensors.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        path
    };
    let z = |r: usize, c: usize| Tensor::zeros((r, c), DType::F32, &Device::Cpu).unwrap();
    let model = ModelDir::open(ts::edit_checkpoint()).unwrap();
    let modules = linear_modules(&model, "transformer").unwrap();
    let err = |path: PathBuf| {
        LoraSet::load(&[LoraSpec::new(path, 1.0)], &modules)
            .unwrap_err()
            .to_string()
    };

    // A text-encoder key and a DoRA scale beside a good pair: both named, nothing ignored.
    let e = err(write(
        "extra.safetensors",
        vec![
            ("transformer.img_in.lora_A.weight", z(4, 64)),
            ("transformer.img_in.lora_B.weight", z(64, 4)),
            ("text_encoder.model.layers.0.mlp.up_proj.lora_A.weight", z(4, 32)),
            ("transformer.img_in.dora_scale", z(1, 64)),
        ],
    ));
    assert!(e.contains("2 key(s)"), "{e}");
    assert!(
        e.contains("text_encoder.model.layers.0.mlp.up_proj.lora_A.weight"),
        "{e}"
    );
    assert!(e.contains("transformer.img_in.dora_scale"), "{e}");
    // A LoRA for a bigger model (block 59 does not exist here) or wrong shapes.
    let e = err(write(
        "other.safetensors",
        vec![
            ("transformer_blocks.59.attn.to_q.lora_down.weight", z(4, 64)),
            ("transformer_blocks.59.attn.to_q.lora_up.weight", z(64, 4)),
        ],
    ));
    assert!(e.contains("transformer_blocks.59.attn.to_q.lora_down.weight"), "{e}");
    let e = err(write(
        "shape.safetensors",
        vec![("img_in.lora_A.weight", z(4, 3072)), ("img_in.lora_B.weight", z(64, 4))],
    ));
    assert!(e.contains("do not fit") && e.contains("img_in"), "{e}");
    // Half a pair.
    let e = err(write("half.safetensors", vec![("img_in.lora_A.weight", z(4, 64))]));
    assert!(e.contains("needs both"), "{e}");
    // Not a file / not safetensors.
    assert!(err(dir.join("missing.safetensors")).contains("does not exist"));
    std::fs::write(
        dir.join("junk.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    )
    .unwrap();
    assert!(err(dir.join("junk.safetensors")).contains("junk.safetensors"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_shipped_lightning_scheduler_matches_diffusers_bit_for_bit() {
    // presets/qwen-image-lightning/scheduler_config.json, set up as the edit pipeline does.
    let path = ts::fixtures_dir().join("../../presets/qwen-image-lightning/scheduler_config.json");
    let cfg: engine::scheduler::SchedulerConfig =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(cfg.shift_terminal, None);
    let fixture = ts::load_json("extra/lora/lightning_sigmas.json");
    for case in fixture["cases"].as_array().unwrap() {
        let steps = case["steps"].as_u64().unwrap() as usize;
        let tokens = case["noisy_tokens"].as_u64().unwrap() as usize;
        let mut s = engine::scheduler::FlowMatchEulerScheduler::new(cfg.clone()).unwrap();
        let mu = s.edit_mu(tokens);
        assert!(
            (mu - case["mu"].as_f64().unwrap()).abs() < 1e-12,
            "mu at {tokens} tokens"
        );
        s.set_timesteps(steps, Some(mu)).unwrap();
        let want: Vec<f32> = ts::json_f64s(&case["sigmas"])
            .unwrap()
            .iter()
            .map(|&x| x as f32)
            .collect();
        assert_eq!(s.sigmas(), want.as_slice(), "{steps} steps, {tokens} tokens");
        let want: Vec<f32> = ts::json_f64s(&case["timesteps"])
            .unwrap()
            .iter()
            .map(|&x| x as f32)
            .collect();
        assert_eq!(s.timesteps(), want.as_slice());
    }
}

#[test]
fn a_lightning_style_edit_runs_four_steps_without_cfg() {
    let path = ts::fixtures_dir().join("../../presets/qwen-image-lightning/scheduler_config.json");
    let scheduler: engine::scheduler::SchedulerConfig =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let options = LoadOptions {
        lora: vec![lora("lightning", 1.0)],
        ..LoadOptions::default()
    };
    let mut edit = EditPipeline::load(ModelDir::open(ts::edit_checkpoint()).unwrap(), options).unwrap();
    let opts = engine::pipeline::EditOptions {
        num_inference_steps: 4,
        true_cfg_scale: 1.0,
        scheduler: Some(scheduler),
        height: Some(64),
        width: Some(96),
        ..Default::default()
    };
    let image = image::RgbImage::from_pixel(48, 32, image::Rgb([200, 40, 40]));
    let mut steps = Vec::new();
    let out = edit
        .edit_traced(
            &[image],
            "make it blue",
            &opts,
            &engine::pipeline::NoProgress,
            &mut |t| steps.push((t.step, t.v_uncond.is_some())),
        )
        .unwrap();
    assert_eq!(
        steps,
        [(0, false), (1, false), (2, false), (3, false)],
        "4 steps, no uncond pass"
    );
    assert_eq!(out.record.num_inference_steps, 4);
    assert!(out.record.scheduler_override);
    assert_eq!(out.record.lora, [lora("lightning", 1.0).describe()]);
    assert_eq!(out.image.dimensions(), (96, 64));
}
