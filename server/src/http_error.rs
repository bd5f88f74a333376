//! Errors over HTTP: an [`ApiError`] as a response (`{"error": …}`, its status, `Retry-After`),
//! and the table of what any `/api/` route can answer, for the OpenAPI document.

use std::collections::BTreeMap;

use app::api::ApiError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

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

/// What the door (`crate::door`) and validation can answer on any `/api/` route: `{"error": …}`.
const DOOR_ERRORS: &[(u16, &str)] = &[
    (400, "malformed body, path or image encoding"),
    (401, "missing or wrong API token (when the server requires one)"),
    (403, "the Host or Origin is not this server's"),
    (404, "no such job, or not yours"),
    (408, "the body did not arrive within --request-timeout-secs"),
    (409, "the job was cancelled"),
    (413, "body or image larger than the server's limits"),
    (415, "the body is not application/json"),
    (422, "a field out of range, an undecodable image, an over-long prompt"),
    (429, "the job queue is full; see Retry-After"),
    (
        503,
        "the model is not available (see /status for the reason), or too many uploads at once",
    ),
    (507, "the results folder is full (--results-budget-mb)"),
];

/// The responses of [`DOOR_ERRORS`], added to every operation of the OpenAPI document.
pub struct DoorErrors;

impl utoipa::IntoResponses for DoorErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        DOOR_ERRORS
            .iter()
            .map(|(code, what)| {
                let body = ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ApiError")))
                    .build();
                let response = ResponseBuilder::new()
                    .description(*what)
                    .content("application/json", body)
                    .build();
                (code.to_string(), response.into())
            })
            .collect()
    }
}
