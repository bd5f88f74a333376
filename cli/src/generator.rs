//! Text → image with Z-Image-Turbo, as a Rust API:
//!
//! ```no_run
//! use qwen_layers::generator::{Generator, LoadOptions};
//! use app::api_z_image::{GenerateRequest, ZImageDefaults};
//! let g = Generator::from_pretrained("Tongyi-MAI/Z-Image-Turbo", LoadOptions::default())?;
//! let request = GenerateRequest { prompt: "a lighthouse at dusk".into(), negative_prompt: None,
//!     width: None, height: None, steps: None, cfg_scale: None, seed: Some(42) };
//! let job = request.validate(&ZImageDefaults::default(), 0)?;
//! let image = g.generate(&job, &qwen_layers::generator::NoProgress)?;
//! std::fs::write("out.png", image.png()?)?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! The image is RGB; [`Generated::rgba`] gives it opaque, ready for [`crate::Decomposer`].

use app::api::ApiError;
use app::api_z_image::{GenerateJob, GenerateResponse};
use app::image_data::{encode_png, png_data_url};
use image::{RgbImage, RgbaImage};

use engine::pipeline::{GenerateOptions, ZImagePipeline};
pub use engine::pipeline::{LoadOptions, NoProgress, Progress, ZImageRunRecord};
use engine::weights::ModelDir;

/// A loaded Z-Image model.
pub struct Generator {
    pipeline: ZImagePipeline,
}

/// One generated image and what made it.
#[derive(Debug, Clone)]
pub struct Generated {
    pub image: RgbImage,
    pub record: ZImageRunRecord,
}

impl Generator {
    /// Loads from a local diffusers folder or a Hugging Face repo id (downloaded into the hub
    /// cache when missing, unless `HF_HUB_OFFLINE` is set).
    pub fn from_pretrained(path_or_repo: &str, options: LoadOptions) -> engine::Result<Self> {
        Self::from_model_dir(ModelDir::resolve(path_or_repo, true)?, options)
    }

    pub fn from_model_dir(model: ModelDir, options: LoadOptions) -> engine::Result<Self> {
        Ok(Self {
            pipeline: ZImagePipeline::load(model, options)?,
        })
    }

    pub fn pipeline(&self) -> &ZImagePipeline {
        &self.pipeline
    }

    /// Refuses prompts the text encoder would not read whole, before anything runs.
    pub fn check_prompts(&self, job: &GenerateJob) -> engine::Result<()> {
        self.pipeline.check_prompts(&job.prompt, &options(job))
    }

    /// Generates the image of a validated request.
    pub fn generate(&self, job: &GenerateJob, progress: &dyn Progress) -> engine::Result<Generated> {
        let out = self.pipeline.generate(&job.prompt, &options(job), progress)?;
        Ok(Generated {
            image: out.image,
            record: out.record,
        })
    }
}

/// The engine's options for a validated request.
pub fn options(job: &GenerateJob) -> GenerateOptions {
    GenerateOptions {
        negative_prompt: job.negative_prompt.clone(),
        width: job.width,
        height: job.height,
        num_inference_steps: job.steps as usize,
        guidance_scale: f64::from(job.cfg_scale),
        cfg_normalization: 0.0,
        cfg_truncation: 1.0,
        seed: job.seed,
        init_noise: None,
    }
}

impl Generated {
    /// The image with an opaque alpha channel (what decomposition takes).
    pub fn rgba(&self) -> RgbaImage {
        image::DynamicImage::ImageRgb8(self.image.clone()).to_rgba8()
    }

    pub fn png(&self) -> Result<Vec<u8>, ApiError> {
        encode_png(&self.rgba())
    }

    /// The REST answer for it.
    pub fn response(&self, job: &GenerateJob) -> Result<GenerateResponse, ApiError> {
        Ok(GenerateResponse {
            image: png_data_url(&self.png()?),
            seed: job.seed,
            width: self.image.width(),
            height: self.image.height(),
            steps: job.steps,
            cfg_scale: job.cfg_scale,
            generation_time: self.record.timings.total,
        })
    }
}
