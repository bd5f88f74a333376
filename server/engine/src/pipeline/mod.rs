//! Pipelines: the models put together into the product's jobs.
//!
//! - [`progress`]: progress reporting and cancellation shared by every pipeline.

pub mod progress;

pub use progress::{NoProgress, Phase, Progress};
