//! The REST API under `/api/qwen-image/` (the seed's contract; see `app::api`). Every error is
//! JSON `{"error": …}` with a 4xx/5xx status, including malformed bodies and paths. Limits,
//! token and timeouts are the [`crate::door`]'s, shared with the server functions.

use std::sync::Arc;

use app::api::{ApiError, DecomposeRequest, EditLayerRequest};
use app::backend::{Backend, Caller};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use crate::backend::ServerBackend;

/// An API error as an HTTP response.
pub struct ErrorResponse(pub ApiError);

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Json(serde_json::json!({ "error": self.0.error }))).into_response();
        if let Some(secs) = self.0.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<ApiError> for ErrorResponse {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

type ApiResult<T> = Result<T, ErrorResponse>;

/// Parses a JSON body, turning every failure (too large, not JSON, wrong fields) into a 4xx.
fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
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
fn job_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request(format!("invalid job id in the path: {e}")))
}

async fn decompose(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: DecomposeRequest = parse_json(body)?;
    let response = backend.decompose(request, caller).await?;
    Ok(Json(response).into_response())
}

async fn edit_layer(
    State(backend): State<Arc<ServerBackend>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: EditLayerRequest = parse_json(body)?;
    let png = backend.edit_layer(request).await?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

async fn start_job(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: DecomposeRequest = parse_json(body)?;
    let started = backend.start_decompose(request, &caller)?;
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

async fn job_status(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    Ok(Json(backend.job_status(&job_id(path)?, &caller)?).into_response())
}

async fn cancel_job(
    State(backend): State<Arc<ServerBackend>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    Ok(Json(backend.cancel_job(&job_id(path)?, &caller)?).into_response())
}

async fn runs(State(backend): State<Arc<ServerBackend>>, Extension(caller): Extension<Caller>) -> Response {
    Json(backend.list_runs(&caller)).into_response()
}

async fn config(State(backend): State<Arc<ServerBackend>>) -> Response {
    Json(backend.config()).into_response()
}

async fn status(State(backend): State<Arc<ServerBackend>>) -> Response {
    Json(backend.status()).into_response()
}

async fn edit_status(State(backend): State<Arc<ServerBackend>>) -> Response {
    Json(backend.edit_status()).into_response()
}

async fn openapi() -> Response {
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
        .route("/api/qwen-image/runs", get(runs).fallback(method_not_allowed))
        .route(
            "/api/qwen-image/openapi.json",
            get(openapi).fallback(method_not_allowed),
        )
        .route("/api/qwen-image/{*rest}", axum::routing::any(not_found))
        .with_state(backend)
}
