//! Pipelines: the models put together into the product's jobs.
//!
//! - [`decompose`]: QwenImageLayeredPipeline (image → RGBA layers, bottom → top).
//! - [`edit`]: QwenImageEditPlusPipeline (Edit-2509: images + instruction → edited RGB image).
//! - [`layer_edit`]: editing one RGBA layer with Edit-2509, keeping (or re-keying) its alpha.
//! - [`loading`]: how both place their models (resident, or streamed with `cpu_offload`).
//! - [`denoise`]: the denoising loop both share (batched CFG, Euler steps, cancel, progress).
//! - [`z_image`]: ZImagePipeline (Z-Image-Turbo: prompt → RGB image).
//! - [`noise`]: seeded device-independent initial noise, or noise injected from a file.
//! - [`progress`]: progress reporting and cancellation shared by every pipeline.

pub mod decompose;
pub mod denoise;
pub mod edit;
pub mod layer_edit;
pub mod loading;
pub mod noise;
pub mod progress;
pub mod z_image;

pub use decompose::{DecomposeOptions, DecomposeOutput, LayeredPipeline, RunRecord, StepTrace, Timings};
pub use edit::{ConditionImage, EditOptions, EditOutput, EditPipeline, EditPromptEmbeds, EditRunRecord};
pub use layer_edit::{edit_layer, AlphaMode, LayerEditOptions, LayerEditOutput};
pub use loading::LoadOptions;
pub use progress::{check_cancel, NoProgress, Phase, Progress};
pub use z_image::{GenerateOptions, ZImageOutput, ZImagePipeline, ZImageRunRecord};
