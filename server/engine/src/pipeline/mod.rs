//! Pipelines: the models put together into the product's jobs.
//!
//! - [`decompose`]: QwenImageLayeredPipeline (image → RGBA layers, bottom → top).
//! - [`noise`]: seeded device-independent initial noise, or noise injected from a file.
//! - [`progress`]: progress reporting and cancellation shared by every pipeline.

pub mod decompose;
pub mod noise;
pub mod progress;

pub use decompose::{DecomposeOptions, DecomposeOutput, LayeredPipeline, LoadOptions, RunRecord, StepTrace, Timings};
pub use progress::{NoProgress, Phase, Progress};
