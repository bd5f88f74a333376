//! ZImagePipeline (Tongyi-MAI/Z-Image-Turbo): a prompt → one RGB image.
//!
//! Steps (diffusers 0.42.1 `pipeline_z_image.py`):
//! 1. The prompt (and, with CFG, the negative prompt, `""` when none) through Qwen3's chat
//!    template and the text encoder: `hidden_states[-2]` of the valid tokens, one `[L, D]` each.
//! 2. Noise `[1, 16, 2·⌊H/16⌋, 2·⌊W/16⌋]` (seeded on the CPU, or injected).
//! 3. Sigmas `linspace(1, 1/N, N)` through the scheduler (static shift 3 for the release); the
//!    transformer is given `(1000 − timestep) / 1000`, and its output is **negated** before the
//!    Euler step.
//! 4. CFG when `guidance_scale > 0`: cond and uncond in one batch (their captions may differ in
//!    length), `pos + s·(pos − neg)`, optionally capped at `cfg_normalization × |pos|`, and off for
//!    steps whose `t_norm` exceeds `cfg_truncation`. Turbo runs with `guidance_scale = 0`.
//! 5. VAE decode (`z / scaling + shift`), then `round(clamp(x/2 + 0.5) · 255)`.

use std::time::Instant;

use candle_core::{DType, Tensor};
use image::RgbImage;
use serde::Serialize;

use crate::image_proc;
use crate::pipeline::decompose::Timings;
use crate::pipeline::loading::LoadOptions;
use crate::pipeline::noise::{load_noise, seeded_noise};
use crate::pipeline::{check_cancel, Phase, Progress};
use crate::scheduler::{FlowMatchEulerScheduler, SchedulerConfig};
use crate::tokenizer::QwenTokenizer;
use crate::weights::{ComponentSpec, ModelDir};
use crate::z_image::text::{prompt_ids, TextEncoder};
use crate::z_image::vae::Vae;
use crate::z_image::{Config, ZImageTransformer};
use crate::{Error, Result};

/// What a Z-Image folder must hold (the tokenizer is checked when it is read).
pub const Z_IMAGE_COMPONENTS: &[ComponentSpec] = &[
    ComponentSpec {
        name: "scheduler",
        files: &["scheduler_config.json"],
        weights: false,
    },
    ComponentSpec {
        name: "text_encoder",
        files: &["config.json"],
        weights: true,
    },
    ComponentSpec {
        name: "transformer",
        files: &["config.json"],
        weights: true,
    },
    ComponentSpec {
        name: "vae",
        files: &["config.json"],
        weights: true,
    },
];

/// Side of the pixel grid sizes must be multiples of (VAE factor 8 × patch 2).
pub const SIZE_MULTIPLE: u32 = 16;

/// The pipeline's input sigmas, `torch.linspace(1.0, 1/N, N)` in float32 as torch computes it:
/// a float32 step, the first half counted up from 1 and the second down from `1/N`, each value
/// rounded once (a fused multiply-add). numpy's linspace (the Qwen-Image pipelines') differs in the
/// last bit for most N.
pub fn default_sigmas(steps: usize) -> Vec<f64> {
    let start = 1f32;
    let end = (1.0 / steps as f64) as f32;
    if steps <= 1 {
        return vec![start as f64; steps];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            let v = if i < half {
                (step as f64).mul_add(i as f64, start as f64)
            } else {
                (step as f64).mul_add(-((steps - i - 1) as f64), end as f64)
            };
            v as f32 as f64
        })
        .collect()
}

/// One generation's settings (the product's defaults live in `app::api::z_image`).
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Used only with CFG (`guidance_scale > 0`); `None` = the empty prompt, as the reference.
    pub negative_prompt: Option<String>,
    /// Multiples of [`SIZE_MULTIPLE`].
    pub width: u32,
    pub height: u32,
    pub num_inference_steps: usize,
    /// 0 = no CFG (Turbo).
    pub guidance_scale: f64,
    /// 0 = off; else the guided prediction's norm is capped at this multiple of the conditional's.
    pub cfg_normalization: f64,
    /// CFG is skipped for steps with `(1000 − t)/1000` above this (1 = never).
    pub cfg_truncation: f64,
    pub seed: u64,
    /// Initial latents from a safetensors file (`noise`, `[1, 16, H/8, W/8]`).
    pub init_noise: Option<std::path::PathBuf>,
}

impl GenerateOptions {
    pub fn uses_cfg(&self) -> bool {
        self.guidance_scale > 0.0
    }

    /// Checks what a caller can get wrong, with messages that say what is allowed.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if v == 0 || !v.is_multiple_of(SIZE_MULTIPLE) {
                return Err(Error::InvalidInput(format!(
                    "{name} must be a positive multiple of {SIZE_MULTIPLE}, got {v}"
                )));
            }
        }
        if self.num_inference_steps == 0 {
            return Err(Error::InvalidInput("num_inference_steps must be at least 1".into()));
        }
        for (name, v) in [
            ("guidance_scale", self.guidance_scale),
            ("cfg_normalization", self.cfg_normalization),
            ("cfg_truncation", self.cfg_truncation),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::InvalidInput(format!("{name} must be finite and ≥ 0, got {v}")));
            }
        }
        Ok(())
    }
}

/// What a generation did: recorded for reproducibility.
#[derive(Debug, Clone, Serialize)]
pub struct ZImageRunRecord {
    pub pipeline: &'static str,
    pub model: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    pub cfg_normalization: f64,
    pub cfg_truncation: f64,
    pub seed: u64,
    pub init_noise: Option<String>,
    pub device: String,
    pub dtype: String,
    pub timings: Timings,
}

#[derive(Debug)]
pub struct ZImageOutput {
    pub image: RgbImage,
    pub record: ZImageRunRecord,
    /// `[1, 16, H/8, W/8]` after the last step (f32).
    pub final_latents: Tensor,
}

/// The loaded Z-Image pipeline.
pub struct ZImagePipeline {
    model: ModelDir,
    options: LoadOptions,
    tokenizer: QwenTokenizer,
    /// Kept between runs only with `LoadOptions::keep_text_encoder`.
    text: Option<TextEncoder>,
    transformer: ZImageTransformer,
    vae: Vae,
    scheduler_config: SchedulerConfig,
}

impl ZImagePipeline {
    /// Loads a Z-Image folder (diffusers layout), checking it is complete and consistent.
    pub fn load(model: ModelDir, options: LoadOptions) -> Result<Self> {
        model.check(Z_IMAGE_COMPONENTS)?;
        let tokenizer = QwenTokenizer::from_model_dir(&model)?;
        let cfg: Config = model.read_json("transformer", "config.json")?;
        let scheduler_config: SchedulerConfig = model.read_json("scheduler", "scheduler_config.json")?;
        FlowMatchEulerScheduler::new(scheduler_config.clone())?;
        crate::gpu::configure_matmul(&options.device, options.dtype);
        let transformer = match options.offload {
            None => ZImageTransformer::new(&cfg, model.var_builder("transformer", options.dtype, &options.device)?)?,
            Some(offload) => {
                if !options.device.is_cuda() {
                    return Err(Error::InvalidInput("cpu_offload needs a CUDA device".into()));
                }
                let vb = model.var_builder("transformer", options.dtype, &options.device)?;
                let host = model.var_builder("transformer", options.dtype, &candle_core::Device::Cpu)?;
                ZImageTransformer::new_offloaded(&cfg, vb, &host, offload)?
            }
        };
        let vae = Vae::load(&model, options.dtype, &options.device)?;
        if vae.latent_channels() != cfg.in_channels {
            return Err(Error::InvalidInput(format!(
                "the VAE has {} latent channels but the transformer takes {}",
                vae.latent_channels(),
                cfg.in_channels
            )));
        }
        let text = if options.keep_text_encoder && options.offload.is_none() {
            Some(Self::load_text(&model, &options, &cfg)?)
        } else {
            None
        };
        Ok(Self {
            model,
            options,
            tokenizer,
            text,
            transformer,
            vae,
            scheduler_config,
        })
    }

    fn load_text(model: &ModelDir, options: &LoadOptions, cfg: &Config) -> Result<TextEncoder> {
        let text = TextEncoder::load(model, options.dtype, &options.device)?;
        if text.hidden_size() != cfg.cap_feat_dim {
            return Err(Error::InvalidInput(format!(
                "the text encoder is {} wide but the transformer's cap_feat_dim is {}",
                text.hidden_size(),
                cfg.cap_feat_dim
            )));
        }
        Ok(text)
    }

    pub fn model(&self) -> &ModelDir {
        &self.model
    }
    pub fn tokenizer(&self) -> &QwenTokenizer {
        &self.tokenizer
    }
    pub fn transformer(&self) -> &ZImageTransformer {
        &self.transformer
    }
    pub fn vae(&self) -> &Vae {
        &self.vae
    }
    /// Whether the text encoder stays loaded between runs.
    pub fn keeps_text_encoder(&self) -> bool {
        self.text.is_some()
    }

    /// Refuses prompts the encoder would not read whole (before any model runs).
    pub fn check_prompts(&self, prompt: &str, options: &GenerateOptions) -> Result<()> {
        prompt_ids(&self.tokenizer, prompt, "prompt")?;
        if let (true, Some(neg)) = (options.uses_cfg(), &options.negative_prompt) {
            prompt_ids(&self.tokenizer, neg, "negative prompt")?;
        }
        Ok(())
    }

    /// `[L, D]` embeddings of `prompt` and, with CFG, of the negative prompt.
    pub fn encode_prompts(
        &self,
        prompt: &str,
        options: &GenerateOptions,
        progress: &dyn Progress,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let ids = prompt_ids(&self.tokenizer, prompt, "prompt")?;
        let neg_ids = if options.uses_cfg() {
            Some(prompt_ids(
                &self.tokenizer,
                options.negative_prompt.as_deref().unwrap_or(""),
                "negative prompt",
            )?)
        } else {
            None
        };
        let loaded;
        let text = match &self.text {
            Some(t) => t,
            None => {
                progress.phase(Phase::Loading);
                loaded = Self::load_text(&self.model, &self.options, self.transformer.config())?;
                &loaded
            }
        };
        progress.phase(Phase::Encoding);
        let pos = text.encode_ids(&ids)?;
        let neg = neg_ids.map(|ids| text.encode_ids(&ids)).transpose()?;
        Ok((pos, neg))
    }

    /// Text → image.
    pub fn generate(&self, prompt: &str, options: &GenerateOptions, progress: &dyn Progress) -> Result<ZImageOutput> {
        self.generate_observed(prompt, options, progress, &mut |_, _| {})
    }

    /// [`Self::generate`], handing the latents after each step to `observe`.
    pub fn generate_observed(
        &self,
        prompt: &str,
        options: &GenerateOptions,
        progress: &dyn Progress,
        observe: &mut dyn FnMut(usize, &Tensor),
    ) -> Result<ZImageOutput> {
        let start = Instant::now();
        options.validate()?;
        self.check_prompts(prompt, options)?;
        let mut timings = Timings::default();

        let t0 = Instant::now();
        let (pos, neg) = self.encode_prompts(prompt, options, progress)?;
        timings.encode_prompt = t0.elapsed().as_secs_f64();
        check_cancel(progress)?;

        let device = &self.options.device;
        let vf = self.vae.scale_factor() as u32;
        let (h, w) = (
            (2 * (options.height / (2 * vf))) as usize,
            (2 * (options.width / (2 * vf))) as usize,
        );
        let shape = [1, self.transformer.config().in_channels, h, w];
        let mut latents = match &options.init_noise {
            Some(path) => load_noise(path, &shape, device)?,
            None => seeded_noise(options.seed, &shape, device)?,
        }
        .to_dtype(DType::F32)?;

        let mut scheduler = FlowMatchEulerScheduler::new(self.scheduler_config.clone())?;
        let mu = scheduler.edit_mu((h / 2) * (w / 2));
        scheduler.set_sigmas(&default_sigmas(options.num_inference_steps), Some(mu))?;
        let steps = scheduler.num_steps();

        let t0 = Instant::now();
        progress.phase(Phase::Denoising);
        progress.step(0, steps);
        let dtype = self.transformer.dtype();
        for i in 0..steps {
            check_cancel(progress)?;
            let timestep = scheduler.timesteps()[i];
            let t_model = (1000.0 - timestep) / 1000.0;
            let scale = match &neg {
                Some(_) if (t_model as f64) <= options.cfg_truncation => options.guidance_scale,
                _ => 0.0,
            };
            let pred = match (&neg, scale > 0.0) {
                (Some(neg), true) => {
                    let input = Tensor::cat(&[&latents, &latents], 0)?.to_dtype(dtype)?;
                    let t = Tensor::full(t_model, 2, device)?;
                    let out = self
                        .transformer
                        .forward(&input, &t, &[pos.clone(), neg.clone()])?
                        .to_dtype(DType::F32)?;
                    let (p, n) = (out.narrow(0, 0, 1)?, out.narrow(0, 1, 1)?);
                    let mut pred = (&p + ((&p - &n)? * scale)?)?;
                    if options.cfg_normalization > 0.0 {
                        let norm = |t: &Tensor| -> Result<f32> { Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?) };
                        let max_new = norm(&p)? * options.cfg_normalization as f32;
                        let new = norm(&pred)?;
                        if new > max_new {
                            pred = (pred * (max_new / new) as f64)?;
                        }
                    }
                    pred
                }
                _ => {
                    let t = Tensor::full(t_model, 1, device)?;
                    self.transformer
                        .forward(&latents.to_dtype(dtype)?, &t, std::slice::from_ref(&pos))?
                        .to_dtype(DType::F32)?
                }
            };
            latents = scheduler.step(&latents, &pred.neg()?, i)?;
            observe(i, &latents);
            progress.step(i + 1, steps);
        }
        timings.denoise = t0.elapsed().as_secs_f64();
        check_cancel(progress)?;

        let t0 = Instant::now();
        progress.phase(Phase::Decoding);
        let decoded = self.vae.decode(&latents)?;
        let image = image_proc::tensor_to_rgb8(&decoded.get(0)?)?;
        timings.decode = t0.elapsed().as_secs_f64();
        timings.total = start.elapsed().as_secs_f64();

        Ok(ZImageOutput {
            image,
            record: ZImageRunRecord {
                pipeline: "ZImagePipeline",
                model: self.model.describe(),
                prompt: prompt.to_string(),
                negative_prompt: options.negative_prompt.clone(),
                width: options.width,
                height: options.height,
                num_inference_steps: steps,
                guidance_scale: options.guidance_scale,
                cfg_normalization: options.cfg_normalization,
                cfg_truncation: options.cfg_truncation,
                seed: options.seed,
                init_noise: options.init_noise.as_ref().map(|p| p.display().to_string()),
                device: format!("{:?}", device),
                dtype: format!("{:?}", dtype),
                timings,
            },
            final_latents: latents,
        })
    }
}
