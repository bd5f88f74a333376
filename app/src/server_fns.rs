//! Server functions: the web app's way to the backend. Each has a fixed endpoint under `/api/app/`
//! so scripts can call it too; they take and return the same types as the REST routes.

use leptos::prelude::*;
use leptos::server_fn::codec::{GetUrl, Json};

use crate::api::{
    ConfigResponse, DecomposeRequest, DecomposeResponse, EditLayerRequest, EditStatusResponse, JobStarted, JobStatus,
    StatusResponse,
};

#[cfg(feature = "ssr")]
fn backend() -> Result<crate::backend::SharedBackend, ServerFnError> {
    use_context::<crate::backend::SharedBackend>()
        .ok_or_else(|| ServerFnError::new("the server did not provide a backend"))
}

/// Turns an API error into a server-fn error and sets the HTTP status the REST route would use.
#[cfg(feature = "ssr")]
fn fail(err: crate::api::ApiError) -> ServerFnError {
    if let Some(resp) = use_context::<leptos_axum::ResponseOptions>() {
        if let Ok(code) = axum_status(err.status) {
            resp.set_status(code);
        }
    }
    ServerFnError::new(err.error)
}

#[cfg(feature = "ssr")]
fn axum_status(code: u16) -> Result<http::StatusCode, ()> {
    http::StatusCode::from_u16(code).map_err(|_| ())
}

#[server(prefix = "/api/app", endpoint = "config", input = GetUrl)]
pub async fn get_config() -> Result<ConfigResponse, ServerFnError> {
    Ok(backend()?.config())
}

#[server(prefix = "/api/app", endpoint = "status", input = GetUrl)]
pub async fn get_status() -> Result<StatusResponse, ServerFnError> {
    Ok(backend()?.status())
}

#[server(prefix = "/api/app", endpoint = "decompose", input = Json)]
pub async fn decompose(request: DecomposeRequest) -> Result<DecomposeResponse, ServerFnError> {
    backend()?.decompose(request).await.map_err(fail)
}

/// Queues a decomposition and returns its job id at once; follow it with [`get_job_status`].
#[server(prefix = "/api/app", endpoint = "start_decompose", input = Json)]
pub async fn start_decompose(request: DecomposeRequest) -> Result<JobStarted, ServerFnError> {
    backend()?.start_decompose(request).map_err(fail)
}

#[server(prefix = "/api/app", endpoint = "job_status", input = Json)]
pub async fn get_job_status(id: String) -> Result<JobStatus, ServerFnError> {
    backend()?.job_status(&id).map_err(fail)
}

#[server(prefix = "/api/app", endpoint = "cancel_job", input = Json)]
pub async fn cancel_job(id: String) -> Result<JobStatus, ServerFnError> {
    backend()?.cancel_job(&id).map_err(fail)
}

/// The edit model's state: "idle" (loads, and downloads, on the first edit), "ready" or
/// "unavailable" with the reason.
#[server(prefix = "/api/app", endpoint = "edit_status", input = GetUrl)]
pub async fn get_edit_status() -> Result<EditStatusResponse, ServerFnError> {
    Ok(backend()?.edit_status())
}

/// Edits one RGBA layer by an instruction (Qwen-Image-Edit-2509) and returns the edited layer,
/// the same size, as a `data:image/png;base64,…` URL. With `keep_alpha` (default) the layer's
/// alpha is kept exactly; `false` re-derives it for edits that change the shape.
#[server(prefix = "/api/app", endpoint = "edit_layer", input = Json)]
pub async fn edit_layer(request: EditLayerRequest) -> Result<String, ServerFnError> {
    let png = backend()?.edit_layer(request).await.map_err(fail)?;
    Ok(crate::image_data::png_data_url(&png))
}
