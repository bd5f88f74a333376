//! Prompts with images (Edit-2509's text encoding) against transformers 5.24 / diffusers 0.42.1 on
//! the tiny checkpoint: expanded ids, 3-D M-RoPE positions, embeddings with the vision tower's
//! output scattered in, hidden states and `prompt_embeds` in both position modes
//! (`text_encoder.safetensors` `image/*`, `runs/edit_plus.safetensors`), f32 on CPU.

use std::sync::OnceLock;

use candle_core::{DType, Device, IndexOp, Tensor};
use engine::text_encoder::{
    embed_with_images, encode_prompt_with_images, MropeMode, MultimodalPrompt, Qwen25VLTextModel, VisionTower,
};
use engine::tokenizer::{edit_image_prefix, PromptTemplate, QwenTokenizer};
use engine::weights::ModelDir;
use image::{RgbImage, RgbaImage};
use test_support::*;

/// Worst error allowed, relative to the reference tensor's largest magnitude.
const TOLERANCE: f64 = 1e-4;
const EDIT_PROMPT: &str = "Make the sky purple and add a moon.";

struct Models {
    text: Qwen25VLTextModel,
    vision: VisionTower,
    tokenizer: QwenTokenizer,
}

fn models() -> &'static Models {
    static M: OnceLock<Models> = OnceLock::new();
    M.get_or_init(|| {
        let dir = ModelDir::open(edit_checkpoint()).unwrap();
        let (_, text) = Qwen25VLTextModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
        let vision = VisionTower::load(&dir, DType::F32, &Device::Cpu).unwrap();
        let tokenizer = QwenTokenizer::from_model_dir(&dir).unwrap();
        Models {
            text,
            vision,
            tokenizer,
        }
    })
}

/// The edit run's condition image (LANCZOS to ≈384², what the pipeline hands the encoder).
fn condition_image() -> RgbImage {
    let (w, h, px) = load_png_rgba8("images/edit_condition_lanczos.png");
    image::DynamicImage::ImageRgba8(RgbaImage::from_raw(w, h, px).unwrap()).to_rgb8()
}

fn prompt_text(name: &str) -> &'static str {
    if name == "edit" {
        EDIT_PROMPT
    } else {
        " "
    }
}

fn mode_name(mode: MropeMode) -> &'static str {
    match mode {
        MropeMode::ThreeD => "rope3d",
        MropeMode::OneD => "rope1d",
    }
}

/// The tokenised edit prompt for one recorded case.
fn edit_prompt(name: &str, mode: MropeMode) -> MultimodalPrompt {
    let m = models();
    let text = PromptTemplate::EDIT.format(&format!("{}{}", edit_image_prefix(1), prompt_text(name)));
    MultimodalPrompt::new(&m.tokenizer, &text, &[(1, 22, 34)], 2, mode).unwrap()
}

#[test]
fn ids_and_3d_positions_match_get_rope_index() {
    for name in ["edit", "space"] {
        let case = case(&format!("image/{name}"));
        let p = edit_prompt(name, MropeMode::ThreeD);
        assert_eq!(p.ids, json_u32s(&case["input_ids"]).unwrap(), "{name} ids");
        assert_eq!(p.ids.iter().filter(|&&t| t == 151655).count(), 187);
        let want = case["position_ids_3d"].as_array().unwrap();
        for (axis, row) in want.iter().enumerate() {
            assert_eq!(
                p.positions[axis],
                json_u32s(row).unwrap(),
                "{name} positions axis {axis}"
            );
        }
        assert_eq!(
            p.rope_delta,
            case["rope_delta_3d"].as_i64().unwrap(),
            "{name} rope delta"
        );
        let one_d = edit_prompt(name, MropeMode::OneD);
        assert_eq!(one_d.positions[1], (0..p.len() as u32).collect::<Vec<_>>());
        assert_eq!(one_d.rope_delta, 0);
    }
}

#[test]
fn embeddings_hidden_states_and_prompt_embeds_match_both_modes() {
    let m = models();
    let processed = m
        .vision
        .processor()
        .preprocess(&condition_image(), &Device::Cpu)
        .unwrap();
    let image_embeds = m.vision.encode(std::slice::from_ref(&processed)).unwrap();
    let mut worst = 0f64;
    for name in ["edit", "space"] {
        for mode in [MropeMode::OneD, MropeMode::ThreeD] {
            let key = format!("image/{name}/{}", mode_name(mode));
            let p = edit_prompt(name, mode);
            let hidden_ref = load_tensor("text_encoder.safetensors", &format!("{key}/hidden_states"));

            let embeds = embed_with_images(&m.text, std::slice::from_ref(&p.ids), 151655, Some(&image_embeds)).unwrap();
            let err = assert_close(&embeds.squeeze(0).unwrap(), &hidden_ref.i(0).unwrap(), TOLERANCE, &key);
            println!("{key} input embeddings: {err}");
            let hidden = m
                .text
                .forward(&embeds, &p.positions_tensor(&Device::Cpu).unwrap(), None)
                .unwrap();
            let err = assert_close(&hidden.squeeze(0).unwrap(), &hidden_ref.i(2).unwrap(), TOLERANCE, &key);
            println!("{key} last hidden state: {err}");
            worst = worst.max(err.rel);

            let (embeds, mask) = encode_prompt_with_images(
                &m.text,
                &m.vision,
                &m.tokenizer,
                &PromptTemplate::EDIT,
                &[prompt_text(name)],
                &[condition_image()],
                mode,
            )
            .unwrap();
            let want = load_tensor("text_encoder.safetensors", &format!("{key}/prompt_embeds"));
            let err = assert_close(&embeds, &want, TOLERANCE, &format!("{key}/prompt_embeds"));
            println!("{key} prompt_embeds: {err}");
            worst = worst.max(err.rel);
            assert_eq!(mask.dims(), &[1, want.dim(1).unwrap()]);
            assert_eq!(
                mask.to_dtype(DType::F32)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as usize,
                want.dim(1).unwrap()
            );
        }
    }
    println!("multimodal prompt worst rel error: {worst:.3e}");
}

#[test]
fn modes_really_differ() {
    // The 1-D/3-D switch must change the result (≈ 1.75 on the last hidden state here).
    let a = load_tensor("text_encoder.safetensors", "image/edit/rope1d/prompt_embeds");
    let b = load_tensor("text_encoder.safetensors", "image/edit/rope3d/prompt_embeds");
    assert!(compare(&a, &b).max_abs > 0.1);
}

#[test]
fn edit_run_prompt_embeds_match() {
    // What the Edit-Plus run used: 1-D positions (diffusers + transformers 5), prompt and " ".
    let m = models();
    let file = "runs/edit_plus.safetensors";
    let run = case("run/edit_plus");
    for (prompt, name) in [
        (run["prompt"].as_str().unwrap(), "prompt_embeds"),
        (run["negative_prompt"].as_str().unwrap(), "negative_prompt_embeds"),
    ] {
        let (embeds, _) = encode_prompt_with_images(
            &m.text,
            &m.vision,
            &m.tokenizer,
            &PromptTemplate::EDIT,
            &[prompt],
            &[condition_image()],
            MropeMode::OneD,
        )
        .unwrap();
        let err = assert_close(&embeds, &load_tensor(file, name), TOLERANCE, name);
        println!("edit run {name}: {err}");
    }
}

#[test]
fn batched_prompts_match_single_ones() {
    // Two prompts of different lengths in one call: right padding, masked keys, per-row 3-D
    // positions; each row equals its single encoding, the mask marks its length.
    let m = models();
    let cond = condition_image();
    let (batch, mask) = encode_prompt_with_images(
        &m.text,
        &m.vision,
        &m.tokenizer,
        &PromptTemplate::EDIT,
        &[EDIT_PROMPT, " "],
        std::slice::from_ref(&cond),
        MropeMode::ThreeD,
    )
    .unwrap();
    assert_eq!(batch.dims(), &[2, 208, 32]);
    let mask = mask.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    assert_eq!(mask[0].iter().sum::<u32>(), 208);
    assert_eq!(mask[1].iter().sum::<u32>(), 200);
    for (row, name) in [(0, "edit"), (1, "space")] {
        let want = load_tensor(
            "text_encoder.safetensors",
            &format!("image/{name}/rope3d/prompt_embeds"),
        );
        let len = want.dim(1).unwrap();
        let got = batch.i(row).unwrap().narrow(0, 0, len).unwrap().unsqueeze(0).unwrap();
        let err = assert_close(&got, &want, TOLERANCE, name);
        println!("batch row {row} ({name}): {err}");
        let rest = batch.i(row).unwrap().narrow(0, len, 208 - len).unwrap();
        assert_eq!(rest.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}

#[test]
fn image_count_mismatch_is_an_error() {
    let m = models();
    let err = MultimodalPrompt::new(
        &m.tokenizer,
        "<|vision_start|><|image_pad|><|vision_end|>",
        &[],
        2,
        MropeMode::ThreeD,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("1 <|image_pad|>") && err.contains("0 images"), "{err}");
    let embeds = Tensor::zeros((3, 32), DType::F32, &Device::Cpu).unwrap();
    let err = embed_with_images(&m.text, &[vec![1, 151655, 2]], 151655, Some(&embeds))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 image tokens") && err.contains("3 embeddings"), "{err}");
}
