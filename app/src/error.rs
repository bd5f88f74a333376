//! The API's error: an HTTP status and a message, answered as `{"error": …}` by every door (REST
//! routes and server functions alike).

use serde::{Deserialize, Serialize};

/// HTTP status of a cancelled job's outcome (409 Conflict: the job ended by request).
pub const CANCELLED_STATUS: u16 = 409;

/// Error messages quote at most this many characters of a bad value.
pub const MAX_QUOTED_CHARS: usize = 64;

/// An error as the API reports it: an HTTP status and a message for `{"error": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[error("{error}")]
pub struct ApiError {
    #[serde(skip, default = "internal")]
    pub status: u16,
    pub error: String,
    /// Seconds to wait before retrying (queue full / not ready).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retry_after: Option<u32>,
}

fn internal() -> u16 {
    500
}

/// Cuts every `"…"` or `` `…` `` span of `msg` longer than [`MAX_QUOTED_CHARS`] to its prefix.
fn shorten_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(1024));
    let mut open: Option<(char, usize)> = None; // quote char, characters kept so far
    for c in msg.chars() {
        match open {
            Some((q, _)) if c == q => {
                open = None;
                out.push(c);
            }
            Some((q, kept)) => {
                if kept < MAX_QUOTED_CHARS {
                    out.push(c);
                } else if kept == MAX_QUOTED_CHARS {
                    out.push('…');
                }
                open = Some((q, kept + 1));
            }
            None => {
                if c == '"' || c == '`' {
                    open = Some((c, 0));
                }
                out.push(c);
            }
        }
    }
    out
}

/// Server functions fail with the REST routes' error: the body is the same `{"error": …}` JSON,
/// and an undecodable request is a 400, not the transport's generic 500.
impl leptos::server_fn::error::FromServerFnError for ApiError {
    type Encoder = leptos::server_fn::codec::JsonEncoding;

    fn from_server_fn_error(value: leptos::server_fn::error::ServerFnErrorErr) -> Self {
        use leptos::server_fn::error::ServerFnErrorErr as E;
        let err = match value {
            E::Args(m) | E::Deserialization(m) => Self::bad_request(format!("invalid JSON body: {m}")),
            E::MissingArg(m) => Self::bad_request(format!("invalid JSON body: missing field `{m}`")),
            E::Request(m) => Self::new(0, format!("The server could not be reached ({m}).")),
            other => Self::internal(other.to_string()),
        };
        #[cfg(feature = "ssr")]
        err.set_response_status();
        err
    }
}

impl ApiError {
    /// In a server function: makes the HTTP status the REST route would use.
    #[cfg(feature = "ssr")]
    pub fn set_response_status(&self) {
        if let (Some(resp), Ok(code)) = (
            leptos::prelude::use_context::<leptos_axum::ResponseOptions>(),
            http::StatusCode::from_u16(self.status),
        ) {
            resp.set_status(code);
        }
    }
}

impl ApiError {
    /// An error with `status`; quoted values in the message are cut to a short prefix, so a
    /// megabyte-long bad field is never echoed back.
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        Self {
            status,
            error: shorten_quoted(&error.into()),
            retry_after: None,
        }
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, msg)
    }
    pub fn unprocessable(msg: impl Into<String>) -> Self {
        Self::new(422, msg)
    }
    pub fn too_large(msg: impl Into<String>) -> Self {
        Self::new(413, msg)
    }
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(503, msg)
    }
    pub fn busy(msg: impl Into<String>, retry_after: u32) -> Self {
        Self {
            status: 429,
            error: msg.into(),
            retry_after: Some(retry_after),
        }
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(500, msg)
    }
    /// The job was cancelled by its client.
    pub fn cancelled() -> Self {
        Self::new(CANCELLED_STATUS, "the job was cancelled")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_quoted_values_are_cut_in_errors() {
        let bad = "x".repeat(1 << 20);
        let e = ApiError::bad_request(format!(
            "invalid type: string \"{bad}\", expected u32 at line 1 column 9"
        ));
        assert!(e.error.len() < 200, "{} bytes", e.error.len());
        assert!(e.error.ends_with("expected u32 at line 1 column 9"), "{}", e.error);
        assert!(e.error.contains(&format!("\"{}…\"", "x".repeat(MAX_QUOTED_CHARS))));
        assert_eq!(
            ApiError::bad_request("keep `short` \"ones\"").error,
            "keep `short` \"ones\""
        );
    }
}
