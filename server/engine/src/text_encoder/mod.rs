//! The text encoder: Qwen2.5-VL-7B-Instruct (`Qwen2_5_VLForConditionalGeneration`), of which
//! the pipelines use the language model's last hidden state as the DiT's text conditioning.
//!
//! - [`config`]: `text_encoder/config.json` (both transformers 4.x flat and 5.x nested layouts),
//!   including the vision tower's parameters.
//! - [`text`]: the language model (28 layers × 3584, GQA 28/4, M-RoPE 16/24/24, RMSNorm eps 1e-6).
//! - [`prompt`]: template → tokens → hidden states → per-prompt embeddings + mask, as
//!   `_get_qwen_prompt_embeds` / `encode_prompt` of the pipelines.
//!
//! The vision tower (Edit-2509's condition images, Layered's captioning) comes in `vision`.

pub mod config;
pub mod prompt;
pub mod text;

pub use config::{Config, RopeParameters, TextConfig, VisionConfig};
pub use prompt::{
    check_max_sequence_length, check_prompt_lengths, encode_prompt, gather_prompt_tokens, PromptBatch,
    DEFAULT_MAX_SEQUENCE_LENGTH, MAX_SEQUENCE_LENGTH_LIMIT,
};
pub use text::{text_position_ids, LmHead, Qwen25VLTextModel};
