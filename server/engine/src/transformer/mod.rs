//! QwenImageTransformer2DModel: the 20B dual-stream MMDiT of Qwen-Image, as used by
//! Qwen/Qwen-Image-Layered and Qwen/Qwen-Image-Edit-2509 (diffusers 0.42.1
//! `models/transformers/transformer_qwenimage.py`).
//!
//! - Input: packed latent tokens `[B, S_img, 64]` (2×2 patches of 16 channels) and the text
//!   encoder's hidden states `[B, S_txt, 3584]` (RMSNorm, then a linear map to D = 3072).
//! - Conditioning: a sinusoidal embedding of σ·1000 through an MLP (`temb`), plus a learned row
//!   for the layered model ([`embeddings`]).
//! - 60 dual-stream blocks: separate weights per stream, AdaLN modulation from `temb`, one joint
//!   attention over [text, image] with 3-axis interleaved RoPE ([`rope`], [`block`]).
//! - Output: AdaLN (scale, shift) and a linear map back to 64 channels per token.
//!
//! The Layered model differs only by `use_layer3d_rope` (frame positions 0..L, condition −1) and
//! `use_additional_t_cond`. [`cfg`] runs the guided and unguided prompts as one batch.

pub mod attention;
pub mod block;
pub mod cfg;
pub mod config;
pub mod embeddings;
pub mod model;
pub mod norm;
pub mod rope;
pub mod sequence_parallel;

pub use config::Config;
pub use model::{ImgShapes, QwenImageTransformer, Trace};
pub use rope::{RopeTables, RopeVariant};
pub use sequence_parallel::SequenceParallel;
