//! Loading shared by both pipelines: how the models are placed ([`LoadOptions`]), the DiT and the
//! Qwen2.5-VL language model, each resident on the device or, with `offload`, kept in host
//! memory and streamed to the GPU block by block. Decompose and edit load through the same two
//! functions, so both honour `cpu_offload` the same way. Layered and Edit-2509 use the same
//! Qwen2.5-VL-7B: a kept language model is handed from one pipeline to the other
//! ([`SharedTextModel`]) when its weights are the same, instead of being held or read twice.

use candle_core::{DType, Device};

use crate::gpu::OffloadOptions;
use crate::text_encoder::Qwen25VLTextModel;
use crate::transformer::QwenImageTransformer;
use crate::weights::{ModelDir, WeightsIdentity};
use crate::Result;

/// How to load and run the models.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Weights and activations (norm statistics, softmax, RoPE and the scheduler stay f32).
    pub dtype: DType,
    /// Keep the text encoder in memory between runs (fast for small models; the real one is
    /// 16 GB, so by default it is loaded per run and dropped before denoising).
    pub keep_text_encoder: bool,
    /// Layers decoded at once by the VAE.
    pub vae_decode_chunk: usize,
    /// `cpu_offload`: keep the transformer's and the language model's blocks in host memory and
    /// stream them to the GPU one block ahead of use (CUDA only; see [`crate::gpu::offload`]).
    pub offload: Option<OffloadOptions>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            keep_text_encoder: false,
            vae_decode_chunk: 2,
            offload: None,
        }
    }
}

/// The DiT of `model`, resident or streamed as `options` say.
pub fn load_transformer(
    model: &ModelDir,
    cfg: &crate::transformer::Config,
    options: &LoadOptions,
) -> Result<QwenImageTransformer> {
    crate::gpu::configure_matmul(&options.device, options.dtype);
    let vb = model.var_builder("transformer", options.dtype, &options.device)?;
    Ok(match options.offload {
        None => QwenImageTransformer::new(cfg, vb)?,
        Some(offload) => {
            // The blocks are read from the memory-mapped files on the CPU into host buffers.
            let host = model.var_builder("transformer", options.dtype, &Device::Cpu)?;
            QwenImageTransformer::new_offloaded(cfg, vb, &host, offload)?
        }
    })
}

/// A loaded language model, the weights it was read from and how it was placed: what one
/// pipeline lends the other. Cloning shares the weights (candle tensors are reference-counted).
#[derive(Debug, Clone)]
pub struct SharedTextModel {
    pub weights: WeightsIdentity,
    dtype: DType,
    offloaded: bool,
    cuda: bool,
    pub model: Qwen25VLTextModel,
}

impl SharedTextModel {
    /// `text` as loaded from `model` with `options`; `None` when its weights cannot be identified.
    pub fn new(model: &ModelDir, options: &LoadOptions, text: Qwen25VLTextModel) -> Option<Self> {
        Some(Self {
            weights: model.weights_identity("text_encoder").ok()?,
            dtype: options.dtype,
            offloaded: options.offload.is_some(),
            cuda: options.device.is_cuda(),
            model: text,
        })
    }

    /// Whether this is what [`load_text_model`] would load from `model` with `options`.
    pub fn serves(&self, model: &ModelDir, options: &LoadOptions) -> bool {
        self.dtype == options.dtype
            && self.offloaded == options.offload.is_some()
            && self.cuda == options.device.is_cuda()
            && model.weights_identity("text_encoder").is_ok_and(|w| w == self.weights)
    }
}

/// The language model of `model`: `shared` when it holds the same weights placed the same way,
/// else loaded.
pub fn text_model_or_shared(
    model: &ModelDir,
    options: &LoadOptions,
    shared: Option<&SharedTextModel>,
) -> Result<Qwen25VLTextModel> {
    match shared {
        Some(shared) if shared.serves(model, options) => {
            tracing::info!("the text encoder is shared with the other pipeline (same weights)");
            Ok(shared.model.clone())
        }
        _ => load_text_model(model, options),
    }
}

/// The text encoder's language model, resident or streamed as `options` say.
pub fn load_text_model(model: &ModelDir, options: &LoadOptions) -> Result<Qwen25VLTextModel> {
    let Some(offload) = options.offload else {
        return Ok(Qwen25VLTextModel::load(model, options.dtype, &options.device)?.1);
    };
    // Only the embeddings and the final norm stay on the GPU; every block streams (the encoder
    // runs once per job, so keeping blocks resident would only take VRAM from the DiT).
    let cfg: crate::text_encoder::Config = model.read_json("text_encoder", "config.json")?;
    let vb = model.var_builder("text_encoder", options.dtype, &options.device)?;
    let host = model.var_builder("text_encoder", options.dtype, &Device::Cpu)?;
    let offload = OffloadOptions {
        resident_blocks: 0,
        ..offload
    };
    Ok(Qwen25VLTextModel::new_offloaded(&cfg, vb, &host, offload)?)
}
