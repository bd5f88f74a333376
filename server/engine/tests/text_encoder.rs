//! The Qwen2.5-VL language model and prompt encoding against what diffusers 0.42.1 +
//! transformers 5.24 computed on the tiny checkpoint (`tests/fixtures/reference/`,
//! `text_encoder.safetensors` and the pipeline runs), f32 on CPU.

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use engine::text_encoder::{encode_prompt, text_position_ids, Config, Qwen25VLTextModel};
use engine::tokenizer::{PromptTemplate, QwenTokenizer};
use engine::weights::ModelDir;
use serde_json::Value;
use test_support as ts;

/// Worst error allowed, relative to the reference tensor's largest magnitude.
const TOLERANCE: f32 = 1e-4;

fn model_dir() -> ModelDir {
    ModelDir::open(ts::fixtures_dir().join("tiny-qwen-image-layered")).unwrap()
}

struct Fixture {
    config: Config,
    model: Qwen25VLTextModel,
    tokenizer: QwenTokenizer,
    reference: HashMap<String, Tensor>,
    manifest: Value,
    tokens: Value,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = model_dir();
        let (config, model) = Qwen25VLTextModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
        let tokenizer = QwenTokenizer::from_model_dir(&dir).unwrap();
        let reference = candle_core::safetensors::load(
            ts::fixtures_dir().join("reference/text_encoder.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let read = |f: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(ts::fixtures_dir().join("reference").join(f)).unwrap())
                .unwrap()
        };
        Fixture {
            config,
            model,
            tokenizer,
            reference,
            manifest: read("manifest.json"),
            tokens: read("tokens.json"),
        }
    })
}

fn reference(name: &str) -> &'static Tensor {
    fixture()
        .reference
        .get(name)
        .unwrap_or_else(|| panic!("{name} not in text_encoder.safetensors"))
}

/// max |actual − expected| / max |expected|, after checking shapes.
fn relative_error(actual: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "shape");
    let actual = actual.to_dtype(DType::F32).unwrap();
    let diff = (actual - expected)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let scale = expected.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-12)
}

fn assert_close(what: &str, actual: &Tensor, expected: &Tensor) {
    let err = relative_error(actual, expected);
    println!("{what:<44} worst relative error {err:.2e}");
    assert!(err <= TOLERANCE, "{what}: relative error {err:.3e} > {TOLERANCE:e}");
}

/// The output after the final norm: the last of the stacked hidden states.
fn last(hidden_states: &Tensor) -> Tensor {
    hidden_states.get(hidden_states.dim(0).unwrap() - 1).unwrap()
}

fn prompt_text(name: &str) -> &'static str {
    fixture().tokens["prompts"][name]["text"].as_str().unwrap()
}

const PROMPTS: [&str; 7] = ["ascii", "chinese", "emoji", "empty", "long", "mixed", "space"];

#[test]
fn config_is_the_tiny_nested_one() {
    let c = &fixture().config;
    let t = &c.text_config;
    assert_eq!(
        (
            t.hidden_size,
            t.num_hidden_layers,
            t.num_attention_heads,
            t.num_key_value_heads()
        ),
        (32, 2, 2, 1)
    );
    assert_eq!(
        (t.vocab_size, t.mrope_section(), t.rope_theta()),
        (152064, vec![2, 3, 3], 1e6)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(
        (c.vision_config.depth, c.vision_config.fullatt_block_indexes.clone()),
        (2, vec![1])
    );
}

#[test]
fn last_hidden_state_matches_for_every_prompt() {
    let f = fixture();
    for name in PROMPTS {
        let ids = f
            .tokenizer
            .encode(&PromptTemplate::LAYERED.format(prompt_text(name)))
            .unwrap();
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let s = ids.dim(1).unwrap();
        let hidden = reference(&format!("text/{name}/hidden_states"));
        // [0] is the token embedding, [-1] the output after the final norm.
        assert_close(
            &format!("text/{name} embeddings"),
            &f.model.embed_tokens(&ids).unwrap().squeeze(0).unwrap(),
            &hidden.get(0).unwrap(),
        );
        let out = f
            .model
            .forward(&ids, &text_position_ids(1, s, &Device::Cpu).unwrap(), None)
            .unwrap();
        assert_close(
            &format!("text/{name} last hidden state"),
            &out.squeeze(0).unwrap(),
            &last(hidden),
        );
    }
}

#[test]
fn prompt_embeds_match_for_every_prompt() {
    let f = fixture();
    for name in PROMPTS {
        let (embeds, mask) = encode_prompt(
            &f.model,
            &f.tokenizer,
            &PromptTemplate::LAYERED,
            &[prompt_text(name)],
            512,
        )
        .unwrap();
        let expected = reference(&format!("text/{name}/prompt_embeds"));
        assert_close(&format!("text/{name}/prompt_embeds"), &embeds, expected);
        // The reference returns no mask for one prompt: all tokens are valid.
        assert_eq!(mask.dtype(), DType::U8);
        assert_eq!(mask.dims(), &embeds.dims()[..2]);
        assert!(
            mask.flatten_all()
                .unwrap()
                .to_vec1::<u8>()
                .unwrap()
                .iter()
                .all(|&m| m == 1),
            "{name}"
        );
    }
    // The long prompt (527 kept tokens) is cut at 512, as the reference does.
    assert_eq!(reference("text/long/prompt_embeds").dims(), &[1, 512, 32]);
}

#[test]
fn batch_of_two_pads_masks_and_repads_like_the_reference() {
    let f = fixture();
    let prompts = [prompt_text("ascii"), prompt_text("chinese")];
    let (embeds, mask) = encode_prompt(&f.model, &f.tokenizer, &PromptTemplate::LAYERED, &prompts, 512).unwrap();
    assert_close(
        "text/batch2/prompt_embeds",
        &embeds,
        reference("text/batch2/prompt_embeds"),
    );
    let expected_mask = reference("text/batch2/prompt_embeds_mask").to_dtype(DType::U8).unwrap();
    assert_eq!(mask.to_vec2::<u8>().unwrap(), expected_mask.to_vec2::<u8>().unwrap());
    // The zero rows past the shorter prompt are exactly zero.
    let tail = embeds.get(0).unwrap().narrow(0, 17, 7).unwrap();
    assert_eq!(tail.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);

    // The padded forward itself, all rows (padded queries still see the real keys before them).
    let batch = engine::text_encoder::PromptBatch::new(&f.tokenizer, &PromptTemplate::LAYERED, &prompts, 512).unwrap();
    let expected_ids = &f.manifest["cases"]["text/batch2"]["input_ids"];
    assert_eq!(serde_json::to_value(&batch.ids).unwrap(), *expected_ids);
    let mask = batch.attention_mask_tensor(&Device::Cpu).unwrap();
    assert_eq!(
        mask.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(),
        reference("text/batch2/attention_mask").to_vec2::<f32>().unwrap()
    );
    let ids = batch.ids_tensor(&Device::Cpu).unwrap();
    let positions = text_position_ids(2, batch.seq_len(), &Device::Cpu).unwrap();
    let out = f.model.forward(&ids, &positions, Some(&mask)).unwrap();
    assert_close(
        "text/batch2 last hidden state",
        &out,
        &last(reference("text/batch2/hidden_states")),
    );
}

/// The layered pipeline runs: `prompt_embeds` and, with CFG, `negative_prompt_embeds`.
#[test]
fn pipeline_prompt_and_negative_prompt_embeds_match() {
    let f = fixture();
    let mut checked = 0;
    for run in ["layered_l2_cfgnorm", "layered_l3_cfg", "layered_wide_nocfg"] {
        let case = &f.manifest["cases"][format!("run/{run}")];
        let tensors = candle_core::safetensors::load(
            ts::fixtures_dir().join(format!("reference/runs/{run}.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let mut pairs = vec![("prompt_embeds", case["prompt"].as_str().unwrap())];
        if let Some(negative) = case["negative_prompt"].as_str() {
            pairs.push(("negative_prompt_embeds", negative));
        }
        for (key, text) in pairs {
            let (embeds, _) = encode_prompt(&f.model, &f.tokenizer, &PromptTemplate::LAYERED, &[text], 512).unwrap();
            assert_close(&format!("runs/{run}/{key}"), &embeds, &tensors[key]);
            checked += 1;
        }
    }
    assert_eq!(checked, 5);
}

/// The LM under true 3-D M-RoPE positions and under the 1-D positions diffusers actually uses,
/// from the recorded input embeddings (image features already scattered in).
#[test]
fn image_prompts_match_with_3d_and_1d_positions() {
    let f = fixture();
    for prompt in ["edit", "space"] {
        let case = &f.manifest["cases"][format!("image/{prompt}")];
        for mode in ["rope3d", "rope1d"] {
            let hidden = reference(&format!("image/{prompt}/{mode}/hidden_states"));
            let embeds = hidden.get(0).unwrap().unsqueeze(0).unwrap();
            let s = embeds.dim(1).unwrap();
            let positions = if mode == "rope3d" {
                let rows: Vec<Vec<u32>> = serde_json::from_value(case["position_ids_3d"].clone()).unwrap();
                Tensor::new(rows, &Device::Cpu).unwrap().unsqueeze(1).unwrap()
            } else {
                text_position_ids(1, s, &Device::Cpu).unwrap()
            };
            let out = f.model.forward(&embeds, &positions, None).unwrap();
            assert_close(
                &format!("image/{prompt}/{mode} last hidden state"),
                &out.squeeze(0).unwrap(),
                &last(hidden),
            );
            // The template's 64 tokens dropped: the pipeline's prompt_embeds.
            let kept = out.narrow(1, 64, s - 64).unwrap();
            assert_close(
                &format!("image/{prompt}/{mode}/prompt_embeds"),
                &kept,
                reference(&format!("image/{prompt}/{mode}/prompt_embeds")),
            );
        }
    }
}

/// transformers ≥ 4.52 spells the weights `model.language_model.*`; the same tensors under that
/// name give the same model.
#[test]
fn both_tensor_spellings_load_the_same_model() {
    let f = fixture();
    let dir = model_dir();
    let mut tensors = HashMap::new();
    for file in dir.safetensors_files("text_encoder").unwrap() {
        for (name, t) in candle_core::safetensors::load(&file, &Device::Cpu).unwrap() {
            let name = match name.strip_prefix("model.") {
                Some(rest) => format!("model.language_model.{rest}"),
                None => name,
            };
            tensors.insert(name, t);
        }
    }
    assert!(tensors.contains_key("model.language_model.layers.1.self_attn.q_proj.bias"));
    let renamed =
        Qwen25VLTextModel::new(&f.config, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)).unwrap();
    let ids = Tensor::new(&[[151644u32, 8948, 198, 32, 2518]], &Device::Cpu).unwrap();
    let positions = text_position_ids(1, 5, &Device::Cpu).unwrap();
    let a = f.model.forward(&ids, &positions, None).unwrap();
    let b = renamed.forward(&ids, &positions, None).unwrap();
    assert_eq!(relative_error(&b, &a), 0.0);

    let empty = VarBuilder::from_tensors(HashMap::new(), DType::F32, &Device::Cpu);
    let err = Qwen25VLTextModel::new(&f.config, empty).unwrap_err().to_string();
    assert!(
        err.contains("model.embed_tokens.weight") && err.contains("model.language_model.embed_tokens.weight"),
        "{err}"
    );
}

#[test]
fn tied_lm_head_projects_onto_the_embedding_table() {
    let f = fixture();
    let vb = model_dir()
        .var_builder("text_encoder", DType::F32, &Device::Cpu)
        .unwrap();
    let head = f.model.lm_head(vb).unwrap();
    let ids = Tensor::new(&[[151644u32, 8948, 198]], &Device::Cpu).unwrap();
    let hidden = f
        .model
        .forward(&ids, &text_position_ids(1, 3, &Device::Cpu).unwrap(), None)
        .unwrap();
    let logits = head.forward(&hidden).unwrap();
    assert_eq!(logits.dims(), &[1, 3, 152064]);
    // Logit of token k = <hidden, embedding_k>.
    let k = 8948u32;
    let emb = f
        .model
        .embed_tokens(&Tensor::new(&[[k]], &Device::Cpu).unwrap())
        .unwrap();
    let dot = (hidden.get(0).unwrap().get(2).unwrap() * emb.flatten_all().unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let logit = logits.get(0).unwrap().get(2).unwrap().get(k as usize).unwrap();
    let (dot, logit) = (dot.to_scalar::<f32>().unwrap(), logit.to_scalar::<f32>().unwrap());
    assert!((dot - logit).abs() <= 1e-5 * dot.abs().max(1.0), "{dot} vs {logit}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let f = fixture();
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let err = f
        .model
        .forward(&ids, &text_position_ids(1, 4, &Device::Cpu).unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("position_ids must be [3, 1, 3]"), "{err}");
    let mask = Tensor::ones((2, 3), DType::U32, &Device::Cpu).unwrap();
    let err = f
        .model
        .forward(&ids, &text_position_ids(1, 3, &Device::Cpu).unwrap(), Some(&mask))
        .unwrap_err()
        .to_string();
    assert!(err.contains("attention_mask must be [1, 3]"), "{err}");
    let wrong_width = Tensor::zeros((1, 3, 16), DType::F32, &Device::Cpu).unwrap();
    let err = f
        .model
        .forward(&wrong_width, &text_position_ids(1, 3, &Device::Cpu).unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("width 16"), "{err}");
    let err = encode_prompt(&f.model, &f.tokenizer, &PromptTemplate::LAYERED, &["a"], 2048)
        .unwrap_err()
        .to_string();
    assert!(err.contains("between 1 and 1024"), "{err}");
    // 1-D positions given as [B, S] mean the same as [3, B, S].
    let flat = Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap();
    let a = f.model.forward(&ids, &flat, None).unwrap();
    let b = f
        .model
        .forward(&ids, &text_position_ids(1, 3, &Device::Cpu).unwrap(), None)
        .unwrap();
    assert_eq!(relative_error(&a, &b), 0.0);
}

/// The CUDA configuration (bf16 weights and activations) runs the same code; on CPU it must stay
/// within bf16 precision of the f32 reference.
#[test]
fn bf16_stays_close_to_the_reference() {
    let f = fixture();
    let (_, model) = Qwen25VLTextModel::load(&model_dir(), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(model.dtype(), DType::BF16);
    let prompts = [prompt_text("ascii"), prompt_text("chinese")];
    let (embeds, _) = encode_prompt(&model, &f.tokenizer, &PromptTemplate::LAYERED, &prompts, 512).unwrap();
    assert_eq!(embeds.dtype(), DType::BF16);
    let err = relative_error(&embeds, reference("text/batch2/prompt_embeds"));
    println!("text/batch2/prompt_embeds in bf16             worst relative error {err:.2e}");
    assert!(err < 3e-2, "bf16 relative error {err}");
}
