//! What the engine worker owns: where the models are, and the pipelines once loaded. Models load
//! on the first job that needs them (the real ones take tens of GB), not at startup.
//!
//! The edit model (Qwen-Image-Edit-2509) is found, and downloaded into the hub cache if it is a
//! repo id not there yet, on the first edit. Each pipeline is a 20B transformer plus a 7B text
//! encoder: both stay loaded where memory allows ([`engine::runtime::pipeline_residency`]), else
//! loading one drops the other. The second one loaded takes the first one's text encoder when its
//! weights are the same ([`engine::pipeline::loading::SharedTextModel`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use app::api::{ApiError, DecomposeJob, DecomposeResponse, DownloadStatus, EditJob, EditStatusResponse, ExportedFile};
use base64::Engine as _;
use engine::gpu::OffloadOptions;
use engine::pipeline::edit::EDIT_COMPONENTS;
use engine::pipeline::{
    edit_layer, AlphaMode, DecomposeOptions, EditOptions, EditPipeline, LayerEditOptions, LayeredPipeline, LoadOptions,
    Phase, Progress,
};
use engine::runtime::Runtime;
use engine::text_encoder::CaptionLanguage;
use engine::weights::{DownloadProgress, ModelDir};

use qwen_layers::Decomposer;

pub struct EngineState {
    runtime: Runtime,
    /// Which engine worker this is (several GPUs: one state per worker, see [`crate::workers`]).
    worker: usize,
    /// Latency mode: the device that runs each job's unconditional CFG branch.
    cfg_peer: Option<candle_core::Device>,
    /// Sequence mode: the further devices sharing each forward's tokens.
    sequence_peers: Vec<candle_core::Device>,
    /// The decompose model's folder, or why it cannot be used.
    layered: Result<ModelDir, String>,
    /// The edit model: a local folder or a repo id, resolved (and downloaded) on the first edit.
    edit_source: String,
    decomposer: Option<Decomposer>,
    editor: Option<EditPipeline>,
    loaded: Arc<AtomicBool>,
    edit_state: SharedEditState,
    /// LoRA adapters and presets (issue 20), and what is merged now (for `/status`).
    adapters: crate::adapters::Adapters,
    active_lora: crate::adapters::SharedActiveLora,
}

/// Where the edit model stands; shared with the backend, which answers `edit-status` and refuses
/// edits that cannot run without queueing them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditState {
    /// Not in memory; loads (downloading it first if needed) on the first edit.
    Idle,
    Ready,
    /// Being downloaded into the hub cache (the first edit of a repo id not cached yet).
    Downloading(DownloadStatus),
    /// The last load failed (a network error, a missing file…): the next edit tries again.
    LoadFailed(String),
    /// It cannot run at all with this configuration (a path that is not a model folder, an
    /// incomplete one, a Layered model given as the edit model, offline without the model).
    Unavailable(String),
}

pub type SharedEditState = Arc<Mutex<EditState>>;

impl EditState {
    /// The `GET /api/qwen-image/edit-status` answer for model `model`.
    pub fn to_response(&self, model: &str) -> EditStatusResponse {
        let (status, reason) = match self {
            EditState::Idle => ("idle", None),
            EditState::Ready => ("ready", None),
            EditState::Downloading(d) => (
                "downloading",
                Some(format!(
                    "downloading {} (file {} of {}): {} of {} MB",
                    d.file,
                    d.file_index,
                    d.files,
                    d.bytes_done >> 20,
                    d.bytes_total >> 20
                )),
            ),
            EditState::LoadFailed(r) | EditState::Unavailable(r) => ("unavailable", Some(r.clone())),
        };
        EditStatusResponse {
            status: status.into(),
            model_loaded: *self == EditState::Ready,
            model: model.to_string(),
            reason,
            download: match self {
                EditState::Downloading(d) => Some(d.clone()),
                _ => None,
            },
        }
    }

    /// Why an edit is refused before it is queued, if it is.
    pub fn refusal(&self) -> Option<String> {
        match self {
            EditState::Unavailable(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// The state at startup, without downloading anything: a complete local folder or cached
    /// snapshot is idle, a repo id not cached yet is idle too (it is downloaded on the first
    /// edit) unless the hub is offline; anything else is unavailable with the reason.
    pub fn at_startup(source: &str) -> Self {
        match ModelDir::resolve(source, false) {
            Ok(model) => match model.check(EDIT_COMPONENTS) {
                Ok(()) => EditState::Idle,
                Err(e) => EditState::Unavailable(format!("the edit model is not usable: {e}")),
            },
            Err(e) => {
                let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0");
                if engine::weights::looks_like_repo_id(source) && !std::path::Path::new(source).exists() && !offline {
                    EditState::Idle
                } else {
                    EditState::Unavailable(format!("the edit model is not available: {e}"))
                }
            }
        }
    }
}

/// Publishes the edit model's download into the shared state that `edit-status` reads.
struct EditDownload {
    state: SharedEditState,
    current: Option<DownloadStatus>,
    /// `bytes_done` when last published (the hub reports every few KB; publish every MiB).
    published: u64,
}

impl EditDownload {
    fn publish(&mut self) {
        if let (Some(current), Ok(mut state)) = (&self.current, self.state.lock()) {
            *state = EditState::Downloading(current.clone());
            self.published = current.bytes_done;
        }
    }
}

impl DownloadProgress for EditDownload {
    fn file(&mut self, name: &str, size: u64, index: usize, files: usize) {
        self.current = Some(DownloadStatus {
            file: name.to_string(),
            file_index: index as u32,
            files: files as u32,
            bytes_done: 0,
            bytes_total: size,
        });
        self.publish();
    }

    fn advance(&mut self, bytes: u64) {
        let Some(current) = &mut self.current else { return };
        current.bytes_done += bytes;
        if current.bytes_done - self.published >= 1 << 20 || current.bytes_done >= current.bytes_total {
            self.publish();
        }
    }
}

/// Checks a decompose job's prompts as the pipeline will (an empty prompt is captioned, and the
/// caption cut at the limit like the reference does, so only given prompts are checked).
#[derive(Debug)]
pub struct PromptChecker {
    tokenizer: engine::tokenizer::QwenTokenizer,
}

impl PromptChecker {
    pub fn check(&self, job: &DecomposeJob) -> Result<(), ApiError> {
        let mut prompts = vec![job.negative_prompt.as_str()];
        if !job.prompt.trim().is_empty() {
            prompts.insert(0, job.prompt.as_str());
        }
        engine::text_encoder::check_prompt_lengths(
            &self.tokenizer,
            &engine::tokenizer::PromptTemplate::LAYERED,
            &prompts,
            engine::text_encoder::DEFAULT_MAX_SEQUENCE_LENGTH,
        )
        .map(|_| ())
        .map_err(api_error)
    }
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
            m.check(engine::pipeline::decompose::LAYERED_COMPONENTS)
                .map_err(|e| e.to_string())?;
            Ok(m)
        });
        let edit_state = Arc::new(Mutex::new(EditState::at_startup(edit_model_path)));
        Self {
            runtime,
            worker: 0,
            cfg_peer: None,
            sequence_peers: Vec::new(),
            layered,
            edit_source: edit_model_path.to_string(),
            decomposer: None,
            editor: None,
            loaded: Arc::default(),
            edit_state,
            adapters: crate::adapters::Adapters::default(),
            active_lora: Arc::default(),
        }
    }

    /// Another worker's state (issue 21): the same models and adapters, loaded on `runtime`'s
    /// device, sharing what the server reports (model and edit states, merged adapters).
    pub fn for_worker(&self, worker: usize, runtime: Runtime) -> Self {
        Self {
            runtime,
            worker,
            cfg_peer: None,
            sequence_peers: Vec::new(),
            layered: self.layered.clone(),
            edit_source: self.edit_source.clone(),
            decomposer: None,
            editor: None,
            loaded: self.loaded.clone(),
            edit_state: self.edit_state.clone(),
            adapters: self.adapters.clone(),
            active_lora: self.active_lora.clone(),
        }
    }

    /// Devices beside this worker's own: `cfg_peer` runs each job's unconditional CFG branch
    /// (latency mode), `sequence` share each forward's tokens (sequence mode).
    pub fn with_peers(mut self, cfg_peer: Option<candle_core::Device>, sequence: Vec<candle_core::Device>) -> Self {
        self.cfg_peer = cfg_peer;
        self.sequence_peers = sequence;
        self
    }

    /// Which worker this state belongs to (0 for the first or only one).
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Where this worker runs.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The configured LoRA adapters and presets. A pipeline whose own adapter files are missing
    /// cannot run (said in `/status` / `edit-status`); a preset whose files are missing is refused
    /// by name when a request picks it.
    pub fn with_adapters(mut self, adapters: crate::adapters::Adapters) -> Self {
        if let (Some(problem), Ok(_)) = (adapters.decompose_problem(), &self.layered) {
            self.layered = Err(problem);
        }
        if let Some(problem) = adapters.edit_problem() {
            self.set_edit_state(EditState::Unavailable(problem));
        }
        self.adapters = adapters;
        self
    }

    /// The adapters and presets as `/config` lists them.
    pub fn adapter_config(&self) -> app::api_lora::AdapterConfig {
        self.adapters.config()
    }

    /// What is merged into each loaded pipeline now, kept current by the worker.
    pub fn active_lora(&self) -> crate::adapters::SharedActiveLora {
        self.active_lora.clone()
    }

    fn note_active(&self, update: impl FnOnce(&mut app::api_lora::ActiveLora)) {
        if let Ok(mut a) = self.active_lora.lock() {
            update(&mut a);
        }
    }

    /// The edit model's state, shared with whoever reports it.
    pub fn edit_state(&self) -> SharedEditState {
        self.edit_state.clone()
    }

    fn set_edit_state(&self, state: EditState) {
        if let Ok(mut s) = self.edit_state.lock() {
            *s = state;
        }
    }

    /// Whether both pipelines stay loaded, and the sentence `/status` shows.
    pub fn pipeline_residency(&self) -> (bool, String) {
        let on_cuda = self.runtime.device.is_cuda();
        let total = engine::gpu::memory::mem_info(&self.runtime.device).map(|(_, total)| total);
        engine::runtime::pipeline_residency(
            on_cuda,
            self.runtime.offload && on_cuda,
            total,
            engine::runtime::host_memory(),
        )
    }

    /// Whether the text encoder stays in memory between jobs, and the sentence `/status` shows.
    pub fn text_encoder_residency(&self) -> (bool, String) {
        let on_cuda = self.runtime.device.is_cuda();
        let total = engine::gpu::memory::mem_info(&self.runtime.device).map(|(_, total)| total);
        engine::runtime::text_encoder_residency(on_cuda, self.runtime.offload && on_cuda, total)
    }

    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            device: self.runtime.device.clone(),
            dtype: self.runtime.dtype,
            keep_text_encoder: self.text_encoder_residency().0,
            offload: (self.runtime.offload && self.runtime.device.is_cuda()).then(OffloadOptions::default),
            cfg_parallel: self.cfg_peer.clone(),
            sequence_parallel: self.sequence_peers.clone(),
            ..LoadOptions::default()
        }
    }

    pub fn loaded_flag(&self) -> Arc<AtomicBool> {
        self.loaded.clone()
    }

    /// A checker of decompose prompts against the text encoder's length limit, so an over-long
    /// prompt is refused before its job is queued (the tokenizer loads in about a second; the
    /// pipeline only with the first job). `None` when the model cannot be read yet.
    pub fn prompt_checker(&self) -> Option<PromptChecker> {
        let model = self.layered.as_ref().ok()?;
        match engine::tokenizer::QwenTokenizer::from_model_dir(model) {
            Ok(tokenizer) => Some(PromptChecker { tokenizer }),
            Err(e) => {
                tracing::warn!("prompts are checked only when a job runs: {e}");
                None
            }
        }
    }

    pub fn decompose_unavailable(&self) -> Option<String> {
        if let Some(problem) = &self.runtime.problem {
            return Some(format!("the GPU cannot be used: {problem}"));
        }
        self.layered
            .as_ref()
            .err()
            .map(|e| format!("the decompose model is not available: {e}"))
    }

    /// The decompose pipeline with `lora` merged: loaded with it, or its DiT swapped.
    fn decomposer(
        &mut self,
        progress: &dyn Progress,
        lora: &[engine::lora::LoraSpec],
    ) -> Result<&mut Decomposer, ApiError> {
        if let Some(d) = self.decomposer.as_mut() {
            if d.pipeline().lora() != lora {
                progress.phase(Phase::Loading);
                d.pipeline_mut().set_lora(lora).map_err(api_error)?;
            }
        }
        if self.decomposer.is_none() {
            let model = self.layered.clone().map_err(ApiError::unavailable)?;
            progress.phase(Phase::Loading);
            let options = LoadOptions {
                lora: lora.to_vec(),
                ..self.load_options()
            };
            let shared = self.editor.as_ref().and_then(EditPipeline::shared_text_model);
            if !self.pipeline_residency().0 {
                self.drop_editor();
            }
            let started = std::time::Instant::now();
            let pipeline = LayeredPipeline::load_sharing(model, options, shared.as_ref()).map_err(api_error)?;
            let d = Decomposer::from_pipeline(pipeline);
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
            caption_language: if job.caption_in_chinese {
                CaptionLanguage::Cn
            } else {
                CaptionLanguage::En
            },
            ..DecomposeOptions::default()
        };
        let (lora, scheduler) = self
            .adapters
            .for_run(app::api_lora::PIPELINE_DECOMPOSE, job.preset.as_deref())?;
        let options = DecomposeOptions { scheduler, ..options };
        let decomposer = self.decomposer(progress, &lora)?;
        let merged = crate::adapters::lora_info(decomposer.pipeline().lora());
        self.note_active(|a| {
            a.decompose = merged;
            a.decompose_preset = job.preset.clone();
        });
        let decomposer = self
            .decomposer
            .as_mut()
            .ok_or_else(|| ApiError::internal("the decompose pipeline went away"))?;
        let mut layers = decomposer
            .decompose_with_progress(&job.image, &options, progress)
            .map_err(api_error)?;
        if job.auto_layers {
            layers = layers.keep_visible().map_err(api_error)?;
        }
        let encoding = std::time::Instant::now();
        let mut response = layers.to_response()?;
        for &format in &job.formats {
            response.files.push(ExportedFile {
                format: format.extension().into(),
                filename: format!("layers.{}", format.extension()),
                mime: format.mime().into(),
                data: base64::engine::general_purpose::STANDARD.encode(layers.export(format)?),
            });
        }
        // One line per run with every phase: what scripts/e2e_rest.py reads back.
        let t = &layers.record.timings;
        tracing::info!(
            seconds = t.total,
            caption = t.caption,
            encode_prompt = t.encode_prompt,
            encode_image = t.encode_image,
            denoise = t.denoise,
            decode = t.decode,
            png_zip = encoding.elapsed().as_secs_f64(),
            width = response.width,
            height = response.height,
            vram_peak_gib = ?t.vram_peak_gib,
            "layers decomposed"
        );
        Ok(response)
    }

    /// Frees the edit pipeline (to make room for the decompose one).
    fn drop_editor(&mut self) {
        if self.editor.take().is_some() {
            self.note_active(|a| {
                a.edit.clear();
                a.edit_preset = None;
            });
            self.set_edit_state(EditState::Idle);
        }
    }

    /// The edit pipeline, loaded (and downloaded into the hub cache if needed) on first use.
    /// The edit pipeline with `lora` merged: loaded with it (downloaded into the hub cache if
    /// needed), or its DiT swapped.
    fn editor(&mut self, lora: &[engine::lora::LoraSpec]) -> Result<&mut EditPipeline, ApiError> {
        if let Some(e) = self.editor.as_mut() {
            if e.lora() != lora {
                e.set_lora(lora).map_err(api_error)?;
            }
        }
        if self.editor.is_none() {
            if let Some(reason) = self.edit_state.lock().ok().and_then(|s| s.refusal()) {
                return Err(ApiError::unavailable(reason));
            }
            // The decompose pipeline's text encoder serves this one too if its weights are the
            // same (taken before the pipeline goes, so it is not read again).
            let shared = self.decomposer.as_ref().and_then(|d| d.pipeline().shared_text_model());
            // Room for the edit model: the decompose one goes, unless both fit.
            if !self.pipeline_residency().0 && self.decomposer.take().is_some() {
                self.note_active(|a| {
                    a.decompose.clear();
                    a.decompose_preset = None;
                });
                self.loaded.store(false, Ordering::SeqCst);
            }
            let started = std::time::Instant::now();
            let mut download = EditDownload {
                state: self.edit_state.clone(),
                current: None,
                published: 0,
            };
            let loaded = ModelDir::fetch(&self.edit_source, &mut download).and_then(|model| {
                EditPipeline::load_sharing(
                    model,
                    LoadOptions {
                        lora: lora.to_vec(),
                        ..self.load_options()
                    },
                    shared.as_ref(),
                )
            });
            match loaded {
                Ok(pipe) => {
                    tracing::info!(seconds = started.elapsed().as_secs_f64(), model = %pipe.model().describe(), "edit model loaded");
                    self.editor = Some(pipe);
                    self.set_edit_state(EditState::Ready);
                }
                Err(e) => {
                    let reason = format!("cannot load the edit model {}: {e}", self.edit_source);
                    tracing::error!("{reason}");
                    // A folder that is not an edit model will not become one; anything else
                    // (network, disk) may work next time.
                    self.set_edit_state(match e {
                        engine::Error::InvalidInput(_) | engine::Error::IncompleteModel { .. } => {
                            EditState::Unavailable(reason.clone())
                        }
                        _ => EditState::LoadFailed(reason.clone()),
                    });
                    return Err(ApiError::unavailable(reason));
                }
            }
        }
        Ok(self.editor.as_mut().unwrap_or_else(|| unreachable!()))
    }

    /// Edits one RGBA layer; returns the edited layer (same size, RGBA) as PNG bytes. `progress`
    /// hears the phases and steps, and a cancel stops the edit between steps.
    pub fn edit_layer(&mut self, job: EditJob, progress: &dyn Progress) -> Result<Vec<u8>, ApiError> {
        let options = LayerEditOptions {
            edit: EditOptions {
                negative_prompt: Some(" ".into()),
                true_cfg_scale: f64::from(job.cfg_scale),
                num_inference_steps: job.steps as usize,
                seed: job.seed,
                ..EditOptions::default()
            },
            alpha: if job.keep_alpha {
                AlphaMode::KeepOriginal
            } else {
                AlphaMode::Rekey
            },
            key_color: None,
        };
        let (lora, scheduler) = self
            .adapters
            .for_run(app::api_lora::PIPELINE_EDIT, job.preset.as_deref())?;
        let options = LayerEditOptions {
            edit: EditOptions {
                scheduler,
                ..options.edit
            },
            ..options
        };
        if self.editor.is_none() {
            progress.phase(Phase::Loading);
        }
        let editor = self.editor(&lora)?;
        engine::pipeline::check_cancel(progress).map_err(api_error)?;
        let merged = crate::adapters::lora_info(editor.lora());
        self.note_active(|a| {
            a.edit = merged;
            a.edit_preset = job.preset.clone();
        });
        let editor = self
            .editor
            .as_mut()
            .ok_or_else(|| ApiError::internal("the edit pipeline went away"))?;
        let out = edit_layer(editor, &job.image, &job.prompt, &options, progress).map_err(api_error)?;
        let t = &out.edit.record.timings;
        tracing::info!(
            seconds = t.total,
            encode_prompt = t.encode_prompt,
            encode_image = t.encode_image,
            denoise = t.denoise,
            decode = t.decode,
            width = out.edit.record.width,
            height = out.edit.record.height,
            key = ?out.key_color,
            vram_peak_gib = ?t.vram_peak_gib,
            "layer edited"
        );
        app::image_data::encode_png(&out.layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_model_state_at_startup() {
        std::env::set_var("HF_HUB_CACHE", std::env::temp_dir().join("engine-state-empty-hub"));
        // A repo id not cached yet: downloaded on the first edit.
        assert_eq!(EditState::at_startup("Qwen/Qwen-Image-Edit-2509"), EditState::Idle);
        // A path that does not exist is no model.
        let s = EditState::at_startup("/no/such/edit-model");
        assert!(
            matches!(&s, EditState::Unavailable(r) if r.contains("not a folder")),
            "{s:?}"
        );
        assert_eq!(s.to_response("x").status, "unavailable");
        // The tiny checkpoint is complete.
        let tiny = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tiny-qwen-image-edit-2509"
        );
        assert_eq!(EditState::at_startup(tiny), EditState::Idle);
        let r = EditState::Ready.to_response("m");
        assert_eq!((r.status.as_str(), r.model_loaded, r.reason), ("ready", true, None));
        let failed = EditState::LoadFailed("network".into());
        assert_eq!(failed.refusal(), None, "a failed load is retried");
        assert_eq!(failed.to_response("m").reason.as_deref(), Some("network"));
    }
}
