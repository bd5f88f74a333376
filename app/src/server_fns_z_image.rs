//! The page's way to the Z-Image mode: server functions under `/api/app/` (as the decompose
//! ones), reaching the server's Z-Image service through [`ZImageBackend`] (Leptos context). They
//! take and return the REST routes' types and fail with the same `{"error": …}` and status.

use leptos::prelude::*;
use leptos::server_fn::codec::{GetUrl, Json};

use crate::api::{ApiError, JobStarted};
use crate::api_z_image::{GenerateRequest, ZImageJobStatus, ZImageStatusResponse};

/// What the Z-Image server functions need from the server.
#[cfg(feature = "ssr")]
pub trait ZImageBackend: Send + Sync + 'static {
    fn status(&self) -> ZImageStatusResponse;
    /// Validates and queues a generation; follow it with [`ZImageBackend::job_status`].
    fn start(&self, request: GenerateRequest, caller: &crate::backend::Caller) -> Result<JobStarted, ApiError>;
    fn job_status(&self, id: &str, caller: &crate::backend::Caller) -> Result<ZImageJobStatus, ApiError>;
    /// Asks a generation to stop between steps.
    fn cancel(&self, id: &str, caller: &crate::backend::Caller) -> Result<ZImageJobStatus, ApiError>;
}

#[cfg(feature = "ssr")]
pub type SharedZImageBackend = std::sync::Arc<dyn ZImageBackend>;

#[cfg(feature = "ssr")]
fn backend() -> Result<SharedZImageBackend, ApiError> {
    use_context::<SharedZImageBackend>().ok_or_else(|| ApiError::internal("the server did not provide Z-Image"))
}

#[server(prefix = "/api/app", endpoint = "z_image_status", input = GetUrl)]
pub async fn get_z_image_status() -> Result<ZImageStatusResponse, ApiError> {
    crate::server_fns::answer(backend().map(|b| b.status()))
}

/// Queues a generation and returns its job id at once.
#[server(prefix = "/api/app", endpoint = "z_image_start", input = Json)]
pub async fn start_z_image(request: GenerateRequest) -> Result<JobStarted, ApiError> {
    crate::server_fns::answer(backend().and_then(|b| b.start(request, &crate::server_fns::caller())))
}

#[server(prefix = "/api/app", endpoint = "z_image_job_status", input = Json)]
pub async fn get_z_image_job(id: String) -> Result<ZImageJobStatus, ApiError> {
    crate::server_fns::answer(backend().and_then(|b| b.job_status(&id, &crate::server_fns::caller())))
}

#[server(prefix = "/api/app", endpoint = "z_image_cancel", input = Json)]
pub async fn cancel_z_image(id: String) -> Result<ZImageJobStatus, ApiError> {
    crate::server_fns::answer(backend().and_then(|b| b.cancel(&id, &crate::server_fns::caller())))
}
