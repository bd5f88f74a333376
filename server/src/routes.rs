//! The REST API under `/api/qwen-image/` (the seed's contract; see `app::api`). Every error is
//! JSON `{"error": …}` with a 4xx/5xx status, including malformed bodies and oversized requests.

use std::sync::Arc;

use app::api::{ApiError, DecomposeRequest, EditLayerRequest};
use app::backend::Backend;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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

async fn decompose(
    State(backend): State<Arc<ServerBackend>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: DecomposeRequest = parse_json(body)?;
    let response = backend.decompose(request).await?;
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
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: DecomposeRequest = parse_json(body)?;
    let started = backend.start_decompose(request)?;
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

async fn job_status(State(backend): State<Arc<ServerBackend>>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(backend.job_status(&id)?).into_response())
}

async fn cancel_job(State(backend): State<Arc<ServerBackend>>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(backend.cancel_job(&id)?).into_response())
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

/// Requires `Authorization: Bearer <token>` when a token is configured.
async fn require_token(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    let mut resp = ErrorResponse(ApiError::new(401, "missing or wrong API token (Authorization: Bearer …)")).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `/api/qwen-image/*` routes with their body limit and optional token.
pub fn api_router(backend: Arc<ServerBackend>, api_token: Option<String>, max_body_bytes: usize) -> Router {
    let router = Router::new()
        .route("/api/qwen-image/decompose", post(decompose).fallback(method_not_allowed))
        .route("/api/qwen-image/edit-layer", post(edit_layer).fallback(method_not_allowed))
        .route("/api/qwen-image/config", get(config).fallback(method_not_allowed))
        .route("/api/qwen-image/status", get(status).fallback(method_not_allowed))
        .route("/api/qwen-image/edit-status", get(edit_status).fallback(method_not_allowed))
        .route("/api/qwen-image/jobs", post(start_job).fallback(method_not_allowed))
        .route("/api/qwen-image/jobs/{id}", get(job_status).fallback(method_not_allowed))
        .route("/api/qwen-image/jobs/{id}/cancel", post(cancel_job).fallback(method_not_allowed))
        .route("/api/qwen-image/openapi.json", get(openapi).fallback(method_not_allowed))
        .route("/api/qwen-image/{*rest}", axum::routing::any(not_found))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(backend);
    match api_token {
        Some(token) => router.layer(middleware::from_fn_with_state(Arc::<str>::from(token), require_token)),
        None => router,
    }
}
