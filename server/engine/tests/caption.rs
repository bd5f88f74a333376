//! Layered's automatic caption against `QwenImageLayeredPipeline.get_image_caption`'s
//! `generate()` call (transformers 5.24) on the tiny checkpoint (`caption.json`, 8 new tokens):
//! the prompt ids, each step's raw logits, and the generated ids with the checkpoint's generation
//! config (top-k 1 + repetition penalty 1.05), plain greedy, and with 1-D positions. f32 on CPU.

use std::sync::OnceLock;

use candle_core::{DType, Device, IndexOp, Tensor};
use engine::text_encoder::{
    CaptionLanguage, CaptionOptions, Captioner, GenerationConfig, KvCache, MropeMode, MultimodalPrompt,
};
use engine::tokenizer::QwenTokenizer;
use engine::weights::ModelDir;
use image::RgbaImage;
use serde_json::Value;
use test_support::*;

struct Fixture {
    captioner: Captioner,
    tokenizer: QwenTokenizer,
    image: RgbaImage,
    reference: Value,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = ModelDir::open(layered_checkpoint()).unwrap();
        let captioner = Captioner::load(&dir, DType::F32, &Device::Cpu).unwrap();
        let tokenizer = QwenTokenizer::from_model_dir(&dir).unwrap();
        let reference = load_json("caption.json");
        let (w, h, px) = load_png_rgba8(reference["image"].as_str().unwrap());
        let image = RgbaImage::from_raw(w, h, px).unwrap();
        Fixture {
            captioner,
            tokenizer,
            image,
            reference,
        }
    })
}

fn options(positions: MropeMode) -> CaptionOptions {
    CaptionOptions {
        language: CaptionLanguage::En,
        max_new_tokens: fixture().reference["max_new_tokens"].as_u64().unwrap() as usize,
        positions,
    }
}

fn ids(key: &str) -> Vec<u32> {
    json_u32s(&fixture().reference[key]).unwrap_or_else(|| panic!("caption.json: {key}"))
}

#[test]
fn generation_config_is_the_checkpoints() {
    let g = fixture().captioner.generation();
    let r = &fixture().reference["generation_config"];
    assert_eq!(g.repetition_penalty, r["repetition_penalty"].as_f64().unwrap() as f32);
    assert_eq!(g.eos_token_id, json_u32s(&r["eos_token_id"]).unwrap());
    assert_eq!(g.top_k, Some(1));
    assert!(!g.samples());
}

#[test]
fn prompt_ids_match_the_processor() {
    let f = fixture();
    let grid = json_u32s(&f.reference["image_grid_thw"][0]).unwrap();
    assert_eq!(grid, vec![1, 46, 46]);
    let p = MultimodalPrompt::new(
        &f.tokenizer,
        CaptionLanguage::En.prompt(),
        &[(1, 46, 46)],
        2,
        MropeMode::ThreeD,
    )
    .unwrap();
    assert_eq!(p.ids, ids("input_ids"));
    // The Chinese prompt: 209 tokens before the image's 529.
    let cn = MultimodalPrompt::new(
        &f.tokenizer,
        CaptionLanguage::Cn.prompt(),
        &[(1, 46, 46)],
        2,
        MropeMode::ThreeD,
    )
    .unwrap();
    assert_eq!(cn.len(), 209 - 1 + 529);
}

#[test]
fn caption_with_the_generation_config_matches() {
    let f = fixture();
    let mut steps = Vec::new();
    let caption = f
        .captioner
        .caption_with(
            &f.tokenizer,
            &f.image,
            &options(MropeMode::ThreeD),
            f.captioner.generation(),
            &mut |l| steps.push(l.clone()),
        )
        .unwrap();
    println!("caption ids {:?}, text {:?}", caption.ids, caption.text);
    assert_eq!(caption.ids, ids("generated_ids"));
    assert_eq!(caption.text, f.reference["generated_text"].as_str().unwrap());

    // Raw logits of every step: the top-8 ids and their values.
    let top = f.reference["step_logits_top8"].as_array().unwrap();
    assert_eq!(steps.len(), top.len());
    let mut worst = 0f64;
    for (i, (logits, want)) in steps.iter().zip(top).enumerate() {
        let want_ids = json_u32s(&want["ids"]).unwrap();
        let want_values: Vec<f32> = json_f64s(&want["values"]).unwrap().iter().map(|&v| v as f32).collect();
        let idx = Tensor::new(want_ids.as_slice(), &Device::Cpu).unwrap();
        let got = logits.index_select(&idx, 0).unwrap();
        let err = assert_close(
            &got,
            &Tensor::new(want_values.as_slice(), &Device::Cpu).unwrap(),
            1e-4,
            "step logits",
        );
        worst = worst.max(err.rel);
        // The recorded ids are the top 8 of ours too (ties aside).
        let v = logits.to_vec1::<f32>().unwrap();
        let eighth = want_values[7];
        let above = v.iter().filter(|&&x| x > eighth + 1e-4).count();
        assert!(above <= 7, "step {i}: {above} logits above the reference's 8th");
    }
    println!("step logits worst rel error: {worst:.3e}");
}

#[test]
fn plain_greedy_and_1d_positions_match() {
    let f = fixture();
    let plain = f.captioner.generation().plain_greedy();
    let caption = f
        .captioner
        .caption_with(&f.tokenizer, &f.image, &options(MropeMode::ThreeD), &plain, &mut |_| {})
        .unwrap();
    assert_eq!(caption.ids, ids("plain_greedy_generated_ids"));
    let one_d = f
        .captioner
        .caption(&f.tokenizer, &f.image, &options(MropeMode::OneD))
        .unwrap();
    assert_eq!(one_d.ids, ids("generated_ids_without_mm_token_type_ids"));
    // The three settings give three different sequences here: each comparison is meaningful.
    assert_ne!(ids("generated_ids"), ids("plain_greedy_generated_ids"));
    assert_ne!(ids("generated_ids"), ids("generated_ids_without_mm_token_type_ids"));
}

#[test]
fn eos_and_max_new_tokens_stop_generation() {
    let f = fixture();
    let mut g: GenerationConfig = f.captioner.generation().clone();
    // Make the 3rd generated token a stop token: generation ends there, eos kept in the ids and
    // dropped from the text only if special (it is not here, so compare ids).
    let want = ids("generated_ids");
    g.eos_token_id = vec![want[2]];
    let c = f
        .captioner
        .caption_with(&f.tokenizer, &f.image, &options(MropeMode::ThreeD), &g, &mut |_| {})
        .unwrap();
    assert_eq!(c.ids, want[..3].to_vec());
    let two = CaptionOptions {
        max_new_tokens: 2,
        ..options(MropeMode::ThreeD)
    };
    let c = f.captioner.caption(&f.tokenizer, &f.image, &two).unwrap();
    assert_eq!(c.ids, want[..2].to_vec());
}

#[test]
fn cached_decoding_equals_a_full_forward() {
    // Prefill 5 tokens, then 2 more one at a time: the last hidden states equal one forward over
    // all 7 (3-D positions with an offset, as after an image).
    let text = fixture().captioner.text_model();
    let ids: Vec<u32> = vec![151644, 8948, 198, 2610, 525, 264, 10950];
    let pos: Vec<u32> = vec![0, 1, 2, 3, 4, 10, 11];
    let all = Tensor::new(vec![ids.clone()], &Device::Cpu).unwrap();
    let all_pos = Tensor::new(vec![pos.clone()], &Device::Cpu).unwrap();
    let full = text.forward(&all, &all_pos, None).unwrap();
    let mut cache = KvCache::new();
    let head = Tensor::new(vec![ids[..5].to_vec()], &Device::Cpu).unwrap();
    let head_pos = Tensor::new(vec![pos[..5].to_vec()], &Device::Cpu).unwrap();
    let prefill = text.forward_cached(&head, &head_pos, &mut cache).unwrap();
    assert_close(&prefill, &full.narrow(1, 0, 5).unwrap(), 1e-5, "prefill");
    for k in 5..7 {
        let one = Tensor::new(&[[ids[k]]], &Device::Cpu).unwrap();
        let one_pos = Tensor::new(&[[pos[k]]], &Device::Cpu).unwrap();
        let out = text.forward_cached(&one, &one_pos, &mut cache).unwrap();
        let err = assert_close(&out.i((0, 0)).unwrap(), &full.i((0, k)).unwrap(), 1e-5, "cached step");
        println!("cached step {k}: {err}");
    }
    assert_eq!(cache.len(), 7);
}

#[test]
fn bf16_captioning_runs() {
    let f = fixture();
    let dir = ModelDir::open(layered_checkpoint()).unwrap();
    let bf16 = Captioner::load(&dir, DType::BF16, &Device::Cpu).unwrap();
    let mut first = None;
    let opts = CaptionOptions {
        max_new_tokens: 2,
        ..options(MropeMode::ThreeD)
    };
    let c = bf16
        .caption_with(&f.tokenizer, &f.image, &opts, bf16.generation(), &mut |l| {
            first.get_or_insert_with(|| l.clone());
        })
        .unwrap();
    assert_eq!(c.ids.len(), 2);
    // bf16 logits stay close to the f32 reference's (top-1 of step 0).
    let want = json_f64s(&f.reference["step_logits_top8"][0]["values"]).unwrap()[0] as f32;
    let id = json_u32s(&f.reference["step_logits_top8"][0]["ids"]).unwrap()[0];
    let got = first.unwrap().i(id as usize).unwrap().to_scalar::<f32>().unwrap();
    println!("bf16 step-0 logit of the reference's top token: {got} vs {want}");
    assert!((got - want).abs() < 0.1 * want.abs(), "{got} vs {want}");
}
