//! Loading shared by both pipelines: how the models are placed ([`LoadOptions`]), the DiT and the
//! Qwen2.5-VL language model, each resident on the device or, with `offload`, kept in host
//! memory and streamed to the GPU block by block. Decompose and edit load through the same two
//! functions, so both honour `cpu_offload` the same way. Layered and Edit-2509 use the same
//! Qwen2.5-VL-7B: a kept language model is handed from one pipeline to the other
//! ([`SharedTextModel`]) when its weights are the same, instead of being held or read twice.

use candle_core::{DType, Device};

use crate::gpu::OffloadOptions;
use crate::lora::{linear_modules, LoraSet, LoraSpec};
use crate::text_encoder::Qwen25VLTextModel;
use crate::transformer::{QwenImageTransformer, SequenceParallel};
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
    /// LoRA adapters merged into the DiT's weights as they load ([`crate::lora`]); the text
    /// encoder and the VAE never take any.
    pub lora: Vec<LoraSpec>,
    /// CFG-parallel: a second copy of the DiT on this device runs the unconditional branch while
    /// the main copy runs the conditional one, and the two are combined each step
    /// ([`crate::pipeline::denoise`]). `None`: both branches batched in one forward.
    pub cfg_parallel: Option<Device>,
    /// Sequence-parallel: copies of the DiT on these further devices share each forward's image
    /// tokens with the main one ([`crate::transformer::SequenceParallel`]). Empty: one device.
    pub sequence_parallel: Vec<Device>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            keep_text_encoder: false,
            vae_decode_chunk: 2,
            offload: None,
            lora: Vec::new(),
            cfg_parallel: None,
            sequence_parallel: Vec::new(),
        }
    }
}

impl LoadOptions {
    /// The options the CFG-parallel copy of the DiT loads with: the same, on its own device.
    pub fn cfg_peer(&self) -> Option<LoadOptions> {
        let device = self.cfg_parallel.clone()?;
        Some(self.on(device))
    }

    /// The options each sequence-parallel copy of the DiT loads with.
    pub fn sequence_peers(&self) -> Vec<LoadOptions> {
        self.sequence_parallel.iter().map(|d| self.on(d.clone())).collect()
    }

    /// These options for one further copy of the DiT on `device`.
    fn on(&self, device: Device) -> LoadOptions {
        LoadOptions {
            device,
            cfg_parallel: None,
            sequence_parallel: Vec::new(),
            ..self.clone()
        }
    }
}

/// The adapters of `options.lora`, read and checked against `model`'s transformer (every key
/// must name one of its linear layers, with fitting shapes) before anything is loaded.
pub fn transformer_lora(model: &ModelDir, options: &LoadOptions) -> Result<LoraSet> {
    if options.lora.is_empty() {
        return Ok(LoraSet::default());
    }
    LoraSet::load(&options.lora, &linear_modules(model, "transformer")?)
}

/// The DiT of `model`, resident or streamed as `options` say, with `options.lora` merged.
pub fn load_transformer(
    model: &ModelDir,
    cfg: &crate::transformer::Config,
    options: &LoadOptions,
) -> Result<QwenImageTransformer> {
    let lora = transformer_lora(model, options)?;
    load_transformer_with(model, cfg, options, &lora)
}

/// [`load_transformer`] with adapters already read (see [`transformer_lora`]).
pub fn load_transformer_with(
    model: &ModelDir,
    cfg: &crate::transformer::Config,
    options: &LoadOptions,
    lora: &LoraSet,
) -> Result<QwenImageTransformer> {
    crate::gpu::configure_matmul(&options.device, options.dtype);
    if !lora.is_empty() {
        tracing::info!(
            adapters = lora.specs().len(),
            layers = lora.modules(),
            "merging LoRA adapters into the transformer"
        );
    }
    let vb = lora.wrap(model.var_builder("transformer", options.dtype, &options.device)?);
    Ok(match options.offload {
        None => QwenImageTransformer::new(cfg, vb)?,
        Some(offload) => {
            // The blocks are read from the memory-mapped files on the CPU into host buffers,
            // merged with the adapters on the way (the host copies hold the merged weights).
            let host = lora.wrap(model.var_builder("transformer", options.dtype, &Device::Cpu)?);
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
    // Only the final norm stays on the GPU (the embedding table is looked up in host memory);
    // every block streams (the encoder
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

/// Puts `lora` in place of the adapters merged into a pipeline's DiT (`slot`, loaded with
/// `options`). The new adapters are read and checked first, so a bad file leaves everything as it
/// was; then the old DiT is dropped (its memory is needed) and loaded again from the
/// memory-mapped checkpoint with the new adapters merged. The text encoder, vision tower and VAE
/// stay. Keeping an unmerged copy to swap adapters without reading the DiT again would double its
/// memory (≈ 41 GB in bf16), and un-merging in bf16 would drift with every switch; the read comes
/// from the page cache when the host has room for the checkpoint. If the reload fails, the old
/// adapters are loaded again; if that fails too, the slot stays empty and runs report it.
pub fn swap_transformer_lora(
    slot: &mut Option<QwenImageTransformer>,
    model: &ModelDir,
    options: &mut LoadOptions,
    lora: &[LoraSpec],
) -> Result<()> {
    if options.lora == lora && slot.is_some() {
        return Ok(());
    }
    let cfg: crate::transformer::Config = model.read_json("transformer", "config.json")?;
    let new_options = LoadOptions {
        lora: lora.to_vec(),
        ..options.clone()
    };
    let set = transformer_lora(model, &new_options)?;
    *slot = None;
    match load_transformer_with(model, &cfg, &new_options, &set) {
        Ok(t) => {
            *slot = Some(t);
            *options = new_options;
            Ok(())
        }
        Err(e) => {
            tracing::error!("loading the transformer with new LoRA adapters failed: {e}");
            *slot = load_transformer(model, &cfg, options).ok();
            Err(e)
        }
    }
}

/// The DiT a pipeline runs: the main copy and, with [`LoadOptions::cfg_parallel`], the copy on
/// the second device that runs the unconditional branch. Either is `None` only after a failed
/// LoRA swap.
#[derive(Debug)]
pub struct Dit {
    pub main: Option<QwenImageTransformer>,
    pub cfg_peer: Option<QwenImageTransformer>,
    /// With [`LoadOptions::sequence_parallel`]: the copies on the further devices.
    pub sequence: Option<SequenceParallel>,
}

impl Dit {
    /// Loads the main copy, and the CFG peer or the sequence-parallel copies when `options` ask
    /// for them, with `options.lora`.
    pub fn load(model: &ModelDir, cfg: &crate::transformer::Config, options: &LoadOptions) -> Result<Self> {
        if options.cfg_parallel.is_some() && !options.sequence_parallel.is_empty() {
            return Err(crate::Error::InvalidInput(
                "CFG-parallel and sequence-parallel cannot be combined; choose one".into(),
            ));
        }
        let lora = transformer_lora(model, options)?;
        let main = load_transformer_with(model, cfg, options, &lora)?;
        let (cfg_peer, sequence) = Self::load_copies(model, cfg, options, &main, &lora)?;
        Ok(Self {
            main: Some(main),
            cfg_peer,
            sequence,
        })
    }

    /// The CFG peer and the sequence-parallel copies `options` ask for, beside `main`.
    fn load_copies(
        model: &ModelDir,
        cfg: &crate::transformer::Config,
        options: &LoadOptions,
        main: &QwenImageTransformer,
        lora: &LoraSet,
    ) -> Result<(Option<QwenImageTransformer>, Option<SequenceParallel>)> {
        let cfg_peer = match options.cfg_peer() {
            Some(peer) => {
                tracing::info!(device = ?peer.device, "loading a second DiT for CFG-parallel");
                Some(load_transformer_with(model, cfg, &peer, lora)?)
            }
            None => None,
        };
        let peers = options.sequence_peers();
        let sequence = match peers.is_empty() {
            true => None,
            false => {
                tracing::info!(
                    devices = peers.len() + 1,
                    "loading the DiT on each device for sequence-parallel"
                );
                let copies = peers
                    .iter()
                    .map(|p| load_transformer_with(model, cfg, p, lora))
                    .collect::<Result<Vec<_>>>()?;
                Some(SequenceParallel::new(main, copies)?)
            }
        };
        Ok((cfg_peer, sequence))
    }

    /// Every copy with `lora` in place of the adapters it has (see [`swap_transformer_lora`]).
    pub fn set_lora(&mut self, model: &ModelDir, options: &mut LoadOptions, lora: &[LoraSpec]) -> Result<()> {
        let copies_loaded = self.cfg_peer.is_some() == options.cfg_parallel.is_some()
            && self.sequence.is_some() != options.sequence_parallel.is_empty();
        if options.lora == lora && self.main.is_some() && copies_loaded {
            return Ok(());
        }
        // The copies go first: their device memory is elsewhere, but all take host memory.
        self.cfg_peer = None;
        self.sequence = None;
        let swapped = swap_transformer_lora(&mut self.main, model, options, lora);
        // The copies follow what the main one holds now: the new adapters, or the old restored.
        if let Some(main) = &self.main {
            let cfg: crate::transformer::Config = model.read_json("transformer", "config.json")?;
            let set = transformer_lora(model, options)?;
            (self.cfg_peer, self.sequence) = Self::load_copies(model, &cfg, options, main, &set)?;
        }
        swapped
    }

    /// The main copy, or why there is none.
    pub fn main(&self) -> Result<&QwenImageTransformer> {
        loaded_transformer(&self.main)
    }

    /// The CFG peer, when CFG-parallel is on; an error when it should be there and is not.
    pub fn cfg_peer(&self, options: &LoadOptions) -> Result<Option<&QwenImageTransformer>> {
        match (&self.cfg_peer, &options.cfg_parallel) {
            (Some(peer), _) => Ok(Some(peer)),
            (None, None) => Ok(None),
            (None, Some(_)) => loaded_transformer(&None).map(Some),
        }
    }

    /// The sequence-parallel copies, when on; an error when they should be there and are not.
    pub fn sequence(&self, options: &LoadOptions) -> Result<Option<&SequenceParallel>> {
        match &self.sequence {
            Some(sp) => Ok(Some(sp)),
            None if options.sequence_parallel.is_empty() => Ok(None),
            None => loaded_transformer(&None).map(|_| None),
        }
    }
}

/// The DiT in `slot`, or why there is none (a failed adapter swap).
pub fn loaded_transformer(slot: &Option<QwenImageTransformer>) -> Result<&QwenImageTransformer> {
    slot.as_ref().ok_or_else(|| {
        crate::Error::InvalidInput(
            "the transformer is not loaded: the last LoRA change failed and so did restoring the previous adapters"
                .into(),
        )
    })
}
