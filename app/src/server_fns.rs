//! Server functions: the web app's way to the backend. Each has a fixed endpoint under `/api/app/`
//! so scripts can call it too; they take and return the same types as the REST routes, and fail
//! with the same `{"error": …}` JSON and HTTP status ([`ApiError`]).

use leptos::prelude::*;
use leptos::server_fn::codec::{GetUrl, Json};

use crate::api::{
    ApiError, ConfigResponse, DecomposeRequest, DecomposeResponse, EditJobStatus, EditLayerRequest, EditStatusResponse,
    JobStarted, JobStatus, RunSummary, StatusResponse,
};

#[cfg(feature = "ssr")]
fn backend() -> Result<crate::backend::SharedBackend, ApiError> {
    use_context::<crate::backend::SharedBackend>()
        .ok_or_else(|| ApiError::internal("the server did not provide a backend"))
}

/// Who is calling: the server's request policy put it in the request's extensions.
#[cfg(feature = "ssr")]
pub(crate) fn caller() -> crate::backend::Caller {
    use_context::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<crate::backend::Caller>().cloned())
        .unwrap_or_default()
}

/// Sets the HTTP status of a failed call to the one the REST route would answer.
#[cfg(feature = "ssr")]
pub(crate) fn answer<T>(result: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(e) = &result {
        e.set_response_status();
    }
    result
}

#[server(prefix = "/api/app", endpoint = "config", input = GetUrl)]
pub async fn get_config() -> Result<ConfigResponse, ApiError> {
    answer(backend().map(|b| b.config()))
}

#[server(prefix = "/api/app", endpoint = "status", input = GetUrl)]
pub async fn get_status() -> Result<StatusResponse, ApiError> {
    answer(backend().map(|b| b.status()))
}

#[server(prefix = "/api/app", endpoint = "decompose", input = Json)]
pub async fn decompose(request: DecomposeRequest) -> Result<DecomposeResponse, ApiError> {
    let outcome = match backend() {
        Ok(b) => b.decompose(request, caller()).await,
        Err(e) => Err(e),
    };
    answer(outcome)
}

/// Queues a decomposition and returns its job id at once; follow it with [`get_job_status`].
#[server(prefix = "/api/app", endpoint = "start_decompose", input = Json)]
pub async fn start_decompose(request: DecomposeRequest) -> Result<JobStarted, ApiError> {
    answer(backend().and_then(|b| b.start_decompose(request, &caller())))
}

#[server(prefix = "/api/app", endpoint = "job_status", input = Json)]
pub async fn get_job_status(id: String) -> Result<JobStatus, ApiError> {
    answer(backend().and_then(|b| b.job_status(&id, &caller())))
}

#[server(prefix = "/api/app", endpoint = "cancel_job", input = Json)]
pub async fn cancel_job(id: String) -> Result<JobStatus, ApiError> {
    answer(backend().and_then(|b| b.cancel_job(&id, &caller())))
}

/// This browser's finished runs kept on the server, newest first.
#[server(prefix = "/api/app", endpoint = "runs", input = GetUrl)]
pub async fn list_runs() -> Result<Vec<RunSummary>, ApiError> {
    answer(backend().map(|b| b.list_runs(&caller())))
}

/// The edit model's state: "idle" (loads, and downloads, on the first edit), "ready" or
/// "unavailable" with the reason.
#[server(prefix = "/api/app", endpoint = "edit_status", input = GetUrl)]
pub async fn get_edit_status() -> Result<EditStatusResponse, ApiError> {
    answer(backend().map(|b| b.edit_status()))
}

/// Edits one RGBA layer by an instruction (Qwen-Image-Edit-2509) and returns the edited layer,
/// the same size, as a `data:image/png;base64,…` URL. With `keep_alpha` (default) the layer's
/// alpha is kept exactly; `false` re-derives it for edits that change the shape.
#[server(prefix = "/api/app", endpoint = "edit_layer", input = Json)]
pub async fn edit_layer(request: EditLayerRequest) -> Result<String, ApiError> {
    let outcome = match backend() {
        Ok(b) => b.edit_layer(request).await,
        Err(e) => Err(e),
    };
    answer(outcome.map(|png| crate::image_data::png_data_url(&png)))
}

/// Queues a layer edit and returns its job id at once; follow it with [`get_edit_job_status`]
/// (phase, step, ETA; the edited layer as a data URL when done).
#[server(prefix = "/api/app", endpoint = "start_edit", input = Json)]
pub async fn start_edit(request: EditLayerRequest) -> Result<JobStarted, ApiError> {
    answer(backend().and_then(|b| b.start_edit(request, &caller())))
}

#[server(prefix = "/api/app", endpoint = "edit_job_status", input = Json)]
pub async fn get_edit_job_status(id: String) -> Result<EditJobStatus, ApiError> {
    answer(backend().and_then(|b| b.edit_job_status(&id, &caller())))
}

#[server(prefix = "/api/app", endpoint = "cancel_edit", input = Json)]
pub async fn cancel_edit(id: String) -> Result<EditJobStatus, ApiError> {
    answer(backend().and_then(|b| b.cancel_edit(&id, &caller())))
}
