//! Z-Image's prompt encoder: Qwen3 (candle-transformers' `z_image::ZImageTextEncoder`, used as
//! is: it matches transformers' `Qwen3Model` `hidden_states[-2]` on the fixtures) behind the
//! pipeline's chat template and the product's prompt-length rule.
//!
//! The reference renders the prompt with the tokenizer's chat template
//! (`add_generation_prompt=True, enable_thinking=True`), pads to 512 tokens, runs the encoder with
//! the padding mask and keeps the valid rows of `hidden_states[-2]`. The encoder is causal and the
//! padding is on the right, so running the valid tokens alone gives the same rows; over-long
//! prompts, which the reference silently cuts at 512 tokens, are refused instead.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::z_image::{TextEncoderConfig, ZImageTextEncoder};

use crate::tokenizer::QwenTokenizer;
use crate::weights::ModelDir;
use crate::{Error, Result};

/// The pipeline's `max_sequence_length`: templated prompts longer than this are refused.
pub const MAX_PROMPT_TOKENS: usize = 512;

/// What Qwen3's chat template renders for one user message with a generation prompt and
/// thinking enabled (the pipeline's call).
pub fn chat_template(prompt: &str) -> String {
    format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
}

/// Token ids of `prompt` as the encoder sees it; refuses prompts over [`MAX_PROMPT_TOKENS`].
pub fn prompt_ids(tokenizer: &QwenTokenizer, prompt: &str, what: &str) -> Result<Vec<u32>> {
    let ids = tokenizer.encode(&chat_template(prompt))?;
    if ids.len() > MAX_PROMPT_TOKENS {
        return Err(Error::InvalidInput(format!(
            "the {what} is {} tokens with the chat template; Z-Image reads at most {MAX_PROMPT_TOKENS}",
            ids.len()
        )));
    }
    Ok(ids)
}

/// The loaded Qwen3 encoder.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    model: ZImageTextEncoder,
    hidden: usize,
    device: Device,
}

impl TextEncoder {
    pub fn load(model: &ModelDir, dtype: DType, device: &Device) -> Result<Self> {
        let cfg: TextEncoderConfig = model.read_json("text_encoder", "config.json")?;
        if cfg.num_hidden_layers < 2 {
            return Err(Error::InvalidInput(format!(
                "the Z-Image text encoder needs at least 2 layers (it reads hidden_states[-2]), this one has {}",
                cfg.num_hidden_layers
            )));
        }
        let vb = model.var_builder("text_encoder", dtype, device)?;
        Ok(Self {
            model: ZImageTextEncoder::new(&cfg, vb)?,
            hidden: cfg.hidden_size,
            device: device.clone(),
        })
    }

    /// The encoder's width (the transformer's `cap_feat_dim`).
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// `[L, hidden]`: `hidden_states[-2]` of the templated prompt's `ids`.
    pub fn encode_ids(&self, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::InvalidInput("empty token sequence".into()));
        }
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        Ok(self.model.forward(&input)?.squeeze(0)?)
    }
}
