//! What the engine worker owns: where the models are, and the pipelines once loaded. Models load
//! on the first job that needs them (the real ones take tens of GB), not at startup.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use app::api::{ApiError, DecomposeJob, DecomposeResponse, EditJob};
use engine::weights::ModelDir;

pub struct EngineState {
    /// The decompose model's folder, or why it cannot be used.
    layered: Result<ModelDir, String>,
    /// The edit model's folder, or why it cannot be used.
    edit: Result<ModelDir, String>,
    loaded: Arc<AtomicBool>,
}

impl EngineState {
    /// Resolves both model locations without downloading (startup must be quick and offline-safe).
    pub fn new(model_path: &str, edit_model_path: &str) -> Self {
        let resolve = |p: &str| ModelDir::resolve(p, false).map_err(|e| e.to_string());
        Self { layered: resolve(model_path), edit: resolve(edit_model_path), loaded: Arc::default() }
    }

    pub fn loaded_flag(&self) -> Arc<AtomicBool> {
        self.loaded.clone()
    }

    pub fn decompose_unavailable(&self) -> Option<String> {
        match &self.layered {
            Err(e) => Some(format!("the decompose model is not available: {e}")),
            Ok(_) => Some("decomposition is not built into this server yet (the engine pipeline is in progress)".into()),
        }
    }

    pub fn edit_unavailable(&self) -> Option<String> {
        match &self.edit {
            Err(e) => Some(format!("the edit model is not available: {e}")),
            Ok(_) => Some("layer editing is not built into this server yet (the edit pipeline is in progress)".into()),
        }
    }

    pub fn decompose(&mut self, _job: DecomposeJob, _progress: &dyn engine::pipeline::Progress) -> Result<DecomposeResponse, ApiError> {
        Err(ApiError::unavailable(self.decompose_unavailable().unwrap_or_default()))
    }

    pub fn edit_layer(&mut self, _job: EditJob) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::unavailable(self.edit_unavailable().unwrap_or_default()))
    }
}
