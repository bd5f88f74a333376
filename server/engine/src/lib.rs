//! The engine: candle ports of the models behind Qwen-Image-Layered (decompose an image into RGBA
//! layers) and Qwen-Image-Edit-2509 (edit a layer by instruction), and the pipelines around them.
//!
//! - [`weights`]: where a model lives (local folder in the diffusers layout or a Hugging Face repo
//!   id in the hub cache) and loading its sharded safetensors.
//! - [`tokenizer`], [`text_encoder`]: Qwen2 tokenizer, prompt templates, Qwen2.5-VL text + vision.
//! - [`transformer`]: QwenImageTransformer2DModel (the 20B MMDiT) with both RoPE variants.
//! - [`scheduler`], [`latents`]: flow-match Euler schedule and latent packing.
//! - [`vae`], [`image_proc`]: AutoencoderKLQwenImage (RGB and RGBA) and pixel pre/post-processing.
//! - [`lora`]: LoRA adapters for the DiT (every published layout), merged at load.
//! - [`pipeline`]: decompose and edit, end to end.
//! - [`runtime`]: the device and dtype a server or CLI runs on.
//! - [`z_image`]: Z-Image-Turbo (text → image): its DiT, Qwen3 encoder and VAE.
//! - [`gpu`]: CUDA settings, streamed CPU offload, VRAM accounting, clear CUDA errors, and the
//!   benchmark's random weights and FLOP counts.
//!
//! The reference is diffusers 0.42.1 + transformers 5.x; every stage is tested against fixtures
//! recorded from it on tiny checkpoints (`tests/fixtures`).

pub mod error;
pub mod gpu;
pub mod image_proc;
pub mod latents;
pub mod lora;
pub mod pipeline;
pub mod rope_tables;
pub mod runtime;
pub mod scheduler;
pub mod text_encoder;
pub mod tokenizer;
pub mod transformer;
pub mod vae;
pub mod weights;
pub mod z_image;

pub use error::{Error, Result};
