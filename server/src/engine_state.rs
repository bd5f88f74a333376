//! What the engine worker owns: where the models are, and the pipelines once loaded. Models load
//! on the first job that needs them (the real ones take tens of GB), not at startup.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use app::api::{ApiError, DecomposeJob, DecomposeResponse, EditJob};
use candle_core::{DType, Device};
use engine::gpu::OffloadOptions;
use engine::pipeline::{DecomposeOptions, LoadOptions, Phase, Progress};
use engine::weights::ModelDir;

use crate::layers::Decomposer;

/// Where and how the models run.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub device: Device,
    pub dtype: DType,
    /// `cpu_offload`: stream the transformer's and text encoder's layers from host memory (CUDA
    /// only; ignored on the CPU).
    pub offload: bool,
    /// Why the requested device cannot be used (no GPU, a driver too old, a build without CUDA):
    /// the server then stays up and reports it in `/status` instead of exiting.
    pub problem: Option<String>,
}

impl Runtime {
    /// `cuda` when asked for (error if this build or machine has none), `auto` = CUDA if present.
    pub fn select(device: &str, dtype: Option<&str>) -> anyhow::Result<Self> {
        let device = match device {
            "cpu" => Device::Cpu,
            "cuda" => engine::gpu::cuda_device(0).map_err(|e| anyhow::anyhow!("--device cuda: {e}"))?,
            "auto" => Device::cuda_if_available(0).unwrap_or(Device::Cpu),
            other => anyhow::bail!("unknown device `{other}` (cpu, cuda or auto)"),
        };
        let dtype = match dtype {
            None if device.is_cuda() => DType::BF16,
            None | Some("f32") => DType::F32,
            Some("bf16") => DType::BF16,
            Some("f16") => DType::F16,
            Some(other) => anyhow::bail!("unknown dtype `{other}` (f32, bf16 or f16)"),
        };
        Ok(Self { device, dtype, offload: false, problem: None })
    }

    /// A runtime that cannot run jobs, and says why.
    pub fn unavailable(problem: String) -> Self {
        Self { device: Device::Cpu, dtype: DType::F32, offload: false, problem: Some(problem) }
    }

    pub fn describe(&self) -> String {
        if self.problem.is_some() {
            return "unavailable".into();
        }
        let device = if self.device.is_cuda() { "cuda" } else { "cpu" };
        let offload = if self.offload && self.device.is_cuda() { " cpu-offload" } else { "" };
        format!("{device} {:?}{offload}", self.dtype).to_lowercase()
    }
}

pub struct EngineState {
    runtime: Runtime,
    /// The decompose model's folder, or why it cannot be used.
    layered: Result<ModelDir, String>,
    /// The edit model's folder, or why it cannot be used.
    edit: Result<ModelDir, String>,
    decomposer: Option<Decomposer>,
    loaded: Arc<AtomicBool>,
}

/// An engine error as the API reports it.
pub fn api_error(e: engine::Error) -> ApiError {
    match e {
        engine::Error::InvalidInput(msg) => ApiError::unprocessable(msg),
        engine::Error::Image(msg) => ApiError::unprocessable(msg),
        engine::Error::Cancelled => ApiError::cancelled(),
        e @ (engine::Error::ModelNotFound(_) | engine::Error::IncompleteModel { .. }) => {
            ApiError::unavailable(e.to_string())
        }
        engine::Error::Candle(e) => match engine::gpu::errors::gpu_problem(&e) {
            Some(msg) => ApiError::unavailable(msg),
            None => ApiError::internal(format!("the engine failed: {e}")),
        },
        e => ApiError::internal(format!("the engine failed: {e}")),
    }
}

impl EngineState {
    /// Resolves both model locations without downloading (startup must be quick and
    /// offline-safe) and checks the decompose model's folder is complete.
    pub fn new(model_path: &str, edit_model_path: &str, runtime: Runtime) -> Self {
        let resolve = |p: &str| ModelDir::resolve(p, false).map_err(|e| e.to_string());
        let layered = resolve(model_path).and_then(|m| {
            m.check(engine::pipeline::decompose::LAYERED_COMPONENTS).map_err(|e| e.to_string())?;
            Ok(m)
        });
        Self { runtime, layered, edit: resolve(edit_model_path), decomposer: None, loaded: Arc::default() }
    }

    pub fn loaded_flag(&self) -> Arc<AtomicBool> {
        self.loaded.clone()
    }

    pub fn decompose_unavailable(&self) -> Option<String> {
        if let Some(problem) = &self.runtime.problem {
            return Some(format!("the GPU cannot be used: {problem}"));
        }
        self.layered.as_ref().err().map(|e| format!("the decompose model is not available: {e}"))
    }

    pub fn edit_unavailable(&self) -> Option<String> {
        match &self.edit {
            Err(e) => Some(format!("the edit model is not available: {e}")),
            Ok(_) => Some("layer editing is not built into this server yet (the edit pipeline is in progress)".into()),
        }
    }

    fn decomposer(&mut self, progress: &dyn Progress) -> Result<&mut Decomposer, ApiError> {
        if self.decomposer.is_none() {
            let model = self.layered.clone().map_err(ApiError::unavailable)?;
            progress.phase(Phase::Loading);
            let options = LoadOptions {
                device: self.runtime.device.clone(),
                dtype: self.runtime.dtype,
                // Keep the text encoder on the CPU machine and for small models; on a GPU the
                // real 16 GB encoder is loaded per job and dropped before denoising.
                keep_text_encoder: !self.runtime.device.is_cuda(),
                offload: (self.runtime.offload && self.runtime.device.is_cuda()).then(OffloadOptions::default),
                ..LoadOptions::default()
            };
            let started = std::time::Instant::now();
            let d = Decomposer::from_model_dir(model, options).map_err(api_error)?;
            tracing::info!(seconds = started.elapsed().as_secs_f64(), "decompose model loaded");
            self.decomposer = Some(d);
            self.loaded.store(true, Ordering::SeqCst);
        }
        Ok(self.decomposer.as_mut().unwrap_or_else(|| unreachable!()))
    }

    pub fn decompose(&mut self, job: DecomposeJob, progress: &dyn Progress) -> Result<DecomposeResponse, ApiError> {
        let options = DecomposeOptions {
            prompt: job.prompt,
            negative_prompt: Some(job.negative_prompt),
            layers: job.layer_num as usize,
            resolution: job.resolution,
            num_inference_steps: job.steps as usize,
            true_cfg_scale: f64::from(job.cfg_scale),
            cfg_normalize: job.cfg_normalize,
            seed: job.seed,
            ..DecomposeOptions::default()
        };
        let decomposer = self.decomposer(progress)?;
        let layers = decomposer.decompose_with_progress(&job.image, &options, progress).map_err(api_error)?;
        layers.to_response()
    }

    pub fn edit_layer(&mut self, _job: EditJob) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::unavailable(self.edit_unavailable().unwrap_or_default()))
    }
}
