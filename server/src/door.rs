//! One door: the request policy every `/api/` route goes through, REST and server functions
//! alike. In order: the `Host` and `Origin` must be this server's (DNS rebinding and other web
//! pages cannot drive it), the API token when one is set (bearer header or the page's sign-in
//! cookie), JSON bodies only, at most `--max-uploads` bodies read at once, each within
//! `--max-body-mb` and `--request-timeout-secs`. The caller's identity goes to the handlers as a
//! [`Caller`]; any error, whoever produced it, leaves as `{"error": …}` JSON.
//!
//! Static files and the page itself only get the browser-session cookie.

use std::sync::Arc;
use std::time::Duration;

use app::api::{ApiError, TOKEN_REQUIRED};
use app::backend::Caller;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::http_error::ErrorResponse;

/// The browser session that owns the jobs a page starts (HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "qwen_layers_session";
/// The API token as the page's sign-in form stored it (hex, HttpOnly, SameSite=Strict).
pub const TOKEN_COOKIE: &str = "qwen_layers_token";
/// Signing in is the one API route that does not need the token.
pub const SESSION_PATH: &str = "/api/session";
/// How much of a non-JSON error body is kept when it is turned into `{"error": …}`.
const MAX_ERROR_TEXT: usize = 4096;

/// The policy's settings, fixed at startup.
#[derive(Debug)]
pub struct DoorPolicy {
    pub token: Option<String>,
    /// Host names besides IP literals and `localhost` that this server answers to.
    pub allowed_hosts: Vec<String>,
    pub max_body_bytes: usize,
    /// The whole request body must arrive within this time.
    pub body_timeout: Duration,
    /// Request bodies being read at once; more are refused with 503.
    pub upload_slots: Semaphore,
}

impl DoorPolicy {
    /// Whether `host` (a `Host` header or an `Origin`'s authority) names this server.
    fn is_own_host(&self, authority: &str) -> bool {
        let host = host_of(authority);
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok()
            || self.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// The token the request presents, from the bearer header or the sign-in cookie.
    fn presents_token(&self, headers: &HeaderMap, token: &str) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.as_bytes().to_vec());
        let cookie = cookie(headers, TOKEN_COOKIE).and_then(from_hex);
        [bearer, cookie]
            .into_iter()
            .flatten()
            .any(|p| constant_time_eq(&p, token.as_bytes()))
    }
}

/// `host[:port]` or `[v6]:port` → the host part.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// 128 random bits from the operating system, as hex: session and job ids nobody can guess.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    to_hex(&bytes)
}

/// `Set-Cookie` for an HttpOnly, SameSite=Strict cookie on the whole site.
pub fn set_cookie(name: &str, value: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict")).expect("cookie values are hex")
}

fn refuse(status: u16, message: impl Into<String>) -> Response {
    ErrorResponse(ApiError::new(status, message)).into_response()
}

/// Whether a request has a body to read (a length above zero, or a chunked one).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// `application/json`, with or without parameters such as `charset`.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// The middleware (see the module's documentation).
pub async fn guard(State(policy): State<Arc<DoorPolicy>>, request: Request, next: Next) -> Response {
    let session = cookie(request.headers(), SESSION_COOKIE).map(str::to_string);
    let mut response = if request.uri().path().starts_with("/api/") {
        let response = match admit(&policy, request, session.clone()).await {
            Ok(request) => next.run(request).await,
            Err(refusal) => refusal,
        };
        json_errors(response).await
    } else {
        next.run(request).await
    };
    if session.is_none() {
        response
            .headers_mut()
            .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &random_id()));
    }
    response
}

/// Checks one API request and buffers its body; the refusal is the response otherwise.
async fn admit(policy: &DoorPolicy, request: Request, session: Option<String>) -> Result<Request, Response> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(request.uri().authority().map(|a| a.as_str()));
    match host {
        Some(h) if policy.is_own_host(h) => {}
        Some(h) => {
            return Err(refuse(
                403,
                format!("this server does not answer to the host name `{h}` (see --allowed-host)"),
            ))
        }
        None => return Err(refuse(400, "the request has no Host header")),
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| policy.is_own_host(authority));
        if !own {
            return Err(refuse(
                403,
                "requests from other web sites are refused (the Origin is not this server)",
            ));
        }
    }
    let path = request.uri().path().to_string();
    let token_ok = match &policy.token {
        Some(token) => policy.presents_token(headers, token),
        None => false,
    };
    if policy.token.is_some() && !token_ok && path != SESSION_PATH {
        let mut resp = refuse(401, TOKEN_REQUIRED);
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(resp);
    }
    let caller = Caller {
        owner: session
            .map(|s| format!("session:{s}"))
            .or_else(|| token_ok.then(|| "token".to_string())),
    };
    let mut request = read_body(policy, request, &path).await?;
    request.extensions_mut().insert(caller);
    Ok(request)
}

/// Buffers the body of a request that has one, within the size and time limits.
async fn read_body(policy: &DoorPolicy, request: Request, path: &str) -> Result<Request, Response> {
    let headers = request.headers();
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) || !has_body(headers) {
        return Ok(request);
    }
    let form_sign_in = path == SESSION_PATH && is_form(headers);
    if !is_json(headers) && !form_sign_in {
        return Err(refuse(
            415,
            "the request body must be JSON (Content-Type: application/json)",
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > policy.max_body_bytes as u64) {
        return Err(too_large());
    }
    let Ok(_slot) = policy.upload_slots.try_acquire() else {
        let mut resp = refuse(503, "too many uploads at once; try again shortly");
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(5));
        return Err(resp);
    };
    let (parts, body) = request.into_parts();
    let bytes: Bytes =
        match tokio::time::timeout(policy.body_timeout, axum::body::to_bytes(body, policy.max_body_bytes)).await {
            Err(_) => {
                return Err(refuse(
                    408,
                    format!(
                        "the request body did not arrive within {} s (--request-timeout-secs)",
                        policy.body_timeout.as_secs()
                    ),
                ))
            }
            Ok(Err(e)) if is_length_limit(&e) => return Err(too_large()),
            Ok(Err(e)) => return Err(refuse(400, format!("could not read the request body: {e}"))),
            Ok(Ok(bytes)) => bytes,
        };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn too_large() -> Response {
    refuse(413, "request body is larger than the server's limit (--max-body-mb)")
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Any API error that is not JSON yet (a framework's plain-text rejection, say) becomes
/// `{"error": "<its text>"}` with the same status.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if status.as_u16() < 400 || is_json(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Plain text says what went wrong; an HTML page (the app's "not found") does not.
    let is_text = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"));
    let text = match axum::body::to_bytes(body, MAX_ERROR_TEXT * 4).await {
        Ok(bytes) if is_text => String::from_utf8_lossy(&bytes)
            .chars()
            .take(MAX_ERROR_TEXT)
            .collect::<String>(),
        _ => String::new(),
    };
    let message = match text.trim() {
        "" if status == StatusCode::NOT_FOUND => "no such API endpoint".to_string(),
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        text => text.to_string(),
    };
    let mut json = ErrorResponse(ApiError::new(status.as_u16(), message)).into_response();
    for name in [
        header::RETRY_AFTER,
        header::WWW_AUTHENTICATE,
        header::ALLOW,
        header::SET_COOKIE,
    ] {
        for v in parts.headers.get_all(&name) {
            json.headers_mut().append(name.clone(), v.clone());
        }
    }
    json
}

/// `POST /api/session` with `{"token": …}` (JSON) or `token=…` (the page's form): checks the
/// token and keeps it in an HttpOnly cookie, so the browser's later calls carry it.
pub async fn sign_in(State(policy): State<Arc<DoorPolicy>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(token) = &policy.token else {
        return refuse(404, "this server has no API token: nothing to sign in to");
    };
    let presented = if is_form(&headers) {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    } else {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_string))
    };
    let Some(presented) = presented else {
        return refuse(400, "send {\"token\": \"…\"}");
    };
    if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        return refuse(401, "wrong API token");
    }
    let cookie = set_cookie(TOKEN_COOKIE, &to_hex(token.as_bytes()));
    if is_form(&headers) {
        // The page's form: back to the page, now signed in.
        (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, HeaderValue::from_static("/")),
                (header::SET_COOKIE, cookie),
            ],
        )
            .into_response()
    } else {
        (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str]) -> DoorPolicy {
        DoorPolicy {
            token: None,
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(1),
            upload_slots: Semaphore::new(1),
        }
    }

    #[test]
    fn own_hosts_are_ip_literals_localhost_and_the_allowed_names() {
        let p = policy(&["studio.example"]);
        for ok in [
            "127.0.0.1:7860",
            "localhost",
            "LOCALHOST:80",
            "[::1]:7860",
            "10.0.0.5",
            "studio.example:7860",
        ] {
            assert!(p.is_own_host(ok), "{ok}");
        }
        for bad in ["evil.example", "127.0.0.1.nip.io:7860", "localhost.evil.example", ""] {
            assert!(!p.is_own_host(bad), "{bad}");
        }
    }

    #[test]
    fn cookies_and_hex_round_trip() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; qwen_layers_token=7365637265; b=2"),
        );
        assert_eq!(cookie(&h, TOKEN_COOKIE), Some("7365637265"));
        assert_eq!(from_hex("7365637265").unwrap(), b"secre");
        assert_eq!(from_hex("zz"), None);
        assert_eq!(to_hex(b"secre"), "7365637265");
        let mut p = policy(&[]);
        p.token = Some("secre".into());
        assert!(p.presents_token(&h, "secre"));
        assert!(!p.presents_token(&HeaderMap::new(), "secre"));
        assert_eq!(random_id().len(), 32);
        assert_ne!(random_id(), random_id());
    }
}
