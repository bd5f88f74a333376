//! QwenImageLayeredPipeline: an RGBA image (+ a prompt describing the scene) → N RGBA layers.
//!
//! Steps (spec §9; diffusers `pipeline_qwenimage_layered.py`):
//! 1. Resize to the 640/1024 bucket with Pillow's LANCZOS; pixels to [-1, 1] as 4 channels.
//! 2. An empty prompt is replaced by a caption of the resized image (Qwen2.5-VL generating from
//!    the caption prompt, [`crate::text_encoder::Captioner`]). Encode the prompt (template, drop
//!    34) and, for true CFG, the negative prompt.
//! 3. VAE-encode the image (posterior mean), normalise, pack: the condition tokens.
//! 4. Noise `[1, L+1, 16, H/8, W/8]` (frame 0 = composite, 1..L = layers), packed.
//! 5. Denoise: per step one transformer forward over [noise tokens, condition tokens]; with CFG,
//!    cond and uncond run **batched** (text padded and key-masked) instead of two forwards;
//!    optional per-token norm rescale; Euler step in f32.
//! 6. Unpack, drop frame 0, de-normalise, decode each layer (in chunks), to RGBA8.
//!
//! The returned layers are bottom → top (Layer 1 is drawn first).

use std::time::Instant;

use candle_core::{DType, Tensor};
use image::RgbaImage;
use serde::Serialize;

use crate::image_proc::{self, Filter};
use crate::latents::{pack, pack_layered, unpack_layered};
use crate::pipeline::denoise::Denoise;
pub use crate::pipeline::denoise::StepTrace;
use crate::pipeline::loading::{load_text_model, text_model_or_shared, Dit, LoadOptions, SharedTextModel};
use crate::pipeline::noise::{load_noise, seeded_noise};
use crate::pipeline::{check_cancel, Phase, Progress};
use crate::scheduler::{layered_mu, FlowMatchEulerScheduler, SchedulerConfig};
use crate::text_encoder::{
    check_prompt_lengths, encode_prompt, CaptionLanguage, CaptionOptions, Captioner, Qwen25VLTextModel,
    CAPTION_MAX_NEW_TOKENS, DEFAULT_MAX_SEQUENCE_LENGTH,
};
use crate::tokenizer::{PromptTemplate, QwenTokenizer};
use crate::transformer::cfg;
use crate::vae::AutoencoderKLQwenImage;
use crate::weights::{ComponentSpec, ModelDir};
use crate::{Error, Result};

/// What a Qwen-Image-Layered folder must hold.
pub const LAYERED_COMPONENTS: &[ComponentSpec] = &[
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

/// One decomposition's parameters (defaults as the official app).
#[derive(Debug, Clone)]
pub struct DecomposeOptions {
    /// Empty or blank: the image is captioned first and the caption used (the reference captions
    /// `None`, `""` and `" "`).
    pub prompt: String,
    /// `None` = no negative prompt (no CFG); the official app uses `" "`.
    pub negative_prompt: Option<String>,
    pub layers: usize,
    pub resolution: u32,
    pub num_inference_steps: usize,
    pub true_cfg_scale: f64,
    pub cfg_normalize: bool,
    pub seed: u64,
    /// Initial latents from a safetensors file (`noise`, `[1, L+1, 16, H/8, W/8]`), replacing the
    /// seeded noise: for checks against other implementations.
    pub init_noise: Option<std::path::PathBuf>,
    pub max_sequence_length: usize,
    /// The caption prompt's language when the prompt is empty (`use_en_prompt`).
    pub caption_language: CaptionLanguage,
    /// The longest caption, in tokens (the reference's 512).
    pub caption_max_new_tokens: usize,
    /// A scheduler config in place of the checkpoint's (a preset's, e.g. a step-distilled
    /// LoRA's `scheduler_config.json`).
    pub scheduler: Option<SchedulerConfig>,
}

impl Default for DecomposeOptions {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: Some(" ".into()),
            layers: 4,
            resolution: 640,
            num_inference_steps: 50,
            true_cfg_scale: 4.0,
            cfg_normalize: true,
            seed: 0,
            init_noise: None,
            max_sequence_length: DEFAULT_MAX_SEQUENCE_LENGTH,
            caption_language: CaptionLanguage::En,
            caption_max_new_tokens: CAPTION_MAX_NEW_TOKENS,
            scheduler: None,
        }
    }
}

impl DecomposeOptions {
    /// CFG runs only with a scale above 1 and a negative prompt, as in the reference.
    pub fn uses_cfg(&self) -> bool {
        self.true_cfg_scale > 1.0 && self.negative_prompt.is_some()
    }

    /// Whether the prompt is empty or blank, so the image gets captioned.
    pub fn needs_caption(&self) -> bool {
        self.prompt.trim().is_empty()
    }

    fn validate(&self) -> Result<()> {
        if !(2..=10).contains(&self.layers) {
            return Err(Error::InvalidInput(format!(
                "layers must be between 2 and 10, got {}",
                self.layers
            )));
        }
        if self.num_inference_steps == 0 {
            return Err(Error::InvalidInput("num_inference_steps must be at least 1".into()));
        }
        if self.needs_caption() && self.caption_max_new_tokens == 0 {
            return Err(Error::InvalidInput(
                "caption_max_new_tokens must be at least 1 to caption an empty prompt".into(),
            ));
        }
        if !self.true_cfg_scale.is_finite() {
            return Err(Error::InvalidInput(format!(
                "true_cfg_scale must be finite, got {}",
                self.true_cfg_scale
            )));
        }
        Ok(())
    }
}

/// Seconds spent in each phase, and (on CUDA) each phase's peak device memory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub load: f64,
    pub caption: f64,
    pub encode_prompt: f64,
    pub encode_image: f64,
    pub denoise: f64,
    pub decode: f64,
    pub total: f64,
    pub vram_peak_gib: crate::gpu::memory::PhaseVram,
}

/// What a run did: recorded in every output manifest for reproducibility.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub pipeline: &'static str,
    pub model: String,
    pub prompt: String,
    /// The generated caption that replaced an empty prompt.
    pub caption: Option<String>,
    pub negative_prompt: Option<String>,
    pub layers: usize,
    pub resolution: u32,
    pub width: u32,
    pub height: u32,
    pub num_inference_steps: usize,
    pub true_cfg_scale: f64,
    pub cfg_normalize: bool,
    pub seed: u64,
    pub init_noise: Option<String>,
    pub device: String,
    pub dtype: String,
    /// The LoRA adapters merged into the DiT (`path` or `path:scale`).
    pub lora: Vec<String>,
    /// Whether the run's scheduler config replaced the checkpoint's (a preset).
    pub scheduler_override: bool,
    pub timings: Timings,
}

/// The result: layers bottom → top, and the final packed latents (for parity checks).
#[derive(Debug)]
pub struct DecomposeOutput {
    pub layers: Vec<RgbaImage>,
    pub record: RunRecord,
    /// `[1, (L+1)·h/2·w/2, 64]` after the last step.
    pub final_latents: Tensor,
}

/// The loaded Qwen-Image-Layered pipeline.
pub struct LayeredPipeline {
    model: ModelDir,
    options: LoadOptions,
    tokenizer: QwenTokenizer,
    text_encoder: Option<Qwen25VLTextModel>,
    /// The DiT, and its CFG-parallel copy when the options ask for one.
    transformer: Dit,
    vae: AutoencoderKLQwenImage,
    scheduler_config: SchedulerConfig,
}

impl LayeredPipeline {
    /// Loads a model folder (see [`ModelDir::resolve`] for repo ids), checking it is complete.
    pub fn load(model: ModelDir, options: LoadOptions) -> Result<Self> {
        Self::load_sharing(model, options, None)
    }

    /// As [`LayeredPipeline::load`], taking the text encoder from `shared` (the edit pipeline's)
    /// when it holds the same weights.
    pub fn load_sharing(model: ModelDir, options: LoadOptions, shared: Option<&SharedTextModel>) -> Result<Self> {
        model.check(LAYERED_COMPONENTS)?;
        let tokenizer = QwenTokenizer::from_model_dir(&model)?;
        let transformer_cfg: crate::transformer::Config = model.read_json("transformer", "config.json")?;
        if !transformer_cfg.use_layer3d_rope || !transformer_cfg.use_additional_t_cond {
            return Err(Error::InvalidInput(format!(
                "{} is not a Qwen-Image-Layered model (its transformer lacks use_layer3d_rope/use_additional_t_cond)",
                model.root().display()
            )));
        }
        let transformer = Dit::load(&model, &transformer_cfg, &options)?;
        let vae_cfg: crate::vae::Config = model.read_json("vae", "config.json")?;
        let vae = AutoencoderKLQwenImage::new(&vae_cfg, model.var_builder("vae", options.dtype, &options.device)?)?;
        if vae_cfg.input_channels != 4 {
            return Err(Error::InvalidInput(format!(
                "the Layered VAE must have 4 input channels (RGBA), this one has {}",
                vae_cfg.input_channels
            )));
        }
        let scheduler_config: SchedulerConfig = model.read_json("scheduler", "scheduler_config.json")?;
        FlowMatchEulerScheduler::new(scheduler_config.clone())?;
        let text_encoder = if options.keep_text_encoder {
            Some(text_model_or_shared(&model, &options, shared)?)
        } else {
            None
        };
        Ok(Self {
            model,
            options,
            tokenizer,
            text_encoder,
            transformer,
            vae,
            scheduler_config,
        })
    }

    pub fn model(&self) -> &ModelDir {
        &self.model
    }

    /// Merges `lora` into the DiT in place of the adapters it has now (nothing happens when they
    /// are the same); see [`Dit::set_lora`].
    pub fn set_lora(&mut self, lora: &[crate::lora::LoraSpec]) -> Result<()> {
        self.transformer.set_lora(&self.model, &mut self.options, lora)
    }

    /// The adapters merged into the DiT now.
    pub fn lora(&self) -> &[crate::lora::LoraSpec] {
        &self.options.lora
    }

    /// The kept text encoder, for the edit pipeline to use instead of loading the same weights.
    pub fn shared_text_model(&self) -> Option<SharedTextModel> {
        let text = self.text_encoder.as_ref()?;
        SharedTextModel::new(&self.model, &self.options, text.clone())
    }

    pub fn tokenizer(&self) -> &QwenTokenizer {
        &self.tokenizer
    }

    /// Checks a request's prompts against the encoder's length limit without loading anything
    /// (a caption, not known yet, is cut at the limit like the reference does).
    pub fn check_prompts(&self, options: &DecomposeOptions) -> Result<()> {
        let mut prompts = vec![];
        if !options.needs_caption() {
            prompts.push(options.prompt.as_str());
        }
        if let Some(neg) = &options.negative_prompt {
            prompts.push(neg);
        }
        check_prompt_lengths(
            &self.tokenizer,
            &PromptTemplate::LAYERED,
            &prompts,
            options.max_sequence_length,
        )?;
        Ok(())
    }

    /// Runs the pipeline on `image`.
    pub fn decompose(
        &mut self,
        image: &RgbaImage,
        options: &DecomposeOptions,
        progress: &dyn Progress,
    ) -> Result<DecomposeOutput> {
        self.decompose_traced(image, options, progress, &mut |_| {})
    }

    /// [`Self::decompose`], handing each step's velocities and latents to `observe`.
    pub fn decompose_traced(
        &mut self,
        image: &RgbaImage,
        options: &DecomposeOptions,
        progress: &dyn Progress,
        observe: &mut dyn FnMut(StepTrace<'_>),
    ) -> Result<DecomposeOutput> {
        options.validate()?;
        self.check_prompts(options)?;
        let t_start = Instant::now();
        let mut timings = Timings::default();
        let device = self.options.device.clone();
        let vram = crate::gpu::memory::PhasePeaks::start(&device);

        // 1. The working size and the condition image.
        let (src_w, src_h) = image.dimensions();
        let (width, height) = image_proc::layered_dimensions(options.resolution, src_w, src_h)?;
        let resized = image_proc::resize_rgba(image, width, height, Filter::Lanczos)?;
        let (lat_h, lat_w) = (height as usize / 8, width as usize / 8);

        // 2. Prompt embeddings (the text encoder lives only for this phase unless kept), after
        //    captioning the image if the prompt is empty.
        let first = if options.needs_caption() {
            Phase::Captioning
        } else {
            Phase::Encoding
        };
        progress.phase(first);
        let mut phase = first;
        let mut enter = |next: Phase| {
            if next != phase {
                progress.phase(next);
                phase = next;
            }
        };
        let mut caption = None;
        let (prompt_embeds, prompt_mask, negative) = {
            let loaded;
            let encoder = match &self.text_encoder {
                Some(enc) => enc,
                None => {
                    enter(Phase::Loading);
                    loaded = load_text_model(&self.model, &self.options)?;
                    &loaded
                }
            };
            if options.needs_caption() {
                enter(Phase::Captioning);
                let t = Instant::now();
                let captioner = Captioner::with_text_model(&self.model, encoder.clone())?;
                let caption_options = CaptionOptions {
                    language: options.caption_language,
                    max_new_tokens: options.caption_max_new_tokens,
                    ..CaptionOptions::default()
                };
                let text = captioner.caption(&self.tokenizer, &resized, &caption_options)?.text;
                tracing::info!(caption = %text, "captioned the image for an empty prompt");
                caption = Some(text);
                timings.caption = t.elapsed().as_secs_f64();
                check_cancel(progress)?;
            }
            enter(Phase::Encoding);
            let t = Instant::now();
            let prompt = caption.as_deref().unwrap_or(&options.prompt);
            let max_len = options.max_sequence_length;
            let (pe, pm) = encode_prompt(encoder, &self.tokenizer, &PromptTemplate::LAYERED, &[prompt], max_len)?;
            let negative = match (&options.negative_prompt, options.uses_cfg()) {
                (Some(neg), true) => Some(encode_prompt(
                    encoder,
                    &self.tokenizer,
                    &PromptTemplate::LAYERED,
                    &[neg],
                    max_len,
                )?),
                _ => None,
            };
            timings.encode_prompt = t.elapsed().as_secs_f64();
            timings.vram_peak_gib.encode_prompt = vram.phase_done();
            (pe, pm, negative)
        };
        check_cancel(progress)?;

        // 3. Condition latents.
        let t = Instant::now();
        let pixels = image_proc::to_tensor(&resized, &device)?.to_dtype(self.options.dtype)?;
        let mean = self.vae.encode_mean(&pixels)?;
        let cond_latents = pack(&self.vae.normalize_latents(&mean)?.to_dtype(DType::F32)?)?;
        let cond_tokens = cond_latents.dim(1)?;
        timings.encode_image = t.elapsed().as_secs_f64();
        timings.vram_peak_gib.encode_image = vram.phase_done();

        // 4. Noise, unpacked shape first (frame 0 = composite), then packed.
        let frames = options.layers + 1;
        let noise_shape = [1, frames, 16, lat_h, lat_w];
        let noise = match &options.init_noise {
            Some(path) => load_noise(path, &noise_shape, &device)?,
            None => seeded_noise(options.seed, &noise_shape, &device)?,
        };
        let latents = pack_layered(&noise)?;

        // 5. Denoise.
        let grid = (1, lat_h / 2, lat_w / 2);
        let img_shapes: Vec<(usize, usize, usize)> = std::iter::repeat_n(grid, frames + 1).collect();
        let scheduler_config = options
            .scheduler
            .clone()
            .unwrap_or_else(|| self.scheduler_config.clone());
        let mut scheduler = FlowMatchEulerScheduler::new(scheduler_config)?;
        scheduler.set_timesteps(options.num_inference_steps, Some(layered_mu(cond_tokens)))?;
        let (txt, txt_mask, batch) = match &negative {
            Some((ne, nm)) => {
                let (txt, mask) = cfg::pad_and_stack(&prompt_embeds, Some(&prompt_mask), ne, Some(nm))?;
                (txt, Some(mask), 2)
            }
            None => (prompt_embeds.clone(), None, 1),
        };
        let txt = txt.to_dtype(self.options.dtype)?;
        let is_rgb = Tensor::zeros(batch, DType::U32, &device)?;
        let t = Instant::now();
        let denoise = Denoise {
            transformer: self.transformer.main()?,
            cfg_peer: self.transformer.cfg_peer(&self.options)?,
            sequence: self.transformer.sequence(&self.options)?,
            cond_latents: &cond_latents,
            txt: &txt,
            txt_mask: txt_mask.as_ref(),
            img_shapes: &img_shapes,
            additional_t_cond: Some(&is_rgb),
            dtype: self.options.dtype,
            true_cfg_scale: options.true_cfg_scale,
            cfg_normalize: options.cfg_normalize,
        };
        let latents = denoise.run(&mut scheduler, latents, progress, observe)?;
        timings.denoise = t.elapsed().as_secs_f64();
        timings.vram_peak_gib.denoise = vram.phase_done();

        // 6. Decode every layer (frame 0, the regenerated composite, is dropped).
        progress.phase(Phase::Decoding);
        let t = Instant::now();
        let unpacked = unpack_layered(&latents, frames, lat_h, lat_w)?; // [1, L+1, 16, h, w]
        let layer_latents = unpacked.narrow(1, 1, options.layers)?.squeeze(0)?; // [L, 16, h, w]
        let z = self
            .vae
            .denormalize_latents(&layer_latents.to_dtype(self.options.dtype)?)?;
        let decoded = self
            .vae
            .decode_chunked(&z, self.options.vae_decode_chunk.max(1))?
            .to_dtype(DType::F32)?;
        let layers = (0..options.layers)
            .map(|i| image_proc::tensor_to_rgba8(&decoded.get(i)?))
            .collect::<Result<Vec<_>>>()?;
        timings.decode = t.elapsed().as_secs_f64();
        timings.vram_peak_gib.decode = vram.phase_done();
        timings.total = t_start.elapsed().as_secs_f64();

        let record = RunRecord {
            pipeline: "QwenImageLayeredPipeline",
            model: self.model.describe(),
            prompt: options.prompt.clone(),
            caption,
            negative_prompt: options.negative_prompt.clone(),
            layers: options.layers,
            resolution: options.resolution,
            width,
            height,
            num_inference_steps: options.num_inference_steps,
            true_cfg_scale: options.true_cfg_scale,
            cfg_normalize: options.cfg_normalize,
            seed: options.seed,
            init_noise: options.init_noise.as_ref().map(|p| p.display().to_string()),
            device: format!("{:?}", self.options.device),
            dtype: format!("{:?}", self.options.dtype),
            lora: self.options.lora.iter().map(crate::lora::LoraSpec::describe).collect(),
            scheduler_override: options.scheduler.is_some(),
            timings,
        };
        Ok(DecomposeOutput {
            layers,
            record,
            final_latents: latents,
        })
    }
}
