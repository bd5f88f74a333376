//! What the server functions need from the server: one object behind a trait, provided as Leptos
//! context by the server and used by the REST routes too, so both entry points share validation,
//! the job queue and the engine.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::api::{
    ApiError, ConfigResponse, JobStarted, JobStatus, DecomposeRequest, DecomposeResponse, EditLayerRequest, EditStatusResponse,
    StatusResponse,
};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub trait Backend: Send + Sync + 'static {
    fn config(&self) -> ConfigResponse;
    fn status(&self) -> StatusResponse;
    fn edit_status(&self) -> EditStatusResponse;
    /// Validates, queues and runs a decomposition.
    fn decompose(&self, request: DecomposeRequest) -> BoxFuture<Result<DecomposeResponse, ApiError>>;
    /// Validates and queues a decomposition; follow it with [`Backend::job_status`].
    fn start_decompose(&self, request: DecomposeRequest) -> Result<JobStarted, ApiError>;
    fn job_status(&self, id: &str) -> Result<JobStatus, ApiError>;
    /// Asks a job to stop (between denoising steps); queued jobs stop before they start.
    fn cancel_job(&self, id: &str) -> Result<JobStatus, ApiError>;
    /// Validates, queues and runs a layer edit; returns the edited layer as PNG bytes.
    fn edit_layer(&self, request: EditLayerRequest) -> BoxFuture<Result<Vec<u8>, ApiError>>;
}

pub type SharedBackend = Arc<dyn Backend>;
