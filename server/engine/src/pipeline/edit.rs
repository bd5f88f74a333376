//! QwenImageEditPlusPipeline (Qwen-Image-Edit-2509): one or more RGB images + an instruction →
//! one edited RGB image.
//!
//! Steps (spec §10; diffusers `pipeline_qwenimage_edit_plus.py`):
//! 1. Per input image, two resized copies (Pillow LANCZOS): the **condition (VL) image** at ≈384²
//!    for the vision-language prompt encoder, and the **VAE image** at ≈1 MP (whatever the output
//!    size). The output size defaults to ≈1 MP at the last image's aspect ratio, floored to a
//!    multiple of 16.
//! 2. Prompt embeddings: the edit template with "Picture 1: <image>…" before the instruction, and
//!    the negative prompt encoded **with the same images** (see [`EditPromptEmbeds`]: the seam
//!    where the multimodal encoder plugs in, or recorded embeddings are injected).
//! 3. Each VAE image → posterior mean → normalised → packed; all concatenated along tokens.
//! 4. Noise `[1, 1, 16, H/8, W/8]`, packed.
//! 5. Denoise over [noise tokens, condition tokens] with base RoPE (frame = list index):
//!    `img_shapes = [(1, H/16, W/16), (1, vh/16, vw/16) per image]`; schedule with exponential
//!    shift, mu linear in the noisy-token count, terminal σ 0.02; true CFG with the per-token norm
//!    rescale **always on**, cond and uncond batched into one forward.
//! 6. Unpack, de-normalise, decode, to RGB8.

use std::time::Instant;

use candle_core::{DType, Tensor};
use image::RgbImage;
use serde::Serialize;

use crate::image_proc;
use crate::latents::{pack, unpack};
use crate::pipeline::decompose::Timings;
use crate::pipeline::denoise::{Denoise, StepTrace};
use crate::pipeline::loading::{text_model_or_shared, Dit, LoadOptions, SharedTextModel};
use crate::pipeline::noise::{load_noise, seeded_noise};
use crate::pipeline::{check_cancel, Phase, Progress};
use crate::scheduler::{FlowMatchEulerScheduler, SchedulerConfig};
use crate::text_encoder::{encode_prompt_with_images, MropeMode, Qwen25VLTextModel, VisionTower};
use crate::tokenizer::{PromptTemplate, QwenTokenizer};
use crate::transformer::cfg;
use crate::vae::AutoencoderKLQwenImage;
use crate::weights::{ComponentSpec, ModelDir};
use crate::{Error, Result};

/// What a Qwen-Image-Edit-2509 folder must hold.
pub const EDIT_COMPONENTS: &[ComponentSpec] = &[
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

/// One edit's parameters (defaults as the official app).
#[derive(Debug, Clone)]
pub struct EditOptions {
    /// `None` = no CFG; the official app uses `" "`.
    pub negative_prompt: Option<String>,
    pub true_cfg_scale: f64,
    /// At least 2: with one step the schedule's terminal stretch is 0/0 (diffusers gives NaN).
    pub num_inference_steps: usize,
    pub seed: u64,
    /// Initial latents from a safetensors file (`noise`, `[1, 1, 16, H/8, W/8]`), replacing the
    /// seeded noise: for checks against other implementations.
    pub init_noise: Option<std::path::PathBuf>,
    /// Output size; `None` = ≈1 MP at the last image's aspect ratio. Floored to multiples of 16.
    pub height: Option<u32>,
    pub width: Option<u32>,
    /// Positions of the image tokens in the prompt encoder: true 3-D M-RoPE (what Qwen2.5-VL was
    /// trained with) or the 1-D positions diffusers 0.42.1 + transformers 5 compute.
    pub mrope: MropeMode,
    /// A scheduler config in place of the checkpoint's (a preset's, e.g. Qwen-Image-Lightning's
    /// `scheduler_config.json`).
    pub scheduler: Option<SchedulerConfig>,
}

impl Default for EditOptions {
    fn default() -> Self {
        Self {
            negative_prompt: Some(" ".into()),
            true_cfg_scale: 4.0,
            num_inference_steps: 50,
            seed: 0,
            init_noise: None,
            height: None,
            width: None,
            mrope: MropeMode::ThreeD,
            scheduler: None,
        }
    }
}

impl EditOptions {
    /// CFG runs only with a scale above 1 and a negative prompt, as in the reference.
    pub fn uses_cfg(&self) -> bool {
        self.true_cfg_scale > 1.0 && self.negative_prompt.is_some()
    }

    fn validate(&self) -> Result<()> {
        if self.num_inference_steps < 2 {
            return Err(Error::InvalidInput(format!(
                "Qwen-Image-Edit needs at least 2 inference steps, got {} (with one step its schedule, stretched to \
                 end at sigma 0.02, is undefined)",
                self.num_inference_steps
            )));
        }
        if !self.true_cfg_scale.is_finite() {
            return Err(Error::InvalidInput(format!(
                "true_cfg_scale must be finite, got {}",
                self.true_cfg_scale
            )));
        }
        Ok(())
    }

    /// The output `(width, height)` for images whose last is `last_w × last_h`.
    pub fn output_size(&self, last_w: u32, last_h: u32) -> Result<(u32, u32)> {
        let (dw, dh) = image_proc::edit_vae_dimensions(last_w, last_h)?;
        let (w, h) = (self.width.unwrap_or(dw) / 16 * 16, self.height.unwrap_or(dh) / 16 * 16);
        if w == 0 || h == 0 {
            return Err(Error::InvalidInput(format!(
                "output size {}×{} is below 16 pixels on a side",
                self.width.unwrap_or(dw),
                self.height.unwrap_or(dh)
            )));
        }
        Ok((w, h))
    }
}

/// One image segment of the transformer's input, `(frames, h/16, w/16)` (its RoPE grid).
pub type ImageSegment = (usize, usize, usize);

/// One input image as the pipeline uses it.
#[derive(Debug, Clone)]
pub struct ConditionImage {
    /// ≈384² (multiples of 32), for the vision-language prompt encoder.
    pub vl: RgbImage,
    /// ≈1 MP (multiples of 32), for the VAE: the condition tokens.
    pub vae: RgbImage,
}

impl ConditionImage {
    /// Both resized copies of `image` (Pillow LANCZOS, as diffusers' `VaeImageProcessor.resize`).
    pub fn new(image: &RgbImage) -> Result<Self> {
        let (w, h) = image.dimensions();
        let (cw, ch) = image_proc::edit_condition_dimensions(w, h)?;
        let (vw, vh) = image_proc::edit_vae_dimensions(w, h)?;
        Ok(Self {
            vl: image_proc::resize_lanczos_rgb(image, cw, ch)?,
            vae: image_proc::resize_lanczos_rgb(image, vw, vh)?,
        })
    }
}

/// The text conditioning of one edit: `[1, L, D]` for the instruction and, with CFG, `[1, L', D]`
/// for the negative prompt (both encoded with the condition images). Produced by
/// [`EditPipeline::encode_prompts`], or injected (recorded reference embeddings, cached ones).
#[derive(Debug, Clone)]
pub struct EditPromptEmbeds {
    pub prompt: Tensor,
    pub negative: Option<Tensor>,
}

/// What an edit did: recorded for reproducibility.
#[derive(Debug, Clone, Serialize)]
pub struct EditRunRecord {
    pub pipeline: &'static str,
    pub model: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub images: usize,
    pub width: u32,
    pub height: u32,
    pub num_inference_steps: usize,
    pub true_cfg_scale: f64,
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

/// The edited image and the final packed latents (for parity checks).
#[derive(Debug)]
pub struct EditOutput {
    pub image: RgbImage,
    pub record: EditRunRecord,
    /// `[1, H/16·W/16, 64]` after the last step.
    pub final_latents: Tensor,
}

/// The prompt encoder: Qwen2.5-VL's language model and vision tower.
struct PromptEncoder {
    text: Qwen25VLTextModel,
    /// `None` with offload: the tower (~0.7B, 1.3 GB in bf16) is read onto the GPU for each
    /// encoding (≈ 0.2 s from the page cache) and dropped after it, so it does not sit in VRAM
    /// through the denoising.
    vision: Option<VisionTower>,
}

impl PromptEncoder {
    /// The language model honours `offload` (streamed); the vision tower stays resident unless
    /// offloading.
    fn load(model: &ModelDir, options: &LoadOptions, shared: Option<&SharedTextModel>) -> Result<Self> {
        let text = text_model_or_shared(model, options, shared)?;
        let vision = match options.offload {
            Some(_) => None,
            None => Some(VisionTower::load(model, options.dtype, &options.device)?),
        };
        Ok(Self { text, vision })
    }
}

/// The loaded Qwen-Image-Edit-2509 pipeline.
pub struct EditPipeline {
    model: ModelDir,
    options: LoadOptions,
    tokenizer: QwenTokenizer,
    /// Kept between runs only with `LoadOptions::keep_text_encoder`.
    encoder: Option<PromptEncoder>,
    /// The DiT, and its CFG-parallel copy when the options ask for one.
    transformer: Dit,
    vae: AutoencoderKLQwenImage,
    scheduler_config: SchedulerConfig,
}

impl EditPipeline {
    /// Loads a model folder (see [`ModelDir::resolve`] for repo ids), checking it is complete and
    /// is an Edit (not a Layered) checkpoint.
    pub fn load(model: ModelDir, options: LoadOptions) -> Result<Self> {
        Self::load_sharing(model, options, None)
    }

    /// As [`EditPipeline::load`], taking the language model from `shared` (the decompose
    /// pipeline's) when it holds the same weights.
    pub fn load_sharing(model: ModelDir, options: LoadOptions, shared: Option<&SharedTextModel>) -> Result<Self> {
        model.check(EDIT_COMPONENTS)?;
        let tokenizer = QwenTokenizer::from_model_dir(&model)?;
        let transformer_cfg: crate::transformer::Config = model.read_json("transformer", "config.json")?;
        if transformer_cfg.use_layer3d_rope || transformer_cfg.use_additional_t_cond {
            return Err(Error::InvalidInput(format!(
                "{} is a Qwen-Image-Layered model (its transformer uses use_layer3d_rope/use_additional_t_cond), \
                 not Qwen-Image-Edit",
                model.root().display()
            )));
        }
        let vae_cfg: crate::vae::Config = model.read_json("vae", "config.json")?;
        if vae_cfg.input_channels != 3 {
            return Err(Error::InvalidInput(format!(
                "the Qwen-Image-Edit VAE must have 3 input channels (RGB), this one has {}",
                vae_cfg.input_channels
            )));
        }
        let transformer = Dit::load(&model, &transformer_cfg, &options)?;
        let vae = AutoencoderKLQwenImage::new(&vae_cfg, model.var_builder("vae", options.dtype, &options.device)?)?;
        let scheduler_config: SchedulerConfig = model.read_json("scheduler", "scheduler_config.json")?;
        FlowMatchEulerScheduler::new(scheduler_config.clone())?;
        let encoder = if options.keep_text_encoder {
            Some(PromptEncoder::load(&model, &options, shared)?)
        } else {
            None
        };
        Ok(Self {
            model,
            options,
            tokenizer,
            encoder,
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

    /// The kept language model, for the decompose pipeline to use instead of loading the same
    /// weights.
    pub fn shared_text_model(&self) -> Option<SharedTextModel> {
        let encoder = self.encoder.as_ref()?;
        SharedTextModel::new(&self.model, &self.options, encoder.text.clone())
    }

    pub fn tokenizer(&self) -> &QwenTokenizer {
        &self.tokenizer
    }

    /// Encodes the instruction and (with CFG) the negative prompt with the condition images' VL
    /// copies, as `encode_prompt(prompt, image=condition_images)` — both in one batch (padded,
    /// key-masked), the images through the vision tower once. The encoder is loaded for this call
    /// unless kept.
    pub fn encode_prompts(
        &self,
        condition: &[ConditionImage],
        prompt: &str,
        options: &EditOptions,
        progress: &dyn Progress,
    ) -> Result<EditPromptEmbeds> {
        let loaded;
        let encoder = match &self.encoder {
            Some(e) => e,
            None => {
                progress.phase(Phase::Loading);
                loaded = PromptEncoder::load(&self.model, &self.options, None)?;
                progress.phase(Phase::Encoding);
                &loaded
            }
        };
        let mut prompts = vec![prompt];
        if let (Some(neg), true) = (&options.negative_prompt, options.uses_cfg()) {
            prompts.push(neg);
        }
        let vl: Vec<RgbImage> = condition.iter().map(|c| c.vl.clone()).collect();
        let per_call_vision;
        let vision = match &encoder.vision {
            Some(v) => v,
            None => {
                per_call_vision = VisionTower::load(&self.model, self.options.dtype, &self.options.device)?;
                &per_call_vision
            }
        };
        let (embeds, mask) = encode_prompt_with_images(
            &encoder.text,
            vision,
            &self.tokenizer,
            &PromptTemplate::EDIT,
            &prompts,
            &vl,
            options.mrope,
        )?;
        // Each row back to its own length (the batch is right-padded).
        let lengths = mask.to_dtype(DType::U32)?.sum(1)?.to_vec1::<u32>()?;
        let row = |i: usize| -> Result<Tensor> { Ok(embeds.narrow(0, i, 1)?.narrow(1, 0, lengths[i] as usize)?) };
        Ok(EditPromptEmbeds {
            prompt: row(0)?,
            negative: if prompts.len() == 2 { Some(row(1)?) } else { None },
        })
    }

    /// Edits `images` (the last one sets the default output size) by `prompt`.
    pub fn edit(
        &mut self,
        images: &[RgbImage],
        prompt: &str,
        options: &EditOptions,
        progress: &dyn Progress,
    ) -> Result<EditOutput> {
        self.edit_traced(images, prompt, options, progress, &mut |_| {})
    }

    /// [`Self::edit`], handing each step's velocities and latents to `observe`.
    pub fn edit_traced(
        &mut self,
        images: &[RgbImage],
        prompt: &str,
        options: &EditOptions,
        progress: &dyn Progress,
        observe: &mut dyn FnMut(StepTrace<'_>),
    ) -> Result<EditOutput> {
        check_request(images, prompt, options)?;
        let condition = images.iter().map(ConditionImage::new).collect::<Result<Vec<_>>>()?;
        progress.phase(Phase::Encoding);
        let t = Instant::now();
        let vram = crate::gpu::memory::PhasePeaks::start(&self.options.device);
        let embeds = self.encode_prompts(&condition, prompt, options, progress)?;
        let encode_seconds = t.elapsed().as_secs_f64();
        let encode_vram = vram.phase_done();
        drop(vram);
        let mut out = self.run(images, &condition, prompt, &embeds, options, progress, observe)?;
        out.record.timings.encode_prompt = encode_seconds;
        out.record.timings.vram_peak_gib.encode_prompt = encode_vram;
        out.record.timings.total += encode_seconds;
        Ok(out)
    }

    /// Runs the edit with given prompt embeddings instead of encoding `prompt` (which is only
    /// recorded). `embeds.negative` must be present exactly when `options` asks for CFG.
    pub fn edit_with_prompt_embeds(
        &mut self,
        images: &[RgbImage],
        prompt: &str,
        embeds: &EditPromptEmbeds,
        options: &EditOptions,
        progress: &dyn Progress,
        observe: &mut dyn FnMut(StepTrace<'_>),
    ) -> Result<EditOutput> {
        check_request(images, prompt, options)?;
        let condition = images.iter().map(ConditionImage::new).collect::<Result<Vec<_>>>()?;
        self.run(images, &condition, prompt, embeds, options, progress, observe)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        images: &[RgbImage],
        condition: &[ConditionImage],
        prompt: &str,
        embeds: &EditPromptEmbeds,
        options: &EditOptions,
        progress: &dyn Progress,
        observe: &mut dyn FnMut(StepTrace<'_>),
    ) -> Result<EditOutput> {
        let t_start = Instant::now();
        let mut timings = Timings::default();
        let device = self.options.device.clone();
        let vram = crate::gpu::memory::PhasePeaks::start(&device);
        let dtype = self.options.dtype;
        let (last_w, last_h) = images.last().map(|i| i.dimensions()).unwrap_or_default();
        let (width, height) = options.output_size(last_w, last_h)?;
        let (lat_h, lat_w) = (height as usize / 8, width as usize / 8);
        let txt = self.text_conditioning(embeds, options)?;
        check_cancel(progress)?;

        // Condition latents: every VAE image, packed, in order.
        progress.phase(Phase::Encoding);
        let t = Instant::now();
        let (cond_latents, cond_shapes) = self.encode_condition(condition)?;
        let img_shapes: Vec<ImageSegment> = std::iter::once((1, lat_h / 2, lat_w / 2)).chain(cond_shapes).collect();
        timings.encode_image = t.elapsed().as_secs_f64();
        timings.vram_peak_gib.encode_image = vram.phase_done();
        check_cancel(progress)?;

        // Noise, unpacked shape first, then packed.
        let noise_shape = [1, 1, 16, lat_h, lat_w];
        let noise = match &options.init_noise {
            Some(path) => load_noise(path, &noise_shape, &device)?,
            None => seeded_noise(options.seed, &noise_shape, &device)?,
        };
        let latents = pack(&noise.squeeze(1)?)?;
        let noisy_tokens = latents.dim(1)?;

        // Denoise.
        let scheduler_config = options
            .scheduler
            .clone()
            .unwrap_or_else(|| self.scheduler_config.clone());
        let mut scheduler = FlowMatchEulerScheduler::new(scheduler_config)?;
        let mu = scheduler.edit_mu(noisy_tokens);
        scheduler.set_timesteps(options.num_inference_steps, Some(mu))?;
        let (txt, txt_mask) = txt;
        let t = Instant::now();
        let denoise = Denoise {
            transformer: self.transformer.main()?,
            cfg_peer: self.transformer.cfg_peer(&self.options)?,
            sequence: self.transformer.sequence(&self.options)?,
            cond_latents: &cond_latents,
            txt: &txt,
            txt_mask: txt_mask.as_ref(),
            img_shapes: &img_shapes,
            additional_t_cond: None,
            dtype,
            true_cfg_scale: options.true_cfg_scale,
            // Edit-Plus always rescales the guided velocity to the conditional one's norm.
            cfg_normalize: true,
        };
        let latents = denoise.run(&mut scheduler, latents, progress, observe)?;
        timings.denoise = t.elapsed().as_secs_f64();
        timings.vram_peak_gib.denoise = vram.phase_done();

        // Decode.
        progress.phase(Phase::Decoding);
        let t = Instant::now();
        let z = unpack(&latents, lat_h, lat_w)?.squeeze(2)?; // [1, 16, h, w]
        let z = self.vae.denormalize_latents(&z.to_dtype(dtype)?)?;
        let decoded = self.vae.decode(&z)?.to_dtype(DType::F32)?;
        let image = image_proc::tensor_to_rgb8(&decoded.get(0)?)?;
        timings.decode = t.elapsed().as_secs_f64();
        timings.vram_peak_gib.decode = vram.phase_done();
        timings.total = t_start.elapsed().as_secs_f64();

        let record = EditRunRecord {
            pipeline: "QwenImageEditPlusPipeline",
            model: self.model.describe(),
            prompt: prompt.to_string(),
            negative_prompt: options.negative_prompt.clone(),
            images: images.len(),
            width,
            height,
            num_inference_steps: options.num_inference_steps,
            true_cfg_scale: options.true_cfg_scale,
            seed: options.seed,
            init_noise: options.init_noise.as_ref().map(|p| p.display().to_string()),
            device: format!("{:?}", self.options.device),
            dtype: format!("{:?}", self.options.dtype),
            lora: self.options.lora.iter().map(crate::lora::LoraSpec::describe).collect(),
            scheduler_override: options.scheduler.is_some(),
            timings,
        };
        Ok(EditOutput {
            image,
            record,
            final_latents: latents,
        })
    }

    /// The condition tokens: every VAE image's posterior mean, normalised and packed, concatenated
    /// in order (`[1, S_cond, 64]`, f32), with each image's `(1, vh/16, vw/16)` RoPE segment.
    pub fn encode_condition(&self, condition: &[ConditionImage]) -> Result<(Tensor, Vec<ImageSegment>)> {
        let device = &self.options.device;
        let mut parts = Vec::with_capacity(condition.len());
        let mut shapes = Vec::with_capacity(condition.len());
        for c in condition {
            let pixels = image_proc::to_tensor(&c.vae, device)?.to_dtype(self.options.dtype)?;
            let mean = self.vae.encode_mean(&pixels)?;
            parts.push(pack(&self.vae.normalize_latents(&mean)?.to_dtype(DType::F32)?)?);
            shapes.push((1, c.vae.height() as usize / 16, c.vae.width() as usize / 16));
        }
        if parts.is_empty() {
            return Err(Error::InvalidInput("an edit needs at least one input image".into()));
        }
        Ok((Tensor::cat(&parts, 1)?, shapes))
    }

    /// The transformer's text input: `[1, L, D]` alone, or cond and uncond padded and stacked
    /// `[2, L, D]` with their key mask for one batched CFG forward.
    fn text_conditioning(&self, embeds: &EditPromptEmbeds, options: &EditOptions) -> Result<(Tensor, Option<Tensor>)> {
        let want = self.transformer.main()?.config().joint_attention_dim;
        let check = |t: &Tensor, what: &str| match t.dims() {
            &[1, l, d] if l > 0 && d == want => Ok(()),
            d => Err(Error::InvalidInput(format!(
                "{what} embeddings have shape {d:?}, expected [1, L, {want}]"
            ))),
        };
        check(&embeds.prompt, "prompt")?;
        let device = &self.options.device;
        let dtype = self.options.dtype;
        match (&embeds.negative, options.uses_cfg()) {
            (Some(neg), true) => {
                check(neg, "negative prompt")?;
                let (txt, mask) =
                    cfg::pad_and_stack(&embeds.prompt.to_device(device)?, None, &neg.to_device(device)?, None)?;
                Ok((txt.to_dtype(dtype)?, Some(mask)))
            }
            (None, false) => Ok((embeds.prompt.to_device(device)?.to_dtype(dtype)?, None)),
            (None, true) => Err(Error::InvalidInput(
                "CFG is on (true_cfg_scale > 1 with a negative prompt) but no negative prompt embeddings were given"
                    .into(),
            )),
            (Some(_), false) => Err(Error::InvalidInput(
                "negative prompt embeddings were given but CFG is off (true_cfg_scale <= 1 or no negative prompt)"
                    .into(),
            )),
        }
    }
}

/// Checks what needs no model: images present and non-empty, an instruction, sane options.
fn check_request(images: &[RgbImage], prompt: &str, options: &EditOptions) -> Result<()> {
    options.validate()?;
    if images.is_empty() {
        return Err(Error::InvalidInput("an edit needs at least one input image".into()));
    }
    if let Some((i, img)) = images
        .iter()
        .enumerate()
        .find(|(_, img)| img.width() == 0 || img.height() == 0)
    {
        return Err(Error::InvalidInput(format!(
            "input image {} is empty ({}×{})",
            i + 1,
            img.width(),
            img.height()
        )));
    }
    if prompt.trim().is_empty() {
        return Err(Error::InvalidInput("the edit instruction is empty".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_defaults_to_one_megapixel_at_the_last_images_ratio() {
        let o = EditOptions::default();
        assert_eq!(o.output_size(360, 240).unwrap(), (1248, 832));
        assert_eq!(o.output_size(512, 512).unwrap(), (1024, 1024));
        let o = EditOptions {
            height: Some(256),
            width: Some(390),
            ..EditOptions::default()
        };
        assert_eq!(
            o.output_size(360, 240).unwrap(),
            (384, 256),
            "floored to multiples of 16"
        );
        let o = EditOptions {
            height: Some(15),
            ..EditOptions::default()
        };
        assert!(o.output_size(360, 240).unwrap_err().to_string().contains("below 16"));
    }

    #[test]
    fn one_step_and_bad_requests_are_refused_clearly() {
        let img = RgbImage::new(32, 32);
        let one = EditOptions {
            num_inference_steps: 1,
            ..EditOptions::default()
        };
        let err = check_request(std::slice::from_ref(&img), "x", &one)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 2 inference steps"), "{err}");
        let ok = EditOptions::default();
        assert!(check_request(&[], "x", &ok)
            .unwrap_err()
            .to_string()
            .contains("at least one input image"));
        assert!(check_request(std::slice::from_ref(&img), "  ", &ok)
            .unwrap_err()
            .to_string()
            .contains("instruction is empty"));
        assert!(check_request(&[RgbImage::new(0, 4)], "x", &ok)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let nan = EditOptions {
            true_cfg_scale: f64::NAN,
            ..EditOptions::default()
        };
        assert!(check_request(std::slice::from_ref(&img), "x", &nan).is_err());
        check_request(&[img], "make it red", &ok).unwrap();
    }

    #[test]
    fn cfg_needs_a_scale_above_one_and_a_negative_prompt() {
        assert!(EditOptions::default().uses_cfg());
        assert!(!EditOptions {
            true_cfg_scale: 1.0,
            ..EditOptions::default()
        }
        .uses_cfg());
        assert!(!EditOptions {
            negative_prompt: None,
            ..EditOptions::default()
        }
        .uses_cfg());
    }

    #[test]
    fn condition_images_are_384_squared_and_one_megapixel() {
        let c = ConditionImage::new(&RgbImage::new(360, 240)).unwrap();
        assert_eq!(c.vl.dimensions(), (480, 320));
        assert_eq!(c.vae.dimensions(), (1248, 832));
    }
}
