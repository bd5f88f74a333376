//! The REST API under `/api/qwen-image/` (the seed's contract; see `app::api`). Every error is
//! JSON `{"error": …}` with a 4xx/5xx status, including malformed bodies and paths. Limits,
//! token and timeouts are the [`crate::door`]'s, shared with the server functions.

use std::sync::Arc;

use app::api::{
    ApiError, ConfigResponse, DecomposeRequest, DecomposeResponse, EditJobStatus, EditLayerRequest, EditStatusResponse,
    JobStarted, JobStatus, RunSummary, SplitLayerRequest, StatusResponse,
};
use app::backend::{Backend, Caller};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::backend::ServerBackend;
use crate::http_error::{DoorErrors, ErrorResponse};

type ApiResult<T> = Result<T, ErrorResponse>;

/// Parses a JSON body, turning every failure (too large, not JSON, wrong fields) into a 4xx.
pub(crate) fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status().as_u16();
        if status == 413 {
            ApiError::too_large("request body is larger than the server's limit (--max-body-mb)")
        } else {
            ApiError::new(status, format!("could not read the request body: {rejection}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A job id from the path; an undecodable one (invalid UTF-8, say) is a JSON 400.
pub(crate) fn job_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request(format!("invalid job id in the path: {e}")))
}

/// Decompose an image and wait for the layers.
#[utoipa::path(post, path = "/api/qwen-image/decompose", request_body = DecomposeRequest,
    responses((status = 200, description = "the layers", body = DecomposeResponse), DoorErrors))]
pub(crate) async fn decompose(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: DecomposeRequest = parse_json(body)?;
    let response = backend.decompose(request, caller).await?;
    Ok(Json(response).into_response())
}

/// Edit one RGBA layer by instruction; the answer is the edited layer, the same size.
#[utoipa::path(post, path = "/api/qwen-image/edit-layer", request_body = EditLayerRequest,
    responses((status = 200, description = "the edited layer", content_type = "image/png"), DoorErrors))]
pub(crate) async fn edit_layer(
    State(backend): State<Arc<ServerBackend>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: EditLayerRequest = parse_json(body)?;
    let png = backend.edit_layer(request).await?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// Queue a decomposition; follow it with `GET /jobs/{id}`.
#[utoipa::path(post, path = "/api/qwen-image/jobs", request_body = DecomposeRequest,
    responses((status = 202, description = "queued", body = JobStarted), DoorErrors))]
pub(crate) async fn start_job(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: DecomposeRequest = parse_json(body)?;
    let started = backend.start_decompose(request, &caller)?;
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

/// A job's state, phase, step, ETA and (when done) result.
#[utoipa::path(get, path = "/api/qwen-image/jobs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = JobStatus), DoorErrors))]
pub(crate) async fn job_status(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    Ok(Json(backend.job_status(&job_id(path)?, &caller)?).into_response())
}

/// Stop a job between denoising steps.
#[utoipa::path(post, path = "/api/qwen-image/jobs/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = JobStatus), DoorErrors))]
pub(crate) async fn cancel_job(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    Ok(Json(backend.cancel_job(&job_id(path)?, &caller)?).into_response())
}

/// Queue a layer edit; follow it with `GET /edit-jobs/{id}` (phase, step, ETA; the edited
/// layer as a PNG data URL when done).
#[utoipa::path(post, path = "/api/qwen-image/edit-jobs", request_body = EditLayerRequest,
    responses((status = 202, description = "queued", body = JobStarted), DoorErrors))]
pub(crate) async fn start_edit_job(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: EditLayerRequest = parse_json(body)?;
    let started = backend.start_edit(request, &caller)?;
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

/// An edit's state, phase, step, ETA and (when done) the edited layer.
#[utoipa::path(get, path = "/api/qwen-image/edit-jobs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = EditJobStatus), DoorErrors))]
pub(crate) async fn edit_job_status(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    Ok(Json(backend.edit_job_status(&job_id(path)?, &caller)?).into_response())
}

/// Stop an edit between denoising steps.
#[utoipa::path(post, path = "/api/qwen-image/edit-jobs/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = EditJobStatus), DoorErrors))]
pub(crate) async fn cancel_edit_job(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    Ok(Json(backend.cancel_edit(&job_id(path)?, &caller)?).into_response())
}

/// Decompose layer `index` (1 = bottom) of a finished run again into sub-layers (recursive
/// decomposition). Queued like `POST /jobs`: follow it with `GET /jobs/{id}`, whose result
/// holds the sub-layers (composite first, then bottom to top) at the run's size.
#[utoipa::path(post, path = "/api/qwen-image/runs/{id}/layers/{index}/split",
    params(("id" = String, Path, description = "the run (its job id)"),
           ("index" = u32, Path, description = "the layer, 1 = bottom")),
    request_body = SplitLayerRequest,
    responses((status = 202, description = "queued", body = JobStarted), DoorErrors))]
pub(crate) async fn split_layer(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, u32)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let (id, index) = path
        .map(|Path(p)| p)
        .map_err(|e| ApiError::bad_request(format!("invalid run id or layer index in the path: {e}")))?;
    let request: SplitLayerRequest = parse_json(body)?;
    let started = backend.start_split(&id, index, request, &caller)?;
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

/// The caller's finished runs kept on disk (a browser session's or the token holder's), newest first.
#[utoipa::path(get, path = "/api/qwen-image/runs", responses((status = 200, body = Vec<RunSummary>), DoorErrors))]
pub(crate) async fn runs(State(backend): State<Arc<ServerBackend>>, Extension(caller): Extension<Caller>) -> Response {
    Json(backend.list_runs(&caller)).into_response()
}

/// The server's defaults and limits.
#[utoipa::path(get, path = "/api/qwen-image/config", responses((status = 200, body = ConfigResponse), DoorErrors))]
pub(crate) async fn config(State(backend): State<Arc<ServerBackend>>) -> Response {
    Json(backend.config()).into_response()
}

/// The decompose model's state and the queue.
#[utoipa::path(get, path = "/api/qwen-image/status", responses((status = 200, body = StatusResponse), DoorErrors))]
pub(crate) async fn status(State(backend): State<Arc<ServerBackend>>) -> Response {
    Json(backend.status()).into_response()
}

/// The edit model's state (idle = loads, or downloads, on the first edit).
#[utoipa::path(get, path = "/api/qwen-image/edit-status", responses((status = 200, body = EditStatusResponse), DoorErrors))]
pub(crate) async fn edit_status(State(backend): State<Arc<ServerBackend>>) -> Response {
    Json(backend.edit_status()).into_response()
}

/// This document.
#[utoipa::path(get, path = "/api/qwen-image/openapi.json", responses((status = 200, description = "OpenAPI 3.1"), DoorErrors))]
pub(crate) async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

async fn not_found() -> ErrorResponse {
    ErrorResponse(ApiError::new(404, "no such API endpoint"))
}

async fn method_not_allowed() -> ErrorResponse {
    ErrorResponse(ApiError::new(405, "method not allowed on this endpoint"))
}

/// The `/api/qwen-image/*` routes (the door's policy is layered on by the caller).
pub fn api_router(backend: Arc<ServerBackend>) -> Router {
    Router::new()
        .route(
            "/api/qwen-image/decompose",
            post(decompose).fallback(method_not_allowed),
        )
        .route(
            "/api/qwen-image/edit-layer",
            post(edit_layer).fallback(method_not_allowed),
        )
        .route("/api/qwen-image/config", get(config).fallback(method_not_allowed))
        .route("/api/qwen-image/status", get(status).fallback(method_not_allowed))
        .route(
            "/api/qwen-image/edit-status",
            get(edit_status).fallback(method_not_allowed),
        )
        .route("/api/qwen-image/jobs", post(start_job).fallback(method_not_allowed))
        .route(
            "/api/qwen-image/jobs/{id}",
            get(job_status).fallback(method_not_allowed),
        )
        .route(
            "/api/qwen-image/jobs/{id}/cancel",
            post(cancel_job).fallback(method_not_allowed),
        )
        .route(
            "/api/qwen-image/edit-jobs",
            post(start_edit_job).fallback(method_not_allowed),
        )
        .route(
            "/api/qwen-image/edit-jobs/{id}",
            get(edit_job_status).fallback(method_not_allowed),
        )
        .route(
            "/api/qwen-image/edit-jobs/{id}/cancel",
            post(cancel_edit_job).fallback(method_not_allowed),
        )
        .route("/api/qwen-image/runs", get(runs).fallback(method_not_allowed))
        .route(
            "/api/qwen-image/runs/{id}/layers/{index}/split",
            post(split_layer).fallback(method_not_allowed),
        )
        .route(
            "/api/qwen-image/openapi.json",
            get(openapi).fallback(method_not_allowed),
        )
        .route("/api/qwen-image/{*rest}", axum::routing::any(not_found))
        .with_state(backend)
}
