//! What the server functions need from the server: one object behind a trait, provided as Leptos
//! context by the server and used by the REST routes too, so both entry points share validation,
//! the job queue and the engine.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::api::{
    ApiError, ConfigResponse, DecomposeRequest, DecomposeResponse, EditJobStatus, EditLayerRequest, EditStatusResponse,
    JobStarted, JobStatus, RunSummary, StatusResponse,
};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Who sent a request, as the server's request policy identified them. Jobs belong to their
/// caller's `owner` (a browser session or the API token); a job started with no owner is
/// reachable by anyone who holds its (unguessable) id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub owner: Option<String>,
}

pub trait Backend: Send + Sync + 'static {
    fn config(&self) -> ConfigResponse;
    fn status(&self) -> StatusResponse;
    fn edit_status(&self) -> EditStatusResponse;
    /// Validates, queues and runs a decomposition. Dropping the future (the client went away)
    /// cancels the job between steps.
    fn decompose(&self, request: DecomposeRequest, caller: Caller) -> BoxFuture<Result<DecomposeResponse, ApiError>>;
    /// Validates and queues a decomposition; follow it with [`Backend::job_status`].
    fn start_decompose(&self, request: DecomposeRequest, caller: &Caller) -> Result<JobStarted, ApiError>;
    fn job_status(&self, id: &str, caller: &Caller) -> Result<JobStatus, ApiError>;
    /// Asks a job to stop (between denoising steps); queued jobs stop before they start.
    fn cancel_job(&self, id: &str, caller: &Caller) -> Result<JobStatus, ApiError>;
    /// The caller's finished runs kept on disk, newest first.
    fn list_runs(&self, caller: &Caller) -> Vec<RunSummary>;
    /// Validates, queues and runs a layer edit; returns the edited layer as PNG bytes.
    fn edit_layer(&self, request: EditLayerRequest) -> BoxFuture<Result<Vec<u8>, ApiError>>;
    /// Validates and queues a layer edit as a followable job (phase, step, ETA, cancel).
    fn start_edit(&self, request: EditLayerRequest, caller: &Caller) -> Result<JobStarted, ApiError>;
    fn edit_job_status(&self, id: &str, caller: &Caller) -> Result<EditJobStatus, ApiError>;
    /// Asks an edit to stop (between denoising steps).
    fn cancel_edit(&self, id: &str, caller: &Caller) -> Result<EditJobStatus, ApiError>;
}

pub type SharedBackend = Arc<dyn Backend>;
