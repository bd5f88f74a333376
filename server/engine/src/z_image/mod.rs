//! Z-Image (Tongyi-MAI/Z-Image-Turbo): text → image, the product's second mode.
//!
//! - [`transformer`]: the S3-DiT (`ZImageTransformer2DModel`), our own port: candle-transformers
//!   0.11.1's differs from diffusers 0.42.1 (see that module's notes) and cannot stream blocks.
//! - [`text`]: the Qwen3 prompt encoder (candle-transformers' module, wrapped).
//! - [`vae`]: the AutoencoderKL decoder (candle-transformers' module, wrapped with layout checks).
//! - [`config`]: the transformer's config and constants.
//!
//! The scheduler is [`crate::scheduler`] (static shift 3 in the release's config); the pipeline
//! is [`crate::pipeline::z_image`].

pub mod config;
pub mod text;
pub mod transformer;
pub mod vae;

pub use config::Config;
pub use transformer::{Trace, ZImageTransformer};
