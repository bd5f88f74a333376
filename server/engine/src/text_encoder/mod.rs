//! The text encoder: Qwen2.5-VL-7B-Instruct (`Qwen2_5_VLForConditionalGeneration`), of which
//! the pipelines use the language model's last hidden state as the DiT's text conditioning.
//!
//! - [`config`]: `text_encoder/config.json` (both transformers 4.x flat and 5.x nested layouts),
//!   including the vision tower's parameters.
//! - [`text`]: the language model (28 layers × 3584, GQA 28/4, M-RoPE 16/24/24, RMSNorm eps 1e-6),
//!   with a key/value cache for generation.
//! - [`prompt`]: template → tokens → hidden states → per-prompt embeddings + mask, as
//!   `_get_qwen_prompt_embeds` / `encode_prompt` of the pipelines.
//! - [`processor`]: the Qwen2-VL image processor (smart resize, torchvision's bicubic, CLIP
//!   normalisation, patches in merge-block order).
//! - [`vision`]: the vision tower (window attention, 2-D RoPE, patch merger).
//! - [`multimodal`]: prompts with images: image tokens, 3-D (or 1-D) M-RoPE positions, and
//!   Edit-2509's `encode_prompt`.
//! - [`generate`]: greedy generation with the repetition penalty, and Layered's auto-caption.

pub mod config;
pub mod generate;
mod layers;
pub mod multimodal;
pub mod processor;
pub mod prompt;
pub mod text;
pub mod vision;

pub use config::{Config, RopeParameters, TextConfig, VisionConfig};
pub use generate::{
    generate, Caption, CaptionLanguage, CaptionOptions, Captioner, GenerationConfig, CAPTION_MAX_NEW_TOKENS,
};
pub use multimodal::{
    embed_with_images, encode_prompt_with_images, expand_image_pads, rope_index, MropeMode, MultimodalPrompt,
};
pub use processor::{
    composite_over_white, resize_bicubic_antialias, smart_resize, ImageProcessorConfig, ProcessedImage,
};
pub use prompt::{
    check_max_sequence_length, check_prompt_lengths, encode_prompt, gather_prompt_tokens, PromptBatch,
    DEFAULT_MAX_SEQUENCE_LENGTH, MAX_SEQUENCE_LENGTH_LIMIT,
};
pub use text::{text_position_ids, KvCache, LmHead, Qwen25VLTextModel};
pub use vision::{patch_positions, window_layout, VisionTower, VisionTrace, WindowLayout};
