//! Text generation with Qwen2.5-VL, for Qwen-Image-Layered's automatic caption of an image
//! (`QwenImageLayeredPipeline.get_image_caption`).
//!
//! - The caption prompt (English or Chinese, [`CaptionLanguage`]) holds one image placeholder;
//!   the image (the pipeline's resized RGBA input) goes through the processor (composited over
//!   white) and the vision tower.
//! - Positions are true 3-D M-RoPE: the pipeline hands the whole processor output to
//!   `generate()`, `mm_token_type_ids` included. After the prompt every new token is at
//!   `index + rope_delta` on all three axes.
//! - Decoding is greedy with the checkpoint's `generation_config.json`: Qwen2.5-VL ships
//!   `do_sample: true, top_k: 1, top_p: 0.001, temperature: 0.1, repetition_penalty: 1.05`, and
//!   top-k 1 makes sampling pick the best token, so only the repetition penalty matters (every
//!   token already in the sequence, prompt included: logit / 1.05 if positive, × 1.05 if
//!   negative). Without that file the same Qwen2.5-VL settings are used. Configs that would
//!   really sample (`top_k` ≠ 1) are decoded greedily too, with a warning.
//! - A per-layer key/value cache makes each new token cost one position; generation stops at an
//!   eos id or after `max_new_tokens` (512 in the pipeline); the new tokens are decoded without
//!   special tokens and trimmed.

use candle_core::{DType, Device, Tensor};
use image::RgbaImage;
use serde::{Deserialize, Deserializer};

use super::multimodal::{embed_with_images, MropeMode, MultimodalPrompt};
use super::text::{KvCache, LmHead, Qwen25VLTextModel};
use super::vision::VisionTower;
use crate::tokenizer::{QwenTokenizer, CAPTION_PROMPT_CN, CAPTION_PROMPT_EN};
use crate::weights::ModelDir;
use crate::{Error, Result};

/// The pipeline's `max_new_tokens` for captions.
pub const CAPTION_MAX_NEW_TOKENS: usize = 512;

/// `text_encoder/generation_config.json` (HF keys). Only greedy decoding is implemented.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub do_sample: bool,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default = "no_penalty")]
    pub repetition_penalty: f32,
    /// One id or a list in the file.
    #[serde(default, deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
}

impl GenerationConfig {
    /// Qwen2.5-VL-7B-Instruct's `generation_config.json` (spec §2).
    pub fn qwen2_5_vl() -> Self {
        Self {
            do_sample: true,
            top_k: Some(1),
            top_p: Some(0.001),
            temperature: Some(0.1),
            repetition_penalty: 1.05,
            eos_token_id: vec![151645, 151643],
            pad_token_id: Some(151643),
            bos_token_id: Some(151643),
        }
    }

    /// The checkpoint's `text_encoder/generation_config.json`, or [`Self::qwen2_5_vl`] when it has
    /// none.
    pub fn load(model: &ModelDir) -> Result<Self> {
        if model
            .component_dir("text_encoder")
            .join("generation_config.json")
            .is_file()
        {
            let cfg: Self = model.read_json("text_encoder", "generation_config.json")?;
            cfg.validate()?;
            Ok(cfg)
        } else {
            tracing::warn!(
                "no text_encoder/generation_config.json: captioning with Qwen2.5-VL's greedy + 1.05 repetition penalty"
            );
            Ok(Self::qwen2_5_vl())
        }
    }

    /// The same stop tokens, no repetition penalty: plain greedy decoding.
    pub fn plain_greedy(&self) -> Self {
        Self {
            do_sample: false,
            top_k: None,
            top_p: None,
            temperature: None,
            repetition_penalty: 1.0,
            ..self.clone()
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::InvalidInput(format!(
                "generation_config repetition_penalty must be positive, got {}",
                self.repetition_penalty
            )));
        }
        Ok(())
    }

    /// Whether the reference would really sample (so greedy decoding may differ from it).
    pub fn samples(&self) -> bool {
        self.do_sample && self.top_k != Some(1)
    }
}

/// The caption prompt's language (`use_en_prompt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptionLanguage {
    /// `image_caption_prompt_en` (the official app's choice).
    #[default]
    En,
    /// `image_caption_prompt_cn` (the pipeline's own default).
    Cn,
}

impl CaptionLanguage {
    /// The full chat prompt, one `<|image_pad|>` placeholder included.
    pub fn prompt(self) -> &'static str {
        match self {
            CaptionLanguage::En => CAPTION_PROMPT_EN,
            CaptionLanguage::Cn => CAPTION_PROMPT_CN,
        }
    }
}

/// How to caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptionOptions {
    pub language: CaptionLanguage,
    pub max_new_tokens: usize,
    /// 3-D as the reference's captioning; 1-D only to reproduce other setups.
    pub positions: MropeMode,
}

impl Default for CaptionOptions {
    fn default() -> Self {
        Self {
            language: CaptionLanguage::En,
            max_new_tokens: CAPTION_MAX_NEW_TOKENS,
            positions: MropeMode::ThreeD,
        }
    }
}

/// A generated caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    /// Decoded without special tokens, trimmed.
    pub text: String,
    /// The generated ids (the final eos included when generation stopped on one).
    pub ids: Vec<u32>,
}

/// Greedy decoding of `prompt` (image placeholders already expanded; `image_embeds` `[N, D]` fill
/// them): returns up to `max_new_tokens` new ids, ending at the first eos id. `observe` sees each
/// step's raw logits `[vocab]` (f32) before the repetition penalty.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &Qwen25VLTextModel,
    lm_head: &LmHead,
    prompt: &MultimodalPrompt,
    image_pad: u32,
    image_embeds: Option<&Tensor>,
    config: &GenerationConfig,
    max_new_tokens: usize,
    observe: &mut dyn FnMut(&Tensor),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::InvalidInput("cannot generate from an empty prompt".into()));
    }
    if config.samples() {
        tracing::warn!(
            top_k = ?config.top_k,
            "generation_config asks for sampling; decoding greedily instead"
        );
    }
    let device = model.device().clone();
    let mut seen = vec![false; 0];
    let mark_seen = |id: u32, seen: &mut Vec<bool>| {
        let i = id as usize;
        if i >= seen.len() {
            seen.resize(i + 1, false);
        }
        seen[i] = true;
    };
    for &id in &prompt.ids {
        mark_seen(id, &mut seen);
    }

    let mut cache = KvCache::new();
    let embeds = embed_with_images(model, std::slice::from_ref(&prompt.ids), image_pad, image_embeds)?;
    let hidden = model.forward_cached(&embeds, &prompt.positions_tensor(&device)?, &mut cache)?;
    let mut last = hidden.narrow(1, prompt.len() - 1, 1)?;
    let mut generated = Vec::new();
    while generated.len() < max_new_tokens {
        let logits = lm_head.forward(&last)?.flatten_all()?.to_dtype(DType::F32)?;
        observe(&logits);
        let next = pick_token(&logits, &seen, config.repetition_penalty)?;
        generated.push(next);
        if config.eos_token_id.contains(&next) || generated.len() == max_new_tokens {
            break;
        }
        mark_seen(next, &mut seen);
        // The token just picked sits at index len−1 of the whole sequence.
        let index = (prompt.len() + generated.len() - 1) as i64;
        let position = u32::try_from(index + prompt.rope_delta)
            .map_err(|_| Error::InvalidInput(format!("position {index} + {} is negative", prompt.rope_delta)))?;
        let ids = Tensor::new(&[[next]], &device)?;
        let positions = Tensor::new(&[[[position]], [[position]], [[position]]], &device)?;
        last = model.forward_cached(&ids, &positions, &mut cache)?;
    }
    Ok(generated)
}

/// The best token after the repetition penalty on every `seen` id.
fn pick_token(logits: &Tensor, seen: &[bool], penalty: f32) -> Result<u32> {
    let mut scores = logits.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    if penalty != 1.0 {
        for (id, s) in scores.iter_mut().enumerate().take(seen.len()) {
            if seen[id] {
                *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
            }
        }
    }
    // First maximum, like torch's argmax.
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] || (scores[best].is_nan() && !s.is_nan()) {
            best = i;
        }
    }
    Ok(best as u32)
}

/// Everything captioning needs: the language model with its output head, the vision tower (with
/// the image processor settings) and the decoding settings.
#[derive(Debug, Clone)]
pub struct Captioner {
    text: Qwen25VLTextModel,
    lm_head: LmHead,
    vision: VisionTower,
    generation: GenerationConfig,
}

impl Captioner {
    pub fn new(text: Qwen25VLTextModel, lm_head: LmHead, vision: VisionTower, generation: GenerationConfig) -> Self {
        Self {
            text,
            lm_head,
            vision,
            generation,
        }
    }

    /// Loads the text encoder component in `dtype` on `device`.
    pub fn load(model: &ModelDir, dtype: DType, device: &Device) -> Result<Self> {
        let (_, text) = Qwen25VLTextModel::load(model, dtype, device)?;
        Self::with_text_model(model, text)
    }

    /// Adds the vision tower, output head and generation config of `model` to an already loaded
    /// language model (its dtype and device are used).
    pub fn with_text_model(model: &ModelDir, text: Qwen25VLTextModel) -> Result<Self> {
        let (dtype, device) = (text.dtype(), text.device().clone());
        let vision = VisionTower::load(model, dtype, &device)?;
        let lm_head = text.lm_head(model.var_builder("text_encoder", dtype, &device)?)?;
        let generation = GenerationConfig::load(model)?;
        Ok(Self::new(text, lm_head, vision, generation))
    }

    pub fn generation(&self) -> &GenerationConfig {
        &self.generation
    }

    pub fn vision(&self) -> &VisionTower {
        &self.vision
    }

    pub fn text_model(&self) -> &Qwen25VLTextModel {
        &self.text
    }

    /// Captions an RGBA image as `get_image_caption` (prompt by `options.language`).
    pub fn caption(&self, tokenizer: &QwenTokenizer, image: &RgbaImage, options: &CaptionOptions) -> Result<Caption> {
        self.caption_with(tokenizer, image, options, &self.generation, &mut |_| {})
    }

    /// [`Self::caption`] with other decoding settings, showing each step's raw logits to `observe`.
    pub fn caption_with(
        &self,
        tokenizer: &QwenTokenizer,
        image: &RgbaImage,
        options: &CaptionOptions,
        generation: &GenerationConfig,
        observe: &mut dyn FnMut(&Tensor),
    ) -> Result<Caption> {
        let processed = self.vision.processor().preprocess_rgba(image, self.text.device())?;
        let image_embeds = self.vision.encode(std::slice::from_ref(&processed))?;
        let prompt = MultimodalPrompt::new(
            tokenizer,
            options.language.prompt(),
            &[processed.grid_thw],
            self.vision.config().spatial_merge_size,
            options.positions,
        )?;
        let ids = generate(
            &self.text,
            &self.lm_head,
            &prompt,
            tokenizer.special().image_pad,
            Some(&image_embeds),
            generation,
            options.max_new_tokens,
            observe,
        )?;
        let text = tokenizer.decode(&ids, true)?.trim().to_string();
        Ok(Caption { text, ids })
    }
}

fn no_penalty() -> f32 {
    1.0
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
        None(()),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(id) => vec![id],
        OneOrMany::Many(ids) => ids,
        OneOrMany::None(()) => vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_parses_one_or_many_eos() {
        let cfg: GenerationConfig = serde_json::from_str(
            r#"{"do_sample": true, "top_k": 1, "top_p": 0.001, "temperature": 0.1,
                "repetition_penalty": 1.05, "eos_token_id": [151645, 151643], "pad_token_id": 151643}"#,
        )
        .unwrap();
        assert_eq!(cfg.eos_token_id, vec![151645, 151643]);
        assert!(!cfg.samples());
        let one: GenerationConfig = serde_json::from_str(r#"{"eos_token_id": 7}"#).unwrap();
        assert_eq!((one.eos_token_id.clone(), one.repetition_penalty), (vec![7], 1.0));
        let sampling: GenerationConfig = serde_json::from_str(r#"{"do_sample": true}"#).unwrap();
        assert!(sampling.samples());
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let logits = Tensor::new(&[2.0f32, 2.05, -1.0, -0.99], &Device::Cpu).unwrap();
        // Unpenalised: token 1. Penalising 1 (2.05/1.05 < 2.0) → token 0.
        assert_eq!(pick_token(&logits, &[], 1.05).unwrap(), 1);
        assert_eq!(pick_token(&logits, &[false, true], 1.05).unwrap(), 0);
        // Both positive ones seen: 2/1.05 ≈ 1.905 still beats the negatives.
        assert_eq!(pick_token(&logits, &[true, true], 1.05).unwrap(), 1);
        let neg = Tensor::new(&[-1.0f32, -1.02], &Device::Cpu).unwrap();
        // −1 × 1.05 = −1.05 < −1.02.
        assert_eq!(pick_token(&neg, &[true], 1.05).unwrap(), 1);
    }
}
